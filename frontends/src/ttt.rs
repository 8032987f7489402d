//! TTT language models (ttt-lm-pytorch `TTTForCausalLM`): SPEC §2.
//!
//! The TTT layer is built in its **primal** form: inside each mini-batch, token i reads the inner
//! model with its own weights `W_i = W₀ − Σ_{j≤i} η[i,j] g_j`, all gradients taken at the
//! mini-batch's starting state `W₀`; the mini-batch loop is a `Scan` carrying the inner state.
//! Deriving the dual form from this is the passes' job. The inner gradient is spelled out here by
//! hand (LayerNorm + L2 backward, then back through the inner layers).

use anyhow::Result;
use tttc_ir::{DType, Dim, Graph, Scan, Type, UnaryOp, ValueId};

use crate::builder::{Init, LmShape, ModelBuilder};
use crate::config::{InnerModel, TttConfig};
use crate::math::{gelu_tanh_grad, layer_norm, normalize, rope_angles, split_heads};

/// LayerNorm eps of the inner model's output and of `post_norm` (fixed in the reference).
const LN_EPS: f64 = 1e-6;

pub fn build(c: &TttConfig) -> Result<ModelBuilder> {
    let name = match c.inner {
        InnerModel::Linear => "ttt_linear",
        InnerModel::Mlp => "ttt_mlp",
    };
    let mut b = ModelBuilder::new(name);
    let lm = LmShape {
        embed: "model.embed_tokens.weight",
        final_norm: "model.norm.weight",
        norm_eps: c.rms_norm_eps,
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        layers: c.num_hidden_layers,
        tied: c.tie_word_embeddings,
        init_std: c.initializer_range,
    };
    b.language_model(&lm, |b, h, layer| block(b, c, h, &format!("model.layers.{layer}.")))?;
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

/// The inner model's layers: `(in, out)` widths; gelu_tanh between consecutive layers.
fn inner_layers(c: &TttConfig) -> Vec<(usize, usize)> {
    let d = c.head_dim();
    match c.inner {
        InnerModel::Linear => vec![(d, d)],
        InnerModel::Mlp => vec![(d, 4 * d), (4 * d, d)],
    }
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

    // lr[b,h,t] = base_lr · sigmoid(x_t · w_h + β_h) / d
    let lr_w = b.weight(&format!("{s}learnable_ttt_lr_weight"), &[heads, 1, dim], Init::Normal { std: 0.02 });
    let lr_b = b.weight(&format!("{s}learnable_ttt_lr_bias"), &[heads, 1], Init::Zeros);
    let lr_w = b.reshape(lr_w, vec![Dim::c(heads), Dim::c(dim)])?;
    let lr_w = b.transpose_last2(lr_w)?;
    let logit = b.matmul(x, lr_w)?; // [B, T, H]
    let lr_b = b.reshape(lr_b, vec![Dim::c(heads)])?;
    let logit = b.add(logit, lr_b)?;
    let gate = b.unary(UnaryOp::Sigmoid, logit)?;
    let scale = b.scalar(c.ttt_base_lr / d as f64)?;
    let lr = b.mul(gate, scale)?;
    let lr = b.transpose(lr, &[0, 2, 1])?; // [B, H, T]

    let token_idx = b.weight(&format!("{s}learnable_token_idx"), &[c.mini_batch_size], Init::Zeros);
    let ln_w = b.weight(&format!("{s}ttt_norm_weight"), &[heads, d], Init::Ones);
    let ln_b = b.weight(&format!("{s}ttt_norm_bias"), &[heads, d], Init::Zeros);
    let per_head = vec![Dim::c(1), Dim::c(heads), Dim::c(1), Dim::c(d)];
    let ln_w = b.reshape(ln_w, per_head.clone())?;
    let ln_b = b.reshape(ln_b, per_head)?;

    // The inner state, broadcast over the batch: [W1, b1, W2, b2, …].
    let batch = Dim::sym("B");
    let mut state = Vec::new();
    for (l, &(fan_in, fan_out)) in inner_layers(c).iter().enumerate() {
        let w = b.weight(&format!("{s}W{}", l + 1), &[heads, fan_in, fan_out], Init::Normal { std: 0.02 });
        let bias = b.weight(&format!("{s}b{}", l + 1), &[heads, 1, fan_out], Init::Zeros);
        let w = b.broadcast(w, vec![batch.clone(), Dim::c(heads), Dim::c(fan_in), Dim::c(fan_out)])?;
        let bias = b.broadcast(bias, vec![batch.clone(), Dim::c(heads), Dim::c(1), Dim::c(fan_out)])?;
        state.extend([w, bias]);
    }
    let body = mini_batch_body(c, &state.iter().map(|&v| b.ty(v).clone()).collect::<Vec<_>>())?;
    let carries = state.len();
    let mut inputs = state;
    inputs.extend([q, k, v, lr, token_idx, ln_w, ln_b]);
    let outs = b.scan(Scan { axis: 2, chunk: c.mini_batch_size, carries, seqs: 4, body }, &inputs)?;
    let z = outs[carries]; // [B, H, T, d]

    let z = b.transpose(z, &[0, 2, 1, 3])?;
    let z = b.reshape(z, vec![Dim::sym("B"), Dim::sym("T"), Dim::c(dim)])?;
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

/// One mini-batch of n ≤ b tokens, primal form. Arguments: the inner state, the chunk's Q, K, V
/// `[B, H, n, d]` and lr `[B, H, n]`, then `learnable_token_idx` and the inner LayerNorm's weight
/// and bias. Returns the next state (the last token's weights) and the outputs `Q + LN(f_{W_i}(q_i))`.
fn mini_batch_body(c: &TttConfig, state_types: &[Type]) -> Result<Graph> {
    let (heads, d) = (c.num_heads, c.head_dim());
    let (bsym, n) = (Dim::sym("B"), Dim::sym("n"));
    let mut g = Graph::new("mini_batch");
    let state: Vec<ValueId> = state_types.iter().enumerate().map(|(i, t)| g.input(&format!("state{i}"), t.clone())).collect();
    let chunk = Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(d)]);
    let q = g.input("q", chunk.clone());
    let k = g.input("k", chunk.clone());
    let v = g.input("v", chunk);
    let lr = g.input("lr", Type::new(DType::F32, vec![bsym.clone(), Dim::c(heads), n.clone()]));
    let token_idx = g.input("token_idx", Type::f32(&[c.mini_batch_size]));
    let per_head = Type::f32(&[1, heads, 1, d]);
    let ln_w = g.input("ln_weight", per_head.clone());
    let ln_b = g.input("ln_bias", per_head);

    let q = rope(&mut g, q, d, c.rope_theta)?;
    let k = rope(&mut g, k, d, c.rope_theta)?;

    // η[i,j] = τ[i] · lr[j] for j ≤ i, τ[i] = max(0, 1/(i+1) + learnable_token_idx[i]).
    let pos = g.iota(n.clone(), DType::I64)?;
    let tau = g.gather(token_idx, pos, 0)?;
    let posf = g.cast(pos, DType::F32)?;
    let one = g.scalar(1.0)?;
    let denom = g.add(posf, one)?;
    let inv = g.div(one, denom)?;
    let tau = g.add(inv, tau)?;
    let zero = g.scalar(0.0)?;
    let tau = g.binary(tttc_ir::BinaryOp::Max, tau, zero)?;
    let tau = g.reshape(tau, vec![n.clone(), Dim::c(1)])?;
    let lr_row = g.reshape(lr, vec![bsym.clone(), Dim::c(heads), Dim::c(1), n.clone()])?;
    let eta = g.mul(tau, lr_row)?;
    let eta = g.tri_mask(eta, 0.0)?; // [B, H, n, n]

    // Inner forward on the keys, keeping each layer's input and pre-activation.
    let layers = state.len() / 2;
    let mut inputs = Vec::new();
    let mut pre = Vec::new();
    let mut a = k;
    for l in 0..layers {
        inputs.push(a);
        let z = g.matmul(a, state[2 * l])?;
        let z = g.add(z, state[2 * l + 1])?;
        pre.push(z);
        a = if l + 1 < layers { g.unary(UnaryOp::GeluTanh, z)? } else { z };
    }
    // ∂ℓ/∂Z of ℓ = ½‖LN(Z) − (v − k)‖², then back through the layers.
    let target = g.sub(v, k)?;
    let mut grad = ln_l2_backward(&mut g, pre[layers - 1], target, ln_w, ln_b, d)?;
    let mut grads = vec![grad; layers];
    for l in (0..layers - 1).rev() {
        let wt = g.transpose_last2(state[2 * (l + 1)])?;
        let back = g.matmul(grad, wt)?;
        let dact = gelu_tanh_grad(&mut g, pre[l])?;
        grad = g.mul(back, dact)?;
        grads[l] = grad;
    }

    // Per-token weights W_i = W₀ − Σ_j η[i,j] (a_jᵀ G_j), b_i = b₀ − Σ_j η[i,j] G_j.
    let mut per_token = Vec::new();
    let mut next_state = Vec::new();
    for l in 0..layers {
        let (fan_in, fan_out) = (g.dim(inputs[l], -1)?, g.dim(grads[l], -1)?);
        let (fi, fo) = (fan_in.as_const().unwrap(), fan_out.as_const().unwrap());
        let col = g.reshape(inputs[l], vec![bsym.clone(), Dim::c(heads), n.clone(), fan_in.clone(), Dim::c(1)])?;
        let row = g.reshape(grads[l], vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(1), fan_out.clone()])?;
        let outer = g.mul(col, row)?;
        let outer = g.reshape(outer, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(fi * fo)])?;
        let step = g.matmul(eta, outer)?;
        let step = g.reshape(step, vec![bsym.clone(), Dim::c(heads), n.clone(), fan_in, fan_out.clone()])?;
        let w0 = g.reshape(state[2 * l], vec![bsym.clone(), Dim::c(heads), Dim::c(1), Dim::c(fi), Dim::c(fo)])?;
        let w = g.sub(w0, step)?; // [B, H, n, in, out]
        let bstep = g.matmul(eta, grads[l])?;
        let bias = g.sub(state[2 * l + 1], bstep)?; // [B, H, n, out]
        let w_last = g.slice(w, 2, -1, None)?;
        next_state.push(g.reshape(w_last, vec![bsym.clone(), Dim::c(heads), Dim::c(fi), Dim::c(fo)])?);
        next_state.push(g.slice(bias, 2, -1, None)?);
        per_token.push((w, bias, fi, fo));
    }

    // Token i's output: the inner model with weights W_i applied to q_i.
    let mut a = q;
    for (l, &(w, bias, fi, fo)) in per_token.iter().enumerate() {
        let row = g.reshape(a, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(1), Dim::c(fi)])?;
        let z = g.matmul(row, w)?;
        let z = g.reshape(z, vec![bsym.clone(), Dim::c(heads), n.clone(), Dim::c(fo)])?;
        let z = g.add(z, bias)?;
        a = if l + 1 < layers { g.unary(UnaryOp::GeluTanh, z)? } else { z };
    }
    let normed = layer_norm(&mut g, a, ln_w, ln_b, LN_EPS)?;
    let out = g.add(q, normed)?;

    for (i, s) in next_state.into_iter().enumerate() {
        g.output(&format!("state{i}"), s);
    }
    g.output("out", out);
    Ok(g)
}

