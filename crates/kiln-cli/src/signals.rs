//! SIGINT / SIGTERM → cancellation of the run (the handler only records the signal; a watcher
//! thread does the rest outside signal context).

use kiln_core::Cancel;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installs the handlers and a watcher that cancels `cancel` on the first signal.
pub fn install(cancel: Cancel) {
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::thread::spawn(move || loop {
        if SIGNAL.load(Ordering::SeqCst) != 0 {
            cancel.cancel();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
