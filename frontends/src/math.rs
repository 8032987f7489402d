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

/// `[B, T, H·d]` → `[B, H, T, d]`: head h takes columns h·d … h·d+d−1.
pub fn split_heads(g: &mut Graph, x: ValueId, heads: usize, d: usize) -> Result<ValueId> {
    let (batch, len) = (g.dim(x, 0)?, g.dim(x, 1)?);
    let x = g.reshape(x, vec![batch, len, Dim::c(heads), Dim::c(d)])?;
    g.transpose(x, &[0, 2, 1, 3])
}

/// `cos` and `sin` of the RoPE angles `a[t, i] = t · θ^(−2i/d)` for positions t < `len` and
/// i < d/2, shaped `[len, d/2]` (computed, not tabled, so positions are not capped).
pub fn rope_angles(g: &mut Graph, len: Dim, d: usize, theta: f64) -> Result<(ValueId, ValueId)> {
    let pos = g.iota(len, DType::F32)?;
    rope_angles_at(g, pos, d, theta)
}

/// [`rope_angles`] at the positions `pos` (f32 `[len]`): a decoding step's one position.
pub fn rope_angles_at(g: &mut Graph, pos: ValueId, d: usize, theta: f64) -> Result<(ValueId, ValueId)> {
    let len = g.dim(pos, 0)?;
    let pos = g.reshape(pos, vec![len, Dim::c(1)])?;
    let i = g.iota(Dim::c(d / 2), DType::F32)?;
    let k = g.scalar(-2.0 * theta.ln() / d as f64)?;
    let e = g.mul(i, k)?;
    let inv_freq = g.unary(UnaryOp::Exp, e)?; // [d/2]
    let angle = g.mul(pos, inv_freq)?; // [len, d/2]
    Ok((g.unary(UnaryOp::Cos, angle)?, g.unary(UnaryOp::Sin, angle)?))
}

/// `q kᵀ / √d` `[B, H, T, S]` of the queries `[B, H, T, d]` and the keys `[B, H, S, d]`.
pub fn scaled_scores(g: &mut Graph, q: ValueId, k: ValueId, d: usize) -> Result<ValueId> {
    let kt = g.transpose_last2(k)?;
    let scores = g.matmul(q, kt)?;
    let scale = g.scalar((d as f64).sqrt())?;
    g.div(scores, scale)
}

/// The softmax over the last axis, made stable by subtracting each row's maximum.
pub fn softmax(g: &mut Graph, scores: ValueId) -> Result<ValueId> {
    let m = g.reduce(ReduceKind::Max, scores, -1, true)?;
    let shifted = g.sub(scores, m)?;
    let e = g.unary(UnaryOp::Exp, shifted)?;
    let sum = g.reduce(ReduceKind::Sum, e, -1, true)?;
    g.div(e, sum)
}

/// Rotate-half RoPE over the last axis of `x` `[B, h, T, d]`: for i < d/2,
/// `x'[i] = x[i]·cos − x[i+d/2]·sin`, `x'[i+d/2] = x[i+d/2]·cos + x[i]·sin`.
pub fn rope(g: &mut Graph, x: ValueId, cos: ValueId, sin: ValueId, d: usize) -> Result<ValueId> {
    let half = (d / 2) as i64;
    let x1 = g.slice(x, -1, 0, Some(half))?;
    let x2 = g.slice(x, -1, half, Some(2 * half))?;
    let a = g.mul(x1, cos)?;
    let b = g.mul(x2, sin)?;
    let lo = g.sub(a, b)?;
    let a = g.mul(x2, cos)?;
    let b = g.mul(x1, sin)?;
    let hi = g.add(a, b)?;
    g.concat(&[lo, hi], -1)
}
