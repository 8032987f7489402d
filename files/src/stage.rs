//! A command's outputs as one transaction. Each output is declared (and checked) before the
//! command does its work, written to a staging name beside its target, and all of them are
//! renamed into place together at the end by [`Outputs::commit`]; dropped uncommitted, the staged
//! files are removed and no target has changed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::read::kind;

/// Files the command reads and the outputs it will write.
#[derive(Default)]
pub struct Outputs {
    inputs: Vec<(String, Place)>,
    targets: Vec<Target>,
}

/// One declared output; [`Outputs::write`] and friends take it.
#[derive(Clone, Copy, Debug)]
pub struct Output(usize);

/// A path as the file system resolves it: links followed, and the file's identity when it exists
/// (a hard link is the same file under another name).
#[derive(Clone, Debug)]
struct Place {
    resolved: PathBuf,
    inode: Option<(u64, u64)>,
}

impl Place {
    fn same(&self, other: &Place) -> bool {
        self.resolved == other.resolved || (self.inode.is_some() && self.inode == other.inode)
    }
}

struct Target {
    /// How the user named it: `--output out.safetensors`.
    label: String,
    place: Place,
    folder: bool,
    staged: Option<PathBuf>,
}

/// How errors name a file: what it is to the command and its path (`--output o.st`).
fn label(what: &str, path: &Path) -> String {
    format!("{what} {}", path.display())
}

/// A process-unique staging name: short, so it fits NAME_MAX whatever the target's name, and
/// with the target's extension (an image writer picks its format by it).
fn staging_name(n: usize, target: &Path) -> String {
    let ext = target.extension().and_then(|e| e.to_str()).filter(|e| e.len() <= 16).unwrap_or("tmp");
    format!(".tttc-{}-{n}.{ext}", std::process::id())
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Declares a file the command reads (`what` and the path name it in errors: `--input x.st`):
    /// no output may be the same file. A path that does not exist is ignored (reading it fails on
    /// its own).
    pub fn reads(&mut self, what: &str, path: &Path) {
        if let Ok(resolved) = std::fs::canonicalize(path) {
            let inode = std::fs::metadata(&resolved).ok().map(|m| (m.dev(), m.ino()));
            self.inputs.push((label(what, path), Place { resolved, inode }));
        }
    }

    /// Declares an output file: refused now if its folder does not exist, if it exists and is not
    /// a regular file (a device such as /dev/null, a FIFO, a folder), or if it is the same file
    /// as an input or another output.
    pub fn file(&mut self, what: &str, path: &Path) -> Result<Output> {
        self.declare(label(what, path), path, false)
    }

    /// Declares an output folder, replaced whole. An existing one is offered to `replaceable`,
    /// which refuses (in one line) what must not be replaced.
    pub fn folder(&mut self, what: &str, path: &Path, replaceable: impl Fn(&Path) -> Result<()>) -> Result<Output> {
        if std::fs::symlink_metadata(path).is_ok() {
            replaceable(path)?;
        }
        self.declare(label(what, path), path, true)
    }

    fn declare(&mut self, label: String, path: &Path, folder: bool) -> Result<Output> {
        use std::os::unix::ffi::OsStrExt;
        if !folder && path.as_os_str().as_bytes().ends_with(b"/") {
            bail!("{label} ends in /, which names a folder, not a file");
        }
        let place = resolve(&label, path, folder)?;
        remove_stale(place.resolved.parent().expect("a resolved output has a folder"));
        if let Some((input, _)) = self.inputs.iter().find(|(_, p)| p.same(&place)) {
            bail!("{label} is the same file as {input}: refusing to overwrite an input");
        }
        if let Some(other) = self.targets.iter().find(|t| t.place.same(&place)) {
            bail!("{label} is the same file as {}: each output needs its own path", other.label);
        }
        self.targets.push(Target { label, place, folder, staged: None });
        Ok(Output(self.targets.len() - 1))
    }

    /// Stages `bytes` as the content of `out`.
    pub fn write(&mut self, out: Output, bytes: &[u8]) -> Result<()> {
        self.write_with(out, |path| {
            use std::io::Write;
            let mut f = std::fs::File::create_new(path)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            Ok(())
        })
    }

    /// Stages `out` through `fill`, which writes the file (or fills the created folder) at the
    /// path it is given.
    pub fn write_with(&mut self, out: Output, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let target = &mut self.targets[out.0];
        let parent = target.place.resolved.parent().expect("a resolved output has a folder");
        let staged = parent.join(staging_name(out.0, &target.place.resolved));
        if let Some(old) = target.staged.take() {
            remove(&old);
        }
        if target.folder {
            std::fs::create_dir(&staged).with_context(|| format!("cannot create {} for {}", staged.display(), target.label))?;
        }
        target.staged = Some(staged.clone());
        fill(&staged).with_context(|| format!("cannot write {}", target.label))
    }

    /// Renames every staged output into place. Every output must have been written.
    pub fn commit(mut self) -> Result<()> {
        if let Some(t) = self.targets.iter().find(|t| t.staged.is_none()) {
            bail!("{} was never written", t.label);
        }
        for t in &mut self.targets {
            let staged = t.staged.take().expect("checked above");
            let target = &t.place.resolved;
            let result = match t.folder {
                true => crate::swap::replace(&staged, target, &staged.with_extension("old"), |_| {}),
                false => std::fs::rename(&staged, target).map_err(Into::into),
            };
            if let Err(e) = result {
                remove(&staged);
                return Err(e.context(format!("cannot write {}", t.label)));
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` so that the file appears whole or not at all: a transaction of one
/// output (staged beside `path`, then renamed over it), for files written outside a command's
/// [`Outputs`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut outputs = Outputs::new();
    let out = outputs.file("the file", path)?;
    outputs.write(out, bytes)?;
    outputs.commit()
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for staged in self.targets.iter_mut().filter_map(|t| t.staged.take()) {
            remove(&staged);
        }
    }
}

/// Removes what killed runs staged in `dir`: `.tttc-PID-N.EXT` of processes that no longer run.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(".tttc-")?.split('-').next()?.parse::<i32>().ok());
        if pid.is_some_and(|pid| pid > 0 && pid as u32 != std::process::id() && crate::swap::dead(pid)) {
            remove(&entry.path());
        }
    }
}

fn remove(path: &Path) {
    let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
}

/// Where `path` lands once links are resolved, refused when it cannot be an output.
fn resolve(label: &str, path: &Path, folder: bool) -> Result<Place> {
    let want = if folder { "a folder" } else { "a regular file" };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.is_dir() != folder || !(meta.is_dir() || meta.is_file()) {
                bail!("{label} exists and is {}, not {want}: not replacing it", kind(&meta));
            }
            let resolved = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {label}"))?;
            Ok(Place { resolved, inode: Some((meta.dev(), meta.ino())) })
        }
        Err(_) if std::fs::symlink_metadata(path).is_ok() => bail!("{label} is a link to a file that does not exist"),
        Err(_) => {
            let name = path.file_name().with_context(|| format!("{label} does not name a file"))?;
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let dir = std::fs::canonicalize(parent).ok().filter(|d| d.is_dir());
            let dir = dir.with_context(|| format!("cannot write {label}: folder {} does not exist", parent.display()))?;
            Ok(Place { resolved: dir.join(name), inode: None })
        }
    }
}
