//! Run-time Go-template placeholders (`{{ .HTTPIP }}`, `{{ .Path }}`, `{{.Vars}}`) that templates
//! leave for the builder and provisioners to fill in.

use std::collections::BTreeMap;

/// Replaces `{{ .Name }}` / `{{.Name}}` for every known name; unknown ones are left as written.
pub fn fill(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        match key.strip_prefix('.').and_then(|k| vars.get(k)) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_known_and_keeps_unknown() {
        let v: BTreeMap<String, String> = [("HTTPIP".to_string(), "10.0.2.2".to_string())].into();
        assert_eq!(
            fill("http://{{ .HTTPIP }}:{{.HTTPPort}}/x", &v),
            "http://10.0.2.2:{{.HTTPPort}}/x"
        );
    }
}
