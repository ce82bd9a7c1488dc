//! Child processes that never outlive kiln: each gets a parent-death signal (so a SIGKILLed kiln
//! takes its children along) and is killed and reaped when its guard drops.

use crate::error::{IoContext, Result};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Sets PR_SET_PDEATHSIG so the child gets SIGKILL when the thread that spawned it dies.
/// Spawn from the thread that owns the child for its whole life (the build's thread).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl and getppid are async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
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

/// A child that is killed (SIGKILL) and reaped when dropped, unless it already exited.
pub struct Guarded {
    child: Option<Child>,
    what: String,
}

impl Guarded {
    pub fn spawn(mut cmd: Command, what: impl Into<String>) -> Result<Guarded> {
        let what = what.into();
        die_with_parent(&mut cmd);
        let child = cmd.spawn().ctx(|| format!("cannot start {what}"))?;
        Ok(Guarded {
            child: Some(child),
            what,
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

/// Whether a process with this pid is alive.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
}
