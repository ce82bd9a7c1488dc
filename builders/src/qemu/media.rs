//! `cd_files` / `cd_content`: an ISO 9660 image (Joliet + Rock Ridge) made with xorriso and
//! attached as an extra CD-ROM; a cloud-init NoCloud seed is the usual use (`cd_label = "cidata"`).

use kiln_core::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn make_iso(
    dir: &Path,
    iso: &Path,
    label: &str,
    files: &[PathBuf],
    content: &BTreeMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    for f in files {
        let name = f.file_name().ok_or_else(|| {
            Error::failed(format!("cd_files entry {} has no file name", f.display()))
        })?;
        if f.is_dir() {
            copy_tree(f, &dir.join(name))?;
        } else {
            std::fs::copy(f, dir.join(name))
                .map_err(|e| Error::io(format!("cd_files: cannot copy {}", f.display()), e))?;
        }
    }
    write_content(dir, content, "cd_content", "the CD")?;
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-J", "-r", "-V", label, "-o"])
        .arg(iso)
        .arg(dir)
        .output()
        .map_err(|e| Error::io("cannot run xorriso (apt-get install xorriso)", e))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "xorriso failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `floppy_files` / `floppy_dirs` / `floppy_content`: a 1.44 MB FAT12 image made with
/// dosfstools and mtools, without mounting anything. Files land in the root (a directory in
/// floppy_files adds the files in it); floppy_dirs keep their structure.
pub fn make_floppy(
    dir: &Path,
    img: &Path,
    label: &str,
    files: &[PathBuf],
    dirs: &[PathBuf],
    content: &BTreeMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let put_file = |f: &Path| -> Result<()> {
        let name = f.file_name().ok_or_else(|| {
            Error::failed(format!(
                "floppy_files entry {} has no file name",
                f.display()
            ))
        })?;
        std::fs::copy(f, dir.join(name))
            .map(|_| ())
            .map_err(|e| Error::io(format!("floppy_files: cannot copy {}", f.display()), e))
    };
    for f in files {
        if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|e| Error::io(format!("cannot read {}", f.display()), e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for e in entries {
                put_file(&e)?;
            }
        } else {
            put_file(f)?;
        }
    }
    for d in dirs {
        let name = d.file_name().ok_or_else(|| {
            Error::failed(format!("floppy_dirs entry {} has no name", d.display()))
        })?;
        copy_tree(d, &dir.join(name))?;
    }
    write_content(dir, content, "floppy_content", "the floppy")?;
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let out = cmd.output().map_err(|e| {
            Error::io(
                format!("cannot run {what} (apt-get install mtools dosfstools)"),
                e,
            )
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "{what} failed making the floppy: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    run(
        Command::new("mkfs.fat")
            .args(["-C", "-n", label])
            .arg(img)
            .arg("1440"),
        "mkfs.fat",
    )?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    if !entries.is_empty() {
        run(
            Command::new("mcopy")
                .arg("-i")
                .arg(img)
                .args(["-s", "-p", "-Q"])
                .args(&entries)
                .arg("::/")
                .env("MTOOLS_SKIP_CHECK", "1"),
            "mcopy",
        )?;
    }
    Ok(())
}

/// Writes `*_content` (path → text) under `dir`; each path must stay inside the medium.
fn write_content(
    dir: &Path,
    content: &BTreeMap<String, String>,
    option: &str,
    medium: &str,
) -> Result<()> {
    for (path, text) in content {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::failed(format!(
                "{option} key {path:?} must be a relative path inside {medium}"
            )));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        std::fs::write(&p, text)
            .map_err(|e| Error::io(format!("cannot write {}", p.display()), e))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)
        .map_err(|e| Error::io(format!("cannot create {}", to.display()), e))?;
    for e in std::fs::read_dir(from)
        .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()))?;
        } else {
            std::fs::copy(&p, to.join(e.file_name()))
                .map_err(|err| Error::io(format!("cannot copy {}", p.display()), err))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod floppy {
    use super::*;

    fn mtools(args: &[&str], img: &Path) -> String {
        let out = Command::new(args[0])
            .args(["-i"])
            .arg(img)
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("mtools (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn files_dirs_and_content_land_on_a_labelled_fat_floppy() {
        let t = std::env::temp_dir().join(format!("kiln-floppy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("src/tree/sub")).expect("dirs");
        std::fs::create_dir_all(t.join("src/flat")).expect("dirs");
        std::fs::write(t.join("src/a.txt"), "a\n").expect("file");
        std::fs::write(t.join("src/flat/f.txt"), "f\n").expect("file");
        std::fs::write(t.join("src/tree/sub/b.txt"), "b\n").expect("file");
        let img = t.join("floppy.img");
        let content = BTreeMap::from([("conf/c.txt".to_string(), "c\n".to_string())]);
        make_floppy(
            &t.join("stage"),
            &img,
            "KILNFLOP",
            &[t.join("src/a.txt"), t.join("src/flat")],
            &[t.join("src/tree")],
            &content,
        )
        .expect("floppy");
        assert_eq!(
            std::fs::metadata(&img).map(|m| m.len()).ok(),
            Some(1440 * 1024)
        );
        assert!(mtools(&["mlabel", "-s", "::"], &img).contains("KILNFLOP"));
        assert_eq!(mtools(&["mtype", "::/a.txt"], &img), "a\n");
        // A directory in floppy_files adds its files to the root...
        assert_eq!(mtools(&["mtype", "::/f.txt"], &img), "f\n");
        // ...floppy_dirs keep their structure, and content makes its directories.
        assert_eq!(mtools(&["mtype", "::/tree/sub/b.txt"], &img), "b\n");
        assert_eq!(mtools(&["mtype", "::/conf/c.txt"], &img), "c\n");
        assert!(make_floppy(
            &t.join("stage2"),
            &t.join("bad.img"),
            "X",
            &[],
            &[],
            &BTreeMap::from([("../x".to_string(), String::new())])
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&t);
    }
}
