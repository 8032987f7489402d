//! TTT language models (ttt-lm-pytorch `TTTForCausalLM`): SPEC §2.
//!
//! The TTT layer is built in its **primal** form: inside each mini-batch, token i reads the inner
//! model with its own weights `W_i = W₀ − Σ_{j≤i} η[i,j] g_j` (or the gated inner optimizer's
//! form of the same shape, [`Gated`]), all gradients taken at the mini-batch's starting state
//! `W₀`; the mini-batch loop is a `Scan` carrying the inner state.
//! The inner gradient is not spelled out: it is a `grad` op over the inner loss, which the passes'
//! autodiff expands; deriving the dual form is the passes' job too.

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::{BinaryOp, DType, Dim, Graph, Scan, Type, UnaryOp, ValueId};

use crate::builder::{Init, LmShape, Mode, ModelBuilder, StateInit};
use crate::chunk_update::{chunk_is_whole, chunk_update, hand_on, muon, scan_chunks, start_values, unit_norms, ChunkState, Gates, Slot, UpdateRule};
use crate::config::{InnerModel, InnerNorm, TttConfig, Update};
use crate::learner::{Learner, Stored};
use crate::math::{layer_norm, rope_angles, rope_angles_at, split_heads};

/// LayerNorm eps of `post_norm` (fixed in the reference; the inner LayerNorm's is the learner's).
const LN_EPS: f64 = 1e-6;

pub fn build(c: &TttConfig, mode: Mode) -> Result<ModelBuilder> {
    let name = match c.inner.preset() {
        Some(InnerModel::Linear) => "ttt_linear",
        Some(InnerModel::Mlp) => "ttt_mlp",
        None => "ttt",
    };
    let mut b = ModelBuilder::with_mode(name, mode);
    let lm = LmShape {
        embed: "model.embed_tokens.weight",
        final_norm: "model.norm.weight",
        norm_eps: c.rms_norm_eps,
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        layers: c.num_hidden_layers,
        tied: c.tie_word_embeddings,
        init_std: c.initializer_range,
        position_period: Some(c.mini_batch_size),
        pad_token: None,
    };
    b.language_model(&lm, |b, h, layer| block(b, c, h, &format!("model.layers.{layer}.")))?;
    Ok(b)
}

/// Where layer 0's layer names its weights and state (`crate::layer_prefix`).
pub const LAYER_PREFIX: &str = "model.layers.0.seq_modeling_block.";

/// Layer 0's TTT layer alone (see `crate::build_layer`).
pub fn layer(c: &TttConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = ModelBuilder::with_mode("ttt_layer", mode);
    let x = b.hidden_input(c.hidden_size);
    let y = ttt_layer(&mut b, c, x, LAYER_PREFIX)?;
    b.output("y", y);
    Ok(b)
}

fn block(b: &mut ModelBuilder, c: &TttConfig, mut h: ValueId, p: &str) -> Result<ValueId> {
    let (dim, std) = (c.hidden_size, c.initializer_range);
    if c.pre_conv {
        let x = b.rms_norm(h, &format!("{p}conv.norm.weight"), dim, c.rms_norm_eps)?;
        let y = b.causal_conv(x, &format!("{p}conv.conv"), dim, c.conv_kernel, true)?;
        h = b.add(h, y)?;
    }
    let x = b.rms_norm(h, &format!("{p}seq_norm.weight"), dim, c.rms_norm_eps)?;
    let y = ttt_layer(b, c, x, &format!("{p}seq_modeling_block."))?;
    h = b.add(h, y)?;
    let x = b.rms_norm(h, &format!("{p}ffn_norm.weight"), dim, c.rms_norm_eps)?;
    let y = b.swiglu(x, &format!("{p}mlp"), dim, c.intermediate_size, false, std)?;
    b.add(h, y)
}

