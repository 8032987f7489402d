//! How much memory a run may use, and the check every command makes before it allocates: the
//! estimate from the config and the input sizes against what the machine, the process's cgroup
//! and its limits leave, or `--max-memory`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::human;
use anyhow::{bail, Result};

/// `--max-memory`, in bytes; 0 when not given.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the budget every later check uses (`--max-memory`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The bytes a run may use: `--max-memory`, else the least of the memory the system reports
/// available, what the process's cgroup has left and the process's address-space and data
/// limits (`ulimit -v`, `ulimit -d`), with the name of the one that binds.
pub fn budget_and_source() -> (u64, &'static str) {
    match LIMIT.load(Ordering::Relaxed) {
        0 => [(available(), "available memory"), (cgroup_left(), "memory left to this cgroup"), (rlimit(), "the process's memory limit (ulimit)")]
            .into_iter()
            .filter_map(|(bytes, source)| Some((bytes?, source)))
            .min()
            .unwrap_or((u64::MAX, "unlimited memory")),
        limit => (limit, "--max-memory"),
    }
}

/// See [`budget_and_source`].
pub fn budget() -> u64 {
    budget_and_source().0
}

/// `MemAvailable` of /proc/meminfo.
fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's cgroup's memory limit less its usage (cgroup v2, else v1).
fn cgroup_left() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let number = |path: String| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let (limit, usage) = if let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
        let dir = format!("/sys/fs/cgroup{path}");
        (number(format!("{dir}/memory.max"))?, number(format!("{dir}/memory.current"))?)
    } else {
        let path = cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p))?;
        let dir = format!("/sys/fs/cgroup/memory{path}");
        (number(format!("{dir}/memory.limit_in_bytes"))?, number(format!("{dir}/memory.usage_in_bytes"))?)
    };
    Some(limit.saturating_sub(usage))
}

/// The smaller of RLIMIT_AS and RLIMIT_DATA, when either is set.
fn rlimit() -> Option<u64> {
    [libc::RLIMIT_AS, libc::RLIMIT_DATA]
        .into_iter()
        .filter_map(|resource| {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes the one struct it is given.
            let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
            (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
        })
        .min()
}

/// Refuses `what` when its estimated `bytes` exceed the budget.
pub fn check(what: &str, bytes: u64) -> Result<()> {
    let (budget, source) = budget_and_source();
    if bytes > budget {
        bail!("{what} needs about {}, more than the {} of {source} (estimated before allocating; --max-memory sets the budget)", human(bytes), human(budget));
    }
    Ok(())
}
