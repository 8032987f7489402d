//! Mamba (Hugging Face `MambaForCausalLM`): SPEC §3.
//!
//! Everything that is not recurrent (projections, the causal convolution, Δ, Δ·u, the skip term)
//! is computed over the whole sequence; the selective scan itself is a `Scan` with chunk 1 over the
//! sequence axis, carrying the state `[B, Di, N]`.

use anyhow::Result;
use tttc_ir::{DType, Dim, Graph, Scan, Type, UnaryOp, ValueId};

use crate::builder::{Init, LmShape, Mode, ModelBuilder, StateInit};
use crate::config::MambaConfig;

pub fn build(c: &MambaConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = ModelBuilder::with_mode("mamba", mode);
    let lm = LmShape {
        embed: "backbone.embeddings.weight",
        final_norm: "backbone.norm_f.weight",
        norm_eps: c.layer_norm_epsilon,
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        layers: c.num_hidden_layers,
        tied: c.tie_word_embeddings,
        init_std: c.initializer_range,
        position_period: None,
        pad_token: None,
    };
    b.language_model(&lm, |b, h, layer| {
        let p = format!("backbone.layers.{layer}.");
        let x = b.rms_norm(h, &format!("{p}norm.weight"), c.hidden_size, c.layer_norm_epsilon)?;
        let y = mixer(b, c, x, &format!("{p}mixer."))?;
        b.add(h, y)
    })?;
    Ok(b)
}

/// Where layer 0's layer names its weights and state (`crate::layer_prefix`).
pub const LAYER_PREFIX: &str = "backbone.layers.0.mixer.";

/// Layer 0's mixer alone (see `crate::build_layer`).
pub fn layer(c: &MambaConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = ModelBuilder::with_mode("mamba_mixer", mode);
    let x = b.hidden_input(c.hidden_size);
    let y = mixer(&mut b, c, x, LAYER_PREFIX)?;
    b.output("y", y);
    Ok(b)
}

/// A projection initialised as PyTorch's default `nn.Linear` (HF Mamba does not re-initialise
/// Linear weights): `U(±1/√in)`; its bias, when present, zero.
fn linear(b: &mut ModelBuilder, x: ValueId, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<ValueId> {
    let weight = Init::Uniform { bound: 1.0 / (inp as f64).sqrt() };
    b.linear(x, prefix, inp, out, weight, bias.then_some(Init::Zeros))
}

fn mixer(b: &mut ModelBuilder, c: &MambaConfig, h: ValueId, s: &str) -> Result<ValueId> {
    let (dim, di, n, r, k) = (c.hidden_size, c.intermediate_size, c.state_size, c.time_step_rank, c.conv_kernel);

    // [x | z] = in_proj(h)
    let xz = linear(b, h, &format!("{s}in_proj"), dim, 2 * di, c.use_bias)?;
    let x = b.slice(xz, -1, 0, Some(di as i64))?;
    let z = b.slice(xz, -1, di as i64, Some(2 * di as i64))?;

    // u = silu(conv1d(x))
    let conv = b.causal_conv(x, &format!("{s}conv1d"), di, k, c.use_conv_bias)?;
    let u = b.unary(UnaryOp::Silu, conv)?; // [B, T, Di]

    // [δ | Bm | Cm] = x_proj(u)
    let p = linear(b, u, &format!("{s}x_proj"), di, r + 2 * n, false)?;
    let delta = b.slice(p, -1, 0, Some(r as i64))?;
    let bm = b.slice(p, -1, r as i64, Some((r + n) as i64))?; // [B, T, N]
    let cm = b.slice(p, -1, (r + n) as i64, Some((r + 2 * n) as i64))?; // [B, T, N]

    // Δ = softplus(dt_proj(δ)), with HF's initialisation of dt_proj.
    let dt_weight = Init::Uniform { bound: (r as f64).powf(-0.5) * c.time_step_scale };
    let dt_bias = Init::InverseSoftplusTimeStep { min: c.time_step_min, max: c.time_step_max, floor: c.time_step_floor };
    let dt = b.linear(delta, &format!("{s}dt_proj"), r, di, dt_weight, Some(dt_bias))?;
    let dt = b.unary(UnaryOp::Softplus, dt)?; // [B, T, Di]

    // A = −exp(A_log), A_log[c, n] = ln(n + 1) (S4D-real).
    let a_log = b.weight(&format!("{s}A_log"), &[di, n], Init::LogIndex);
    let a = b.unary(UnaryOp::Exp, a_log)?;
    let a = b.unary(UnaryOp::Neg, a)?; // [Di, N]
    let d_skip = b.weight(&format!("{s}D"), &[di], Init::Ones);

    // The scan: state s [B, Di, N], from 0 or from the state given (a step, a resumed run).
    let du = b.mul(dt, u)?; // Δ·u [B, T, Di]
    let state_type = Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(di), Dim::c(n)]);
    let ssm = format!("{s}ssm_state");
    let s0 = if b.mode.takes_state() {
        b.state_input(&ssm, state_type, StateInit::Zeros)
    } else {
        let zero = b.scalar(0.0)?;
        b.broadcast(zero, state_type.shape)?
    };
    let body = scan_body(di, n)?;
    let outs = b.scan(Scan { axis: 1, chunk: 1, carries: 1, seqs: 4, body, reverse: false }, &[s0, dt, du, bm, cm, a])?;
    b.state_output(&ssm, outs[0]);
    let y = outs[1]; // [B, T, Di]

    // y + D·u, gated by silu(z), then out_proj.
    let skip = b.mul(d_skip, u)?;
    let y = b.add(y, skip)?;
    let gate = b.unary(UnaryOp::Silu, z)?;
    let y = b.mul(y, gate)?;
    linear(b, y, &format!("{s}out_proj"), di, dim, c.use_bias)
}

