//! An opt-in profile of where a program's time goes: wall time and calls per kind of step
//! (kernels, matrix products, reductions, each op the interpreter's implementations run).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Starts (or stops) recording; starting clears what was recorded.
pub fn set_enabled(on: bool) {
    if on {
        TOTALS.lock().expect("profile lock").clear();
    }
    ENABLED.store(on, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn record(kind: Option<String>, took: Duration) {
    if let Some(kind) = kind {
        let mut totals = TOTALS.lock().expect("profile lock");
        let e = totals.entry(kind).or_default();
        e.0 += took;
        e.1 += 1;
    }
}

/// What was recorded: (step kind, total time, calls), the most time first.
pub fn report() -> Vec<(String, Duration, u64)> {
    let mut rows: Vec<_> = TOTALS.lock().expect("profile lock").iter().map(|(k, &(d, n))| (k.clone(), d, n)).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    rows
}