fn ttt_layer(b: &mut ModelBuilder, c: &TttConfig, x: ValueId, s: &str) -> Result<ValueId> {
    let (dim, heads, d) = (c.hidden_size, c.num_heads, c.head_dim());
    let normal = Init::Normal { std: c.initializer_range };
    let (q, k) = if c.share_qk {
        let shared = b.linear(x, &format!("{s}q_proj"), dim, dim, normal.clone(), None)?;
        let q = b.causal_conv(shared, &format!("{s}conv_q"), dim, c.conv_kernel, true)?;
        let k = b.causal_conv(shared, &format!("{s}conv_k"), dim, c.conv_kernel, true)?;
        (q, k)
    } else {
        let q = b.linear(x, &format!("{s}q_proj"), dim, dim, normal.clone(), None)?;
        let k = b.linear(x, &format!("{s}k_proj"), dim, dim, normal.clone(), None)?;
        (q, k)
    };
    let v = b.linear(x, &format!("{s}v_proj"), dim, dim, normal.clone(), None)?;
    let (q, k, v) = (split_heads(b, q, heads, d)?, split_heads(b, k, heads, d)?, split_heads(b, v, heads, d)?);

    // lr[b,h,t] = base_lr · sigmoid(x_t · w_h + β_h) / d; per matrix, lr[b,h,t,m] likewise.
    let rates = learning_rates(c);
    let logit = head_logits(b, x, s, "lr", (heads, rates), dim)?;
    let gate = b.unary(UnaryOp::Sigmoid, logit)?;
    let scale = b.scalar(c.ttt_base_lr / d as f64)?;
    let lr = b.mul(gate, scale)?;
    let lr = if c.optimizer.lr_per_matrix {
        let (batch, len) = (b.dim(x, 0)?, b.dim(x, 1)?);
        let lr = b.reshape(lr, vec![batch, len, Dim::c(heads), Dim::c(rates)])?;
        b.transpose(lr, &[0, 2, 1, 3])? // [B, H, T, M]
    } else {
        b.transpose(lr, &[0, 2, 1])? // [B, H, T]
    };

    let update = if c.optimizer.update == Update::PerChunk {
        let mut gate = |on: bool, name: &str| -> Result<Option<ValueId>> {
            if !on {
                return Ok(None);
            }
            let z = head_logits(b, x, s, name, (heads, 1), dim)?;
            let gate = b.unary(UnaryOp::Sigmoid, z)?;
            let gate = b.transpose(gate, &[0, 2, 1])?;
            Ok(Some(unit_axes(&mut b.g, gate, 1)?))
        };
        InnerUpdate::PerChunk { beta: gate(c.optimizer.momentum, "momentum")?, alpha: gate(c.optimizer.forget, "forget")? }
    } else if c.optimizer.gated_rule() {
        // log β = log sigmoid(z) = −softplus(−z); log(1 − α) = log sigmoid(−z) = −softplus(z).
        let log_momentum = if c.optimizer.momentum { Some(log_gate(b, x, s, "momentum", heads, dim, false)?) } else { None };
        let log_keep = if c.optimizer.forget { Some(log_gate(b, x, s, "forget", heads, dim, true)?) } else { None };
        InnerUpdate::PerToken(Rule::Gated { log_momentum, log_keep })
    } else {
        InnerUpdate::PerToken(Rule::TokenScaled { token_idx: b.weight(&format!("{s}learnable_token_idx"), &[c.mini_batch_size], Init::Zeros) })
    };
    let norm = match c.inner.norm {
        InnerNorm::LayerNorm => {
            let ln_w = b.weight(&format!("{s}ttt_norm_weight"), &[heads, d], Init::Ones);
            let ln_b = b.weight(&format!("{s}ttt_norm_bias"), &[heads, d], Init::Zeros);
            let per_head = vec![Dim::c(1), Dim::c(heads), Dim::c(1), Dim::c(d)];
            Some([b.reshape(ln_w, per_head.clone())?, b.reshape(ln_b, per_head)?])
        }
        InnerNorm::None => None,
    };

    // The inner state: [W1, b1, W1_gate, b1_gate, W2, b2, …] (no b{l} without bias, no gate
    // without glu or on the last layer), each [B, H, rows, cols].
    let batch = Dim::sym("B");
    let mut names = Vec::new();
    let mut params = Vec::new();
    for t in c.inner.tensors(d) {
        let name = format!("{s}{}", t.name);
        let init = if t.bias { Init::Zeros } else { Init::Normal { std: 0.02 } };
        params.push(b.weight(&name, &[heads, t.rows, t.cols], init));
        names.push(name);
    }
    let mut state = Vec::new();
    for &p in &params {
        let mut shape = b.ty(p).shape.clone();
        shape.insert(0, batch.clone());
        state.push(shape);
    }
    let layer = Layer { names: &names, params: &params, shapes: &state };
    let z = match update {
        InnerUpdate::PerChunk { beta, alpha } => {
            let lr = if c.optimizer.lr_per_matrix { lr } else { unit_axes(&mut b.g, lr, 1)? };
            chunk_loop(b, c, layer, [q, k, v, lr], [beta, alpha], norm, s)?
        }
        InnerUpdate::PerToken(rule) if b.mode == Mode::Step => {
            let decode = Decode { names: &names, shapes: &state, position: b.position.expect("a step graph has a position") };
            decode_step(b, c, decode, [q, k, v, lr], rule, norm)?
        }
        InnerUpdate::PerToken(rule) => mini_batch_scan(b, c, layer, [q, k, v, lr], rule, norm)?,
    };

    let z = b.transpose(z, &[0, 2, 1, 3])?;
    let (batch, len) = (b.dim(x, 0)?, b.dim(x, 1)?);
    let z = b.reshape(z, vec![batch, len, Dim::c(dim)])?;
    let pw = b.weight(&format!("{s}post_norm.weight"), &[dim], Init::Ones);
    let pb = b.weight(&format!("{s}post_norm.bias"), &[dim], Init::Zeros);
    let mut y = layer_norm(&mut b.g, z, pw, pb, LN_EPS)?;
    if c.use_gate {
        let gate = b.linear(x, &format!("{s}g_proj"), dim, dim, normal.clone(), None)?;
        let gate = b.unary(UnaryOp::GeluTanh, gate)?;
        y = b.mul(gate, y)?;
    }
    b.linear(y, &format!("{s}o_proj"), dim, dim, normal, None)
}

/// `x_t · w_h + bias_h` for the per-head gate `{s}learnable_ttt_{gate}_weight` `[H, 1, D]` and
/// `_bias` `[H, 1]`: `[B, T, H]`. With `count` gates per head (`[H, count, D]`, `[H, count]`),
/// `[B, T, H·count]`, head-major.
fn head_logits(b: &mut ModelBuilder, x: ValueId, s: &str, gate: &str, (heads, count): (usize, usize), dim: usize) -> Result<ValueId> {
    let w = b.weight(&format!("{s}learnable_ttt_{gate}_weight"), &[heads, count, dim], Init::Normal { std: 0.02 });
    let bias = b.weight(&format!("{s}learnable_ttt_{gate}_bias"), &[heads, count], Init::Zeros);
    let w = b.reshape(w, vec![Dim::c(heads * count), Dim::c(dim)])?;
    let w = b.transpose_last2(w)?;
    let logit = b.matmul(x, w)?;
    let bias = b.reshape(bias, vec![Dim::c(heads * count)])?;
    b.add(logit, bias)
}

/// The logarithm of a per-head gate `sigmoid(z)` from [`head_logits`], or with `complement` of
/// `1 − sigmoid(z) = sigmoid(−z)`, as `−softplus(∓z)` (finite however saturated the gate),
/// `[B, H, T]`.
fn log_gate(b: &mut ModelBuilder, x: ValueId, s: &str, gate: &str, heads: usize, dim: usize, complement: bool) -> Result<ValueId> {
    let z = head_logits(b, x, s, gate, (heads, 1), dim)?;
    let z = if complement { z } else { b.unary(UnaryOp::Neg, z)? };
    let softplus = b.unary(UnaryOp::Softplus, z)?;
    let log = b.unary(UnaryOp::Neg, softplus)?;
    b.transpose(log, &[0, 2, 1])
}

/// When the inner weights move, with the layer-level operands of how.
enum InnerUpdate {
    /// Per token (the dual form's granularity), by a [`Rule`].
    PerToken(Rule),
    /// Once per mini-batch ([`chunk_loop`]), with the momentum gate β and forget gate α
    /// `[B, H, T, 1]` that are on.
    PerChunk { beta: Option<ValueId>, alpha: Option<ValueId> },
}

/// `x` with `count` trailing axes of size 1.
fn unit_axes(g: &mut Graph, x: ValueId, count: usize) -> Result<ValueId> {
    let mut shape = g.ty(x).shape.clone();
    shape.extend(std::iter::repeat_n(Dim::c(1), count));
    g.reshape(x, shape)
}

/// How a mini-batch's tokens move the inner weights per token (SPEC §2 step 5), with its
/// layer-level operands.
#[derive(Clone, Copy)]
enum Rule {
    /// `W_i = W₀ − τ[i]·Σ_{j≤i} lr_j g_j`, τ from `learnable_token_idx` `[b]`.
    TokenScaled { token_idx: ValueId },
    /// The gated inner optimizer (`InnerOptimizer`): `log β` and `log(1 − α)`, each `[B, H, T]`,
    /// for the gates that are on.
    Gated { log_momentum: Option<ValueId>, log_keep: Option<ValueId> },
}

