//! Packer's HCL2 function library. hcl-rs evaluates expressions but ships no functions: these are
//! ours. Each function validates its own arguments and returns a message that says what was wrong;
//! the caller attaches the attribute's position.
//!
//! `try` and `can` need their arguments unevaluated, so they are not here: `eval.rs` handles them
//! before hcl-rs sees the expression.

use base64::Engine as _;
use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Map, Number, Value};
use sha2::Digest as _;
use std::path::{Component, Path, PathBuf};

type R = Result<Value, String>;

/// Registers every function. `env` is only available where Packer allows it (variable defaults).
pub fn register(ctx: &mut Context<'_>, with_env: bool) {
    for (name, def) in table() {
        if name != "env" || with_env {
            ctx.declare_func(name, def);
        }
    }
}

/// The names of every function (those `eval.rs` handles itself, `try` and `can`, included), from
/// the one table: for "did you mean" on unknown ones and for docs.
pub fn names() -> Vec<&'static str> {
    let mut n: Vec<&'static str> = table().into_iter().map(|(name, _)| name).collect();
    n.extend(["try", "can"]);
    n
}

/// The function table: each function declared once, with its parameters.
fn table() -> Vec<(&'static str, FuncDef)> {
    use ParamType::{Any, Number as N, String as S};
    let arr = || ParamType::array_of(Any);
    let mut out = Vec::new();
    let ctx = &mut out;
    let f = |out: &mut Vec<(&'static str, FuncDef)>,
             name: &'static str,
             params: Vec<ParamType>,
             variadic: Option<ParamType>,
             func: fn(FuncArgs) -> R| {
        let mut b = FuncDef::builder().params(params);
        if let Some(v) = variadic {
            b = b.variadic_param(v);
        }
        out.push((name, b.build(func)));
    };
    f(ctx, "abspath", vec![S], None, abspath);
    f(ctx, "basename", vec![S], None, |a| path_part(&a, true));
    f(ctx, "dirname", vec![S], None, |a| path_part(&a, false));
    f(ctx, "pathexpand", vec![S], None, pathexpand);
    f(ctx, "join", vec![S], Some(arr()), join);
    f(ctx, "split", vec![S, S], None, split);
    f(ctx, "format", vec![S], Some(Any), format_fn);
    f(ctx, "formatlist", vec![S], Some(Any), formatlist);
    f(ctx, "formatdate", vec![S, S], None, formatdate);
    f(ctx, "timestamp", vec![], None, |_| {
        Ok(Value::from(crate::timefmt::rfc3339(
            crate::timefmt::now_unix(),
        )))
    });
    f(ctx, "legacy_isotime", vec![S], None, |a| {
        Ok(Value::from(crate::timefmt::go_layout(
            str_arg(&a, 0)?,
            crate::timefmt::now_unix(),
        )))
    });
    f(ctx, "lower", vec![S], None, |a| {
        Ok(Value::from(str_arg(&a, 0)?.to_lowercase()))
    });
    f(ctx, "upper", vec![S], None, |a| {
        Ok(Value::from(str_arg(&a, 0)?.to_uppercase()))
    });
    f(ctx, "title", vec![S], None, title);
    f(ctx, "strrev", vec![S], None, |a| {
        Ok(Value::from(
            str_arg(&a, 0)?.chars().rev().collect::<String>(),
        ))
    });
    f(ctx, "startswith", vec![S, S], None, |a| {
        Ok(Value::from(str_arg(&a, 0)?.starts_with(str_arg(&a, 1)?)))
    });
    f(ctx, "endswith", vec![S, S], None, |a| {
        Ok(Value::from(str_arg(&a, 0)?.ends_with(str_arg(&a, 1)?)))
    });
    f(ctx, "replace", vec![S, S, S], None, replace);
    f(ctx, "regex_replace", vec![S, S, S], None, regex_replace);
    f(ctx, "regex", vec![S, S], None, regex_fn);
    f(ctx, "regexall", vec![S, S], None, regexall);
    f(ctx, "trimspace", vec![S], None, |a| {
        Ok(Value::from(str_arg(&a, 0)?.trim()))
    });
    f(ctx, "trim", vec![S, S], None, |a| {
        let cut: Vec<char> = str_arg(&a, 1)?.chars().collect();
        Ok(Value::from(
            str_arg(&a, 0)?.trim_matches(|c| cut.contains(&c)),
        ))
    });
    f(ctx, "trimprefix", vec![S, S], None, |a| {
        let s = str_arg(&a, 0)?;
        Ok(Value::from(s.strip_prefix(str_arg(&a, 1)?).unwrap_or(s)))
    });
    f(ctx, "trimsuffix", vec![S, S], None, |a| {
        let s = str_arg(&a, 0)?;
        Ok(Value::from(s.strip_suffix(str_arg(&a, 1)?).unwrap_or(s)))
    });
    f(ctx, "chomp", vec![S], None, |a| {
        Ok(Value::from(str_arg(&a, 0)?.trim_end_matches(['\n', '\r'])))
    });
    f(ctx, "indent", vec![N, S], None, indent);
    f(ctx, "substr", vec![S, N, N], None, substr);
    f(ctx, "concat", vec![], Some(arr()), |a| {
        Ok(Value::Array(
            a.iter()
                .flat_map(|v| list(v).into_iter().flatten().cloned())
                .collect(),
        ))
    });
    f(ctx, "contains", vec![Any, Any], None, |a| {
        Ok(Value::from(list_arg(&a, 0)?.contains(&a[1])))
    });
    f(ctx, "length", vec![Any], None, length);
    f(ctx, "lookup", vec![Any, S], Some(Any), lookup);
    f(ctx, "merge", vec![], Some(Any), merge);
    f(ctx, "keys", vec![Any], None, |a| {
        Ok(Value::Array(
            map_arg(&a, 0)?
                .keys()
                .map(|k| Value::from(k.as_str()))
                .collect(),
        ))
    });
    f(ctx, "values", vec![Any], None, |a| {
        Ok(Value::Array(map_arg(&a, 0)?.values().cloned().collect()))
    });
    f(ctx, "element", vec![Any, N], None, element);
    f(ctx, "index", vec![Any, Any], None, |a| {
        let l = list_arg(&a, 0)?;
        l.iter()
            .position(|v| v == &a[1])
            .map(Value::from)
            .ok_or_else(|| "value not found in list".to_string())
    });
    f(ctx, "flatten", vec![Any], None, |a| {
        let mut out = Vec::new();
        flatten_into(list_arg(&a, 0)?, &mut out);
        Ok(Value::Array(out))
    });
    f(ctx, "distinct", vec![Any], None, |a| {
        Ok(Value::Array(distinct(list_arg(&a, 0)?.iter().cloned())))
    });
    f(ctx, "reverse", vec![Any], None, |a| {
        Ok(Value::Array(
            list_arg(&a, 0)?.iter().rev().cloned().collect(),
        ))
    });
    f(ctx, "sort", vec![Any], None, |a| {
        let mut v: Vec<String> = list_arg(&a, 0)?
            .iter()
            .map(to_str)
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(Value::Array(v.into_iter().map(Value::from).collect()))
    });
    f(ctx, "slice", vec![Any, N, N], None, slice);
    f(ctx, "coalesce", vec![], Some(Any), |a| {
        a.iter()
            .find(|v| !v.is_null() && v.as_str() != Some(""))
            .cloned()
            .ok_or_else(|| "no non-null, non-empty argument".to_string())
    });
    f(ctx, "coalescelist", vec![], Some(Any), |a| {
        a.iter()
            .find(|v| v.as_array().is_some_and(|l| !l.is_empty()))
            .cloned()
            .ok_or_else(|| "no non-empty list argument".to_string())
    });
    f(ctx, "compact", vec![Any], None, |a| {
        Ok(Value::Array(
            list_arg(&a, 0)?
                .iter()
                .filter(|v| !v.is_null() && v.as_str() != Some(""))
                .cloned()
                .collect(),
        ))
    });
    f(ctx, "min", vec![], Some(N), |a| minmax(&a, true));
    f(ctx, "max", vec![], Some(N), |a| minmax(&a, false));
    f(ctx, "abs", vec![N], None, |a| {
        Ok(num(num_arg(&a, 0)?.abs()))
    });
    f(ctx, "ceil", vec![N], None, |a| {
        Ok(num(num_arg(&a, 0)?.ceil()))
    });
    f(ctx, "floor", vec![N], None, |a| {
        Ok(num(num_arg(&a, 0)?.floor()))
    });
    f(ctx, "signum", vec![N], None, |a| {
        Ok(num(num_arg(&a, 0)?.signum()))
    });
    f(ctx, "pow", vec![N, N], None, |a| {
        Ok(num(num_arg(&a, 0)?.powf(num_arg(&a, 1)?)))
    });
    f(ctx, "parseint", vec![Any, N], None, parseint);
    f(ctx, "file", vec![S], None, |a| {
        read_file(str_arg(&a, 0)?).map(Value::from)
    });
    f(ctx, "fileexists", vec![S], None, |a| {
        Ok(Value::from(Path::new(str_arg(&a, 0)?).is_file()))
    });
    f(ctx, "templatefile", vec![S, Any], None, templatefile);
    f(ctx, "uuidv4", vec![], None, |_| Ok(Value::from(uuidv4())));
    f(ctx, "sha256", vec![S], None, |a| {
        Ok(Value::from(hex(&sha2::Sha256::digest(
            str_arg(&a, 0)?.as_bytes(),
        ))))
    });
    f(ctx, "sha512", vec![S], None, |a| {
        Ok(Value::from(hex(&sha2::Sha512::digest(
            str_arg(&a, 0)?.as_bytes(),
        ))))
    });
    f(ctx, "md5", vec![S], None, |a| {
        Ok(Value::from(hex(&md5::Md5::digest(
            str_arg(&a, 0)?.as_bytes(),
        ))))
    });
    f(ctx, "base64encode", vec![S], None, |a| {
        Ok(Value::from(
            base64::engine::general_purpose::STANDARD.encode(str_arg(&a, 0)?),
        ))
    });
    f(ctx, "base64decode", vec![S], None, |a| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(str_arg(&a, 0)?.trim())
            .map_err(|e| format!("invalid base64: {e}"))?;
        String::from_utf8(bytes)
            .map(Value::from)
            .map_err(|_| "decoded bytes are not UTF-8 text".to_string())
    });
    f(ctx, "jsonencode", vec![Any], None, |a| {
        serde_json::to_string(&a[0])
            .map(Value::from)
            .map_err(|e| e.to_string())
    });
    f(ctx, "jsondecode", vec![S], None, |a| {
        let v: serde_json::Value =
            serde_json::from_str(str_arg(&a, 0)?).map_err(|e| format!("invalid JSON: {e}"))?;
        hcl::to_value(v).map_err(|e| e.to_string())
    });
    f(ctx, "yamlencode", vec![Any], None, |a| {
        let mut out = String::new();
        yaml(&a[0], 0, &mut out);
        Ok(Value::from(out))
    });
    f(ctx, "tostring", vec![Any], None, |a| {
        if a[0].is_null() {
            Ok(Value::Null)
        } else {
            to_str(&a[0]).map(Value::from)
        }
    });
    f(ctx, "tonumber", vec![Any], None, |a| match &a[0] {
        Value::Null => Ok(Value::Null),
        Value::Number(_) => Ok(a[0].clone()),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map(num)
            .map_err(|_| format!("cannot convert {s:?} to a number")),
        v => Err(format!("cannot convert {} to a number", type_name(v))),
    });
    f(ctx, "tobool", vec![Any], None, |a| match &a[0] {
        Value::Null | Value::Bool(_) => Ok(a[0].clone()),
        Value::String(s) if s == "true" || s == "false" => Ok(Value::from(s == "true")),
        v => Err(format!("cannot convert {} to a bool", type_name(v))),
    });
    f(ctx, "tolist", vec![Any], None, |a| {
        list_arg(&a, 0).cloned().map(Value::Array)
    });
    f(ctx, "toset", vec![Any], None, |a| {
        Ok(Value::Array(distinct(list_arg(&a, 0)?.iter().cloned())))
    });
    f(ctx, "tomap", vec![Any], None, |a| {
        map_arg(&a, 0).cloned().map(Value::Object)
    });
    f(ctx, "range", vec![], Some(N), range);
    f(ctx, "zipmap", vec![Any, Any], None, |a| {
        let (k, v) = (list_arg(&a, 0)?, list_arg(&a, 1)?);
        if k.len() != v.len() {
            return Err(format!(
                "keys has {} elements but values has {}",
                k.len(),
                v.len()
            ));
        }
        let mut m = Map::new();
        for (k, v) in k.iter().zip(v) {
            m.insert(to_str(k)?, v.clone());
        }
        Ok(Value::Object(m))
    });
    f(ctx, "setunion", vec![], Some(Any), |a| {
        let all: Vec<Value> = a
            .iter()
            .map(list)
            .collect::<Option<Vec<_>>>()
            .ok_or("every argument must be a set or list")?
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        Ok(Value::Array(distinct(all.into_iter())))
    });
    f(ctx, "setintersection", vec![Any], Some(Any), |a| {
        let first = list_arg(&a, 0)?;
        let rest: Vec<&Vec<Value>> = a
            .iter()
            .skip(1)
            .map(list)
            .collect::<Option<_>>()
            .ok_or("every argument must be a set or list")?;
        Ok(Value::Array(distinct(
            first
                .iter()
                .filter(|v| rest.iter().all(|r| r.contains(v)))
                .cloned(),
        )))
    });
    f(ctx, "env", vec![S], None, |a| {
        Ok(Value::from(
            std::env::var(str_arg(&a, 0)?).unwrap_or_default(),
        ))
    });
    out
}

