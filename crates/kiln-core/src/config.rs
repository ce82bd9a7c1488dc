//! Decoding a template `Component` into a plugin's typed config, Packer style: option names are
//! Packer's, values are weakly typed as Packer's mapstructure decodes them ("512" for 512,
//! "true" for true), unknown options are errors at their file:line:column with "did you mean",
//! and type errors point at the attribute.

use kiln_template::{did_you_mean, Component, Diagnostic, Diagnostics};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The field names of a config struct, read from its `Deserialize` impl (so the list can never
/// drift from the struct).
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Grab(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field introspection")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Grab {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut g = Grab(None);
    let _ = T::deserialize(&mut g);
    g.0.unwrap_or(&[])
}

/// Decodes `c` into `T`, reporting unknown attributes (allowing those in `also_allowed`, which
/// another struct decodes from the same block) and type errors at their positions.
pub fn decode<T: DeserializeOwned>(c: &Component, also_allowed: &[&str]) -> Result<T, Diagnostics> {
    let fields = fields_of::<T>();
    let mut diags = Diagnostics::default();
    for (key, attr) in &c.attrs {
        if key.starts_with("__") {
            continue;
        }
        if !fields.contains(&key.as_str()) && !also_allowed.contains(&key.as_str()) {
            let all = fields.iter().chain(also_allowed.iter()).copied();
            let hint = match did_you_mean(key, all) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("see docs/{}.md for the options {} takes", c.kind, c.kind),
            };
            diags.push(
                Diagnostic::error(
                    format!(
                        "unknown option {key:?} for {} {:?}",
                        c.kind,
                        c.name.as_deref().unwrap_or(&c.kind)
                    ),
                    Some(attr.span.clone()),
                )
                .with_hint(hint),
            );
        }
    }
    let json = serde_json::Value::Object(
        c.attrs
            .iter()
            .filter(|(k, _)| fields.contains(&k.as_str()))
            .map(|(k, a)| (k.clone(), a.value.clone()))
            .collect(),
    );
    match serde_path_to_error::deserialize::<_, T>(json) {
        Ok(v) if !diags.has_errors() => Ok(v),
        Ok(_) => Err(diags),
        Err(e) => {
            let path = e.path().to_string();
            let key = path.split(['.', '[']).next().unwrap_or("");
            let span = c.span_of(key).clone();
            let msg = e.into_inner().to_string();
            diags.push(Diagnostic::error(
                format!("invalid value for {key:?}: {msg}"),
                Some(span),
            ));
            Err(diags)
        }
    }
}

/// A string option that also accepts numbers and bools (Packer's weak decoding).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Text(s)),
            serde_json::Value::Number(n) => Ok(Text(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Text(b.to_string())),
            other => Err(de::Error::custom(format!(
                "expected a string, got {}",
                kind(&other)
            ))),
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A whole number that may be written as "512".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                        .map(|f| f as u64)
                })
                .map(Num)
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "expected a whole number from 0 to {}, got {n}",
                        u64::MAX
                    ))
                }),
            serde_json::Value::String(s) => s
                .trim()
                .parse()
                .map(Num)
                .map_err(|_| de::Error::custom(format!("expected a whole number, got {s:?}"))),
            other => Err(de::Error::custom(format!(
                "expected a whole number, got {}",
                kind(&other)
            ))),
        }
    }
}

/// A bool that may be written as "true"/"false".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(b) => Ok(Flag(b)),
            serde_json::Value::String(s) => match s.trim() {
                "true" | "1" | "True" | "TRUE" => Ok(Flag(true)),
                "false" | "0" | "False" | "FALSE" | "" => Ok(Flag(false)),
                _ => Err(de::Error::custom(format!(
                    "expected true or false, got {s:?}"
                ))),
            },
            serde_json::Value::Number(n) => Ok(Flag(n.as_f64() != Some(0.0))),
            other => Err(de::Error::custom(format!(
                "expected true or false, got {}",
                kind(&other)
            ))),
        }
    }
}

