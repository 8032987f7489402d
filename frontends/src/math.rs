//! Small compositions of IR ops used inside and outside scan bodies (which are plain graphs).

use anyhow::Result;
use tttc_ir::{DType, Dim, Graph, ReduceKind, UnaryOp, ValueId};

/// `((x − μ) / σ, σ)` over the last axis, `σ = sqrt(var + eps)` with the biased variance, kept as `[…, 1]`.
pub fn normalize(g: &mut Graph, x: ValueId, eps: f64) -> Result<(ValueId, ValueId)> {
    let mu = g.reduce(ReduceKind::Mean, x, -1, true)?;
    let xc = g.sub(x, mu)?;
    let sq = g.mul(xc, xc)?;
    let var = g.reduce(ReduceKind::Mean, sq, -1, true)?;
    let e = g.scalar(eps)?;
    let var = g.add(var, e)?;
    let std = g.unary(UnaryOp::Sqrt, var)?;
    Ok((g.div(xc, std)?, std))
}

/// LayerNorm over the last axis; `w` and `b` broadcast against `x`.
pub fn layer_norm(g: &mut Graph, x: ValueId, w: ValueId, b: ValueId, eps: f64) -> Result<ValueId> {
    let (xhat, _) = normalize(g, x, eps)?;
    let y = g.mul(w, xhat)?;
    g.add(y, b)
}

/// d gelu_tanh(x) / dx = ½(1 + t) + ½x(1 − t²)·c(1 + 3·0.044715x²), t = tanh(c(x + 0.044715x³)), c = √(2/π).
pub fn gelu_tanh_grad(g: &mut Graph, x: ValueId) -> Result<ValueId> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let x2 = g.mul(x, x)?;
    let k = g.scalar(0.044715)?;
    let kx2 = g.mul(k, x2)?;
    let one = g.scalar(1.0)?;
    let inner = g.add(one, kx2)?; // 1 + 0.044715x²
    let cs = g.scalar(c)?;
    let u = g.mul(x, inner)?;
    let u = g.mul(cs, u)?;
    let t = g.unary(UnaryOp::Tanh, u)?;
    let half = g.scalar(0.5)?;
    let left = g.add(one, t)?;
    let left = g.mul(half, left)?;
    let t2 = g.mul(t, t)?;
    let sech2 = g.sub(one, t2)?;
    let k3 = g.scalar(3.0 * 0.044715)?;
    let k3x2 = g.mul(k3, x2)?;
    let du = g.add(one, k3x2)?;
    let du = g.mul(cs, du)?;
    let right = g.mul(x, sech2)?;
    let right = g.mul(right, du)?;
    let right = g.mul(half, right)?;
    g.add(left, right)
}

/// `[B, T, H·d]` → `[B, H, T, d]`: head h takes columns h·d … h·d+d−1.
pub fn split_heads(g: &mut Graph, x: ValueId, heads: usize, d: usize) -> Result<ValueId> {
    let x = g.reshape(x, vec![Dim::sym("B"), Dim::sym("T"), Dim::c(heads), Dim::c(d)])?;
    g.transpose(x, &[0, 2, 1, 3])
}

/// `cos` and `sin` of the RoPE angles `a[t, i] = t · θ^(−2i/d)` for positions t < `len` and
/// i < d/2, shaped `[len, d/2]` (computed, not tabled, so positions are not capped).
pub fn rope_angles(g: &mut Graph, len: Dim, d: usize, theta: f64) -> Result<(ValueId, ValueId)> {
    let pos = g.iota(len.clone(), DType::F32)?;
    let pos = g.reshape(pos, vec![len, Dim::c(1)])?;
    let i = g.iota(Dim::c(d / 2), DType::F32)?;
    let k = g.scalar(-2.0 * theta.ln() / d as f64)?;
    let e = g.mul(i, k)?;
    let inv_freq = g.unary(UnaryOp::Exp, e)?; // [d/2]
    let angle = g.mul(pos, inv_freq)?; // [len, d/2]
    Ok((g.unary(UnaryOp::Cos, angle)?, g.unary(UnaryOp::Sin, angle)?))
}
