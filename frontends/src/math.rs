//! Small compositions of IR ops used inside and outside scan bodies (which are plain graphs).

use anyhow::Result;
use tttc_ir::{Graph, ReduceKind, UnaryOp, ValueId};

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
