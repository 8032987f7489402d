//! LaCT (`model_type "lact_swiglu"`, "Test-Time Training Done Right"): SPEC-lact.md.
//!
//! Each block is a LaCT layer, then a SwiGLU MLP. The layer mixes sliding-window causal attention
//! with SwiGLU fast weights `f(x) = W1 (silu(W0 x) ⊙ (W2 x))` per head, which a `Scan` over
//! large chunks first applies to the chunk's queries and then updates with the chunk's keys and
//! values: the update is the gradient of the dot-product loss `Σ lr·(v · f(k))` (a `grad` op per
//! fast weight, expanded by the passes' autodiff), then momentum, Muon and the renormalisation of
//! every row to its initial norm.

use anyhow::{ensure, Result};
use tttc_ir::{BinaryOp, DType, Dim, Graph, ReduceKind, Type, UnaryOp, ValueId};

use crate::builder::{Init, LmShape, Mode, ModelBuilder, StateInit};
use crate::chunk_update::{chunk_is_whole, chunk_update, hand_on, scan_chunks, start_values, unit_norms, ChunkState, Gates, Slot, UpdateRule};
use crate::config::{InnerSpec, LactBidirectionalConfig, LactConfig, Renormalize};
use crate::learner::{Learner, Stored};
use crate::math::{rope, scaled_scores, softmax, split_heads};

/// LaCT stores a fast weight `[out, in]`: a unit's weights are a row.
const ROWS: i64 = -1;
/// The norms inside the layer (q/k-norm, the fast weights' output norm) use fla's default eps,
/// whatever `norm_eps` is; the fast q and k are l2-normalised with this eps outside the root.
const LAYER_EPS: f64 = 1e-5;
/// `ln(e^0.001 − 1)`: the learning rates' softplus starts at 0.001 (`lr_parameterization "mamba"`).
const LR_OFFSET: f64 = -6.907_255_237_315_470_5;
pub fn build(c: &LactConfig, mode: Mode) -> Result<ModelBuilder> {
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
    // The tokens' positions, built at the first layer and shared by every layer.
    let mut positions: Option<Positions> = None;
    b.language_model(&lm, |b, h, layer| {
        let p = format!("model.layers.{layer}.");
        let (dim, eps) = (c.hidden_size, c.norm_eps);
        let at = match positions {
            Some(at) => at,
            None => *positions.insert(Positions::new(b, c, h)?),
        };
        let x = b.rms_norm(h, &format!("{p}attn_norm.weight"), dim, eps)?;
        let y = lact_layer(b, c, x, &at, &format!("{p}attn."))?;
        let h = b.add(h, y)?;
        let x = b.rms_norm(h, &format!("{p}mlp_norm.weight"), dim, eps)?;
        let y = b.swiglu(x, &format!("{p}mlp"), dim, c.intermediate_size, false, c.initializer_range)?;
        b.add(h, y)
    })?;
    Ok(b)
}

/// Layer 0's LaCT layer alone (see `crate::build_layer`): `x` `[B, T, D]` (after the block's
/// norm) to `y`, with its state in the modes that hand one on or continue one.
pub fn layer(c: &LactConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = ModelBuilder::with_mode("lact_layer", mode);
    let x = b.hidden_input(c.hidden_size);
    let at = Positions::new(&mut b, c, x)?;
    let y = lact_layer(&mut b, c, x, &at, LAYER_PREFIX)?;
    b.output("y", y);
    Ok(b)
}

/// Where this graph's tokens are: their absolute positions and RoPE tables, and for a step
/// whether its token ends a chunk.
#[derive(Clone, Copy)]
struct Positions {
    /// f32 `[T]`: 0 … T−1, a resumed run's after its state's position, or a step's one.
    absolute: ValueId,
    /// RoPE's `cos` and `sin` at them, `[T, dh/2]`.
    angles: (ValueId, ValueId),
    /// A step's `[1, 1, 1, 1]`: 1 when its token is its chunk's last (the fast weights update
    /// after it), else 0.
    chunk_ends: Option<ValueId>,
}