fn str_arg(a: &FuncArgs, i: usize) -> Result<&str, String> {
    a.get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("argument {} must be a string", i + 1))
}
/// A whole-number argument: HCL numbers are floats, and a fraction or a value past ±9e15 is an
/// error rather than a silently truncated index or count.
fn int_arg(a: &FuncArgs, i: usize) -> Result<i64, String> {
    let f = num_arg(a, i)?;
    if f.fract() != 0.0 || f.abs() > 9.0e15 {
        return Err(format!(
            "argument {} must be a whole number, got {f}",
            i + 1
        ));
    }
    #[allow(clippy::cast_possible_truncation)] // integral and within ±9e15: exact
    Ok(f as i64)
}

/// A whole-number argument that indexes or counts (not negative).
fn index_arg(a: &FuncArgs, i: usize) -> Result<usize, String> {
    usize::try_from(int_arg(a, i)?).map_err(|_| format!("argument {} must not be negative", i + 1))
}

fn num_arg(a: &FuncArgs, i: usize) -> Result<f64, String> {
    a.get(i)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("argument {} must be a number", i + 1))
}
fn list(v: &Value) -> Option<&Vec<Value>> {
    v.as_array()
}
fn list_arg(a: &FuncArgs, i: usize) -> Result<&Vec<Value>, String> {
    a.get(i).and_then(list).ok_or_else(|| {
        format!(
            "argument {} must be a list, got {}",
            i + 1,
            a.get(i).map_or("nothing", type_name)
        )
    })
}
fn map_arg(a: &FuncArgs, i: usize) -> Result<&Map<String, Value>, String> {
    a.get(i).and_then(Value::as_object).ok_or_else(|| {
        format!(
            "argument {} must be a map or object, got {}",
            i + 1,
            a.get(i).map_or("nothing", type_name)
        )
    })
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// A number value, integral when it can be.
pub fn num(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)] // integral and within ±9e15: exact
        Value::from(f as i64)
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// A primitive as a string, as HCL converts it.
pub fn to_str(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot convert {} to a string", type_name(other))),
    }
}

