//! How much memory a run may use, and the check every command makes before it allocates: the
//! estimate from the config and the input sizes against the machine's available memory, or
//! `--max-memory`.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Result};
use crate::human;

/// `--max-memory`, in bytes; 0 when not given.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the budget every later check uses (`--max-memory`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The bytes a run may use: `--max-memory`, else the memory the system reports available.
pub fn budget() -> u64 {
    match LIMIT.load(Ordering::Relaxed) {
        0 => available().unwrap_or(u64::MAX),
        limit => limit,
    }
}

/// `MemAvailable` of /proc/meminfo.
fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `what` when its estimated `bytes` exceed the budget.
pub fn check(what: &str, bytes: u64) -> Result<()> {
    let budget = budget();
    if bytes > budget {
        let whose = if LIMIT.load(Ordering::Relaxed) == 0 { "available memory" } else { "--max-memory" };
        bail!("{what} needs about {}, more than the {} of {whose} (estimated before allocating; --max-memory sets the budget)", human(bytes), human(budget));
    }
    Ok(())
}