/// ∂/∂Z of ½‖LN(Z) − target‖² over the last axis (width `d`):
/// `(d·ĝ − Σĝ − x̂·Σ(ĝ·x̂)) / (d·σ)` with `ĝ = (LN(Z) − target)·w`.
fn ln_l2_backward(g: &mut Graph, z: ValueId, target: ValueId, w: ValueId, b: ValueId, d: usize) -> Result<ValueId> {
    use tttc_ir::ReduceKind::Sum;
    let (xhat, std) = normalize(g, z, LN_EPS)?;
    let y = g.mul(w, xhat)?;
    let y = g.add(y, b)?;
    let dy = g.sub(y, target)?;
    let gx = g.mul(dy, w)?;
    let dn = g.scalar(d as f64)?;
    let scaled = g.mul(dn, gx)?;
    let s1 = g.reduce(Sum, gx, -1, true)?;
    let gxx = g.mul(gx, xhat)?;
    let s2 = g.reduce(Sum, gxx, -1, true)?;
    let t = g.sub(scaled, s1)?;
    let u = g.mul(xhat, s2)?;
    let t = g.sub(t, u)?;
    let denom = g.mul(dn, std)?;
    g.div(t, denom)
}

/// Interleaved RoPE over the last axis of `x` `[B, H, n, d]` with positions 0…n−1:
/// `x'[2i] = x[2i]·cos a − x[2i+1]·sin a`, `x'[2i+1] = x[2i+1]·cos a + x[2i]·sin a`, `a = pos·θ^(−2i/d)`.
fn rope(g: &mut Graph, x: ValueId, d: usize, theta: f64) -> Result<ValueId> {
    let shape = g.ty(x).shape.clone();
    let n = shape[2].clone();
    let half = d / 2;
    let mut paired = shape.clone();
    paired.truncate(3);
    paired.extend([Dim::c(half), Dim::c(2)]);
    let xp = g.reshape(x, paired)?;
    let even = g.slice(xp, -1, 0, Some(1))?;
    let odd = g.slice(xp, -1, 1, Some(2))?;
    let (cos, sin) = rope_angles(g, n.clone(), d, theta)?;
    let column = vec![n, Dim::c(half), Dim::c(1)]; // against the [.., d/2, 2] pairs
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
