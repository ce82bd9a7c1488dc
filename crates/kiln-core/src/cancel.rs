//! Cancellation shared by everything a run does. Cancelling wakes sleepers and runs hooks (the
//! qemu builder registers one that kills its VM, which also breaks any blocking SSH I/O).

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Hook = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    next_id: AtomicU64,
    hooks: Mutex<Vec<(u64, Hook)>>,
    lock: Mutex<()>,
    cv: Condvar,
}

/// A cancellation token; clones share state.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        if self.0.flag.swap(true, Ordering::SeqCst) {
            return;
        }
        let hooks = match self.0.hooks.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for (_, h) in hooks {
            h();
        }
        let _g = self.0.lock.lock();
        self.0.cv.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Errors with `Cancelled` when cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleeps for `d`, returning early with `Cancelled`.
    pub fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        let mut g = self
            .0
            .lock
            .lock()
            .map_err(|_| Error::failed("cancellation lock poisoned"))?;
        loop {
            if self.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            g = match self.0.cv.wait_timeout(g, end - now) {
                Ok((g, _)) => g,
                Err(_) => return Err(Error::failed("cancellation lock poisoned")),
            };
        }
    }

    /// Runs `f` when cancelled (at once if already cancelled) until the guard is dropped.
    pub fn on_cancel(&self, f: impl Fn() + Send + 'static) -> HookGuard {
        let id = self.0.next_id.fetch_add(1, Ordering::SeqCst);
        if self.is_cancelled() {
            f();
        } else if let Ok(mut h) = self.0.hooks.lock() {
            h.push((id, Box::new(f)));
        }
        HookGuard {
            cancel: self.clone(),
            id,
        }
    }
}

/// Unregisters a cancel hook on drop.
pub struct HookGuard {
    cancel: Cancel,
    id: u64,
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        if let Ok(mut h) = self.cancel.0.hooks.lock() {
            h.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn cancel_wakes_sleepers_and_runs_hooks_once() {
        let c = Cancel::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let _g = c.on_cancel(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        c.cancel();
        c.cancel();
        assert!(matches!(t.join().ok(), Some(Err(Error::Cancelled))));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropped_hook_does_not_run() {
        let c = Cancel::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        drop(c.on_cancel(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        c.cancel();
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }
}