impl Positions {
    /// The positions of `h`'s tokens (axis 1). Every graph that hands on a state hands on
    /// `chunk_position` too, the tokens of the current chunk already seen (a step's state: it
    /// says when a chunk ends, which the absolute position would say only through a division
    /// the IR does not have); a resumed run takes it and hands on the one its position gives.
    fn new(b: &mut ModelBuilder, c: &LactConfig, h: ValueId) -> Result<Positions> {
        let chunk = c.chunk_size;
        let absolute = match (b.position, b.mode) {
            (Some(position), _) => position,
            (None, mode) => {
                let len = b.dim(h, 1)?;
                let upto = b.iota(len, DType::F32)?;
                let offset = b.scalar(mode.resumed_at() as f64)?;
                b.add(upto, offset)?
            }
        };
        let chunk_position = b.mode.takes_state().then(|| b.state_input("chunk_position", Type::f32(&[1]), StateInit::Zeros));
        let mut chunk_ends = None;
        if b.mode != Mode::Forward {
            let next = match (b.mode, chunk_position) {
                (Mode::Step, Some(seen)) => {
                    let last = b.scalar((chunk - 1) as f64)?;
                    let ends = b.binary(BinaryOp::Ge, seen, last)?;
                    chunk_ends = Some(b.reshape(ends, vec![Dim::c(1); 4])?);
                    // (seen + 1) · (1 − ends): exact, whole numbers.
                    let one = b.scalar(1.0)?;
                    let next = b.add(seen, one)?;
                    let goes_on = b.sub(one, ends)?;
                    b.mul(next, goes_on)?
                }
                _ => b.next_position(Some(chunk))?,
            };
            // A count of tokens: nothing differentiates through it (a layer's vector-Jacobian
            // product seeds every state output).
            let next = b.stop_gradient(next)?;
            b.state_output("chunk_position", next);
        }
        let angles = rope_tables(&mut b.g, absolute, c.attention_head_dim(), c.rope_theta)?;
        Ok(Positions { absolute, angles, chunk_ends })
    }
}

/// Where layer 0's LaCT layer names its weights (`crate::layer_prefix`).
pub const LAYER_PREFIX: &str = "model.layers.0.attn.";

