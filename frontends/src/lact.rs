//! LaCT (`model_type "lact_swiglu"`, "Test-Time Training Done Right"): SPEC-lact.md.
//!
//! Each block is a LaCT layer, then a SwiGLU MLP. The layer mixes sliding-window causal attention
//! with SwiGLU fast weights `f(x) = W1 (silu(W0 x) ⊙ (W2 x))` per head, which a `Scan` over
//! large chunks first applies to the chunk's queries and then updates with the chunk's keys and
//! values: the update is the gradient of the dot-product loss `Σ lr·(v · f(k))` (a `grad` op per
//! fast weight, expanded by the passes' autodiff), then momentum, Muon and the renormalisation of
//! every row to its initial norm.

use anyhow::{ensure, Result};
use tttc_ir::{BinaryOp, DType, Dim, Grad, Graph, Op, ReduceKind, Scan, Type, UnaryOp, ValueId};

use crate::builder::{Init, LmShape, Mode, ModelBuilder};
use crate::config::{LactBidirectionalConfig, LactConfig};
use crate::math::{rope, scaled_scores, softmax, split_heads};

/// The norms inside the layer (q/k-norm, the fast weights' output norm) use fla's default eps,
/// whatever `norm_eps` is; the fast q and k are l2-normalised with this eps outside the root.
const LAYER_EPS: f64 = 1e-5;
/// `ln(e^0.001 − 1)`: the learning rates' softplus starts at 0.001 (`lr_parameterization "mamba"`).
const LR_OFFSET: f64 = -6.907_255_237_315_470_5;
/// Newton–Schulz's five steps `(a, b, c)`: `X ← a·X + (b·A + c·A²)·X` with `A = X·Xᵀ` (§6).
const NEWTON_SCHULZ: [(f64, f64, f64); 5] =
    [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)];

pub fn build(c: &LactConfig, mode: Mode) -> Result<ModelBuilder> {
    ensure!(mode == Mode::Forward, "LaCT models run whole sequences only for now: decoding and saved states are not supported yet");
    let mut b = ModelBuilder::with_mode("lact", mode);
    let lm = LmShape {
        embed: "model.embeddings.weight",
        final_norm: "model.norm.weight",
        norm_eps: c.norm_eps,
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        layers: c.num_hidden_layers,
        tied: c.tie_word_embeddings,
        init_std: c.initializer_range,
        position_period: None,
        pad_token: c.pad_token_id,
    };
    // The RoPE tables, built at the first layer and shared by every layer.
    let mut angles: Option<(ValueId, ValueId)> = None;
    b.language_model(&lm, |b, h, layer| {
        let p = format!("model.layers.{layer}.");
        let (dim, eps) = (c.hidden_size, c.norm_eps);
        let angles = match angles {
            Some(a) => a,
            None => {
                let len = b.dim(h, 1)?;
                let pos = b.iota(len, DType::F32)?;
                *angles.insert(rope_tables(&mut b.g, pos, c.attention_head_dim(), c.rope_theta)?)
            }
        };
        let x = b.rms_norm(h, &format!("{p}attn_norm.weight"), dim, eps)?;
        let y = lact_layer(b, c, x, angles, &format!("{p}attn."))?;
        let h = b.add(h, y)?;
        let x = b.rms_norm(h, &format!("{p}mlp_norm.weight"), dim, eps)?;
        let y = b.swiglu(x, &format!("{p}mlp"), dim, c.intermediate_size, false, c.initializer_range)?;
        b.add(h, y)
    })?;
    Ok(b)
}

/// Where layer 0's LaCT layer names its weights (`crate::layer_prefix`).
pub const LAYER_PREFIX: &str = "model.layers.0.attn.";

