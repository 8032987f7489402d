//! The output folder: its default name, what may be replaced, and writing its files.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// `<model stem>.tttc` in the current folder.
pub(crate) fn default_out_dir(model: &Path) -> Result<PathBuf> {
    let stem = match model.file_stem() {
        Some(s) => s.to_os_string(),
        None => {
            let full = model.canonicalize().with_context(|| format!("cannot resolve {}", model.display()))?;
            full.file_stem().context("cannot name the output folder after the model: give -o DIR")?.to_os_string()
        }
    };
    Ok(PathBuf::from(format!("{}.tttc", stem.to_string_lossy())))
}

/// An existing `out` is replaced only when it is empty, or when an earlier `tttc compile` wrote
/// it: its manifest.json lists every other file it holds. Anything else is named and left alone.
pub(crate) fn check_replaceable(out: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(out).with_context(|| format!("cannot read {}", out.display()))?;
    ensure!(meta.is_dir(), "{} exists and is not a folder; not replacing it", out.display());
    let found = walk(out, Path::new(""))?;
    if found.is_empty() {
        return Ok(());
    }
    let manifest = out.join("manifest.json");
    let listed: Option<Vec<String>> = tttc_files::read_text(&manifest, tttc_files::Cap::CONFIG)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter(|m| m["tttc_version"].is_string())
        .and_then(|m| m["files"].as_array()?.iter().map(|f| f.as_str().map(str::to_string)).collect());
    let listed =
        listed.with_context(|| format!("{} is not the output of tttc compile (no manifest.json listing its files); not replacing it", out.display()))?;
    if let Some(other) = found.iter().find(|f| f.as_str() != "manifest.json" && !listed.contains(f)) {
        bail!("{} holds {other}, which tttc compile did not write; not replacing the folder (move that file out, or choose another -o)", out.display());
    }
    Ok(())
}

/// The paths of everything below `dir/rel` that is not a folder, relative to `dir` (a folder
/// with nothing in it counts as itself).
fn walk(dir: &Path, rel: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let here = dir.join(rel);
    for entry in std::fs::read_dir(&here).with_context(|| format!("cannot read {}", here.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", here.display()))?;
        let path = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            let inner = walk(dir, &path)?;
            if inner.is_empty() {
                found.push(format!("{}/", path.display()));
            }
            found.extend(inner);
        } else {
            found.push(path.display().to_string());
        }
    }
    Ok(found)
}

/// Writes `files` (paths relative to `dir`) into the folder `dir`.
pub(crate) fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
