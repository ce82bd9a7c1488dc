//! The `{{ }}` interpolation of Packer's legacy JSON templates: `{{user `x`}}`, `{{env `X`}}`,
//! `{{timestamp}}`, `{{isotime "layout"}}`, `{{uuid}}`, `{{template_dir}}`, `{{pwd}}`,
//! `{{build_name}}`, `{{build_type}}` and a few string helpers. Placeholders that start with a dot
//! (`{{ .HTTPIP }}`, `{{ .Vars }}`) belong to the builder at run time and are kept verbatim.

use std::collections::HashMap;

pub struct GoCtx<'a> {
    pub user: &'a HashMap<String, String>,
    /// Whether `env` may be called (only in the variables section, as in Packer).
    pub env_allowed: bool,
    pub template_dir: String,
    pub build_name: Option<String>,
    pub build_type: Option<String>,
    /// One timestamp per run, so every `{{timestamp}}` in a template agrees.
    pub now: i64,
}

pub const FUNCS: &[&str] = &[
    "user",
    "env",
    "timestamp",
    "isotime",
    "uuid",
    "template_dir",
    "pwd",
    "build_name",
    "build_type",
    "upper",
    "lower",
    "replace",
    "replace_all",
    "split",
    "clean_resource_name",
    "packer_version",
];

/// Renders every `{{ }}` action in `s`.
pub fn render(s: &str, cx: &GoCtx<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed `{{`: add the matching `}}`".to_string())?;
        let inner = &after[..end];
        let action = inner
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        if action.starts_with('.') || action.is_empty() {
            out.push_str(&rest[start..start + 2 + end + 2]);
        } else {
            out.push_str(&action_value(action, cx)?);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A token of an action: a quoted string, a bare word, `(`, `)` or `|`.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Word(String),
    Open,
    Close,
    Pipe,
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' => {
                chars.next();
            }
            '(' | ')' | '|' => {
                chars.next();
                out.push(match c {
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    _ => Tok::Pipe,
                });
            }
            '`' => {
                chars.next();
                let mut a = String::new();
                loop {
                    match chars.next() {
                        Some('`') => break,
                        Some(ch) => a.push(ch),
                        None => return Err("unterminated `...` argument".into()),
                    }
                }
                out.push(Tok::Str(a));
            }
            '"' => {
                chars.next();
                let mut a = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => {
                            if let Some(n) = chars.next() {
                                a.push(match n {
                                    'n' => '\n',
                                    't' => '\t',
                                    o => o,
                                });
                            }
                        }
                        Some('"') => break,
                        Some(ch) => a.push(ch),
                        None => return Err("unterminated \"...\" argument".into()),
                    }
                }
                out.push(Tok::Str(a));
            }
            _ => {
                let mut a = String::new();
                while let Some(&ch) = chars.peek() {
                    if " \t\n()|`\"".contains(ch) {
                        break;
                    }
                    a.push(ch);
                    chars.next();
                }
                out.push(Tok::Word(a));
            }
        }
    }
    Ok(out)
}

/// Evaluates Go template pipelines as Packer's legacy templates use them: `fn arg …`,
/// `(fn arg)` as an argument, and `a | fn x` (a's value becomes fn's last argument). A bare
/// function name as an argument is a call (`split build_name "-" 1`); a number is itself.
struct Eval<'a, 'c> {
    toks: &'a [Tok],
    at: usize,
    /// Nesting of `(`: bounded, so a hostile template cannot overflow the stack.
    depth: usize,
    cx: &'a GoCtx<'c>,
    action: &'a str,
}

impl Eval<'_, '_> {
    fn pipeline(&mut self) -> Result<String, String> {
        self.depth += 1;
        if self.depth > 32 {
            return Err(format!(
                "`{{{{{}}}}}` nests more than 32 levels of `(`",
                self.action
            ));
        }
        let mut value = self.command(None)?;
        while self.toks.get(self.at) == Some(&Tok::Pipe) {
            self.at += 1;
            value = self.command(Some(value))?;
        }
        self.depth -= 1;
        Ok(value)
    }

    fn command(&mut self, piped: Option<String>) -> Result<String, String> {
        let name = match self.toks.get(self.at) {
            Some(Tok::Word(w)) => w.clone(),
            Some(Tok::Open) if piped.is_none() => {
                // A parenthesised pipeline standing alone.
                self.at += 1;
                let v = self.pipeline()?;
                self.expect_close()?;
                return Ok(v);
            }
            Some(Tok::Str(s)) if piped.is_none() => {
                self.at += 1;
                return Ok(s.clone());
            }
            _ => {
                return Err(format!(
                    "expected a function name in `{{{{{}}}}}`",
                    self.action
                ))
            }
        };
        self.at += 1;
        let mut args = Vec::new();
        while let Some(t) = self.toks.get(self.at) {
            match t {
                Tok::Pipe | Tok::Close => break,
                Tok::Str(s) => {
                    args.push(s.clone());
                    self.at += 1;
                }
                Tok::Word(w) => {
                    self.at += 1;
                    if w.chars()
                        .all(|c| c.is_ascii_digit() || c == '-' || c == '.')
                    {
                        args.push(w.clone());
                    } else {
                        args.push(call(w, &[], self.cx, self.action)?);
                    }
                }
                Tok::Open => {
                    self.at += 1;
                    let v = self.pipeline()?;
                    self.expect_close()?;
                    args.push(v);
                }
            }
        }
        if let Some(p) = piped {
            args.push(p);
        }
        call(&name, &args, self.cx, self.action)
    }

    fn expect_close(&mut self) -> Result<(), String> {
        if self.toks.get(self.at) == Some(&Tok::Close) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("unclosed `(` in `{{{{{}}}}}`", self.action))
        }
    }
}