fn abspath(a: FuncArgs) -> R {
    let p = Path::new(str_arg(&a, 0)?);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(p)
    };
    Ok(Value::from(
        clean_path(&full).to_string_lossy().into_owned(),
    ))
}

/// Removes `.` and resolves `..` lexically, as Go's filepath.Clean.
pub fn clean_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn path_part(a: &FuncArgs, base: bool) -> R {
    let s = str_arg(a, 0)?;
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(Value::from(if s.is_empty() { "." } else { "/" }));
    }
    Ok(Value::from(match (base, trimmed.rfind('/')) {
        (true, Some(i)) => trimmed[i + 1..].to_string(),
        (true, None) => trimmed.to_string(),
        (false, Some(0)) => "/".to_string(),
        (false, Some(i)) => trimmed[..i].to_string(),
        (false, None) => ".".to_string(),
    }))
}

fn pathexpand(a: FuncArgs) -> R {
    let s = str_arg(&a, 0)?;
    let home = std::env::var("HOME").unwrap_or_default();
    Ok(Value::from(match s.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{home}{rest}"),
        _ => s.to_string(),
    }))
}

fn join(a: FuncArgs) -> R {
    let sep = str_arg(&a, 0)?;
    let mut parts = Vec::new();
    for l in a.iter().skip(1) {
        for v in list(l).ok_or("join takes lists after the separator")? {
            parts.push(to_str(v)?);
        }
    }
    Ok(Value::from(parts.join(sep)))
}

