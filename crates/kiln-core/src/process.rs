//! Child processes that never outlive kiln: each gets a parent-death signal (so a SIGKILLed kiln
//! takes its children along) and is killed and reaped when its guard drops.

use crate::error::{IoContext, Result};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Sets PR_SET_PDEATHSIG so the child gets SIGKILL when the thread that spawned it dies.
/// Spawn from the thread that owns the child for its whole life (the build's thread).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    parent_death_signal(cmd, libc::SIGKILL)
}

/// Sets PR_SET_PDEATHSIG to `sig` (and exits at once if the parent is already gone).
fn parent_death_signal(cmd: &mut Command, sig: libc::c_int) -> &mut Command {
    // SAFETY: prctl and getppid are async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may already have died between fork and prctl.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

/// Runs `"$@"` as the child of a small `sh` that leads its own process group and gets SIGTERM
/// when kiln dies (even by SIGKILL): it then removes `$1` (the script's temp dir, or "") and
/// SIGKILLs the whole group, so nothing a script started outlives kiln. The trap first ignores
/// further signals: the group, orphaned by kiln's death, may get a SIGHUP while `rm` runs, which
/// used to end the supervisor before its kill (1 in 5 SIGKILLs in bench/faults.py).
const SUPERVISOR: &str = r#"d=$1; shift; trap 'trap "" TERM INT HUP PIPE; [ -n "$d" ] && rm -rf -- "$d"; kill -KILL 0' TERM INT HUP; "$@" & wait $!"#;

/// A child that is killed (SIGKILL) and reaped when dropped, unless it already exited.
pub struct Guarded {
    child: Option<Child>,
    what: String,
    /// The child leads a process group: kill the group.
    group: bool,
}

impl Guarded {
    pub fn spawn(mut cmd: Command, what: impl Into<String>) -> Result<Guarded> {
        let what = what.into();
        die_with_parent(&mut cmd);
        let child = cmd.spawn().ctx(|| format!("cannot start {what}"))?;
        Ok(Guarded {
            child: Some(child),
            what,
            group: false,
        })
    }

    /// Spawns `argv` (with `cmd`'s environment and stdio) under the supervisor shell, in a new
    /// process group: `kill` and drop SIGKILL the whole group, and if kiln dies the supervisor
    /// removes `scratch` and kills the group itself. For host scripts (shell-local).
    pub fn spawn_group(
        argv: &[String],
        configure: impl FnOnce(&mut Command),
        scratch: Option<&std::path::Path>,
        what: impl Into<String>,
    ) -> Result<Guarded> {
        let what = what.into();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("kiln-supervise")
            .arg(
                scratch
                    .map(|p| p.as_os_str().to_owned())
                    .unwrap_or_default(),
            )
            .args(argv);
        configure(&mut cmd);
        cmd.process_group(0);
        parent_death_signal(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().ctx(|| format!("cannot start {what}"))?;
        Ok(Guarded {
            child: Some(child),
            what,
            group: true,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let what = self.what.clone();
        match self.child.as_mut() {
            Some(c) => c.wait().ctx(|| format!("waiting for {what}")),
            None => Err(crate::Error::failed(format!("{what} was already reaped"))),
        }
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if self.group {
                kill_group(c.id());
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Leaves the process running (for -on-error=abort).
    pub fn detach(mut self) -> u32 {
        self.child.take().map_or(0, |c| c.id())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILLs the process group `pgid` leads (a `spawn_group` child); safe to call from a signal
/// or cancel hook.
pub fn kill_group(pgid: u32) {
    if pgid != 0 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
    }
}

/// Whether a process with this pid is alive.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
}