/// One time step. Arguments: the state `s [B, Di, N]`; the step's `Δ [B, 1, Di]`, `Δ·u [B, 1, Di]`,
/// `Bm [B, 1, N]`, `Cm [B, 1, N]`; then `A [Di, N]`. Returns the new state
/// `exp(Δ·A) ⊙ s + (Δ·u) ⊗ Bm` and the output `y [B, 1, Di]` with `y[c] = Σ_n s[c,n]·Cm[n]`.
fn scan_body(di: usize, n: usize) -> Result<Graph> {
    let bsym = Dim::sym("B");
    let f32_of = |shape: Vec<Dim>| Type::new(DType::F32, shape);
    let mut g = Graph::new("selective_scan_step");
    let s = g.input("state", f32_of(vec![bsym.clone(), Dim::c(di), Dim::c(n)]));
    let dt = g.input("dt", f32_of(vec![bsym.clone(), Dim::c(1), Dim::c(di)]));
    let du = g.input("du", f32_of(vec![bsym.clone(), Dim::c(1), Dim::c(di)]));
    let bm = g.input("b", f32_of(vec![bsym.clone(), Dim::c(1), Dim::c(n)]));
    let cm = g.input("c", f32_of(vec![bsym.clone(), Dim::c(1), Dim::c(n)]));
    let a = g.input("a", Type::f32(&[di, n]));

    let column = vec![bsym.clone(), Dim::c(di), Dim::c(1)];
    let dt = g.reshape(dt, column.clone())?;
    let decay = g.mul(dt, a)?;
    let decay = g.unary(UnaryOp::Exp, decay)?; // [B, Di, N]
    let du = g.reshape(du, column)?;
    let input = g.mul(du, bm)?; // [B, Di, 1] · [B, 1, N] → [B, Di, N]
    let kept = g.mul(decay, s)?;
    let s = g.add(kept, input)?;
    let ct = g.transpose_last2(cm)?; // [B, N, 1]
    let y = g.matmul(s, ct)?; // [B, Di, 1]
    let y = g.reshape(y, vec![bsym, Dim::c(1), Dim::c(di)])?;
    g.output("state", s);
    g.output("y", y);
    Ok(g)
}