fn split(a: FuncArgs) -> R {
    let (sep, s) = (str_arg(&a, 0)?, str_arg(&a, 1)?);
    if s.is_empty() {
        return Ok(Value::Array(vec![Value::from("")]));
    }
    Ok(Value::Array(s.split(sep).map(Value::from).collect()))
}

/// Go/Terraform-style format: %s %d %f %.Nf %q %v %t %x %%, with widths.
fn format_values(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut next = 0;
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&d) = it.peek() {
            if d.is_ascii_digit() || d == '.' || d == '-' || d == '+' || d == '#' || d == ' ' {
                flags.push(d);
                it.next();
            } else {
                break;
            }
        }
        let verb = it.next().ok_or("format string ends with a lone %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = args
            .get(next)
            .ok_or_else(|| format!("not enough arguments for format string {fmt:?}"))?;
        next += 1;
        let (width, prec) = match flags
            .trim_start_matches(['-', '+', '#', ' '])
            .split_once('.')
        {
            Some((w, p)) => (w.parse::<usize>().ok(), p.parse::<usize>().ok()),
            None => (
                flags
                    .trim_start_matches(['-', '+', '#', ' '])
                    .parse::<usize>()
                    .ok(),
                None,
            ),
        };
        let s = match verb {
            's' | 'v' => match arg {
                Value::Array(_) | Value::Object(_) => {
                    serde_json::to_string(arg).map_err(|e| e.to_string())?
                }
                other => to_str(other)?,
            },
            'q' => serde_json::to_string(&to_str(arg)?).map_err(|e| e.to_string())?,
            'd' => {
                let n = arg
                    .as_f64()
                    .or_else(|| arg.as_str().and_then(|s| s.parse().ok()))
                    .ok_or("%d needs a number")?;
                // Go's %d of a float is the integer part; no digits beyond f64's own.
                format!("{:.0}", n.trunc())
            }
            'f' | 'g' | 'e' => {
                let n = arg
                    .as_f64()
                    .or_else(|| arg.as_str().and_then(|s| s.parse().ok()))
                    .ok_or("%f needs a number")?;
                format!("{:.*}", prec.unwrap_or(6), n)
            }
            't' => arg.as_bool().ok_or("%t needs a bool")?.to_string(),
            'x' => match arg {
                Value::Number(n) => format!("{:x}", n.as_i64().unwrap_or(0)),
                other => to_str(other)?.bytes().map(|b| format!("{b:02x}")).collect(),
            },
            other => return Err(format!("unsupported format verb %{other}")),
        };
        match width {
            Some(w) if flags.starts_with('-') => out.push_str(&format!("{s:<w$}")),
            Some(w) if flags.starts_with('0') && verb == 'd' => out.push_str(&format!("{s:0>w$}")),
            Some(w) => out.push_str(&format!("{s:>w$}")),
            None => out.push_str(&s),
        }
    }
    Ok(out)
}

