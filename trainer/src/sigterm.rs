//! SIGTERM as a flag: a scheduler's preemption (SLURM, `kill`) asks `train` to finish its step,
//! save and exit, and asks `launch` to pass the signal on. The handler only sets an atomic.

use std::sync::atomic::{AtomicBool, Ordering};

static RECEIVED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (idempotent).
pub fn install() {
    #[cfg(unix)]
    {
        extern "C" fn on_term(_: i32) {
            RECEIVED.store(true, Ordering::SeqCst);
        }
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(libc::SIGTERM, on_term as extern "C" fn(i32) as libc::sighandler_t) };
    }
}

/// Whether SIGTERM arrived since [`install`].
pub fn received() -> bool {
    RECEIVED.load(Ordering::SeqCst)
}
