//! Tensor files: safetensors in, and safetensors out written atomically (a temporary file in the
//! same folder, then a rename), so a failed run never leaves a half-written OUT.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::{Dtype, View};
use tttc_frontends::weights::{load_safetensors, Weights};
use tttc_ir::{Data, Tensor};

/// Reads a tensor file (inputs, states, optimizer moments): no larger than the memory tttc may use.
pub fn read_tensors(path: &Path) -> Result<Weights> {
    load_safetensors(path, tttc_files::Cap::new("a tensor file tttc can hold in memory", crate::memory::budget()))
}

struct Bytes<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: Vec<u8>,
}

impl View for &Bytes<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` (float data as f32) to `path` atomically.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let views: Vec<(&str, Bytes)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, data) = match &t.data {
                Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                _ => (Dtype::F32, t.to_f32().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (*name, Bytes { dtype, shape: &t.shape, data })
        })
        .collect();
    let bytes = safetensors::serialize(views.iter().map(|(n, b)| (*n, b)), None).context("cannot serialise tensors")?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));
    let write = || -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    write().inspect_err(|_e| {
        let _ = std::fs::remove_file(&tmp);
    }).with_context(|| format!("cannot write {}", path.display()))
}