fn format_fn(a: FuncArgs) -> R {
    format_values(str_arg(&a, 0)?, &a[1..]).map(Value::from)
}

fn formatlist(a: FuncArgs) -> R {
    let fmt = str_arg(&a, 0)?;
    let n = a[1..]
        .iter()
        .filter_map(list)
        .map(Vec::len)
        .max()
        .unwrap_or(1);
    let mut out = Vec::new();
    for i in 0..n {
        let row: Vec<Value> = a[1..]
            .iter()
            .map(|v| match list(v) {
                Some(l) => l
                    .get(i)
                    .cloned()
                    .ok_or_else(|| "formatlist: all lists must have the same length".to_string()),
                None => Ok(v.clone()),
            })
            .collect::<Result<_, _>>()?;
        out.push(Value::from(format_values(fmt, &row)?));
    }
    Ok(Value::Array(out))
}

fn formatdate(a: FuncArgs) -> R {
    let ts = str_arg(&a, 1)?;
    let secs = crate::timefmt::parse_rfc3339(ts).ok_or_else(|| {
        format!("{ts:?} is not an RFC 3339 timestamp (e.g. 2024-01-02T15:04:05Z)")
    })?;
    crate::timefmt::format_spec(str_arg(&a, 0)?, secs).map(Value::from)
}