fn action_value(action: &str, cx: &GoCtx<'_>) -> Result<String, String> {
    let toks = tokens(action)?;
    let mut e = Eval {
        toks: &toks,
        at: 0,
        depth: 0,
        cx,
        action,
    };
    let v = e.pipeline()?;
    if e.at != toks.len() {
        return Err(format!(
            "unexpected `{:?}` in `{{{{{action}}}}}`",
            toks[e.at]
        ));
    }
    Ok(v)
}

/// One function call with evaluated arguments.
fn call(name: &str, rest: &[String], cx: &GoCtx<'_>, action: &str) -> Result<String, String> {
    let one = |what: &str| -> Result<&String, String> {
        rest.first()
            .ok_or_else(|| format!("`{name}` needs {what}, e.g. {{{{{name} `{what}`}}}}"))
    };
    Ok(match name {
        "user" => {
            let k = one("name")?;
            cx.user
                .get(k)
                .cloned()
                .ok_or_else(|| format!("user variable {k:?} is not declared in \"variables\""))?
        }
        "env" => {
            if !cx.env_allowed {
                return Err("`env` can only be used in the \"variables\" section (as in Packer): declare a variable with default \"{{env `NAME`}}\" and use {{user `name`}}".into());
            }
            std::env::var(one("NAME")?).unwrap_or_default()
        }
        "timestamp" => cx.now.to_string(),
        "isotime" => match rest.first() {
            Some(layout) => crate::timefmt::go_layout(layout, cx.now),
            None => crate::timefmt::rfc3339(cx.now),
        },
        "uuid" => crate::funcs::uuidv4(),
        "template_dir" => cx.template_dir.clone(),
        "pwd" => std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        "build_name" => cx
            .build_name
            .clone()
            .ok_or("`build_name` is only known inside a builder, provisioner or post-processor")?,
        "build_type" => cx
            .build_type
            .clone()
            .ok_or("`build_type` is only known inside a builder, provisioner or post-processor")?,
        "packer_version" => crate::PACKER_COMPAT_VERSION.to_string(),
        "upper" => one("text")?.to_uppercase(),
        "lower" => one("text")?.to_lowercase(),
        "replace" | "replace_all" => match rest {
            [old, new, src] => src.replace(old.as_str(), new),
            [old, new, n, src] if name == "replace" => {
                src.replacen(old.as_str(), new, n.parse().unwrap_or(usize::MAX))
            }
            _ => return Err(format!("`{name}` takes old, new and the text")),
        },
        "split" => match rest {
            [src, sep, idx] => {
                let i: usize = idx.parse().map_err(|_| "split's index must be a number")?;
                src.split(sep.as_str()).nth(i).unwrap_or("").to_string()
            }
            _ => return Err("`split` takes the text, a separator and an index".into()),
        },
        "clean_resource_name" => one("text")?
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect(),
        other => {
            let hint = crate::diag::did_you_mean(other, FUNCS.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown function `{other}` in `{{{{{action}}}}}`{hint}"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_user_and_keeps_runtime_placeholders() {
        let user: HashMap<String, String> = [("mem".to_string(), "512".to_string())].into();
        let cx = GoCtx {
            user: &user,
            env_allowed: false,
            template_dir: "/t".into(),
            build_name: Some("tiny".into()),
            build_type: Some("qemu".into()),
            now: 0,
        };
        assert_eq!(
            render(
                "m={{user `mem`}} ip={{ .HTTPIP }}:{{.HTTPPort}} {{build_name}}",
                &cx
            )
            .as_deref(),
            Ok("m=512 ip={{ .HTTPIP }}:{{.HTTPPort}} tiny")
        );
        assert_eq!(render("{{isotime \"2006\"}}", &cx).as_deref(), Ok("1970"));
        assert!(render("{{user `nope`}}", &cx).is_err());
        assert!(render("{{env `HOME`}}", &cx).is_err());
        assert!(render("{{ usr `x` }}", &cx)
            .err()
            .unwrap_or_default()
            .contains("did you mean `user`"));
        assert!(render("{{user `mem`", &cx).is_err());
    }

    #[test]
    fn pipelines_and_parenthesised_calls_evaluate_as_go_templates_do() {
        let user: HashMap<String, String> = [("v".to_string(), "abc".to_string())].into();
        let cx = GoCtx {
            user: &user,
            env_allowed: false,
            template_dir: "/t".into(),
            build_name: Some("web-server".into()),
            build_type: Some("qemu".into()),
            now: 0,
        };
        let r = |s: &str| render(s, &cx);
        assert_eq!(r("{{ user `v` | upper }}").as_deref(), Ok("ABC"));
        assert_eq!(
            r("{{ upper (user `v`) }}").as_deref(),
            Ok("ABC"),
            "it used to render `(USER`"
        );
        assert_eq!(r("{{split build_name \"-\" 1}}").as_deref(), Ok("server"));
        assert_eq!(
            r("{{ build_name | upper | lower }}").as_deref(),
            Ok("web-server")
        );
        assert_eq!(
            r("{{ replace \"-\" \"_\" 1 (build_name) }}").as_deref(),
            Ok("web_server")
        );
        assert!(r("{{ upper (user `v` }}")
            .err()
            .unwrap_or_default()
            .contains("unclosed `(`"));
        let deep = format!(
            "{{{{ {}user `v`{} }}}}",
            "upper (".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(r(&deep)
            .err()
            .unwrap_or_default()
            .contains("nests more than 32"));
        assert!(r("{{ upper (nosuch) }}")
            .err()
            .unwrap_or_default()
            .contains("unknown function `nosuch`"));
    }
}
