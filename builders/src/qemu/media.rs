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
    for (path, text) in content {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::failed(format!(
                "cd_content key {path:?} must be a relative path inside the CD"
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
