//! Packer-compatible templates turned into a [`Plan`]: HCL2 (a `.pkr.hcl` file or a directory of
//! them) and Packer's legacy JSON. Everything is evaluated here; nothing after the Plan knows
//! about template syntax. Not for: running anything — the engine in `kiln-core` does that.
//!
//! Errors come back as [`Diagnostics`]: every problem found, each with file:line:column.

pub mod diag;
mod eval;
pub mod fmt;
pub mod funcs;
mod gotmpl;
mod hcl2;
mod jsonspan;
mod legacy;
pub mod plan;
pub mod timefmt;
mod types;
mod version;

pub use diag::{did_you_mean, Diagnostic, Diagnostics, Severity, Span};
pub use plan::{redact, Attr, BuildPlan, Component, Plan, Step, StepCommon, TemplateFile, VarInfo};

use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// The Packer version whose templates kiln reads (for `required_version` and `packer.version`).
pub const PACKER_COMPAT_VERSION: &str = "1.11.2";

/// Whether `text` parses as HCL (for `kiln fmt`, which must not rewrite what it cannot read).
pub fn parse_check(text: &str) -> Result<(), String> {
    hcl::edit::parser::parse_body(text)
        .map(|_| ())
        .map_err(|e| {
            let l = e.location();
            format!(
                "syntax error at {}:{}: {}",
                l.line(),
                l.column(),
                e.message()
            )
        })
}

/// Templates larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What the command line adds to a template.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-var name=value`, in the order given.
    pub vars: Vec<(String, String)>,
    /// `-var-file`, in the order given.
    pub var_files: Vec<PathBuf>,
    /// The environment (for `PKR_VAR_*` / `KILN_VAR_*`).
    pub env: Vec<(String, String)>,
    pub only: Vec<String>,
    pub except: Vec<String>,
    /// Parse only; evaluate nothing.
    pub syntax_only: bool,
    /// The Packer plugins kiln has built in (read from its component tables): what
    /// `required_plugins` may name. `None`: not checked (a caller without the tables).
    pub plugins: Option<Vec<String>>,
    /// The data sources kiln has built in (`data "KIND" "NAME" { }`); empty: none.
    pub data_sources: &'static [DataSourceRow],
}

/// A data source kiln has built in. `data "NAME" "x" { ... }` has its attributes evaluated (they
/// may use variables, locals and other data sources) and `eval` called with them before any source
/// or build is read; the object it returns is `data.NAME.x` in every expression.
#[derive(Debug)]
pub struct DataSourceRow {
    pub name: &'static str,
    pub summary: &'static str,
    /// The options it takes; others are refused with "did you mean".
    pub options: &'static [&'static str],
    /// The attributes' values (as JSON) to the result object, or what went wrong.
    pub eval: fn(
        &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<serde_json::Value, String>,
}

/// Loads and evaluates the template at `path`. Returns the plan (None when there are errors) and
/// every diagnostic, warnings included.
pub fn load(path: &Path, opts: &LoadOptions) -> (Option<Plan>, Diagnostics) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let d = Diagnostic::error(
                format!("cannot read template {}: {}", path.display(), io_reason(&e)),
                None,
            )
            .with_hint(
                "pass a .pkr.hcl file, a legacy .json template, or a directory of .pkr.hcl files",
            );
            return (None, Diagnostics(vec![d]));
        }
    };
    if meta.is_dir() {
        return load_dir(path, opts);
    }
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".pkr.json") {
        let d = Diagnostic::error(
            format!(
                "{}: HCL2 in JSON syntax (.pkr.json) is not supported yet",
                path.display()
            ),
            None,
        )
        .with_hint("write the template as .pkr.hcl, or as a legacy Packer .json template");
        return (None, Diagnostics(vec![d]));
    }
    if name.ends_with(".json") {
        return legacy::load(path, opts, root);
    }
    let mut loader = hcl2::Loader::new(opts, root);
    loader.add_file(path);
    loader.run(&opts.var_files)
}