/// One mini-batch of n ≤ b tokens, primal form. Arguments: the inner state, the chunk's Q, K, V
/// `[B, H, n, d]` and lr `[B, H, n]`, then `learnable_token_idx` (the references' rule) and, with
/// the inner LayerNorm, its weight and bias. Returns the next state (the last token's weights) and the outputs
/// `f_{W_i}(q_i)` (`q_i + LN(Z_{W_i}(q_i))` for the reference learners).
///
/// Every token reads and is trained through its own copy of the weights, shaped
/// `[B, H, n, rows, cols]` (a bias is a one-row matrix): the gradient of the summed inner loss with
/// respect to token j's copy is that token's gradient g_j at W₀. The gradient is a `grad` op over
/// the inner loss, which the passes expand.
///
/// With [`Sums`] carried, the body also carries the lr-weighted gradient sums
/// `A = Σ_j lr[j]·g_j`, one per state tensor after the states. A whole mini-batch hands on
/// `(W_last, 0)`; a shorter one, which can only be the sequence's last, hands on its own start
/// `(W₀, A)` instead (SPEC §2, "Decoding"), for steps to continue inside it. With
/// [`Sums::Read`] a mini-batch starts from sums `A₀` of tokens before it:
/// `W_i = W₀ − τ[i]·A₀ − Σ_j η[i,j] g_j` and it hands on `A₀ + Σ_j lr[j]·g_j`.
///
/// With the gated inner optimizer ([`Gated`]) there are no sums and no `learnable_token_idx`:
/// the chunk's `log β` and `log(1 − α)` `[B, H, n]` (those that are on) follow lr, and the
/// momentum `S` (with `momentum`) is carried last. Handing on a state, the body also carries the
/// weights the recurrence continues from (`current`, after the states), while the states stay
/// where the gradients are taken: it hands on `(W_last, W_last, S_last)` after a whole
/// mini-batch and `(W₀, W_last, S_last)` after a shorter one. Resumed (`Sums::Read`), with
/// momentum or Muon, a 0/1 input `real` after the gates marks the tokens that are not padding.
/// With Muon ([`muon_steps`]) each token's step is orthogonalised.
fn mini_batch_body(c: &TttConfig, state_types: &[Type], sums: Sums) -> Result<Graph> {
    let hand_off = sums != Sums::None;
    let (heads, d) = (c.num_heads, c.head_dim());
    // The chunk length: symbolic (the last mini-batch may be shorter), or 1 for one token a step.
    let n = if c.mini_batch_size == 1 { Dim::c(1) } else { Dim::sym("n") };
    let bsym = Dim::sym("B");
    let mut g = Graph::new("mini_batch");
    let state: Vec<ValueId> = state_types.iter().enumerate().map(|(i, t)| g.input(&format!("state{i}"), t.clone())).collect();
    let gated = c.optimizer.gated_rule();
    let mut inputs = |name: &str, on: bool| -> Vec<ValueId> {
        if on {
            state_types.iter().enumerate().map(|(i, t)| g.input(&format!("{name}{i}"), t.clone())).collect()
        } else {
            Vec::new()
        }
    };
    // The gradient sums, zero at every mini-batch's start in a prefill: read only by a resumed
    // run. Gated, the weights the recurrence continues from instead (the state's are where the
    // gradients are taken), and the momentum.
    let start_sums = inputs("acc", hand_off && !gated);
    let current = inputs("current", hand_off && gated);
    let momentum = inputs("momentum", c.optimizer.momentum);
    let chunk = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(d)]);
    let q = g.input("q", chunk.clone());
    let k = g.input("k", chunk.clone());
    let v = g.input("v", chunk);
    let per_token = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone()]);
    let lr = g.input("lr", per_token.clone());
    let log_momentum = c.optimizer.momentum.then(|| g.input("log_momentum", per_token.clone()));
    let log_keep = c.optimizer.forget.then(|| g.input("log_keep", per_token.clone()));
    // 0 on a resumed run's padding, whose momentum must not move the weights.
    let real = (takes_real(c) && sums == Sums::Read).then(|| g.input("real", per_token));
    let token_idx = (!gated).then(|| g.input("token_idx", Type::f32(&[c.mini_batch_size])));
    let norm = match c.inner.norm {
        InnerNorm::LayerNorm => {
            let per_head = Type::f32(&[1, heads, 1, d]);
            Some([g.input("ln_weight", per_head.clone()), g.input("ln_bias", per_head)])
        }
        InnerNorm::None => None,
    };

    let angles = rope_angles(&mut g, n.clone(), d, c.rope_theta)?;
    let q = rope(&mut g, q, angles)?;
    let k = rope(&mut g, k, angles)?;

    // η[i,j] = τ[i] · lr[j] for j ≤ i, τ[i] = max(0, 1/(i+1) + learnable_token_idx[i]).
    let pos = g.iota(n.clone(), DType::I64)?;
    let posf = g.cast(pos, DType::F32)?;
    let lr_shape = vec![bsym.clone(), Dim::c(heads), Dim::c(1), n.clone()];
    let (tau, lr_row, eta, gates) = match token_idx {
        Some(token_idx) => {
            let tau = token_scale(&mut g, token_idx, pos, posf)?;
            let tau = g.reshape(tau, vec![n.clone(), Dim::c(1)])?;
            let lr_row = g.reshape(lr, lr_shape)?;
            let eta = g.mul(tau, lr_row)?;
            (Some(tau), lr_row, g.tri_mask(eta, 0.0)?, None) // [B, H, n, n]
        }
        None => {
            let lr_row = g.reshape(lr, lr_shape)?;
            let gates = Gated::new(&mut g, posf, lr_row, log_momentum, log_keep, real)?;
            (None, lr_row, gates.eta, Some(gates))
        }
    };

    // The state as matrices with a token axis of 1, and per-token copies of it.
    let mut start = Vec::new(); // [B, H, 1, rows, cols]
    let mut copies = Vec::new(); // [B, H, n, rows, cols]
    for &s in &state {
        let (rows, cols) = matrix_dims(g.ty(s));
        let m = g.reshape(s, vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(rows), Dim::c(cols)])?;
        copies.push(g.broadcast(m, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(rows), Dim::c(cols)])?);
        start.push(m);
    }
    let grads = learner(c).gradients(&mut g, &copies, k, v, norm)?;

    // W_i = W₀ − Σ_j η[i,j] g_j (gated: from the current weights, with the gates' terms) for
    // every weight and bias; the next state is the last token's.
    let mut weights = Vec::new();
    let mut next_state = Vec::new();
    let mut next_momentum = Vec::new();
    let mut hand_offs = Vec::new();
    let biases = biases(c);
    for (i, ((&s, &w0), &gj)) in state.iter().zip(&start).zip(&grads).enumerate() {
        let (rows, cols) = matrix_dims(g.ty(s));
        // Where the tokens' weights start from: the gradients' W₀, or gated and handed on, the
        // carried current weights.
        let w0 = match current.get(i) {
            Some(&w) => g.reshape(w, vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(rows), Dim::c(cols)])?,
            None => w0,
        };
        let flat = g.reshape(gj, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(rows * cols)])?;
        let per_token = vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(rows), Dim::c(cols)];
        let muon = gates.as_ref().filter(|_| c.optimizer.muon);
        let step = match muon {
            Some(gates) => muon_steps(&mut g, gates, flat, lr, momentum.get(i).copied(), real, &per_token, biases[i])?,
            None => {
                let step = g.matmul(eta, flat)?;
                g.reshape(step, per_token.clone())?
            }
        };
        // Π (1 − α)·W₀ as a product over a one-long axis too (the dual form reads products).
        let kept = match gates.as_ref().and_then(|gates| gates.kept) {
            Some(kept) => {
                let flat_w0 = g.reshape(w0, vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(rows * cols)])?;
                let kept = g.matmul(kept, flat_w0)?;
                g.reshape(kept, per_token.clone())?
            }
            None => w0,
        };
        let mut w = g.sub(kept, step)?;
        // The carried term, a product over a one-long axis as the η term is one over j: the
        // sums before the chunk, − τ[i]·A₀, or the momentum, − c[i]·S₀.
        let carried = match &gates {
            // With Muon, S₀ is inside the orthogonalised steps.
            Some(_) if muon.is_some() => None,
            Some(gates) => gates.momentum.as_ref().map(|m| (m.into_weights, momentum[i])),
            None => (sums == Sums::Read).then(|| (tau.expect("the references' rule has τ"), start_sums[i])),
        };
        if let Some((scale, before)) = carried {
            let before = g.reshape(before, vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(rows * cols)])?;
            let before = g.matmul(scale, before)?;
            let before = g.reshape(before, per_token)?;
            w = g.sub(w, before)?;
        }
        if let Some(m) = gates.as_ref().and_then(|gates| gates.momentum.as_ref()) {
            // S_last = Π_m β_m · S₀ + Σ_j P[last,j]·lr_j·g_j
            let s0 = g.reshape(momentum[i], vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(rows * cols)])?;
            let decayed = g.mul(m.last_decay, s0)?;
            let pushed = g.matmul(m.last_push, flat)?;
            let next = g.add(decayed, pushed)?;
            next_momentum.push(g.reshape(next, g.ty(s).shape.clone())?);
        }
        let last = g.slice(w, 2, -1, None)?;
        next_state.push(g.reshape(last, g.ty(s).shape.clone())?);
        if hand_off && !gated {
            let acc = g.matmul(lr_row, flat)?; // Σ_j lr[j]·g_j, [B, H, 1, rows·cols]
            let mut acc = g.reshape(acc, g.ty(s).shape.clone())?;
            if sums == Sums::Read {
                acc = g.add(start_sums[i], acc)?;
            }
            hand_offs.push(acc);
        }
        weights.push(w);
    }
    let mut next_acc = Vec::new();
    let mut next_current = Vec::new();
    if hand_off {
        // whole = 1 for a whole mini-batch (n = b), else 0: whole-number blends, exact.
        let upto = g.iota(n.clone(), DType::F32)?;
        let last = g.slice(upto, 0, -1, None)?;
        let b_minus_one = g.scalar((c.mini_batch_size - 1) as f64)?;
        let whole = g.binary(BinaryOp::Ge, last, b_minus_one)?;
        let one = g.scalar(1.0)?;
        let part = g.sub(one, whole)?;
        for (i, (w_last, &w0)) in next_state.iter_mut().zip(&state).enumerate() {
            // Gated, the current weights go on as they are, whole mini-batch or not.
            if gated {
                next_current.push(*w_last);
            }
            let (kept, started) = (g.mul(whole, *w_last)?, g.mul(part, w0)?);
            *w_last = g.add(kept, started)?;
            if let Some(&acc) = hand_offs.get(i) {
                next_acc.push(g.mul(part, acc)?);
            }
        }
    }

    // Token i's output: the inner model with weights W_i applied to q_i.
    let out = learner(c).output(&mut g, q, &weights, norm)?;

    for (i, s) in next_state.into_iter().enumerate() {
        g.output(&format!("state{i}"), s);
    }
    for (i, a) in next_acc.into_iter().enumerate() {
        g.output(&format!("acc{i}"), a);
    }
    for (i, w) in next_current.into_iter().enumerate() {
        g.output(&format!("current{i}"), w);
    }
    for (i, m) in next_momentum.into_iter().enumerate() {
        g.output(&format!("momentum{i}"), m);
    }
    g.output("out", out);
    Ok(g)
}

