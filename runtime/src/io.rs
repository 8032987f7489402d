//! Tensor files: safetensors in (capped by the memory budget), and safetensors out, staged with a
//! command's other outputs (`tttc_files::Outputs`) so a failed run never leaves a half-written OUT.

use std::path::Path;

use anyhow::{Context, Result};
use safetensors::{Dtype, View};
use tttc_frontends::weights::{load_safetensors, Weights};
use tttc_ir::{Data, Tensor};

/// Reads a tensor file (inputs, states, optimizer moments): no larger than the memory tttc may use.
pub fn read_tensors(path: &Path) -> Result<Weights> {
    load_safetensors(path, tttc_files::Cap::new("a tensor file tttc can hold in memory", tttc_files::memory::budget()))
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

/// `tensors` as the bytes of a safetensors file (float data as f32).
pub fn tensor_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
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
    safetensors::serialize(views.iter().map(|(n, b)| (*n, b)), None).context("cannot serialise tensors")
}

/// Writes `tensors` to `path` atomically: the file appears whole or not at all.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    tttc_files::write_atomic(path, &tensor_bytes(tensors)?)
}