/// `cos` and `sin` `[len, d/2]` at the positions `pos` (f32 `[len]`) as fla tables them, in f32:
/// `inv_freq[i] = 1 / θ^(2i/d)` rounded to f32 (constants here), the angle `pos · inv_freq`
/// rounded to f32 by the product (SPEC-lact.md §5.2: an angle kept in f64 moves the logits).
fn rope_tables(g: &mut Graph, pos: ValueId, d: usize, theta: f64) -> Result<(ValueId, ValueId)> {
    let mut inv_freq = Vec::with_capacity(d / 2);
    for i in 0..d / 2 {
        let exponent = (2 * i) as f32 / d as f32;
        let power = theta.powf(f64::from(exponent)) as f32;
        let x = g.scalar(f64::from(1.0 / power))?;
        inv_freq.push(g.reshape(x, vec![Dim::c(1)])?);
    }
    let inv_freq = g.concat(&inv_freq, 0)?; // [d/2]
    let len = g.dim(pos, 0)?;
    let pos = g.reshape(pos, vec![len, Dim::c(1)])?;
    let angle = g.mul(pos, inv_freq)?;
    Ok((g.unary(UnaryOp::Cos, angle)?, g.unary(UnaryOp::Sin, angle)?))
}

/// The LaCT layer on `x` `[B, T, D]` (after `attn_norm`), weights under `s` (§5).
fn lact_layer(b: &mut ModelBuilder, c: &LactConfig, x: ValueId, angles: (ValueId, ValueId), s: &str) -> Result<ValueId> {
    let (dim, std) = (c.hidden_size, c.initializer_range);
    let (heads, d) = (c.num_lact_heads, c.fast_dim());
    let qkv = b.linear(x, &format!("{s}qkv"), dim, 3 * dim, Init::Normal { std }, c.qkv_bias.then_some(Init::Zeros))?;
    let third = |i: i64| (i * dim as i64, Some((i + 1) * dim as i64));
    let [mut q, mut k, v] = [0, 1, 2].map(|i| {
        let (start, end) = third(i);
        b.slice(qkv, -1, start, end)
    });
    let v = v?;
    if c.attn_qk_norm {
        q = b.rms_norm(q?, &format!("{s}q_norm.weight"), dim, LAYER_EPS);
        k = b.rms_norm(k?, &format!("{s}k_norm.weight"), dim, LAYER_EPS);
    }
    let (q, k) = (q?, k?);
    let attended = window_attention(b, c, [q, k, v], angles)?;

    // The fast q, k, v (§5.3): scaled and offset, silu, l2-normalised per fast head, RoPE in
    // groups of the attention heads' size.
    let scale = b.weight(&format!("{s}qk_scale"), &[dim, 2], Init::Ones);
    let offset = b.weight(&format!("{s}qk_offset"), &[dim, 2], Init::Zeros);
    let mut fast = Vec::new();
    for (i, x) in [q, k, v].into_iter().enumerate() {
        let mut x = x;
        if i < 2 {
            let column = |b: &mut ModelBuilder, w: ValueId| -> Result<ValueId> {
                let col = b.slice(w, 1, i as i64, Some(i as i64 + 1))?;
                b.reshape(col, vec![Dim::c(dim)])
            };
            let (sc, off) = (column(b, scale)?, column(b, offset)?);
            x = b.mul(x, sc)?;
            x = b.add(x, off)?;
        }
        if c.qkv_silu && !(i == 2 && c.no_v_silu) {
            x = b.unary(UnaryOp::Silu, x)?;
        }
        x = split_heads(&mut b.g, x, heads, d)?; // [B, Hf, T, d]
        if i < 2 {
            x = l2_normalize(&mut b.g, x)?;
            if !c.ttt_nope {
                x = grouped_rope(b, x, angles, c)?;
            }
        }
        fast.push(x);
    }

    // Per-token learning rates (one per fast weight) and the momentum gate, each [B, Hf, T, 1].
    let z = b.linear(x, &format!("{s}lr_proj"), dim, 3 * heads, Init::Normal { std }, Some(Init::Zeros))?;
    let shift = b.scalar(LR_OFFSET)?;
    let z = b.add(z, shift)?;
    let lr = b.unary(UnaryOp::Softplus, z)?;
    let lr = per_head(b, lr, heads, 3)?; // [B, Hf, T, 3]
    let lrs = [0, 1, 2].map(|j| b.slice(lr, -1, j, Some(j + 1)));
    let [lr0, lr1, lr2] = lrs;
    let mut seqs = vec![fast[0], fast[1], fast[2], lr0?, lr1?, lr2?];
    if c.use_momentum {
        let beta = b.linear(x, &format!("{s}momentum_proj.0"), dim, heads, Init::Normal { std }, Some(Init::Zeros))?;
        let beta = b.unary(UnaryOp::Sigmoid, beta)?;
        seqs.push(per_head(b, beta, heads, 1)?);
    }
    let weights = initial_fast_weights(b, c, s)?;
    let o = chunk_scan(b, c, weights, &seqs)?; // [B, Hf, T, d]

    // §5.7: the output norm per head, the TTT scale, heads concatenated, o_proj of the sum.
    let mut y = b.rms_norm(o, &format!("{s}ttt_norm.weight"), d, LAYER_EPS)?;
    if c.learnable_ttt_scale {
        let gate = b.linear(x, &format!("{s}ttt_scale_proj"), dim, heads, Init::Normal { std }, Some(Init::Zeros))?;
        let gate = b.unary(UnaryOp::Silu, gate)?;
        let gate = per_head(b, gate, heads, 1)?;
        y = b.mul(y, gate)?;
    }
    let y = merge_heads(&mut b.g, y, dim)?;
    let sum = b.add(attended, y)?;
    b.linear(sum, &format!("{s}o_proj"), dim, dim, Init::Normal { std }, None)
}