/// `cos` and `sin` `[len, d/2]` at the positions `pos` (f32 `[len]`) as fla tables them, in f32:
/// `inv_freq[i] = 1 / θ^(2i/d)` rounded to f32 (constants here), the angle `pos · inv_freq`
/// rounded to f32 by the product in an f32 run (SPEC-lact.md §5.2: an angle kept in f64 moves
/// the logits by up to 7e-6; the interpreter's f64 runs, for finite differences, keep it).
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
fn lact_layer(b: &mut ModelBuilder, c: &LactConfig, x: ValueId, at: &Positions, s: &str) -> Result<ValueId> {
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
    let attended = attention(b, c, [q, k, v], at, s)?;

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
                x = grouped_rope(b, x, at.angles, c)?;
            }
        }
        fast.push(x);
    }

    // Per-token learning rates (one per fast weight) and the momentum gate, each [B, Hf, T, 1].
    let z = b.linear(x, &format!("{s}lr_proj"), dim, 3 * heads, Init::Normal { std }, Some(Init::Zeros))?;
    let shift = b.scalar(LR_OFFSET)?;
    let z = b.add(z, shift)?;
    let lr = b.unary(UnaryOp::Softplus, z)?;
    let lr = split_heads(&mut b.g, lr, heads, 3)?; // [B, Hf, T, 3]: head h's lr0, lr1, lr2
    let lrs = [0, 1, 2].map(|j| b.slice(lr, -1, j, Some(j + 1)));
    let [lr0, lr1, lr2] = lrs;
    let mut seqs = vec![fast[0], fast[1], fast[2], lr0?, lr1?, lr2?];
    if c.use_momentum {
        let beta = b.linear(x, &format!("{s}momentum_proj.0"), dim, heads, Init::Normal { std }, Some(Init::Zeros))?;
        let beta = b.unary(UnaryOp::Sigmoid, beta)?;
        seqs.push(split_heads(&mut b.g, beta, heads, 1)?);
    }
    let o = fast_weights(b, c, &seqs, at, s)?; // [B, Hf, T, d]

    // §5.7: the output norm per head, the TTT scale, heads concatenated, o_proj of the sum.
    let mut y = b.rms_norm(o, &format!("{s}ttt_norm.weight"), d, LAYER_EPS)?;
    if c.learnable_ttt_scale {
        let gate = b.linear(x, &format!("{s}ttt_scale_proj"), dim, heads, Init::Normal { std }, Some(Init::Zeros))?;
        let gate = b.unary(UnaryOp::Silu, gate)?;
        let gate = split_heads(&mut b.g, gate, heads, 1)?;
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
    // It hands on no state but the position (`Mode::Run`, as every layer can be asked for its
    // state), and continues none.
    ensure!(!mode.takes_state(), "a bidirectional LaCT layer reads the whole sequence at once: it has no state to continue from");
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
    let lr = split_heads(&mut b.g, lr, heads, 3)?;
    let lr = [0, 1, 2].map(|j| b.slice(lr, -1, j, Some(j + 1))).into_iter().collect::<Result<Vec<_>>>()?;
    let w0 = b.weight("w0", &[heads, m, d], Init::Normal { std: 1.0 / (d as f64).sqrt() });
    let w1 = b.weight("w1", &[heads, d, m], Init::Normal { std: 1.0 / (m as f64).sqrt() });
    let w2 = b.weight("w2", &[heads, m, d], Init::Normal { std: 1.0 / (d as f64).sqrt() });
    let mut norms = Vec::new();
    let mut weights = Vec::new();
    for w in [w0, w1, w2] {
        norms.push(Some(unit_norms(&mut b.g, w, ROWS)?));
        let mut shape = b.ty(w).shape.clone();
        shape.insert(0, Dim::sym("B"));
        weights.push(b.broadcast(w, shape)?);
    }
    let learner = InnerSpec::lact(c.inter_multi);
    let sums = fast_steps(&mut b.g, &learner, &weights, fast[1], fast[2], &lr)?;
    // One update, from the initial weights: no momentum, post-norm.
    let rule = UpdateRule { chunk: 1, momentum: false, forget: false, muon: c.use_muon, renormalize: Some(Renormalize::Post), unit_axis: ROWS };
    let initial = ChunkState { weights, ..ChunkState::default() };
    let biases = vec![false; sums.len()];
    let updated = chunk_update(&mut b.g, &rule, &initial, sums, Gates { beta: None, alpha: None }, &norms, &biases, None)?;
    let mut o = fast_output(&mut b.g, &learner, fast[0], &updated.weights)?;
    if c.use_o_norm {
        o = b.rms_norm(o, "o_norm.weight", d, LAYER_EPS)?;
    }
    let o = merge_heads(&mut b.g, o, dim)?;
    let y = b.linear(o, "o_proj", dim, dim, linear, None)?;
    b.output("y", y);
    Ok(b)
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
///
/// A graph that hands on a state hands on the keys (after RoPE) and values of its last W − 1
/// tokens (all of them without a window), `{s}k_cache` and `{s}v_cache` `[B, L, Ha, dh]`
/// position-major; a step and a resumed run read them before their own tokens, the slots before
/// the sequence's start masked out.
fn attention(b: &mut ModelBuilder, c: &LactConfig, [q, k, v]: [ValueId; 3], at: &Positions, s: &str) -> Result<ValueId> {
    let (heads, dh) = (c.num_attn_heads, c.attention_head_dim());
    let (cos, sin) = at.angles;
    let [q, k, v] = [q, k, v].map(|x| split_heads(&mut b.g, x, heads, dh));
    let q = rope(&mut b.g, q?, cos, sin, dh)?;
    let k = rope(&mut b.g, k?, cos, sin, dh)?;
    // A window of one position looks back at nothing: no cache.
    let caches = c.window_size != Some(1);
    // A step without a window reads a cache that grows, all of whose keys it sees.
    let grows = matches!((b.mode, c.window_size), (Mode::Step, None));
    let cached = match (b.mode, c.window_size) {
        _ if !caches => None,
        (Mode::Step | Mode::Resume { .. }, Some(window)) => Some(Dim::c(window - 1)),
        (Mode::Step, None) => Some(Dim::sym("L")),
        (Mode::Resume { position }, None) => Some(Dim::c(position)),
        _ => None,
    };
    let position_major = [0, 2, 1, 3];
    let (mut keys, mut values) = (b.transpose(k, &position_major)?, b.transpose(v?, &position_major)?); // [B, S, Ha, dh]
    if let Some(len) = cached.clone() {
        let ty = Type::new(DType::F32, vec![Dim::sym("B"), len, Dim::c(heads), Dim::c(dh)]);
        let past_k = b.state_input(&format!("{s}k_cache"), ty.clone(), StateInit::Zeros);
        let past_v = b.state_input(&format!("{s}v_cache"), ty, StateInit::Zeros);
        keys = b.concat(&[past_k, keys], 1)?;
        values = b.concat(&[past_v, values], 1)?;
    }
    if b.mode != Mode::Forward && caches {
        for (name, all) in [("k_cache", keys), ("v_cache", values)] {
            let kept = match c.window_size {
                // The last W − 1 positions, zeros before the sequence's start.
                Some(window) => {
                    let padded = if cached.is_some() { all } else { b.pad(all, 1, window - 1, 0)? };
                    b.slice(padded, 1, -(window as i64 - 1), None)?
                }
                None => all,
            };
            b.state_output(&format!("{s}{name}"), kept);
        }
    }
    let keys = b.transpose(keys, &position_major)?; // [B, Ha, S, dh]
    let values = b.transpose(values, &position_major)?;
    let scores = scaled_scores(&mut b.g, q, keys, dh)?; // [B, Ha, T, S]
    let scores = match cached {
        None => b.g.tri_mask_window(scores, f64::NEG_INFINITY, c.window_size)?,
        Some(_) if grows => scores,
        Some(len) => {
            let all = b.dim(keys, 2)?;
            let excluded = cache_mask(b, c, at.absolute, len, all)?;
            b.add(scores, excluded)?
        }
    };
    let probs = softmax(&mut b.g, scores)?;
    let o = b.matmul(probs, values)?;
    merge_heads(&mut b.g, o, c.hidden_size)
}

/// A finite stand-in for −∞ that a mask adds to a score: the softmax's exponential is 0 there.
const EXCLUDED: f64 = -1e30;

/// `[T, S]`: [`EXCLUDED`] where the query at `absolute[t]` may not see key s of a cache of
/// `cached` positions followed by the T tokens (key s at position `absolute[0] − cached + s`):
/// a key after the query, outside its window, or before the sequence's start; else 0.
fn cache_mask(b: &mut ModelBuilder, c: &LactConfig, absolute: ValueId, cached: Dim, keys: Dim) -> Result<ValueId> {
    let cached = cached.as_const().expect("a resumed run's or windowed step's cache has a known length") as f64;
    let first = b.slice(absolute, 0, 0, Some(1))?;
    let back = b.scalar(cached)?;
    let first = b.sub(first, back)?;
    let slots = b.iota(keys.clone(), DType::F32)?;
    let key = b.add(slots, first)?; // [S]
    let len = b.dim(absolute, 0)?;
    let query = b.reshape(absolute, vec![len, Dim::c(1)])?; // [T, 1]
    let mut seen = b.binary(BinaryOp::Ge, query, key)?;
    let zero = b.scalar(0.0)?;
    let started = b.binary(BinaryOp::Ge, key, zero)?;
    seen = b.mul(seen, started)?;
    if let Some(window) = c.window_size {
        let reach = b.scalar((window - 1) as f64)?;
        let oldest = b.sub(query, reach)?;
        let near = b.binary(BinaryOp::Ge, key, oldest)?;
        seen = b.mul(seen, near)?;
    }
    let one = b.scalar(1.0)?;
    let unseen = b.sub(seen, one)?; // 0 or −1
    let magnitude = b.scalar(-EXCLUDED)?;
    b.mul(unseen, magnitude)
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

/// The fast weights over `seqs` = q, k, v `[B, Hf, T, d]`, lr0, lr1, lr2 (and β) `[B, Hf, T, 1]`
/// (§5.6): the chunk loop, a `Scan` in chunks of C from the initial weights (the same for every
/// sequence) or a state, or a step's one token. Returns their outputs `[B, Hf, T, d]`.
///
/// A resumed run starts p tokens into a chunk: its sequence is padded in front with p tokens of
/// learning rate and β 0, so that the scan's chunks fall on the chunk boundaries, and the first
/// chunk continues the state's sums.
fn fast_weights(b: &mut ModelBuilder, c: &LactConfig, seqs: &[ValueId], at: &Positions, s: &str) -> Result<ValueId> {
    let initial = initial_fast_weights(b, c, s)?;
    let norms = initial.iter().map(|&w| unit_norms(&mut b.g, w, ROWS)).collect::<Result<Vec<_>>>()?; // [Hf, rows, 1]
    let layout = ChunkState::layout(&update_rule(c), &fast_weight_types(c, s), b.mode != Mode::Forward, s);
    // Low-rank weights have no parameter of their own: a fresh sequence gets them from its
    // prefill, as every decoding does. W1 is always a parameter.
    let start = start_values(b, &layout, &initial, |j| (c.low_rank.is_none() || j == 1).then(|| format!("{s}w{j}")))?;
    match at.chunk_ends {
        Some(ends) => {
            let state = ChunkState::from_values(&start, &layout);
            let (out, next) = chunk(&mut b.g, c, &state, seqs, &norms, Some(ends))?;
            hand_on(b, &layout, &next.values());
            Ok(out)
        }
        None => {
            let seen = b.mode.resumed_at() % c.chunk_size;
            let body = chunk_body(c, &layout, seqs.len())?;
            scan_chunks(b, &layout, start, seqs, &norms, body, c.chunk_size, seen)
        }
    }
}

/// The chunk loop's body: [`chunk`] on one chunk. Arguments: the state's values (laid out as
/// `layout`), the chunk of each of the `seqs` sequences, the row norms n0, n1, n2; results:
/// the next state's values, then the chunk's outputs. A body that hands on a state keeps the
/// update of a chunk shorter than C (the sequence's last) in its sums.
fn chunk_body(c: &LactConfig, layout: &[Slot], seqs: usize) -> Result<Graph> {
    let n = if c.chunk_size == 1 { Dim::c(1) } else { Dim::sym("n") };
    let (bsym, heads) = (Dim::sym("B"), c.num_lact_heads);
    let mut g = Graph::new("lact_chunk");
    let state: Vec<ValueId> = layout.iter().enumerate().map(|(i, slot)| g.input(&format!("state{i}"), slot.ty.clone())).collect();
    let state = ChunkState::from_values(&state, layout);
    let chunk_type = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(c.fast_dim())]);
    let per_token = Type::new(DType::F32, vec![bsym, Dim::c(heads), n.clone(), Dim::c(1)]);
    let names = ["q", "k", "v", "lr0", "lr1", "lr2", "beta"];
    let inputs: Vec<ValueId> =
        names[..seqs].iter().enumerate().map(|(i, name)| g.input(name, if i < 3 { chunk_type.clone() } else { per_token.clone() })).collect();
    let norms: Vec<ValueId> = state
        .weights
        .iter()
        .enumerate()
        .map(|(j, &w)| {
            let shape = g.ty(w).shape.clone();
            g.input(&format!("norm{j}"), Type::new(DType::F32, vec![shape[1].clone(), shape[2].clone(), Dim::c(1)]))
        })
        .collect();
    // Handing on a state: 1 where the chunk is whole (its update is made), 0 for a shorter last
    // one (its update is kept in the sums).
    let whole = if state.sums.is_empty() { None } else { Some(chunk_is_whole(&mut g, n, c.chunk_size)?) };
    let (out, next) = chunk(&mut g, c, &state, &inputs, &norms, whole)?;
    for (i, v) in next.values().into_iter().enumerate() {
        g.output(&format!("next{i}"), v);
    }
    g.output("out", out);
    Ok(g)
}

