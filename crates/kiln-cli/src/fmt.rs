//! `kiln fmt`: Packer's `fmt` for HCL templates (`*.pkr.hcl`, `*.pkrvars.hcl`).
//! Exit codes as Packer's: 0 done, 3 with -check when a file is not formatted, 1 on errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
) -> ExitCode {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths.to_vec()
    };
    let mut files = Vec::new();
    for p in &paths {
        if let Err(e) = collect(p, recursive, true, &mut files) {
            eprintln!("error: cannot read {}: {e}", p.display());
            return ExitCode::from(1);
        }
    }
    let mut unformatted = 0;
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                return ExitCode::from(1);
            }
        };
        // Refuse to rewrite what does not parse: formatting must never change meaning.
        if let Err(e) = hcl_check(&text) {
            eprintln!("error: {}: {e}; not formatted", f.display());
            return ExitCode::from(1);
        }
        let formatted = kiln_template::fmt::format_hcl(&text);
        if formatted == text {
            continue;
        }
        unformatted += 1;
        println!("{}", f.display());
        if show_diff {
            print!("{}", diff(f, &text, &formatted));
        }
        if write {
            let tmp = f.with_extension("kiln-fmt");
            if let Err(e) = std::fs::write(&tmp, &formatted).and_then(|()| std::fs::rename(&tmp, f))
            {
                eprintln!("error: cannot write {}: {e}", f.display());
                return ExitCode::from(1);
            }
        }
    }
    if check && unformatted > 0 {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

fn hcl_check(text: &str) -> Result<(), String> {
    kiln_template::parse_check(text)
}