/// LaCT's bidirectional layer (§8) on `x` `[B, T, D]`, output `y`: the fast weights take one
/// update on the whole sequence (no momentum, no attention, no RoPE), then every token is read
/// through them. Weight names as the published layer's (no prefix).
pub fn bidirectional_layer(c: &LactBidirectionalConfig, mode: Mode) -> Result<ModelBuilder> {
    ensure!(mode == Mode::Forward, "a bidirectional LaCT layer reads the whole sequence at once: it has no state to hand on or resume from");
    let mut b = ModelBuilder::with_mode("lact_bidirectional", mode);
    let (dim, heads, d, m) = (c.dim, c.heads(), c.head_dim, c.fast_hidden());
    let linear = Init::Uniform { bound: 1.0 / (dim as f64).sqrt() };
    let x = b.hidden_input(dim);
    let qkv = b.linear(x, "to_qkv", dim, 3 * dim, linear.clone(), None)?;
    let qkv = b.unary(UnaryOp::Silu, qkv)?;
    let mut fast = Vec::new();
    for i in 0..3 {
        let part = b.slice(qkv, -1, (i * dim) as i64, Some(((i + 1) * dim) as i64))?;
        let part = split_heads(&mut b.g, part, heads, d)?;
        fast.push(if i < 2 && c.qk_l2_norm { l2_normalize(&mut b.g, part)? } else { part });
    }
    let z = b.linear(x, "lr_proj", dim, 3 * heads, linear.clone(), None)?;
    let shift = b.scalar(c.base_lr.exp_m1().ln())?;
    let z = b.add(z, shift)?;
    let lr = b.unary(UnaryOp::Softplus, z)?;
    let lr = per_head(&mut b, lr, heads, 3)?;
    let lr = [0, 1, 2].map(|j| b.slice(lr, -1, j, Some(j + 1))).into_iter().collect::<Result<Vec<_>>>()?;
    let w0 = b.weight("w0", &[heads, m, d], Init::Normal { std: 1.0 / (d as f64).sqrt() });
    let w1 = b.weight("w1", &[heads, d, m], Init::Normal { std: 1.0 / (m as f64).sqrt() });
    let w2 = b.weight("w2", &[heads, m, d], Init::Normal { std: 1.0 / (d as f64).sqrt() });
    let mut norms = Vec::new();
    let mut weights = Vec::new();
    for w in [w0, w1, w2] {
        norms.push(row_norms(&mut b.g, w)?);
        let mut shape = b.ty(w).shape.clone();
        shape.insert(0, Dim::sym("B"));
        weights.push(b.broadcast(w, shape)?);
    }
    let updated = update_fast_weights(&mut b.g, &weights, [fast[1], fast[2]], &lr, &norms, None, c.use_muon, None)?;
    let mut o = fast_mlp(&mut b.g, fast[0], &updated)?;
    if c.use_o_norm {
        o = b.rms_norm(o, "o_norm.weight", d, LAYER_EPS)?;
    }
    let o = merge_heads(&mut b.g, o, dim)?;
    let y = b.linear(o, "o_proj", dim, dim, linear, None)?;
    b.output("y", y);
    Ok(b)
}

