//! `boot_command`: Packer's key vocabulary typed into the guest over QMP (`send-key`), with
//! `<waitX>` pauses and `On`/`Off` modifiers held across keys.

use kiln_core::config::parse_duration;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// QEMU qcodes pressed together (modifiers first), then released.
    Keys(Vec<String>),
    Wait(Duration),
    Hold(String),
    Release(String),
}

fn special(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "enter" | "return" => "ret",
        "esc" => "esc",
        "tab" => "tab",
        "bs" => "backspace",
        "del" => "delete",
        "spacebar" => "spc",
        "insert" => "insert",
        "home" => "home",
        "end" => "end",
        "pageup" => "pgup",
        "pagedown" => "pgdn",
        "up" => "up",
        "down" => "down",
        "left" => "left",
        "right" => "right",
        "menu" => "menu",
        "leftalt" => "alt",
        "rightalt" => "alt_r",
        "leftctrl" => "ctrl",
        "rightctrl" => "ctrl_r",
        "leftshift" => "shift",
        "rightshift" => "shift_r",
        "leftsuper" => "meta_l",
        "rightsuper" => "meta_r",
        "f1" => "f1",
        "f2" => "f2",
        "f3" => "f3",
        "f4" => "f4",
        "f5" => "f5",
        "f6" => "f6",
        "f7" => "f7",
        "f8" => "f8",
        "f9" => "f9",
        "f10" => "f10",
        "f11" => "f11",
        "f12" => "f12",
        _ => return None,
    })
}

/// The qcodes for one typed character (with shift when it needs it).
fn char_keys(c: char) -> Option<Vec<String>> {
    let plain = |k: &str| Some(vec![k.to_string()]);
    let shifted = |k: &str| Some(vec!["shift".to_string(), k.to_string()]);
    match c {
        'a'..='z' | '0'..='9' => plain(&c.to_string()),
        'A'..='Z' => shifted(&c.to_ascii_lowercase().to_string()),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '\t' => plain("tab"),
        '-' => plain("minus"),
        '=' => plain("equal"),
        '[' => plain("bracket_left"),
        ']' => plain("bracket_right"),
        ';' => plain("semicolon"),
        '\'' => plain("apostrophe"),
        '`' => plain("grave_accent"),
        '\\' => plain("backslash"),
        ',' => plain("comma"),
        '.' => plain("dot"),
        '/' => plain("slash"),
        '!' => shifted("1"),
        '@' => shifted("2"),
        '#' => shifted("3"),
        '$' => shifted("4"),
        '%' => shifted("5"),
        '^' => shifted("6"),
        '&' => shifted("7"),
        '*' => shifted("8"),
        '(' => shifted("9"),
        ')' => shifted("0"),
        '_' => shifted("minus"),
        '+' => shifted("equal"),
        '{' => shifted("bracket_left"),
        '}' => shifted("bracket_right"),
        ':' => shifted("semicolon"),
        '"' => shifted("apostrophe"),
        '~' => shifted("grave_accent"),
        '|' => shifted("backslash"),
        '<' => shifted("comma"),
        '>' => shifted("dot"),
        '?' => shifted("slash"),
        _ => None,
    }
}

/// Every `<name>` group that looks like a key but is none: misspellings such as `<entr>`, with the
/// closest key name. (Packer types unknown groups literally; kiln reports them at validate time,
/// since a template that types "<entr>" into an installer prompt is almost always a typo.)
pub fn unknown_keys(s: &str) -> Vec<(String, Option<String>)> {
    const NAMES: &[&str] = &[
        "enter",
        "return",
        "esc",
        "tab",
        "bs",
        "del",
        "spacebar",
        "insert",
        "home",
        "end",
        "pageUp",
        "pageDown",
        "up",
        "down",
        "left",
        "right",
        "menu",
        "leftAlt",
        "rightAlt",
        "leftCtrl",
        "rightCtrl",
        "leftShift",
        "rightShift",
        "leftSuper",
        "rightSuper",
        "leftAltOn",
        "leftAltOff",
        "leftCtrlOn",
        "leftCtrlOff",
        "leftShiftOn",
        "leftShiftOff",
        "rightAltOn",
        "rightAltOff",
        "rightCtrlOn",
        "rightCtrlOff",
        "rightShiftOn",
        "rightShiftOff",
        "leftSuperOn",
        "leftSuperOff",
        "wait",
        "wait5",
        "wait10",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "f6",
        "f7",
        "f8",
        "f9",
        "f10",
        "f11",
        "f12",
    ];
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let Some(end) = rest.find('>') else { break };
        let name = &rest[..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) {
            if let Ok(acts) = parse(&format!("<{name}>")) {
                let typed_literally = acts.len() > 1;
                if typed_literally {
                    let hint = kiln_template::did_you_mean(name, NAMES.iter().copied())
                        .map(|h| format!("<{h}>"));
                    out.push((format!("<{name}>"), hint));
                }
            }
        }
        rest = &rest[end..];
    }
    out
}

/// Parses one boot_command string into actions. Unknown `<...>` groups are typed literally, as
/// Packer does.
pub fn parse(s: &str) -> Result<Vec<Action>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            if let Some(end) = rest.find('>') {
                let name = &rest[1..end];
                let lower = name.to_ascii_lowercase();
                let mut matched = true;
                if lower == "wait" {
                    out.push(Action::Wait(Duration::from_secs(1)));
                } else if let Some(d) = lower.strip_prefix("wait") {
                    let d = if d.chars().all(|c| c.is_ascii_digit()) {
                        format!("{d}s")
                    } else {
                        d.to_string()
                    };
                    out.push(Action::Wait(
                        parse_duration(&d).map_err(|e| format!("<{name}>: {e}"))?,
                    ));
                } else if let Some(k) = lower
                    .strip_suffix("on")
                    .and_then(special)
                    .filter(|_| lower.len() > 2)
                {
                    out.push(Action::Hold(k.to_string()));
                } else if let Some(k) = lower.strip_suffix("off").and_then(special) {
                    out.push(Action::Release(k.to_string()));
                } else if let Some(k) = special(&lower) {
                    out.push(Action::Keys(vec![k.to_string()]));
                } else {
                    matched = false;
                }
                if matched {
                    rest = &rest[end + 1..];
                    continue;
                }
            }
        }
        let keys =
            char_keys(c).ok_or_else(|| format!("cannot type {c:?}: it is not on a US keyboard"))?;
        out.push(Action::Keys(keys));
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packer_key_vocabulary_parses() {
        let a = parse("ab<enter><wait5><leftCtrlOn>c<leftCtrlOff>A:<f12><wait1m30s><bogus>")
            .expect("parses");
        assert_eq!(a[0], Action::Keys(vec!["a".into()]));
        assert_eq!(a[2], Action::Keys(vec!["ret".into()]));
        assert_eq!(a[3], Action::Wait(Duration::from_secs(5)));
        assert_eq!(a[4], Action::Hold("ctrl".into()));
        assert_eq!(a[6], Action::Release("ctrl".into()));
        assert_eq!(a[7], Action::Keys(vec!["shift".into(), "a".into()]));
        assert_eq!(a[8], Action::Keys(vec!["shift".into(), "semicolon".into()]));
        assert_eq!(a[9], Action::Keys(vec!["f12".into()]));
        assert_eq!(a[10], Action::Wait(Duration::from_secs(90)));
        assert_eq!(
            a[11],
            Action::Keys(vec!["shift".into(), "comma".into()]),
            "unknown groups are typed"
        );
        assert!(parse("é").is_err());
    }
}