/// One chunk of the fast weights, or a step's one token (§5.6, §7): the queries' outputs through
/// the state's weights, then the update by the chunk's keys, values and learning rates (`seqs` as
/// [`fast_weights`] takes them), as [`chunk_update`] makes it.
fn chunk(g: &mut Graph, c: &LactConfig, state: &ChunkState, seqs: &[ValueId], norms: &[ValueId], ends: Option<ValueId>) -> Result<(ValueId, ChunkState)> {
    let (q, k, v) = (seqs[0], seqs[1], seqs[2]);
    let learner = InnerSpec::lact(c.inter_multi);
    let out = fast_output(g, &learner, q, &state.weights)?;
    let steps = fast_steps(g, &learner, &state.weights, k, v, &seqs[3..6])?;
    let gates = Gates { beta: seqs.get(6).copied(), alpha: None };
    let norms: Vec<Option<ValueId>> = norms.iter().copied().map(Some).collect();
    let biases = vec![false; steps.len()];
    let next = chunk_update(g, &update_rule(c), state, steps, gates, &norms, &biases, ends)?;
    Ok((out, next))
}

/// LaCT's inner optimizer (§5.6): momentum from the chunk's mean β, Muon, every row
/// renormalised after the step, or pre-norm before it.
fn update_rule(c: &LactConfig) -> UpdateRule {
    let renormalize = if c.ttt_prenorm { Renormalize::Pre } else { Renormalize::Post };
    UpdateRule { chunk: c.chunk_size, momentum: c.use_momentum, forget: false, muon: c.use_muon, renormalize: Some(renormalize), unit_axis: ROWS }
}