/// `[B, T, H·k]` → `[B, H, T, k]`: head h's k columns (h·k … h·k + k − 1).
fn per_head(b: &mut ModelBuilder, x: ValueId, heads: usize, k: usize) -> Result<ValueId> {
    split_heads(&mut b.g, x, heads, k)
}

/// `[B, H, T, d]` → `[B, T, H·d]`.
fn merge_heads(g: &mut Graph, x: ValueId, dim: usize) -> Result<ValueId> {
    let x = g.transpose(x, &[0, 2, 1, 3])?;
    let (batch, len) = (g.dim(x, 0)?, g.dim(x, 1)?);
    g.reshape(x, vec![batch, len, Dim::c(dim)])
}

/// `x / (‖x‖₂ + 1e-5)` over the last axis.
fn l2_normalize(g: &mut Graph, x: ValueId) -> Result<ValueId> {
    let sq = g.mul(x, x)?;
    let sum = g.reduce(ReduceKind::Sum, sq, -1, true)?;
    let norm = g.unary(UnaryOp::Sqrt, sum)?;
    let eps = g.scalar(LAYER_EPS)?;
    let norm = g.add(norm, eps)?;
    g.div(x, norm)
}

/// RoPE on the fast heads `[B, Hf, T, d]` as on their concatenation `[B, T, D]` in groups of
/// the attention heads' size dh (groups may straddle fast heads).
fn grouped_rope(b: &mut ModelBuilder, x: ValueId, (cos, sin): (ValueId, ValueId), c: &LactConfig) -> Result<ValueId> {
    let dh = c.attention_head_dim();
    let whole = merge_heads(&mut b.g, x, c.hidden_size)?;
    let groups = split_heads(&mut b.g, whole, c.num_attn_heads, dh)?;
    let turned = rope(&mut b.g, groups, cos, sin, dh)?;
    let whole = merge_heads(&mut b.g, turned, c.hidden_size)?;
    split_heads(&mut b.g, whole, c.num_lact_heads, c.fast_dim())
}

/// Sliding-window causal attention (§5.2) of `[Q, K, V]` `[B, T, D]`: RoPE on q and k, each query
/// attends to the W keys up to itself. Returns the heads concatenated, `[B, T, D]`.
fn window_attention(b: &mut ModelBuilder, c: &LactConfig, [q, k, v]: [ValueId; 3], (cos, sin): (ValueId, ValueId)) -> Result<ValueId> {
    let (heads, dh) = (c.num_attn_heads, c.attention_head_dim());
    let [q, k, v] = [q, k, v].map(|x| split_heads(&mut b.g, x, heads, dh));
    let q = rope(&mut b.g, q?, cos, sin, dh)?;
    let k = rope(&mut b.g, k?, cos, sin, dh)?;
    let scores = scaled_scores(&mut b.g, q, k, dh)?; // [B, H, T, T]
    let mut scores = b.tri_mask(scores, f64::NEG_INFINITY)?;
    if let Some(window) = c.window_size {
        let len = b.dim(q, 2)?;
        let far = keys_past_window(&mut b.g, len, window)?;
        scores = b.add(scores, far)?;
    }
    let probs = softmax(&mut b.g, scores)?;
    let o = b.matmul(probs, v?)?;
    merge_heads(&mut b.g, o, c.hidden_size)
}

/// `[T, T]`: −∞ where key j is W or more positions before query t (t − j ≥ W), else 0. The
/// causal mask of a `[T + W − 1, T]` matrix whose row a is key a − (W − 1): column t is masked
/// where t > a, that is t − j ≥ W; its last T rows, transposed.
fn keys_past_window(g: &mut Graph, len: Dim, window: usize) -> Result<ValueId> {
    let zero = g.scalar(0.0)?;
    let tall = g.broadcast(zero, vec![len.plus(window as i64 - 1)?, len])?;
    let masked = g.tri_mask(tall, f64::NEG_INFINITY)?;
    let keys = g.slice(masked, 0, window as i64 - 1, None)?; // [j, t]
    g.transpose_last2(keys)
}

