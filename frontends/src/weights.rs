//! Weights: safetensors files in (f32, f16 and bf16, converted to f32) and checked against the
//! parameters a graph declares.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use tttc_files::Cap;
use tttc_ir::Tensor;

pub type Weights = BTreeMap<String, Tensor>;

/// Reads every tensor of a safetensors file of at most `cap` bytes. Float tensors become f32; i64
/// stays i64.
pub fn load_safetensors(path: &Path, cap: Cap) -> Result<Weights> {
    let bytes = tttc_files::read(path, cap)?;
    parse_safetensors(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))
}

pub fn parse_safetensors(bytes: &[u8]) -> Result<Weights> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Weights::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::f32(shape, data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::F16 => Tensor::f32(shape, data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::BF16 => Tensor::f32(shape, data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::F64 => Tensor::f32(shape, data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect()),
            Dtype::I64 => Tensor::i64(shape, data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
            other => bail!("tensor {name} has unsupported dtype {other:?}"),
        };
        out.insert(name, t);
    }
    Ok(out)
}