/// With Muon, `Σ_{k≤i} D[i,k]·Muon(S_k)` `[B, H, n, rows, cols]` for every token i (the gated
/// rule's steps, each orthogonalised, so no sum over the gradients remains: the primal form),
/// from the tokens' gradients `flat` `[B, H, n, rows·cols]`, lr `[B, H, n]` and, with momentum,
/// S₀ (a bias's steps, `bias`, are not orthogonalised). On a resumed run the padding's steps
/// (`real` 0) are dropped, and replaced by ones before the orthogonalisation: a zero step's norm
/// has no derivative.
#[allow(clippy::too_many_arguments)]
fn muon_steps(
    g: &mut Graph,
    gates: &Gated,
    flat: ValueId,
    lr: ValueId,
    s0: Option<ValueId>,
    real: Option<ValueId>,
    per_token: &[Dim],
    bias: bool,
) -> Result<ValueId> {
    // S_k = Σ_j P[k,j]·lr_j·g_j + Π_{m≤k} β_m·S₀, or lr_k·g_k without momentum.
    let steps = match (&gates.momentum, s0) {
        (Some(m), Some(s0)) => {
            let pushed = g.matmul(m.push, flat)?;
            let mut one_row = g.ty(flat).shape.clone();
            one_row[2] = Dim::c(1);
            let s0 = g.reshape(s0, one_row)?;
            let decayed = g.mul(m.from_start, s0)?;
            g.add(pushed, decayed)?
        }
        (None, None) => {
            let lr = unit_axes(g, lr, 1)?;
            g.mul(lr, flat)?
        }
        _ => bail!("the momentum's terms and its carried value go together"),
    };
    let mut steps = g.reshape(steps, per_token.to_vec())?;
    let real = real.map(|real| unit_axes(g, real, 2)).transpose()?;
    if let Some(real) = real {
        let one = g.scalar(1.0)?;
        let padding = g.sub(one, real)?;
        let kept = g.mul(steps, real)?;
        steps = g.add(kept, padding)?;
    }
    let mut orthogonal = muon(g, steps, bias)?;
    if let Some(real) = real {
        orthogonal = g.mul(orthogonal, real)?;
    }
    let flat_shape = g.ty(flat).shape.clone();
    let orthogonal = g.reshape(orthogonal, flat_shape)?;
    let moved = g.matmul(gates.keep_within, orthogonal)?;
    g.reshape(moved, per_token.to_vec())
}

