//! Decoding a template `Component` into a plugin's typed config, Packer style: option names are
//! Packer's, values are weakly typed as Packer's mapstructure decodes them ("512" for 512,
//! "true" for true), unknown options are errors at their file:line:column with "did you mean",
//! and type errors point at the attribute.

use kiln_template::{did_you_mean, Component, Diagnostic, Diagnostics};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
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
    let known: Vec<(&String, &kiln_template::Attr)> = c
        .attrs
        .iter()
        .filter(|(k, _)| fields.contains(&k.as_str()))
        .collect();
    let json = serde_json::Value::Object(
        known
            .iter()
            .map(|(k, a)| ((*k).clone(), a.value.clone()))
            .collect(),
    );
    match serde_path_to_error::deserialize::<_, T>(json) {
        Ok(v) if !diags.has_errors() => Ok(v),
        Ok(_) => Err(diags),
        Err(_) => {
            // Each attribute alone (every other field at its default), so every bad value is
            // reported at once, each at its own attribute.
            for (key, attr) in known {
                let one = serde_json::json!({ key.as_str(): attr.value });
                if let Err(e) = serde_path_to_error::deserialize::<_, T>(one) {
                    let msg = e.into_inner().to_string();
                    diags.push(Diagnostic::error(
                        format!("invalid value for {key:?}: {msg}"),
                        Some(attr.span.clone()),
                    ));
                }
            }
            if !diags.has_errors() {
                diags.push(Diagnostic::error(
                    format!("invalid options for {}", c.kind),
                    Some(c.span.clone()),
                ));
            }
            Err(diags)
        }
    }
}

/// A value an option cannot take; the message says what it takes instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError(s)
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

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
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
                        // Integral and in range (checked just above): exact.
                        .map(
                            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                            |f| f as u64,
                        )
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

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Flag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(self.0)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:?}", self.0))
    }
}

impl std::ops::Deref for Dur {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// A value read weakly as text (a string, a number or a bool), for `FromStr` types.
pub fn weak_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(|t| t.0)
}

/// The error for a value outside a fixed set of names: the names, and the nearest one.
pub fn choice_error(got: &str, names: &[&str]) -> ConfigError {
    ConfigError(match did_you_mean(got, names.iter().copied()) {
        Some(s) => format!(
            "{got:?} is not one of {} (did you mean {s:?}?)",
            names.join(", ")
        ),
        None => format!("{got:?} is not one of {}", names.join(", ")),
    })
}

