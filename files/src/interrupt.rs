//! SIGINT and SIGTERM as a flag that a long job polls where it can stop cleanly, and the test hooks
//! that make a process die, or receive SIGTERM, at a named point.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received since [`Interrupts::catch`]; 0 for none.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
}

/// While it lives, SIGINT and SIGTERM set a flag ([`Interrupts::pending`]) instead of ending the
/// process. The handler resets itself: a second signal ends the process as usual, so a job that
/// is slow to reach a stopping point can still be stopped.
pub struct Interrupts {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Interrupts {
    pub fn catch() -> Interrupts {
        PENDING.store(0, Ordering::SeqCst);
        let previous = [libc::SIGINT, libc::SIGTERM]
            .into_iter()
            .map(|signal| {
                // SAFETY: plain sigaction calls; the handler only stores to an atomic.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    // SA_RESTART: reads and writes under way go on rather than fail with EINTR.
                    action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
                    libc::sigemptyset(&mut action.sa_mask);
                    let mut old: libc::sigaction = std::mem::zeroed();
                    libc::sigaction(signal, &action, &mut old);
                    (signal, old)
                }
            })
            .collect();
        Interrupts { previous }
    }

    /// The signal received, if any.
    pub fn pending(&self) -> Option<i32> {
        match PENDING.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores the action `catch` replaced.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

/// Test hooks at named points of a job: `TTTC_CRASH_AT=POINT` kills the process there with
/// SIGKILL (no cleanup runs, as in a power cut or the OOM killer), `TTTC_SIGNAL_AT=POINT` sends it
/// SIGTERM.
pub fn test_point(point: &str) {
    let at = |var: &str| std::env::var_os(var).is_some_and(|v| v == point);
    // SAFETY: raise only sends a signal to this thread.
    if at("TTTC_CRASH_AT") {
        unsafe { libc::raise(libc::SIGKILL) };
    }
    if at("TTTC_SIGNAL_AT") {
        unsafe { libc::raise(libc::SIGTERM) };
    }
}