/// A Go-style duration: "300ms", "5m", "1h30m", "10s".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => parse_duration(&s).map(Dur).map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "expected a duration string like \"5m\" or \"30s\", got {}",
                kind(&other)
            ))),
        }
    }
}

/// Parses Go's duration syntax.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" || t.is_empty() {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n_end == 0 {
            return Err(format!(
                "invalid duration {s:?}: write it like \"300ms\", \"10s\", \"5m\" or \"1h30m\""
            ));
        }
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: a unit is missing (ms, s, m, h)"
                ))
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (use ms, s, m, h)"
                ))
            }
        };
        rest = &rest[u_end..];
        total += n * unit;
    }
    // Go's durations end at about 292 years; anything longer is a mistake, not a wait.
    const MAX_SECS: f64 = 9_223_372_037.0; // 2562047h47m16.854775807s
    if total.is_nan() || total > MAX_SECS {
        return Err(format!(
            "invalid duration {s:?}: longer than Go's largest duration (about 292 years)"
        ));
    }
    Ok(Duration::from_secs_f64(total))
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A warning naming options that are accepted for compatibility but not acted on yet.
pub fn warn_inert(c: &Component, inert: &[&str], diags: &mut Diagnostics) {
    for key in inert {
        if let Some(a) = c.attrs.get(*key) {
            diags.push(Diagnostic::warning(
                format!(
                    "option {key:?} of {} is accepted but not acted on yet",
                    c.kind
                ),
                Some(a.span.clone()),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_template::{Attr, Span};
    use std::path::Path;

    #[derive(Deserialize, Debug)]
    #[serde(default)]
    #[derive(Default)]
    struct Cfg {
        memory: Option<Num>,
        headless: Option<Flag>,
        ssh_timeout: Option<Dur>,
        vm_name: Option<Text>,
    }

    fn comp(pairs: &[(&str, serde_json::Value)]) -> Component {
        let span = Span::file_only(Path::new("t.pkr.hcl"));
        Component {
            kind: "qemu".into(),
            name: Some("x".into()),
            span: span.clone(),
            attrs: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Attr {
                            value: v.clone(),
                            span: span.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn weak_values_decode_like_packer() {
        let c = comp(&[
            ("memory", "512".into()),
            ("headless", "true".into()),
            ("ssh_timeout", "1m30s".into()),
            ("vm_name", 7.into()),
        ]);
        let cfg: Cfg = decode(&c, &[]).expect("decodes");
        assert_eq!(cfg.memory, Some(Num(512)));
        assert_eq!(cfg.headless, Some(Flag(true)));
        assert_eq!(cfg.ssh_timeout, Some(Dur(Duration::from_secs(90))));
        assert_eq!(cfg.vm_name, Some(Text("7".into())));
    }

    #[test]
    fn unknown_option_suggests_nearest_name() {
        let c = comp(&[("memmory", 1.into())]);
        let err = decode::<Cfg>(&c, &[]).expect_err("unknown option rejected");
        let text = err.to_string();
        assert!(text.contains("unknown option \"memmory\""), "{text}");
        assert!(text.contains("did you mean `memory`?"), "{text}");
    }

    #[test]
    fn type_error_names_the_option() {
        let c = comp(&[("memory", "lots".into())]);
        let text = decode::<Cfg>(&c, &[])
            .expect_err("bad type rejected")
            .to_string();
        assert!(text.contains("invalid value for \"memory\""), "{text}");
    }

    #[test]
    fn durations_parse_go_syntax() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("10").is_err());
        // Found by fuzz/boot_command: a huge number panicked in Duration::from_secs_f64.
        let huge = format!("{}s", "5".repeat(64));
        assert!(parse_duration(&huge).is_err());
        assert!(parse_duration("1e400h").is_err());
        assert!(parse_duration("2562047h").is_ok());
    }
}