/// The fast weights' state names and types, `{s}w0` `[B, Hf, m, d]`, `{s}w1` `[B, Hf, d, m]`,
/// `{s}w2` `[B, Hf, m, d]`.
fn fast_weight_types(c: &LactConfig, s: &str) -> Vec<(String, Type)> {
    let (heads, d, m) = (c.num_lact_heads, c.fast_dim(), c.fast_hidden());
    [[m, d], [d, m], [m, d]]
        .iter()
        .enumerate()
        .map(|(j, &[rows, cols])| (format!("{s}w{j}"), Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(heads), Dim::c(rows), Dim::c(cols)])))
        .collect()
}

/// LaCT's fast weights `[w0, w1, w2]` as the learner [`InnerSpec::lact`] takes them, stored as
/// PyTorch's Linear: `w2` `[m, d]` is its first layer `W1`, `w0` `[m, d]` that layer's gate and
/// `w1` `[d, m]` its second layer, so `f(x) = W1 (silu(W0 x) ⊙ (W2 x))` (§5.6).
fn as_learner(w: &[ValueId]) -> [ValueId; 3] {
    [w[2], w[0], w[1]]
}

/// The fast weights' outputs `f_W(x)` on the rows of `x` `[B, Hf, n, d]`.
fn fast_output(g: &mut Graph, spec: &InnerSpec, x: ValueId, w: &[ValueId]) -> Result<ValueId> {
    Learner { spec, stored: Stored::OutIn }.output(g, x, &as_learner(w), None)
}

/// `ΔW_j = Σ_t lr_j,t ∇_{W_j}(v_t · f_W(k_t))` for the fast weights `w` `[w0, w1, w2]` and their
/// learning rates `lr` `[lr0, lr1, lr2]`: the learner's steps of the dot-product loss, a rate
/// per matrix.
fn fast_steps(g: &mut Graph, spec: &InnerSpec, w: &[ValueId], k: ValueId, v: ValueId, lr: &[ValueId]) -> Result<Vec<ValueId>> {
    let steps = Learner { spec, stored: Stored::OutIn }.steps(g, &as_learner(w), k, v, None, &as_learner(lr))?;
    // Back from the learner's order [W1, W1_gate, W2] = [w2, w0, w1].
    Ok(vec![steps[1], steps[2], steps[0]])
}
