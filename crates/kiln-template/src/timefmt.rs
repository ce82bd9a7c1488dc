//! Calendar arithmetic and the three date formats templates use: RFC 3339 (`timestamp()`),
//! Go reference layouts (`legacy_isotime`, `{{isotime}}`) and HCL's `formatdate` spec.
//! Small and dependency-free; all times are UTC, as Packer's are.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub min: u32,
    pub sec: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Converts seconds since the epoch to a UTC civil time (Howard Hinnant's algorithm).
// Day, month, hour, minute, second and weekday are small by construction (rem_euclid and the
// algorithm's ranges), so their casts to u32 are exact.
#[allow(clippy::cast_possible_truncation)]
pub fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        min: (rem % 3600 / 60) as u32,
        sec: (rem % 60) as u32,
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// Parses an RFC 3339 UTC or offset timestamp into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn rfc3339(secs: i64) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.min, c.sec
    )
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Formats with a Go reference layout ("2006-01-02T15:04:05Z07:00"); UTC only.
pub fn go_layout(layout: &str, secs: i64) -> String {
    let c = civil(secs);
    let h12 = if c.hour.is_multiple_of(12) {
        12
    } else {
        c.hour % 12
    };
    // Longest tokens first so "2006" wins over "2" and "January" over "Jan".
    let tokens: [(&str, String); 22] = [
        ("January", MONTHS[c.month as usize - 1].to_string()),
        ("Monday", DAYS[c.weekday as usize].to_string()),
        ("Z07:00", "Z".to_string()),
        ("-07:00", "+00:00".to_string()),
        ("-0700", "+0000".to_string()),
        ("2006", format!("{:04}", c.year)),
        ("Jan", MONTHS[c.month as usize - 1][..3].to_string()),
        ("Mon", DAYS[c.weekday as usize][..3].to_string()),
        ("MST", "UTC".to_string()),
        ("01", format!("{:02}", c.month)),
        ("02", format!("{:02}", c.day)),
        ("_2", format!("{:>2}", c.day)),
        ("15", format!("{:02}", c.hour)),
        ("03", format!("{:02}", h12)),
        ("04", format!("{:02}", c.min)),
        ("05", format!("{:02}", c.sec)),
        ("06", format!("{:02}", c.year % 100)),
        ("PM", if c.hour >= 12 { "PM" } else { "AM" }.to_string()),
        ("pm", if c.hour >= 12 { "pm" } else { "am" }.to_string()),
        ("1", c.month.to_string()),
        ("2", c.day.to_string()),
        ("3", h12.to_string()),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        for (tok, val) in &tokens {
            if let Some(r) = rest.strip_prefix(tok) {
                out.push_str(val);
                rest = r;
                continue 'outer;
            }
        }
        let ch = rest.chars().next().unwrap_or(' ');
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// Formats with HCL's `formatdate` spec (YYYY, MM, DD, hh, mm, ss, EEE, MMM, ZZZ, 'literal').
pub fn format_spec(spec: &str, secs: i64) -> Result<String, String> {
    let c = civil(secs);
    let h12 = if c.hour.is_multiple_of(12) {
        12
    } else {
        c.hour % 12
    };
    let chars: Vec<char> = spec.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '\'' {
                out.push(chars[j]);
                j += 1;
            }
            if j == chars.len() {
                return Err("unterminated quoted literal in format spec".into());
            }
            i = j + 1;
            continue;
        }
        if !ch.is_ascii_alphabetic() {
            out.push(ch);
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == ch {
            n += 1;
        }
        let piece = match (ch, n) {
            ('Y', 4) => format!("{:04}", c.year),
            ('Y', 2) => format!("{:02}", c.year % 100),
            ('M', 4) => MONTHS[c.month as usize - 1].to_string(),
            ('M', 3) => MONTHS[c.month as usize - 1][..3].to_string(),
            ('M', 2) => format!("{:02}", c.month),
            ('M', 1) => c.month.to_string(),
            ('D', 2) => format!("{:02}", c.day),
            ('D', 1) => c.day.to_string(),
            ('E', 4) => DAYS[c.weekday as usize].to_string(),
            ('E', 3) => DAYS[c.weekday as usize][..3].to_string(),
            ('h', 2) => format!("{:02}", c.hour),
            ('h', 1) => c.hour.to_string(),
            ('H', 2) => format!("{h12:02}"),
            ('H', 1) => h12.to_string(),
            ('m', 2) => format!("{:02}", c.min),
            ('m', 1) => c.min.to_string(),
            ('s', 2) => format!("{:02}", c.sec),
            ('s', 1) => c.sec.to_string(),
            ('A', 1) => if c.hour >= 12 { "PM" } else { "AM" }.to_string(),
            ('a', 1) => if c.hour >= 12 { "pm" } else { "am" }.to_string(),
            ('Z', 1) => "Z".to_string(),
            ('Z', 3) => "UTC".to_string(),
            ('Z', 4) => "+0000".to_string(),
            ('Z', 5) => "+00:00".to_string(),
            _ => {
                let tok: String = std::iter::repeat_n(ch, n).collect();
                return Err(format!("invalid date format verb {tok:?}: use letters like YYYY, MM, DD, hh, mm, ss, or quote literal text with ''"));
            }
        };
        out.push_str(&piece);
        i += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_and_back_agree() {
        let t = 1_796_000_000; // 2026-11-29-ish
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(civil(0).weekday, 4);
    }

    #[test]
    fn go_layout_matches_reference() {
        let t = parse_rfc3339("2006-01-02T15:04:05Z").unwrap_or_default();
        assert_eq!(
            go_layout("2006-01-02T15:04:05Z07:00", t),
            "2006-01-02T15:04:05Z"
        );
        assert_eq!(go_layout("20060102150405", t), "20060102150405");
        assert_eq!(go_layout("Mon Jan _2 3:04PM", t), "Mon Jan  2 3:04PM");
    }

    #[test]
    fn formatdate_spec_formats() {
        let t = parse_rfc3339("2018-01-02T23:12:01Z").unwrap_or_default();
        assert_eq!(
            format_spec("DD MMM YYYY hh:mm ZZZ", t).as_deref(),
            Ok("02 Jan 2018 23:12 UTC")
        );
        assert_eq!(
            format_spec("EEEE, 'at' h:mm", t).as_deref(),
            Ok("Tuesday, at 23:12")
        );
        assert!(format_spec("QQ", t).is_err());
    }
}
