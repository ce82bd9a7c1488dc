//! Scratch directories for builds, removed when dropped. Each holds a `kiln.pid` file so a later
//! kiln can remove the leftovers of one that was SIGKILLed.

use crate::error::{IoContext, Result};
use std::path::{Path, PathBuf};

pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Creates `<base>/<prefix>-<pid>-<n>`, after removing stale siblings whose kiln is gone.
    pub fn create(base: &Path, prefix: &str) -> Result<WorkDir> {
        std::fs::create_dir_all(base)
            .ctx(|| format!("cannot create work directory {}", base.display()))?;
        sweep_stale(base);
        let pid = std::process::id();
        for n in 0..10_000 {
            let path = base.join(format!("{prefix}-{pid}-{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    std::fs::write(path.join("kiln.pid"), pid.to_string())
                        .ctx(|| format!("cannot write {}", path.display()))?;
                    return Ok(WorkDir { path, keep: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(crate::Error::io(
                        format!("cannot create {}", path.display()),
                        e,
                    ))
                }
            }
        }
        Err(crate::Error::failed(format!(
            "cannot find a free work directory name under {}",
            base.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory on drop (for -on-error=abort, where the guest still uses it).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes directories under `base` left by a kiln process that no longer runs.
pub fn sweep_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let pid = std::fs::read_to_string(p.join("kiln.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            if !crate::process::pid_alive(pid) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

/// Removes a path when dropped, unless disarmed.
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub fn new(p: PathBuf) -> Self {
        RemoveOnDrop(Some(p))
    }
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Copies a file, as a reflink (copy-on-write clone) where the filesystem supports it. Never a
/// hard link: a store blob must not share an inode with a file someone may boot and write.
pub fn copy_file(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let src = std::fs::File::open(from).ctx(|| format!("cannot open {}", from.display()))?;
    let dst = std::fs::File::create(to).ctx(|| format!("cannot create {}", to.display()))?;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(());
    }
    drop(dst);
    std::fs::copy(from, to)
        .ctx(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