fn load_dir(dir: &Path, opts: &LoadOptions) -> (Option<Plan>, Diagnostics) {
    let mut files = Vec::new();
    let mut auto_vars = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let p = e.path();
                // Symlinked files count as files (real templates link shared files in).
                if !p.is_file() {
                    continue;
                }
                if name.ends_with(".pkr.hcl") {
                    files.push(p);
                } else if name.ends_with(".auto.pkrvars.hcl")
                    || name.ends_with(".auto.pkrvars.json")
                {
                    auto_vars.push(p);
                }
            }
        }
        Err(e) => {
            return (
                None,
                Diagnostics(vec![Diagnostic::error(
                    format!("cannot read directory {}: {}", dir.display(), io_reason(&e)),
                    None,
                )]),
            );
        }
    }
    files.sort();
    auto_vars.sort();
    if files.is_empty() {
        let d = Diagnostic::error(format!("{} has no *.pkr.hcl files", dir.display()), None)
            .with_hint(
                "a directory template is every *.pkr.hcl file in it; name your files accordingly",
            );
        return (None, Diagnostics(vec![d]));
    }
    let mut loader = hcl2::Loader::new(opts, dir.to_path_buf());
    for f in &files {
        loader.add_file(f);
    }
    let mut var_files = auto_vars;
    var_files.extend(opts.var_files.iter().cloned());
    loader.run(&var_files)
}

pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Reads a template or variables file as UTF-8 text, refusing binary and huge files.
pub(crate) fn read_text(path: &Path) -> Result<String, Diagnostic> {
    let fail = |m: String| Diagnostic::error(m, Some(Span::file_only(path)));
    let meta =
        std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {}", io_reason(&e))))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "file is {} bytes; templates larger than 16 MiB are refused",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {}", io_reason(&e))))?;
    if bytes.contains(&0) {
        return Err(fail(
            "file contains NUL bytes: it is binary, not a template".into(),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// For fuzz/: renders `s` with the legacy `{{ }}` engine, with one user variable.
#[doc(hidden)]
pub fn fuzz_gotmpl(s: &str) -> Result<String, String> {
    let user = std::collections::HashMap::from([("x".to_string(), "v".to_string())]);
    gotmpl::render(
        s,
        &gotmpl::GoCtx {
            user: &user,
            env_allowed: false,
            template_dir: ".".into(),
            build_name: Some("b".into()),
            build_type: Some("qemu".into()),
            now: 0,
        },
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    funcs::hex(&sha2::Sha256::digest(bytes))
}

/// Glob match with `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether a build passes `-only` / `-except`. Patterns match `TYPE.NAME`, or
/// `BUILD.TYPE.NAME` when the build block has a name, as Packer matches them.
pub fn selected(
    only: &[String],
    except: &[String],
    full_name: &str,
    build_name: Option<&str>,
) -> bool {
    let names: Vec<String> = std::iter::once(full_name.to_string())
        .chain(build_name.map(|b| format!("{b}.{full_name}")))
        .collect();
    let hit = |pats: &[String]| {
        pats.iter().any(|p| {
            let p = p.strip_prefix("source.").unwrap_or(p);
            names.iter().any(|n| glob_match(p, n))
        })
    };
    (only.is_empty() || hit(only)) && !hit(except)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_packer() {
        assert!(glob_match("qemu.*", "qemu.tiny"));
        assert!(glob_match("*.tiny", "qemu.tiny"));
        assert!(!glob_match("virtualbox-iso.*", "qemu.tiny"));
        assert!(selected(&["qemu.*".into()], &[], "qemu.a", None));
        assert!(!selected(&[], &["qemu.a".into()], "qemu.a", None));
        assert!(selected(&["web.qemu.a".into()], &[], "qemu.a", Some("web")));
    }
}