/// The initial fast weights `[W0, W1, W2]` of every head (§5.5): `w1` `[Hf, d, m]`; `w0`, `w2`
/// `[Hf, m, d]` in full, or low-rank `w_left · w_right + ½·I`.
fn initial_fast_weights(b: &mut ModelBuilder, c: &LactConfig, s: &str) -> Result<[ValueId; 3]> {
    let (heads, d, m) = (c.num_lact_heads, c.fast_dim(), c.fast_hidden());
    let w1 = b.weight(&format!("{s}w1"), &[heads, d, m], Init::Normal { std: 1.0 / (m as f64).sqrt() });
    let mut outer = |name: &str| -> Result<ValueId> {
        let Some(r) = c.low_rank else {
            return Ok(b.weight(&format!("{s}{name}"), &[heads, m, d], Init::Normal { std: 1.0 / (d as f64).sqrt() }));
        };
        let gain = c.fw_init_gain;
        let left = b.weight(&format!("{s}{name}.w_left"), &[heads, m, r], Init::Normal { std: gain / (r as f64).sqrt() });
        let right = b.weight(&format!("{s}{name}.w_right"), &[heads, r, d], Init::Normal { std: gain / (d as f64).sqrt() });
        let product = b.matmul(left, right)?;
        let half_eye = half_identity(&mut b.g, m, d)?;
        b.add(product, half_eye)
    };
    let w0 = outer("w0")?;
    let w2 = outer("w2")?;
    Ok([w0, w1, w2])
}

/// `½·I` for the `[rows, cols]` rectangular identity (ones at (i, i), i < min(rows, cols)).
fn half_identity(g: &mut Graph, rows: usize, cols: usize) -> Result<ValueId> {
    let r = g.iota(Dim::c(rows), DType::F32)?;
    let r = g.reshape(r, vec![Dim::c(rows), Dim::c(1)])?;
    let col = g.iota(Dim::c(cols), DType::F32)?;
    let below = g.binary(BinaryOp::Ge, r, col)?;
    let above = g.binary(BinaryOp::Ge, col, r)?;
    let eye = g.mul(below, above)?;
    let half = g.scalar(0.5)?;
    g.mul(eye, half)
}

/// `‖W[i, :]‖₂` per row `[…, rows, 1]`.
fn row_norms(g: &mut Graph, w: ValueId) -> Result<ValueId> {
    let sq = g.mul(w, w)?;
    let sum = g.reduce(ReduceKind::Sum, sq, -1, true)?;
    g.unary(UnaryOp::Sqrt, sum)
}

/// Every row of `w` rescaled to the norm `target` `[…, rows, 1]`: `w / (‖w‖ + 1e-5) · n`.
fn renormalize(g: &mut Graph, w: ValueId, target: ValueId) -> Result<ValueId> {
    let norms = row_norms(g, w)?;
    let eps = g.scalar(LAYER_EPS)?;
    let norms = g.add(norms, eps)?;
    let unit = g.div(w, norms)?;
    g.mul(unit, target)
}

/// The chunk loop (§5.6) over `seqs` = q, k, v `[B, Hf, T, d]`, lr0, lr1, lr2 (and β)
/// `[B, Hf, T, 1]`, from the initial fast weights (the same for every sequence). Returns the
/// fast weights' outputs `[B, Hf, T, d]`.
fn chunk_scan(b: &mut ModelBuilder, c: &LactConfig, weights: [ValueId; 3], seqs: &[ValueId]) -> Result<ValueId> {
    let bsym = Dim::sym("B");
    let heads = c.num_lact_heads;
    let mut shapes = Vec::new();
    let mut carried = Vec::new();
    let mut norms = Vec::new();
    for &w in &weights {
        let mut shape = b.ty(w).shape.clone();
        norms.push(row_norms(&mut b.g, w)?); // constants of the sequence, [Hf, rows, 1]
        shape.insert(0, bsym.clone());
        carried.push(b.broadcast(w, shape.clone())?);
        shapes.push(shape);
    }
    let mut inputs = carried.clone();
    if c.use_momentum {
        let zero = b.scalar(0.0)?;
        for shape in &shapes {
            inputs.push(b.broadcast(zero, shape.clone())?);
        }
    }
    if c.ttt_prenorm {
        inputs.extend(&carried);
    }
    let carries = inputs.len();
    inputs.extend(seqs);
    inputs.extend(&norms);
    let types: Vec<Type> = shapes.into_iter().map(|s| Type::new(DType::F32, s)).collect();
    let body = chunk_body(c, &types, heads)?;
    let outs = b.scan(Scan { axis: 2, chunk: c.chunk_size, carries, seqs: seqs.len(), body, reverse: false }, &inputs)?;
    Ok(outs[carries])
}