/// Declares an option whose value is one of a fixed set of names: an enum with `FromStr`
/// (the error lists the names and the nearest), `Display`, weak `Deserialize` and `Serialize`
/// as the name. `NAMES` lists them in order, for docs.
#[macro_export]
macro_rules! choice {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
        }
        impl std::str::FromStr for $name {
            type Err = $crate::config::ConfigError;
            fn from_str(s: &str) -> Result<Self, $crate::config::ConfigError> {
                match s {
                    $($s => Ok(Self::$var),)+
                    other => Err($crate::config::choice_error(other, Self::NAMES)),
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::weak_string(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Declares a whole-number option with a range: weak decoding (`"8080"` or `8080`), the range
/// checked where the value is read (the error names the range), the final integer type inside.
macro_rules! bounded {
    ($(#[$m:meta])* $name:ident: $t:ty, $lo:expr, $hi:expr, $unit:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(pub $t);
        impl $name {
            pub const MIN: $t = $lo;
            pub const MAX: $t = $hi;
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let n = Num::deserialize(d)?.0;
                match <$t>::try_from(n) {
                    Ok(v) if ($lo..=$hi).contains(&v) => Ok($name(v)),
                    _ => Err(de::Error::custom(format!(
                        "{n} is out of range: it must be {} to {}{}",
                        $lo, $hi, $unit
                    ))),
                }
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

bounded!(
    /// A TCP port, 1 to 65535.
    Port: u16, 1, 65535, " (a TCP port)"
);
bounded!(
    /// A count of CPUs, sockets, cores or threads, 1 to 1024.
    Count: u32, 1, 1024, ""
);
bounded!(
    /// Guest memory in MiB, 16 MiB to 16 TiB.
    MemoryMib: u64, 16, 16 << 20, " (MiB)"
);
bounded!(
    /// A process exit status, 0 to 255 (`valid_exit_codes`).
    ExitStatus: i32, 0, 255, " (an exit status)"
);
bounded!(
    /// How many times to try something, 1 to 10000.
    Attempts: u32, 1, 10_000, ""
);

/// A size in bytes, written as Packer writes disk sizes: a number of MiB (`10240`, `"10240"`) or
/// a number with a unit (`"10G"`, `"512M"`, `"1T"`, `"64K"`; `MB`/`MiB` spellings too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..split].parse().map_err(|_| {
            ConfigError(format!(
                "invalid size {s:?}: write it like \"10G\" or \"10240\" (MiB)"
            ))
        })?;
        let mult: u64 = match t[split..]
            .trim()
            .to_ascii_uppercase()
            .trim_end_matches("IB")
            .trim_end_matches('B')
        {
            "" | "M" => 1 << 20,
            "K" => 1 << 10,
            "G" => 1 << 30,
            "T" => 1 << 40,
            other => {
                return Err(ConfigError(format!(
                    "invalid size unit {other:?} in {s:?}: use K, M, G or T"
                )))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ConfigError(format!("size {s:?} is too large")))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        weak_string(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// How an option enters the cache key, declared on the field with serde attributes of the
/// config struct's `Serialize` (which exists only for the key):
/// - no attribute: its value, as resolved (defaults applied);
/// - `#[serde(skip_serializing)]`: not in the key (it does not change the disk);
/// - `#[serde(serialize_with = "kiln_core::config::key::file")]` (and `files`, `path_or_tree`,
///   `args`): by the content digest of the file or tree it names, never its path alone.
///
/// Digests are markers (`{"$kiln-path-digest": path}`) the engine replaces when it computes the
/// key, so a missing file is an error there, with the build's context.
pub mod key {
    use serde::ser::{SerializeMap, SerializeSeq};
    use serde::Serializer;
    use std::path::Path;

    /// The marker key the engine resolves to a content digest.
    pub const PATH_DIGEST: &str = "$kiln-path-digest";

    fn marker<S: Serializer>(p: &str, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(PATH_DIGEST, p)?;
        m.end()
    }

    /// A file that must exist: its content digest.
    pub fn file<S: Serializer, T: AsRef<str>>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => marker(p.as_ref(), s),
            None => s.serialize_none(),
        }
    }

    /// A file or directory: its content (tree) digest when it exists, else its path (the
    /// build stops on it before anything boots).
    pub fn path_or_tree<S: Serializer, T: AsRef<str>>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) if Path::new(p.as_ref()).exists() => marker(p.as_ref(), s),
            Some(p) => s.serialize_str(p.as_ref()),
            None => s.serialize_none(),
        }
    }

    /// A list of files or directories, each by content when it exists.
    pub fn files<S: Serializer, T: AsRef<str>>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        struct One<'a>(&'a str);
        impl serde::Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                path_or_tree(&Some(self.0), s)
            }
        }
        let mut q = s.serialize_seq(Some(v.len()))?;
        for p in v {
            q.serialize_element(&One(p.as_ref()))?;
        }
        q.end()
    }

    /// Command-line arguments: an argument that names an existing file (`/…` or `./…`) counts
    /// by the file's content.
    pub fn arg<S: Serializer>(a: &str, s: S) -> Result<S::Ok, S::Error> {
        if (a.starts_with('/') || a.starts_with('.')) && Path::new(a).is_file() {
            marker(a, s)
        } else {
            s.serialize_str(a)
        }
    }

    /// A list of arguments (`qemu_extra_args`).
    pub fn args<S: Serializer, T: AsRef<str>>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        struct One<'a>(&'a str);
        impl serde::Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                arg(self.0, s)
            }
        }
        let mut q = s.serialize_seq(Some(v.len()))?;
        for a in v {
            q.serialize_element(&One(a.as_ref()))?;
        }
        q.end()
    }

    /// A list of argument lists (`qemuargs`).
    pub fn arg_lists<S: Serializer, T: AsRef<str>>(v: &[Vec<T>], s: S) -> Result<S::Ok, S::Error> {
        struct One<'a, T>(&'a [T]);
        impl<T: AsRef<str>> serde::Serialize for One<'_, T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                args(self.0, s)
            }
        }
        let mut q = s.serialize_seq(Some(v.len()))?;
        for a in v {
            q.serialize_element(&One(a))?;
        }
        q.end()
    }
}