/// The gated inner optimizer over one chunk (SPEC §2, "Gated inner optimizer"). With
/// `P[i,k] = Π_{k<m≤i} β_m` and `D[i,k] = Π_{k<m≤i} (1 − α_m)` for k ≤ i (0 above the diagonal),
/// unrolling `S_i = β_i·S_{i−1} + lr_i·g_i` and `W_i = (1 − α_i)·W_{i−1} − S_i` from `(W₀, S₀)`
/// gives
///   `S_i = Π_{m≤i} β_m · S₀ + Σ_j P[i,j]·lr_j·g_j`,
///   `W_i = Π_{m≤i} (1 − α_m) · W₀ − c_i·S₀ − Σ_j η[i,j] g_j`,
/// with `η = D·(P ⊙ lr)` and `c = D·(Π_{m≤·} β_m)`: the references' form with decay products in
/// place of τ, so every W_i stays linear in W₀, S₀ and the gradients. Without momentum P is the
/// identity (β ≡ 0) and S is not carried; without forgetting D is all ones below the diagonal.
struct Gated {
    /// η `[B, H, n, n]`.
    eta: ValueId,
    /// D `[n, n]` or `[B, H, n, n]` (with forgetting).
    keep_within: ValueId,
    /// `Π_{m≤i} (1 − α_m)` `[B, H, n, 1]`, with forgetting.
    kept: Option<ValueId>,
    momentum: Option<Momentum>,
}

/// The momentum's terms of [`Gated`].
struct Momentum {
    /// c `[B, H, n, 1]`: how much of S₀ each token's weights lose.
    into_weights: ValueId,
    /// The last row of `P ⊙ lr` `[B, H, 1, n]` and `Π_m β_m` `[B, H, 1, 1]`: the next S₀.
    last_push: ValueId,
    last_decay: ValueId,
    /// All of `P ⊙ lr` `[B, H, n, n]` and `Π_{m≤i} β_m` `[B, H, n, 1]`: every S_i (for Muon).
    push: ValueId,
    from_start: ValueId,
}

impl Gated {
    /// From the chunk's positions `[n]` (f32), lr as a row `[B, H, 1, n]`, the gates' logs
    /// `[B, H, n]` and, on a resumed run, which tokens are real `[B, H, n]` (the padding in front,
    /// with lr 0 and both gates 1, carries S₀ unchanged and must not subtract it from the
    /// weights: `c = D·(Π β ⊙ real)`; η needs no mask, as the padding's lr is 0).
    fn new(
        g: &mut Graph,
        positions: ValueId,
        lr_row: ValueId,
        log_momentum: Option<ValueId>,
        log_keep: Option<ValueId>,
        real: Option<ValueId>,
    ) -> Result<Gated> {
        let n = g.dim(positions, 0)?;
        let column = g.reshape(positions, vec![n.clone(), Dim::c(1)])?;
        let row = g.reshape(positions, vec![Dim::c(1), n])?;
        let lower = g.binary(BinaryOp::Ge, column, row)?; // [i ≥ m]
        let one = g.scalar(1.0)?;
        let next = g.add(row, one)?;
        let strictly_lower = g.binary(BinaryOp::Ge, column, next)?; // [m > k]
        let (keep_within, kept) = match log_keep {
            Some(u) => {
                let (within, from_start) = decays(g, u, lower, strictly_lower)?;
                (within, Some(from_start))
            }
            None => (lower, None),
        };
        let Some(u) = log_momentum else {
            return Ok(Gated { eta: g.mul(keep_within, lr_row)?, keep_within, kept, momentum: None });
        };
        let (within, from_start) = decays(g, u, lower, strictly_lower)?;
        let push = g.mul(within, lr_row)?;
        let subtracted = match real {
            Some(real) => {
                let column = g.ty(from_start).shape.clone();
                let real = g.reshape(real, column)?;
                g.mul(from_start, real)?
            }
            None => from_start,
        };
        let momentum = Momentum {
            into_weights: g.matmul(keep_within, subtracted)?,
            last_push: g.slice(push, 2, -1, None)?,
            last_decay: g.slice(from_start, 2, -1, None)?,
            push,
            from_start,
        };
        Ok(Gated { eta: g.matmul(keep_within, push)?, keep_within, kept, momentum: Some(momentum) })
    }
}

/// From per-token logarithms `u` `[B, H, n]`: the products within the chunk,
/// `exp(Σ_{k<m≤i} u_m)` for k ≤ i and 0 above the diagonal, `[B, H, n, n]`, and from its start,
/// `exp(Σ_{m≤i} u_m)` `[B, H, n, 1]`. Each segment's sum is summed as `lower · (u ⊙ [m > k])`,
/// not taken as a difference of running sums, which would cancel.
fn decays(g: &mut Graph, u: ValueId, lower: ValueId, strictly_lower: ValueId) -> Result<(ValueId, ValueId)> {
    let mut column = g.ty(u).shape.clone();
    column.push(Dim::c(1));
    let u = g.reshape(u, column)?;
    let after = g.mul(u, strictly_lower)?;
    let segments = g.matmul(lower, after)?;
    let within = g.unary(UnaryOp::Exp, segments)?;
    let within = g.tri_mask(within, 0.0)?;
    let running = g.matmul(lower, u)?;
    Ok((within, g.unary(UnaryOp::Exp, running)?))
}

/// τ[i] = max(0, 1/(i+1) + learnable_token_idx[i]) at the positions i given as `index` (i64) and
/// `position` (the same, f32).
fn token_scale(g: &mut Graph, token_idx: ValueId, index: ValueId, position: ValueId) -> Result<ValueId> {
    let learned = g.gather(token_idx, index, 0)?;
    let one = g.scalar(1.0)?;
    let denom = g.add(position, one)?;
    let inv = g.div(one, denom)?;
    let tau = g.add(inv, learned)?;
    let zero = g.scalar(0.0)?;
    g.binary(BinaryOp::Max, tau, zero)
}

/// A TTT layer's inner weights: their state names (`{prefix}W1`, …), parameters `[H, rows, cols]`
/// and state shapes `[B, H, rows, cols]`.
struct Layer<'a> {
    names: &'a [String],
    params: &'a [ValueId],
    shapes: &'a [Vec<Dim>],
}

