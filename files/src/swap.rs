//! Replacing a folder by a new version of it so that the folder is complete at every instant, and
//! cleaning up after processes that died doing it.
//!
//! The new version is built in a sibling `.NAME.KIND-tmp-PID` and exchanged with the folder by one
//! `renameat2(RENAME_EXCHANGE)`. Where the filesystem cannot exchange (EINVAL, ENOSYS), the folder
//! is renamed aside to `.NAME.KIND-old-PID` and the new version renamed in: a crash between those
//! two renames leaves no folder, and [`recover`] puts the one set aside back.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Swaps the entries at `a` and `b` atomically (both must exist): Linux's
/// `renameat2(RENAME_EXCHANGE)`. EINVAL or ENOSYS: this kernel or filesystem cannot.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        let (a, b) = (c(a)?, c(b)?);
        // SAFETY: both paths are NUL-terminated strings that outlive the call. The raw syscall,
        // not glibc's wrapper, which older glibc versions lack.
        let r = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

/// A replacement of a folder under way: fill [`Swap::tmp`], then [`Swap::commit`]. Dropped
/// without a commit, it removes the temporary folder.
pub struct Swap {
    dir: PathBuf,
    tmp: PathBuf,
    old: PathBuf,
}

impl Swap {
    /// Starts replacing `dir` with a new, empty `.NAME.KIND-tmp-PID`.
    pub fn begin(dir: &Path, kind: &str) -> Result<Swap> {
        let pid = std::process::id();
        let swap = Swap { dir: dir.to_path_buf(), tmp: sibling(dir, kind, "tmp", pid)?, old: sibling(dir, kind, "old", pid)? };
        // Leftovers under this PID are from a dead process that had it before (see `recover`).
        let _ = std::fs::remove_dir_all(&swap.tmp);
        std::fs::create_dir(&swap.tmp).with_context(|| format!("cannot create {}", swap.tmp.display()))?;
        Ok(swap)
    }

    /// The folder to fill with the new version.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Puts the new version in place of the folder and removes the previous one (see
    /// [`replace`]).
    pub fn commit(self, point: impl Fn(&str)) -> Result<()> {
        replace(&self.tmp, &self.dir, &self.old, point)
    }
}

/// Puts the folder `new` in place of `dir` and removes the previous version: one exchange, or,
/// where the file system cannot exchange, `dir` renamed to `aside` and `new` renamed in. `point` is
/// told where the replacement stands, for test hooks: `"exchanged"` (the new version in place, the
/// previous one not yet removed), `"renamed-aside"` (without an exchange: between the two renames).
pub(crate) fn replace(new: &Path, dir: &Path, aside: &Path, point: impl Fn(&str)) -> Result<()> {
    let what = || format!("cannot put {} in place of {}", new.display(), dir.display());
    if !dir.exists() {
        return std::fs::rename(new, dir).with_context(what);
    }
    // TTTC_RENAME_EXCHANGE=0 takes the fallback (a test hook).
    let exchanged = if std::env::var_os("TTTC_RENAME_EXCHANGE").is_some_and(|v| v == "0") {
        false
    } else {
        match exchange(new, dir) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => false,
            Err(e) => return Err(e).with_context(what),
        }
    };
    // After an exchange the previous version is at `new`, after the fallback at `aside`.
    let previous = if exchanged {
        new
    } else {
        std::fs::rename(dir, aside).with_context(what)?;
        point("renamed-aside");
        if let Err(e) = std::fs::rename(new, dir) {
            // Put the previous version back; if even that fails, `recover` will.
            let _ = std::fs::rename(aside, dir);
            return Err(e).with_context(what);
        }
        aside
    };
    point("exchanged");
    let _ = std::fs::remove_dir_all(previous);
    Ok(())
}

impl Drop for Swap {
    fn drop(&mut self) {
        // Never `old`: after a failed fallback it may hold the only copy, which `recover` restores.
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// `.NAME.KIND-TAG-PID` beside `dir`. It must fit NAME_MAX (255 bytes) whatever NAME's length: a
/// long NAME is cut, and a hash of it all keeps the folders of different names apart.
fn sibling(dir: &Path, kind: &str, tag: &str, pid: u32) -> Result<PathBuf> {
    let mut name = prefix(dir, kind)?;
    name.push(format!("{tag}-{pid}"));
    Ok(dir.with_file_name(name))
}

/// `.NAME.KIND-`, NAME shortened to 200 bytes at most.
fn prefix(dir: &Path, kind: &str) -> Result<OsString> {
    let name = dir.file_name().with_context(|| format!("{} does not name a folder", dir.display()))?.as_bytes();
    const KEEP: usize = 200;
    let mut short = b".".to_vec();
    if name.len() <= KEEP {
        short.extend(name);
    } else {
        let hash = name.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3));
        short.extend(&name[..KEEP - 17]);
        short.extend(format!("~{hash:016x}").bytes());
    }
    short.extend(format!(".{kind}-").bytes());
    Ok(OsString::from_vec(short))
}