/// Parses Go's duration syntax.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(s).map_err(ConfigError)
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
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

/// A warning for each option that is accepted for compatibility but not acted on yet, with the
/// reason and what to do instead (`(name, reason)` pairs).
pub fn warn_inert(c: &Component, inert: &[(&str, &str)], diags: &mut Diagnostics) {
    for (key, why) in inert {
        if let Some(a) = c.attrs.get(*key) {
            diags.push(Diagnostic::warning(
                format!(
                    "option {key:?} of {} is accepted but not acted on: {why}",
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
        Component::from_pairs("qemu", pairs)
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
    fn sizes_parse_like_packer_disk_size() {
        let size = |s: &str| s.parse::<ByteSize>().map(|b| b.0).map_err(|e| e.0);
        assert_eq!(size("10240"), Ok(10240 << 20));
        assert_eq!(size("10G"), Ok(10 << 30));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert!(size("ten").is_err());
        assert!(size("99999999999T").is_err());
    }

    #[test]
    fn ranges_and_choices_are_checked_where_the_value_is_read() {
        #[derive(Deserialize, Debug, Default)]
        #[serde(default)]
        struct C {
            port: Option<Port>,
            cpus: Option<Count>,
            mode: Option<Mode>,
        }
        crate::choice! { enum Mode { Fast = "fast", Safe = "safe" } }
        let c = comp(&[
            ("port", "8080".into()),
            ("cpus", 2.into()),
            ("mode", "safe".into()),
        ]);
        let cfg: C = decode(&c, &[]).expect("decodes");
        assert_eq!(cfg.port, Some(Port(8080)));
        assert_eq!(cfg.cpus, Some(Count(2)));
        assert_eq!(cfg.mode, Some(Mode::Safe));
        // Every bad value is reported at once, each with its range or names.
        let c = comp(&[
            ("port", 70000.into()),
            ("cpus", 0.into()),
            ("mode", "fastt".into()),
        ]);
        let text = decode::<C>(&c, &[]).expect_err("rejected").to_string();
        assert!(text.contains("invalid value for \"port\": 70000 is out of range: it must be 1 to 65535 (a TCP port)"), "{text}");
        assert!(
            text.contains("invalid value for \"cpus\": 0 is out of range: it must be 1 to 1024"),
            "{text}"
        );
        assert!(
            text.contains("\"fastt\" is not one of fast, safe (did you mean \"fast\"?)"),
            "{text}"
        );
    }

    #[test]
    fn durations_parse_go_syntax() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(
            parse_duration("5 minutes").map_err(|e| e.to_string()),
            Err(
                "invalid duration \"5 minutes\": unknown unit \" minutes\" (use ms, s, m, h)"
                    .to_string()
            )
        );
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("10").is_err());
        // Found by fuzz/boot_command: a huge number panicked in Duration::from_secs_f64.
        let huge = format!("{}s", "5".repeat(64));
        assert!(parse_duration(&huge).is_err());
        assert!(parse_duration("1e400h").is_err());
        assert!(parse_duration("2562047h").is_ok());
    }
}