/// The mini-batch loop over the whole sequence: a `Scan` of [`mini_batch_body`] in chunks of b,
/// carrying the inner weights (and, when the graph hands on a state, the gradient sums or, gated,
/// the current weights; with momentum, S). Operands: q, k, v `[B, H, T, d]`, lr `[B, H, T]`, the
/// [`Rule`]'s; returns `[B, H, T, d]`.
///
/// A resumed run starts from the state given, p tokens into a mini-batch: its sequence is padded
/// in front with p tokens of lr 0 (and gates 1), so that the scan's chunks fall on the
/// mini-batch boundaries; the first chunk continues from the sums given, or gated from the
/// state's current weights and momentum, the padding kept out of the momentum's term by a mask.
fn mini_batch_scan(b: &mut ModelBuilder, c: &TttConfig, layer: Layer, seqs: [ValueId; 4], rule: Rule, norm: Option<[ValueId; 2]>) -> Result<ValueId> {
    let seen = resumed_within_mini_batch(b, c)?;
    let sums = match b.mode {
        Mode::Forward => Sums::None,
        Mode::Resume { .. } => Sums::Read,
        _ => Sums::HandedOn,
    };
    // What the scan carries, one of each per inner weight, in the body's order: the weights
    // (where the gradients are taken), then handed on, the references' gradient sums or, gated,
    // the weights the recurrence continues from; then the gated momentum. Each is its state's
    // `{name}{suffix}`, from the weights or from zero.
    let gated = c.optimizer.gated_rule();
    let mut kinds = vec![("", true)];
    if sums != Sums::None {
        kinds.push(if gated { (".current", true) } else { (".acc", false) });
    }
    if c.optimizer.momentum {
        kinds.push((".momentum", false));
    }
    let mut inputs = Vec::new();
    let mut zero = None;
    for &(suffix, from_weights) in &kinds {
        for ((name, shape), &p) in layer.names.iter().zip(layer.shapes).zip(layer.params) {
            inputs.push(if sums == Sums::Read {
                let init = if from_weights { StateInit::Param(name.clone()) } else { StateInit::Zeros };
                b.state_input(&format!("{name}{suffix}"), Type::new(DType::F32, shape.clone()), init)
            } else if from_weights {
                b.broadcast(p, shape.clone())?
            } else {
                let zero = match zero {
                    Some(z) => z,
                    None => *zero.insert(b.scalar(0.0)?),
                };
                b.broadcast(zero, shape.clone())?
            });
        }
    }
    let weight_types: Vec<Type> = layer.shapes.iter().map(|s| Type::new(DType::F32, s.clone())).collect();
    let body = mini_batch_body(c, &weight_types, sums)?;
    let carries = inputs.len();
    let mut seqs = seqs.to_vec();
    let mut invariants = Vec::new();
    match rule {
        Rule::TokenScaled { token_idx } => invariants.push(token_idx),
        Rule::Gated { log_momentum, log_keep } => {
            seqs.extend(log_momentum.into_iter().chain(log_keep));
            if takes_real(c) && sums == Sums::Read {
                // 1 for every real token; the padding below makes it 0 on the tokens before.
                let one = b.scalar(1.0)?;
                let per_token = b.ty(seqs[3]).shape.clone(); // lr's
                seqs.push(b.broadcast(one, per_token)?);
            }
        }
    }
    for &x in &seqs {
        inputs.push(if seen > 0 { b.pad(x, 2, seen, 0)? } else { x });
    }
    inputs.extend(invariants);
    inputs.extend(norm.into_iter().flatten());
    let outs = b.scan(Scan { axis: 2, chunk: c.mini_batch_size, carries, seqs: seqs.len(), body, reverse: false }, &inputs)?;
    let names = kinds.iter().flat_map(|(suffix, _)| layer.names.iter().map(move |n| format!("{n}{suffix}")));
    for (name, &last) in names.zip(&outs[..carries]) {
        b.state_output(&name, last);
    }
    let z = outs[carries]; // [B, H, seen + T, d]
    if seen > 0 {
        return b.slice(z, 2, seen as i64, None);
    }
    Ok(z)
}

/// Whether a resumed run's mini-batch body marks its real tokens (`real`, 0 on the padding):
/// the padding's momentum must not move the weights, nor its zero step reach Muon.
fn takes_real(c: &TttConfig) -> bool {
    c.optimizer.momentum || c.optimizer.muon
}

/// A resumed run's position, the tokens of its first mini-batch already seen.
fn resumed_within_mini_batch(b: &ModelBuilder, c: &TttConfig) -> Result<usize> {
    let seen = b.mode.resumed_at();
    ensure!(
        seen < c.mini_batch_size,
        "the state's position {seen} is outside a mini-batch of {} (a TTT state counts positions within its mini-batch)",
        c.mini_batch_size
    );
    Ok(seen)
}

/// TTT stores an inner weight `[in, out]`: a unit's weights are a column.
const COLUMNS: i64 = -2;

/// The inner optimizer of `ttt_inner.update = "per_chunk"` (docs/model-toml.md): the chunk is
/// the mini-batch, the weights' columns keep their initial norms.
fn update_rule(c: &TttConfig) -> UpdateRule {
    let o = c.optimizer;
    UpdateRule { chunk: c.mini_batch_size, momentum: o.momentum, forget: o.forget, muon: o.muon, renormalize: o.renormalize, unit_axis: COLUMNS }
}

/// The apply-then-update loop (`ttt_inner.update = "per_chunk"`, [`chunk_update`]) over
/// `seqs` = q, k, v `[B, H, T, d]` and lr `[B, H, T, 1]`, with the gates β and α `[B, H, T, 1]`
/// that are on: a `Scan` in mini-batches from the initial weights or a state, or a step's one
/// token. Returns `[B, H, T, d]`.
///
/// A resumed run starts p tokens into a mini-batch: its sequence is padded in front with p
/// tokens of learning rate and gates 0, so that the scan's chunks fall on the mini-batch
/// boundaries, and the first chunk continues the state's sums.
fn chunk_loop(
    b: &mut ModelBuilder,
    c: &TttConfig,
    layer: Layer,
    seqs: [ValueId; 4],
    gates: [Option<ValueId>; 2],
    norm: Option<[ValueId; 2]>,
    s: &str,
) -> Result<ValueId> {
    let rule = update_rule(c);
    let seen = resumed_within_mini_batch(b, c)?;
    let weights: Vec<(String, Type)> = layer.names.iter().zip(layer.shapes).map(|(n, shape)| (n.clone(), Type::new(DType::F32, shape.clone()))).collect();
    let layout = ChunkState::layout(&rule, &weights, b.mode != Mode::Forward, s);
    // The columns' initial norms `[H, 1, cols]`, of the matrices (not the biases) when
    // renormalised.
    let mut norms = Vec::new();
    for (&p, bias) in layer.params.iter().zip(biases(c)) {
        norms.push(if !bias && rule.renormalize.is_some() { Some(unit_norms(&mut b.g, p, COLUMNS)?) } else { None });
    }
    let start = start_values(b, &layout, layer.params, |j| Some(layer.names[j].clone()))?;
    let [q, k, v, lr] = seqs;
    if b.mode == Mode::Step {
        let pos = b.position.expect("a step graph has a position"); // within the mini-batch
        let angles = rope_angles_at(&mut b.g, pos, c.head_dim(), c.rope_theta)?;
        let (q, k) = (rope(&mut b.g, q, angles)?, rope(&mut b.g, k, angles)?);
        let last = b.scalar((c.mini_batch_size - 1) as f64)?;
        let ends = b.binary(BinaryOp::Ge, pos, last)?;
        let ends = b.reshape(ends, vec![Dim::c(1); 4])?;
        let state = ChunkState::from_values(&start, &layout);
        let (out, next) = per_chunk(&mut b.g, c, &rule, &state, [q, k, v, lr], gates, norm, &norms, Some(ends))?;
        hand_on(b, &layout, &next.values());
        return Ok(out);
    }
    let seqs: Vec<ValueId> = [q, k, v, lr].into_iter().chain(gates.into_iter().flatten()).collect();
    let invariants: Vec<ValueId> = norms.iter().flatten().chain(norm.iter().flatten()).copied().collect();
    let body = per_chunk_body(c, &rule, &layout, gates.map(|g| g.is_some()), &norms, norm.is_some())?;
    scan_chunks(b, &layout, start, &seqs, &invariants, body, c.mini_batch_size, seen)
}