/// One chunk: apply the fast weights to its queries, then update them with its keys, values and
/// learning rates (the last chunk's update is never read). Arguments: W0, W1, W2 (and the
/// momenta, and pre-norm the raw weights), then the chunk of q, k, v, lr0, lr1, lr2 (and β),
/// then the row norms n0, n1, n2; results: the next carries, then the chunk's outputs.
fn chunk_body(c: &LactConfig, types: &[Type], heads: usize) -> Result<Graph> {
    let n = if c.chunk_size == 1 { Dim::c(1) } else { Dim::sym("n") };
    let bsym = Dim::sym("B");
    let mut g = Graph::new("lact_chunk");
    let carry = |g: &mut Graph, name: &str| -> Vec<ValueId> { types.iter().enumerate().map(|(i, t)| g.input(&format!("{name}{i}"), t.clone())).collect() };
    let w = carry(&mut g, "w");
    let momentum = if c.use_momentum { carry(&mut g, "momentum") } else { Vec::new() };
    let raw = if c.ttt_prenorm { carry(&mut g, "raw") } else { Vec::new() };
    let chunk = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(c.fast_dim())]);
    let [q, k, v] = ["q", "k", "v"].map(|name| g.input(name, chunk.clone()));
    let per_token = Type::new(DType::F32, vec![bsym, Dim::c(heads), n, Dim::c(1)]);
    let lr: Vec<ValueId> = (0..3).map(|j| g.input(&format!("lr{j}"), per_token.clone())).collect();
    let beta = c.use_momentum.then(|| g.input("beta", per_token));
    let norms: Vec<ValueId> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let r = t.rank();
            g.input(&format!("norm{i}"), Type::new(DType::F32, vec![t.shape[r - 3].clone(), t.shape[r - 2].clone(), Dim::c(1)]))
        })
        .collect();

    let out = fast_mlp(&mut g, q, &w)?;
    let mean_beta = beta.map(|beta| g.reduce(ReduceKind::Mean, beta, 2, true)).transpose()?;
    let momentum = mean_beta.map(|mean| (mean, &momentum[..]));
    let raw = c.ttt_prenorm.then_some(&raw[..]);
    let next = update_fast_weights(&mut g, &w, [k, v], &lr, &norms, momentum, c.use_muon, raw)?;
    for (i, v) in next.into_iter().enumerate() {
        g.output(&format!("next{i}"), v);
    }
    g.output("out", out);
    Ok(g)
}

/// One update of the fast weights `w` with the tokens' keys and values `[k, v]` and each
/// weight's learning rates `lr` (§5.6 steps 2–5): `ΔW_j = Σ_t lr_j,t ∇_{W_j}(v_t · f_W(k_t))`,
/// the gradient of the values' dot product weighted by that weight's learning rates; with
/// `momentum` (the mean β and the last steps) `ΔW ← ΔW + β̄·M`; Muon; the step, and every row
/// renormalised to `norms` (pre-norm: `raw` takes the step and is renormalised into the new
/// weights). Returns the new weights, then the new momenta and raw weights where there are.
#[allow(clippy::too_many_arguments)]
fn update_fast_weights(
    g: &mut Graph,
    w: &[ValueId],
    [k, v]: [ValueId; 2],
    lr: &[ValueId],
    norms: &[ValueId],
    momentum: Option<(ValueId, &[ValueId])>,
    muon: bool,
    raw: Option<&[ValueId]>,
) -> Result<Vec<ValueId>> {
    let mut next = Vec::new();
    let mut next_momentum = Vec::new();
    let mut next_raw = Vec::new();
    for j in 0..w.len() {
        let weighted = g.mul(v, lr[j])?;
        let mut step = dot_product_gradient(g, w, k, weighted, j)?;
        if let Some((mean_beta, last)) = momentum {
            let kept = g.mul(mean_beta, last[j])?;
            step = g.add(step, kept)?;
            next_momentum.push(step);
        }
        if muon {
            step = newton_schulz(g, step)?;
        }
        let stepped = g.add(raw.map_or(w[j], |raw| raw[j]), step)?;
        if raw.is_some() {
            next_raw.push(stepped);
        }
        next.push(renormalize(g, stepped, norms[j])?);
    }
    Ok([next, next_momentum, next_raw].concat())
}