fn title(a: FuncArgs) -> R {
    let mut out = String::new();
    let mut start = true;
    for c in str_arg(&a, 0)?.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    Ok(Value::from(out))
}

fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

fn replace(a: FuncArgs) -> R {
    let (s, sub, rep) = (str_arg(&a, 0)?, str_arg(&a, 1)?, str_arg(&a, 2)?);
    if sub.len() > 1 && sub.starts_with('/') && sub.ends_with('/') {
        let re = compile(&sub[1..sub.len() - 1])?;
        return Ok(Value::from(re.replace_all(s, rep).into_owned()));
    }
    Ok(Value::from(s.replace(sub, rep)))
}

fn regex_replace(a: FuncArgs) -> R {
    let re = compile(str_arg(&a, 1)?)?;
    Ok(Value::from(
        re.replace_all(str_arg(&a, 0)?, str_arg(&a, 2)?)
            .into_owned(),
    ))
}

fn captures_value(re: &regex::Regex, caps: &regex::Captures<'_>) -> Value {
    if re.captures_len() == 1 {
        return Value::from(caps.get(0).map_or("", |m| m.as_str()));
    }
    if re.capture_names().flatten().next().is_some() {
        let mut m = Map::new();
        for name in re.capture_names().flatten() {
            m.insert(
                name.to_string(),
                caps.name(name)
                    .map_or(Value::Null, |c| Value::from(c.as_str())),
            );
        }
        return Value::Object(m);
    }
    Value::Array(
        (1..re.captures_len())
            .map(|i| caps.get(i).map_or(Value::Null, |c| Value::from(c.as_str())))
            .collect(),
    )
}

fn regex_fn(a: FuncArgs) -> R {
    let re = compile(str_arg(&a, 0)?)?;
    let caps = re
        .captures(str_arg(&a, 1)?)
        .ok_or("pattern did not match any part of the string")?;
    Ok(captures_value(&re, &caps))
}

fn regexall(a: FuncArgs) -> R {
    let re = compile(str_arg(&a, 0)?)?;
    Ok(Value::Array(
        re.captures_iter(str_arg(&a, 1)?)
            .map(|c| captures_value(&re, &c))
            .collect(),
    ))
}

fn indent(a: FuncArgs) -> R {
    let n = int_arg(&a, 0)?.clamp(0, 1 << 16);
    let pad = " ".repeat(usize::try_from(n).unwrap_or(0));
    let s = str_arg(&a, 1)?;
    Ok(Value::from(
        s.lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    l.to_string()
                } else {
                    format!("{pad}{l}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + if s.ends_with('\n') { "\n" } else { "" },
    ))
}

fn substr(a: FuncArgs) -> R {
    let chars: Vec<char> = str_arg(&a, 0)?.chars().collect();
    let len = i64::try_from(chars.len()).unwrap_or(i64::MAX);
    let mut off = int_arg(&a, 1)?;
    if off < 0 {
        off += len;
    }
    let off = usize::try_from(off.clamp(0, len)).unwrap_or(0);
    let end = match usize::try_from(int_arg(&a, 2)?) {
        Err(_) => chars.len(), // a negative length: to the end
        Ok(n) => off.saturating_add(n).min(chars.len()),
    };
    Ok(Value::from(chars[off..end].iter().collect::<String>()))
}

fn length(a: FuncArgs) -> R {
    Ok(Value::from(match &a[0] {
        Value::String(s) => s.chars().count(),
        Value::Array(l) => l.len(),
        Value::Object(m) => m.len(),
        other => return Err(format!("length of a {} is not defined", type_name(other))),
    }))
}

fn lookup(a: FuncArgs) -> R {
    let m = map_arg(&a, 0)?;
    let k = str_arg(&a, 1)?;
    match (m.get(k), a.get(2)) {
        (Some(v), _) => Ok(v.clone()),
        (None, Some(d)) => Ok(d.clone()),
        (None, None) => Err(format!("the map has no key {k:?} and no default was given")),
    }
}

fn merge(a: FuncArgs) -> R {
    let mut m = Map::new();
    for v in a.iter() {
        match v {
            Value::Null => {}
            Value::Object(o) => m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone()))),
            other => {
                return Err(format!(
                    "merge takes maps or objects, got {}",
                    type_name(other)
                ))
            }
        }
    }
    Ok(Value::Object(m))
}