/// The apply-then-update loop's body: [`per_chunk`] on one mini-batch. Arguments: the state's
/// values (laid out as `layout`); the chunk's q, k, v, lr and the `gates` that are on; the
/// initial norms of the weights that have them (as `norms` says); with `layer_norm`, the inner
/// LayerNorm's weight and bias. Results: the next state's values, then the outputs. A body that
/// hands on a state keeps the step of a mini-batch shorter than b (the sequence's last) in its
/// sums.
fn per_chunk_body(c: &TttConfig, rule: &UpdateRule, layout: &[Slot], gates: [bool; 2], norms: &[Option<ValueId>], layer_norm: bool) -> Result<Graph> {
    let (heads, d) = (c.num_heads, c.head_dim());
    let n = if c.mini_batch_size == 1 { Dim::c(1) } else { Dim::sym("n") };
    let bsym = Dim::sym("B");
    let mut g = Graph::new("ttt_chunk");
    let values: Vec<ValueId> = layout.iter().enumerate().map(|(i, slot)| g.input(&format!("state{i}"), slot.ty.clone())).collect();
    let state = ChunkState::from_values(&values, layout);
    let rows = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(d)]);
    let per_token = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(1)]);
    let [q, k, v] = ["q", "k", "v"].map(|name| g.input(name, rows.clone()));
    let lr = g.input("lr", Type::new(DType::F32, vec![bsym, Dim::c(heads), n.clone(), Dim::c(learning_rates(c))]));
    let [beta, alpha] = [("beta", gates[0]), ("alpha", gates[1])].map(|(name, on)| on.then(|| g.input(name, per_token.clone())));
    let norms: Vec<Option<ValueId>> = norms
        .iter()
        .enumerate()
        .map(|(j, n)| {
            n.map(|_| {
                let cols = g.ty(state.weights[j]).shape[3].clone();
                g.input(&format!("norm{j}"), Type::new(DType::F32, vec![Dim::c(heads), Dim::c(1), cols]))
            })
        })
        .collect();
    let norm = layer_norm.then(|| {
        let per_head = Type::f32(&[1, heads, 1, d]);
        [g.input("ln_weight", per_head.clone()), g.input("ln_bias", per_head)]
    });
    let angles = rope_angles(&mut g, n.clone(), d, c.rope_theta)?;
    let (q, k) = (rope(&mut g, q, angles)?, rope(&mut g, k, angles)?);
    let whole = if state.sums.is_empty() { None } else { Some(chunk_is_whole(&mut g, n, c.mini_batch_size)?) };
    let (out, next) = per_chunk(&mut g, c, rule, &state, [q, k, v, lr], [beta, alpha], norm, &norms, whole)?;
    for (i, v) in next.values().into_iter().enumerate() {
        g.output(&format!("next{i}"), v);
    }
    g.output("out", out);
    Ok(g)
}

/// One mini-batch of the apply-then-update loop, or a step's one token: the queries' outputs
/// through the state's weights, then the step `−Σ_j lr_j·g_j` of the inner loss's gradients at
/// those weights, as [`chunk_update`] makes it (`ends` as it takes it).
#[allow(clippy::too_many_arguments)]
fn per_chunk(
    g: &mut Graph,
    c: &TttConfig,
    rule: &UpdateRule,
    state: &ChunkState,
    [q, k, v, lr]: [ValueId; 4],
    [beta, alpha]: [Option<ValueId>; 2],
    norm: Option<[ValueId; 2]>,
    norms: &[Option<ValueId>],
    ends: Option<ValueId>,
) -> Result<(ValueId, ChunkState)> {
    let learner = learner(c);
    let out = learner.output(g, q, &state.weights, norm)?;
    let rates = g.dim(lr, -1)?.as_const().context("a static count of learning rates")?;
    let rates = (0..rates as i64).map(|m| g.slice(lr, -1, m, Some(m + 1))).collect::<Result<Vec<_>>>()?;
    let steps = learner.steps(g, &state.weights, k, v, norm, &rates)?;
    let next = chunk_update(g, rule, state, steps, Gates { beta, alpha }, norms, &biases(c), ends)?;
    Ok((out, next))
}

/// Whether the mini-batch scan hands on a state, and from where it starts: what it carries
/// beside the inner weights for that, the lr-weighted gradient sums `A` (or, gated, the current
/// weights).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sums {
    /// Not carried: the forward pass hands nothing on.
    None,
    /// Carried from a fresh start and handed on (a prefill): the sums are zero at every
    /// mini-batch's start; the gated current weights start as the weights.
    HandedOn,
    /// Carried from the state given, which the first mini-batch continues (a resumed run).
    Read,
}

/// A TTT layer's recurrent state in a step graph: the inner weights' names and shapes
/// `[B, H, rows, cols]`, and the token's position within its mini-batch.
struct Decode<'a> {
    names: &'a [String],
    shapes: &'a [Vec<Dim>],
    position: ValueId,
}

