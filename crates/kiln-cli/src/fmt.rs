//! `kiln fmt`: Packer's `fmt` for HCL templates (`*.pkr.hcl`, `*.pkrvars.hcl`).
//! Exit codes as Packer's: 0 done, 3 with -check when a file is not formatted, 1 on errors.

use crate::exit::{CliError, Status};
use std::path::{Path, PathBuf};

fn is_hcl(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    n.ends_with(".pkr.hcl") || n.ends_with(".pkrvars.hcl")
}

fn collect(p: &Path, recursive: bool, top: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        if !top && !recursive {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                collect(&e, recursive, false, out)?;
            } else if is_hcl(&e) {
                out.push(e);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// A minimal unified diff (whole-file hunk; enough to show what fmt changes).
fn diff(path: &Path, a: &str, b: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Longest common subsequence table, fine for template-sized files.
    let mut l = vec![vec![0usize; y.len() + 1]; x.len() + 1];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            l[i][j] = if x[i] == y[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let mut out = format!(
        "--- old/{0}\n+++ new/{0}\n@@ -1,{1} +1,{2} @@\n",
        path.display(),
        x.len(),
        y.len()
    );
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        if i < x.len() && j < y.len() && x[i] == y[j] {
            out.push_str(&format!(" {}\n", x[i]));
            i += 1;
            j += 1;
        } else if j < y.len() && (i == x.len() || l[i][j + 1] >= l[i + 1][j]) {
            out.push_str(&format!("+{}\n", y[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{}\n", x[i]));
            i += 1;
        }
    }
    out
}

pub fn run(
    paths: &[PathBuf],
    check: bool,
    show_diff: bool,
    write: bool,
    recursive: bool,
) -> Result<Status, CliError> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths.to_vec()
    };
    let mut files = Vec::new();
    for p in &paths {
        collect(p, recursive, true, &mut files)
            .map_err(|e| CliError::io(format!("cannot read {}", p.display()), e))?;
    }
    let mut unformatted = 0;
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| CliError::io(format!("cannot read {}", f.display()), e))?;
        // Refuse to rewrite what does not parse: formatting must never change meaning.
        if let Err(e) = hcl_check(&text) {
            return Err(CliError::failed(format!(
                "{}: {e}; not formatted",
                f.display()
            )));
        }
        let formatted = kiln_template::fmt::format_hcl(&text);
        if formatted == text {
            continue;
        }
        unformatted += 1;
        say!("{}", f.display());
        if show_diff {
            say!("{}", diff(f, &text, &formatted).trim_end_matches('\n'));
        }
        if write {
            let tmp = f.with_extension("kiln-fmt");
            std::fs::write(&tmp, &formatted)
                .and_then(|()| std::fs::rename(&tmp, f))
                .map_err(|e| CliError::io(format!("cannot write {}", f.display()), e))?;
        }
    }
    if check && unformatted > 0 {
        return Ok(Status::Unformatted);
    }
    Ok(Status::Success)
}

fn hcl_check(text: &str) -> Result<(), String> {
    kiln_template::parse_check(text)
}