/// Whether process `pid` is gone (`kill(pid, 0)` fails with ESRCH).
pub(crate) fn dead(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) }
}

/// Cleans up after processes that died while replacing `dir`: when `dir` is missing, the previous
/// version one of them set aside is put back; their other folders are removed. Folders of a live
/// process are left alone; this process's own PID counts as dead (call this before any
/// [`Swap::begin`]: such folders are from an earlier process that had the PID). Returns what was
/// done, a line each.
pub fn recover(dir: &Path, kind: &str) -> Result<Vec<String>> {
    let prefix = prefix(dir, kind)?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(parent) else { return Ok(Vec::new()) };
    // (path, pid, set aside, modified) of each folder a dead process left.
    let mut stale: Vec<(PathBuf, i32, bool, std::time::SystemTime)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(prefix.as_bytes()) else { continue };
        let (aside, pid) = match (rest.strip_prefix(b"old-"), rest.strip_prefix(b"tmp-")) {
            (Some(pid), _) => (true, pid),
            (_, Some(pid)) => (false, pid),
            _ => continue,
        };
        let Some(pid) = std::str::from_utf8(pid).ok().filter(|p| !p.starts_with('0')).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid > 0 && (pid as u32 == std::process::id() || dead(pid)) {
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            stale.push((parent.join(OsStr::from_bytes(name.as_bytes())), pid, aside, modified));
        }
    }
    let mut done = Vec::new();
    if std::fs::symlink_metadata(dir).is_err() {
        if let Some(i) = (0..stale.len()).filter(|&i| stale[i].2).max_by_key(|&i| stale[i].3) {
            let (path, pid, ..) = stale.swap_remove(i);
            std::fs::rename(&path, dir).with_context(|| format!("cannot put {} back as {}", path.display(), dir.display()))?;
            done.push(format!("restored {} from {} (process {pid} died while replacing it)", dir.display(), path.display()));
        }
    }
    for (path, pid, ..) in stale {
        std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        done.push(format!("removed {} (left by process {pid}, which is gone)", path.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tttc-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn content(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("f")).unwrap()
    }

    #[test]
    fn a_swap_replaces_the_folder_and_leaves_nothing_beside_it() {
        let root = scratch("swap");
        // A 248-byte name: the temporary names must still fit NAME_MAX.
        for name in ["run".to_string(), "d".repeat(248)] {
            let dir = root.join(&name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("f"), "old").unwrap();
            let swap = Swap::begin(&dir, "ckpt").unwrap();
            assert!(swap.tmp().file_name().unwrap().len() <= 255);
            std::fs::write(swap.tmp().join("f"), "new").unwrap();
            let points = std::cell::RefCell::new(Vec::new());
            swap.commit(|p| points.borrow_mut().push(p.to_string())).unwrap();
            assert_eq!(content(&dir), "new");
            assert_eq!(points.borrow().last().map(String::as_str), Some("exchanged"));
            let left: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, [OsString::from(&name)]);
            // An abandoned swap takes its temporary folder with it.
            drop(Swap::begin(&dir, "ckpt").unwrap());
            assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn recovery_restores_a_folder_set_aside_and_removes_only_dead_processes_leftovers() {
        let root = scratch("recover");
        let dir = root.join("d".repeat(248));
        let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        let live = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let make = |tag: &str, pid: u32, text: &str| {
            let p = sibling(&dir, "ckpt", tag, pid).unwrap();
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("f"), text).unwrap();
            p
        };
        make("old", max as u32, "previous");
        make("tmp", max as u32, "new");
        let kept = make("tmp", live.id(), "live");
        let other = sibling(&root.join("other"), "ckpt", "tmp", max as u32).unwrap();
        std::fs::create_dir(&other).unwrap();
        let done = recover(&dir, "ckpt").unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done[0].starts_with("restored") && done[1].starts_with("removed"), "{done:?}");
        assert_eq!(content(&dir), "previous");
        assert!(kept.is_dir() && other.is_dir());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 3);
        // With the folder in place, a dead process's folder set aside is removed, not restored.
        make("old", max as u32, "previous");
        assert!(recover(&dir, "ckpt").unwrap()[0].starts_with("removed"));
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 3);
        let mut live = live;
        live.kill().unwrap();
        live.wait().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