/// One token of the TTT layer (SPEC §2, "Decoding"), from the state `W₀` (the weights at the
/// start of the mini-batch, `state.{name}`) and the lr-weighted gradient sums `A`
/// (`state.{name}.acc`): `A_i = A + lr·g` with `g` the token's gradient at `W₀`, and the token
/// reads `W_i = W₀ − τ[i]·A_i`. At the mini-batch's last position `W₀ ← W_i` and `A ← 0`.
/// Gated, from `W₀` (for the gradient), the current weights `W_{i−1}` (`state.{name}.current`)
/// and the momentum `S_{i−1}` (`state.{name}.momentum`): `S_i = β·S_{i−1} + lr·g`,
/// `W_i = (1 − α)·W_{i−1} − S_i`, both handed on as they are, and `W₀ ← W_i` at the mini-batch's
/// last position. Operands: q, k, v `[B, H, 1, d]`, lr `[B, H, 1]`, the [`Rule`]'s; returns
/// `[B, H, 1, d]`.
/// (A step graph's token axis is 1 by type, so the token's values are matrices of one row.)
fn decode_step(b: &mut ModelBuilder, c: &TttConfig, state: Decode, [q, k, v, lr]: [ValueId; 4], rule: Rule, norm: Option<[ValueId; 2]>) -> Result<ValueId> {
    let (heads, d) = (c.num_heads, c.head_dim());
    let bsym = Dim::sym("B");
    let pos = state.position; // f32 [1]
    let angles = rope_angles_at(&mut b.g, pos, d, c.rope_theta)?;
    let q = rope(&mut b.g, q, angles)?;
    let k = rope(&mut b.g, k, angles)?;

    // τ[i] = max(0, 1/(i+1) + learnable_token_idx[i]); at i = b − 1 the mini-batch ends.
    let tau = match rule {
        Rule::TokenScaled { token_idx } => {
            let index = b.cast(pos, DType::I64)?;
            Some(token_scale(&mut b.g, token_idx, index, pos)?)
        }
        Rule::Gated { .. } => None,
    };
    let one = b.scalar(1.0)?;
    let unit = vec![Dim::c(1); 4];
    let tau = tau.map(|tau| b.reshape(tau, unit.clone())).transpose()?;
    let last_index = b.scalar((c.mini_batch_size - 1) as f64)?;
    let ends = b.binary(BinaryOp::Ge, pos, last_index)?;
    let ends = b.reshape(ends, unit.clone())?;
    let goes_on = b.sub(one, ends)?;

    // The token's gradient at W₀ (a `grad` op over the inner loss, as in the mini-batch body;
    // the one token reads the state's weights as they are).
    // Beside W₀: the references' gradient sums `{name}.acc`, or gated the current weights
    // W_{i−1} `{name}.current` and the momentum S_{i−1} `{name}.momentum`.
    let mut w0 = Vec::new();
    let mut carried = Vec::new();
    for (name, shape) in state.names.iter().zip(state.shapes) {
        let ty = Type::new(DType::F32, shape.clone());
        w0.push(b.state_input(name, ty.clone(), StateInit::Param(name.clone())));
        carried.push(match rule {
            Rule::TokenScaled { .. } => (b.state_input(&format!("{name}.acc"), ty, StateInit::Zeros), None),
            Rule::Gated { .. } => (
                b.state_input(&format!("{name}.current"), ty.clone(), StateInit::Param(name.clone())),
                c.optimizer.momentum.then(|| b.state_input(&format!("{name}.momentum"), ty, StateInit::Zeros)),
            ),
        });
    }
    let grads = learner(c).gradients(&mut b.g, &w0, k, v, norm)?;
    // lr of the one token, [B, H, 1, 1]; gated, β and 1 − α likewise.
    let per_token = vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(1)];
    let lr = b.reshape(lr, per_token.clone())?;
    let (beta, keep) = match rule {
        Rule::TokenScaled { .. } => (None, None),
        Rule::Gated { log_momentum, log_keep } => {
            let mut gate = |log: Option<ValueId>| -> Result<Option<ValueId>> {
                let Some(log) = log else { return Ok(None) };
                let log = b.reshape(log, per_token.clone())?;
                Ok(Some(b.unary(UnaryOp::Exp, log)?))
            };
            (gate(log_momentum)?, gate(log_keep)?)
        }
    };

    let mut weights = Vec::new();
    let biases = biases(c);
    for (i, name) in state.names.iter().enumerate() {
        let step = b.mul(lr, grads[i])?;
        let (first, momentum) = carried[i];
        let (w, handed_on) = match tau {
            // A_i = A + lr·g, W_i = W₀ − τ[i]·A_i; A goes on within the mini-batch.
            Some(tau) => {
                let a = b.add(first, step)?;
                let scaled = b.mul(tau, a)?;
                (b.sub(w0[i], scaled)?, Some(a))
            }
            // S_i = β·S_{i−1} + lr·g, W_i = (1 − α)·W_{i−1} − S_i; both go on as they are.
            None => {
                let s = match (beta, momentum) {
                    (Some(beta), Some(before)) => {
                        let decayed = b.mul(beta, before)?;
                        b.add(decayed, step)?
                    }
                    _ => step,
                };
                let kept = match keep {
                    Some(keep) => b.mul(keep, first)?,
                    None => first,
                };
                let step = if c.optimizer.muon { muon(&mut b.g, s, biases[i])? } else { s };
                let w = b.sub(kept, step)?;
                b.state_output(&format!("{name}.current"), w);
                if momentum.is_some() {
                    b.state_output(&format!("{name}.momentum"), s);
                }
                (w, None)
            }
        };
        // Whole-number blends, so the kept value is exact.
        let (new_w, old_w) = (b.mul(ends, w)?, b.mul(goes_on, w0[i])?);
        let next_w = b.add(new_w, old_w)?;
        let next_a = handed_on.map(|a| b.mul(goes_on, a)).transpose()?;
        b.state_output(name, next_w);
        if let Some(next_a) = next_a {
            b.state_output(&format!("{name}.acc"), next_a);
        }
        weights.push(w);
    }
    learner(c).output(&mut b.g, q, &weights, norm)
}

/// Learning rates per token and head: one, or one per inner matrix.
fn learning_rates(c: &TttConfig) -> usize {
    if c.optimizer.lr_per_matrix {
        c.inner.matrices()
    } else {
        1
    }
}

/// The layer's inner learner, its weights stored `[in, out]`.
fn learner(c: &TttConfig) -> Learner<'_> {
    Learner { spec: &c.inner, stored: Stored::InOut }
}

/// Which of the inner weights, in their order, are biases.
fn biases(c: &TttConfig) -> Vec<bool> {
    c.inner.tensors(c.head_dim()).iter().map(|t| t.bias).collect()
}

/// `(rows, cols)` of a state tensor `[B, H, rows, cols]` (a bias has one row).
fn matrix_dims(t: &Type) -> (usize, usize) {
    let r = t.rank();
    (t.shape[r - 2].as_const().expect("static"), t.shape[r - 1].as_const().expect("static"))
}

/// Interleaved RoPE over the last axis of `x` `[B, H, n, d]` with the angles `(cos, sin)`
/// `[n, d/2]` of its positions: `x'[2i] = x[2i]·cos a − x[2i+1]·sin a`,
/// `x'[2i+1] = x[2i+1]·cos a + x[2i]·sin a`, `a = pos·θ^(−2i/d)`.
fn rope(g: &mut Graph, x: ValueId, (cos, sin): (ValueId, ValueId)) -> Result<ValueId> {
    let shape = g.ty(x).shape.clone();
    let (n, half) = (g.dim(cos, 0)?, g.dim(cos, 1)?);
    let mut paired = shape.clone();
    paired.truncate(3);
    paired.extend([half.clone(), Dim::c(2)]);
    let xp = g.reshape(x, paired)?;
    let even = g.slice(xp, -1, 0, Some(1))?;
    let odd = g.slice(xp, -1, 1, Some(2))?;
    let column = vec![n, half, Dim::c(1)]; // against the [.., d/2, 2] pairs
    let (cos, sin) = (g.reshape(cos, column.clone())?, g.reshape(sin, column)?);
    let ec = g.mul(even, cos)?;
    let os = g.mul(odd, sin)?;
    let new_even = g.sub(ec, os)?;
    let oc = g.mul(odd, cos)?;
    let es = g.mul(even, sin)?;
    let new_odd = g.add(oc, es)?;
    let out = g.concat(&[new_even, new_odd], -1)?;
    g.reshape(out, shape)
}