/// `f(x) = W1 (silu(W0 x) ⊙ (W2 x))` on the rows of `x` `[B, Hf, n, d]`: `(silu(x W0ᵀ) ⊙ (x W2ᵀ)) W1ᵀ`.
fn fast_mlp(g: &mut Graph, x: ValueId, w: &[ValueId]) -> Result<ValueId> {
    let (w0, w1, w2) = (w[0], w[1], w[2]);
    let w0t = g.transpose_last2(w0)?;
    let gate = g.matmul(x, w0t)?;
    let gate = g.unary(UnaryOp::Silu, gate)?;
    let w2t = g.transpose_last2(w2)?;
    let up = g.matmul(x, w2t)?;
    let hidden = g.mul(gate, up)?;
    let w1t = g.transpose_last2(w1)?;
    g.matmul(hidden, w1t)
}

/// `∇_{W_j} Σ_t v_t · f_W(k_t)` for the fast weights `w`: a `grad` op over the dot product.
fn dot_product_gradient(g: &mut Graph, w: &[ValueId], k: ValueId, v: ValueId, j: usize) -> Result<ValueId> {
    let mut loss = Graph::new("fast_weight_loss");
    let args: Vec<ValueId> = w.iter().enumerate().map(|(i, &x)| loss.input(&format!("w{i}"), g.ty(x).clone())).collect();
    let keys = loss.input("k", g.ty(k).clone());
    let values = loss.input("v", g.ty(v).clone());
    let f = fast_mlp(&mut loss, keys, &args)?;
    let mut total = loss.mul(values, f)?;
    while loss.ty(total).rank() > 0 {
        total = loss.reduce(ReduceKind::Sum, total, 0, false)?;
    }
    loss.output("loss", total);
    let mut operands = w.to_vec();
    operands.extend([k, v]);
    let grads = g.push(Op::Grad(Box::new(Grad { wrt: vec![j], body: loss })), &operands)?;
    Ok(grads[0])
}

/// Muon's orthogonalisation of each `[rows, cols]` matrix of `x` `[B, Hf, rows, cols]` (§6): on
/// the transpose when rows > cols, `X = G / (‖G‖_F + 1e-7)`, then the five Newton–Schulz steps.
fn newton_schulz(g: &mut Graph, x: ValueId) -> Result<ValueId> {
    let r = g.ty(x).rank();
    let (rows, cols) = (g.ty(x).shape[r - 2].clone(), g.ty(x).shape[r - 1].clone());
    let tall = rows.as_const() > cols.as_const();
    let mut x = if tall { g.transpose_last2(x)? } else { x };
    let sq = g.mul(x, x)?;
    let sum = g.reduce(ReduceKind::Sum, sq, -1, true)?;
    let sum = g.reduce(ReduceKind::Sum, sum, -2, true)?;
    let norm = g.unary(UnaryOp::Sqrt, sum)?;
    let eps = g.scalar(1e-7)?;
    let norm = g.add(norm, eps)?;
    x = g.div(x, norm)?;
    for (a, bc, cc) in NEWTON_SCHULZ {
        let xt = g.transpose_last2(x)?;
        let gram = g.matmul(x, xt)?;
        let square = g.matmul(gram, gram)?;
        let (bs, cs) = (g.scalar(bc)?, g.scalar(cc)?);
        let lin = g.mul(bs, gram)?;
        let quad = g.mul(cs, square)?;
        let poly = g.add(lin, quad)?;
        let moved = g.matmul(poly, x)?;
        let a = g.scalar(a)?;
        let kept = g.mul(a, x)?;
        x = g.add(kept, moved)?;
    }
    if tall {
        return g.transpose_last2(x);
    }
    Ok(x)
}