fn element(a: FuncArgs) -> R {
    let l = list_arg(&a, 0)?;
    if l.is_empty() {
        return Err("cannot use element on an empty list".into());
    }
    let i = index_arg(&a, 1).map_err(|_| "element index must be a whole number, not negative")?;
    Ok(l[i % l.len()].clone())
}

fn flatten_into(l: &[Value], out: &mut Vec<Value>) {
    for v in l {
        match v {
            Value::Array(inner) => flatten_into(inner, out),
            other => out.push(other.clone()),
        }
    }
}

fn distinct(it: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in it {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn slice(a: FuncArgs) -> R {
    let l = list_arg(&a, 0)?;
    let (s, e) = (index_arg(&a, 1)?, index_arg(&a, 2)?);
    if s > e || e > l.len() {
        return Err(format!(
            "slice indexes {s}..{e} are out of range for a list of {} elements",
            l.len()
        ));
    }
    Ok(Value::Array(l[s..e].to_vec()))
}

fn minmax(a: &FuncArgs, min: bool) -> R {
    let nums: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
    if nums.is_empty() {
        return Err("needs at least one number".into());
    }
    let r = nums.iter().copied().fold(
        if min {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        },
        if min { f64::min } else { f64::max },
    );
    Ok(num(r))
}

fn parseint(a: FuncArgs) -> R {
    let base = int_arg(&a, 1)?;
    let Some(base) = u32::try_from(base).ok().filter(|b| (2..=36).contains(b)) else {
        return Err("base must be between 2 and 36".into());
    };
    let s = to_str(&a[0])?;
    i64::from_str_radix(&s, base)
        .map(Value::from)
        .map_err(|_| format!("cannot parse {s:?} as a base-{base} integer"))
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read file {path:?}: {e}"))
}

fn templatefile(a: FuncArgs) -> R {
    let path = str_arg(&a, 0)?;
    let vars = map_arg(&a, 1)?;
    let text = read_file(path)?;
    let tpl: hcl::Template = text
        .parse()
        .map_err(|e| format!("template {path:?} does not parse: {e}"))?;
    let mut ctx = Context::new();
    register(&mut ctx, false);
    for (k, v) in vars {
        ctx.declare_var(k.as_str(), v.clone());
    }
    tpl.evaluate(&ctx)
        .map(Value::from)
        .map_err(|e| format!("in template {path:?}: {e}"))
}

fn range(a: FuncArgs) -> R {
    let n: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
    let (start, end, step) = match n.as_slice() {
        [e] => (0.0, *e, 1.0),
        [s, e] => (*s, *e, if s <= e { 1.0 } else { -1.0 }),
        [s, e, st] => (*s, *e, *st),
        _ => return Err("range takes one to three numbers".into()),
    };
    if step == 0.0 || (end - start) / step > 1_000_000.0 {
        return Err(
            "range step must not be zero and the range must have at most 1000000 elements".into(),
        );
    }
    let mut out = Vec::new();
    let mut x = start;
    while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
        out.push(num(x));
        x += step;
    }
    Ok(Value::Array(out))
}

pub fn uuidv4() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if ok.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                out.push_str(&format!("{pad}{}:", yaml_scalar(&Value::from(k.as_str()))));
                match val {
                    Value::Object(o) if !o.is_empty() => {
                        out.push('\n');
                        yaml(val, indent + 1, out);
                    }
                    Value::Array(l) if !l.is_empty() => {
                        out.push('\n');
                        yaml(val, indent, out);
                    }
                    _ => out.push_str(&format!(" {}\n", yaml_scalar(val))),
                }
            }
        }
        Value::Array(l) if !l.is_empty() => {
            for item in l {
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        let mut inner = String::new();
                        yaml(item, indent + 1, &mut inner);
                        let inner = inner.trim_start().to_string();
                        out.push_str(&format!("{pad}- {inner}"));
                    }
                    Value::Array(il) if !il.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        yaml(item, indent + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", yaml_scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", yaml_scalar(other))),
    }
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars().all(|c| c.is_alphanumeric() || "-_./".contains(c))
                && !matches!(
                    s.as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                )
                && s.parse::<f64>().is_err();
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> Result<Value, String> {
        let mut ctx = Context::new();
        register(&mut ctx, true);
        let e: hcl::Expression = expr.parse().map_err(|e: hcl::Error| e.to_string())?;
        e.evaluate(&ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn string_functions_behave_as_packer() {
        assert_eq!(
            eval(r#"format("%s-%03d", "web", 7)"#),
            Ok(Value::from("web-007"))
        );
        assert_eq!(
            eval(r#"join(",", ["a", "b"], ["c"])"#),
            Ok(Value::from("a,b,c"))
        );
        assert_eq!(
            eval(r#"replace("a-b-c", "/-/", "_")"#),
            Ok(Value::from("a_b_c"))
        );
        assert_eq!(
            eval(r#"regex_replace("abc123", "[0-9]+", "X")"#),
            Ok(Value::from("abcX"))
        );
        assert_eq!(
            eval(r#"title("hello world")"#),
            Ok(Value::from("Hello World"))
        );
        assert_eq!(eval(r#"substr("hello", 1, 3)"#), Ok(Value::from("ell")));
        assert_eq!(eval(r#"trimsuffix("a.iso", ".iso")"#), Ok(Value::from("a")));
        assert_eq!(
            eval(r#"basename("/a/b/c.qcow2")"#),
            Ok(Value::from("c.qcow2"))
        );
        assert_eq!(eval(r#"dirname("/a/b/c.qcow2")"#), Ok(Value::from("/a/b")));
        assert_eq!(
            eval(r#"sha256("kiln")"#).map(|v| v.as_str().map(str::len)),
            Ok(Some(64))
        );
        assert_eq!(
            eval(r#"base64decode(base64encode("x y"))"#),
            Ok(Value::from("x y"))
        );
    }

    #[test]
    fn collection_functions_behave_as_packer() {
        assert_eq!(
            eval(r#"length(concat(["a"], ["b", "c"]))"#),
            Ok(Value::from(3))
        );
        assert_eq!(eval(r#"lookup({a = 1}, "b", 2)"#), Ok(Value::from(2)));
        assert_eq!(
            eval(r#"keys(merge({a = 1}, {b = 2}))"#),
            Ok(Value::from_iter(["a", "b"]))
        );
        assert_eq!(
            eval(r#"flatten([[1], [2, [3]]])"#),
            Ok(Value::from_iter([1, 2, 3]))
        );
        assert_eq!(eval(r#"distinct([1, 1, 2])"#), Ok(Value::from_iter([1, 2])));
        assert_eq!(eval(r#"range(3)"#), Ok(Value::from_iter([0, 1, 2])));
        assert_eq!(eval(r#"element(["a", "b"], 3)"#), Ok(Value::from("b")));
        assert_eq!(eval(r#"max(1, 5, 3)"#), Ok(Value::from(5)));
        assert_eq!(
            eval(r#"jsondecode(jsonencode({a = [1]}))["a"][0]"#),
            Ok(Value::from(1))
        );
        assert_eq!(
            eval(r#"yamlencode({a = "b", l = [1, 2]})"#),
            Ok(Value::from("a: b\nl:\n- 1\n- 2\n"))
        );
        assert!(eval(r#"lookup({a = 1}, "b")"#).is_err());
    }

    #[test]
    fn unknown_function_is_named() {
        let err = eval("nosuchfn(1)").err().unwrap_or_default();
        assert!(err.contains("nosuchfn"), "{err}");
    }
}
