//! Llama (Hugging Face `LlamaForCausalLM`): SPEC §4.
//!
//! Pre-norm blocks of grouped-query causal attention with rotate-half RoPE at absolute positions
//! (angles computed in the graph, so positions are not capped), then a SwiGLU MLP.

use anyhow::{bail, Result};
use tttc_ir::{DType, Dim, Graph, Type, ValueId};

use crate::builder::{Init, LmShape, Mode, ModelBuilder, StateInit};
use crate::config::LlamaConfig;
use crate::math::{rope, rope_angles, rope_angles_at, scaled_scores, softmax, split_heads};

pub fn build(c: &LlamaConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = ModelBuilder::with_mode("llama", mode);
    let lm = LmShape {
        embed: "model.embed_tokens.weight",
        final_norm: "model.norm.weight",
        norm_eps: c.rms_norm_eps,
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        layers: c.num_hidden_layers,
        tied: c.tie_word_embeddings,
        init_std: c.initializer_range,
        position_period: None,
        pad_token: None,
    };
    // cos / sin of the RoPE angles, built once (at the first layer) and shared by every layer: at
    // positions 0 … T−1, or at a step's position.
    let mut angles: Option<(ValueId, ValueId)> = None;
    b.language_model(&lm, |b, mut h, layer| {
        let p = format!("model.layers.{layer}.");
        let (dim, eps, std) = (c.hidden_size, c.rms_norm_eps, c.initializer_range);
        let (cos, sin) = match angles {
            Some(a) => a,
            None => {
                let a = rope_at_positions(b, c, h)?;
                angles = Some(a);
                a
            }
        };
        let x = b.rms_norm(h, &format!("{p}input_layernorm.weight"), dim, eps)?;
        let y = attention(b, c, x, cos, sin, &format!("{p}self_attn."))?;
        h = b.add(h, y)?;
        let x = b.rms_norm(h, &format!("{p}post_attention_layernorm.weight"), dim, eps)?;
        let y = b.swiglu(x, &format!("{p}mlp"), dim, c.intermediate_size, c.mlp_bias, std)?;
        b.add(h, y)
    })?;
    Ok(b)
}

/// Where layer 0's layer names its weights and state (`crate::layer_prefix`).
pub const LAYER_PREFIX: &str = "model.layers.0.self_attn.";

/// Layer 0's self-attention alone (see `crate::build_layer`).
pub fn layer(c: &LlamaConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = ModelBuilder::with_mode("attention", mode);
    let x = b.hidden_input(c.hidden_size);
    let (cos, sin) = rope_at_positions(&mut b, c, x)?;
    let y = attention(&mut b, c, x, cos, sin, LAYER_PREFIX)?;
    b.output("y", y);
    Ok(b)
}

/// cos / sin of the RoPE angles at the positions of `h`'s tokens (axis 1): 0 … T−1, a step's
/// position, or a resumed run's tokens after the `position` tokens of its cache.
fn rope_at_positions(b: &mut ModelBuilder, c: &LlamaConfig, h: ValueId) -> Result<(ValueId, ValueId)> {
    let t = b.dim(h, 1)?;
    match (b.position, b.mode) {
        (Some(pos), _) => rope_angles_at(&mut b.g, pos, c.head_dim(), c.rope_theta),
        (None, Mode::Resume { position }) => {
            let upto = b.iota(t, DType::F32)?;
            let offset = b.scalar(position as f64)?;
            let pos = b.add(upto, offset)?;
            rope_angles_at(&mut b.g, pos, c.head_dim(), c.rope_theta)
        }
        (None, _) => rope_angles(&mut b.g, t, c.head_dim(), c.rope_theta),
    }
}

fn attention(b: &mut ModelBuilder, c: &LlamaConfig, x: ValueId, cos: ValueId, sin: ValueId, s: &str) -> Result<ValueId> {
    let (dim, heads, kv_heads, d, std) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim(), c.initializer_range);
    let bias = c.attention_bias;
    let q = b.linear(x, &format!("{s}q_proj"), dim, heads * d, Init::Normal { std }, bias.then_some(Init::Zeros))?;
    let k = b.linear(x, &format!("{s}k_proj"), dim, kv_heads * d, Init::Normal { std }, bias.then_some(Init::Zeros))?;
    let v = b.linear(x, &format!("{s}v_proj"), dim, kv_heads * d, Init::Normal { std }, bias.then_some(Init::Zeros))?;
    let q = split_heads(&mut b.g, q, heads, d)?; // [B, H, T, d]
    let k = split_heads(&mut b.g, k, kv_heads, d)?; // [B, Hkv, T, d]
    let v = split_heads(&mut b.g, v, kv_heads, d)?;
    let q = rope(&mut b.g, q, cos, sin, d)?;
    let k = rope(&mut b.g, k, cos, sin, d)?;
    // The KV cache `[B, L, Hkv, d]`, position-major: a step appends its token's key and value
    // (and reads them all, no mask needed), a resumed run appends its tokens' (each reads the
    // whole cache and the new keys up to its own), a prefill hands over the prompt's. Appending
    // at the end of a one-row cache leaves what it held in place, so a backend may write only
    // the new position (`Program::run_taking`); attention reads the cache through a transpose.
    let past = match b.mode {
        Mode::Step => Some(Dim::sym("L")),
        Mode::Resume { position: 0 } => bail!("a Llama state of no positions: its KV cache would be empty"),
        Mode::Resume { position } => Some(Dim::c(position)),
        _ => None,
    };
    let position_major = [0, 2, 1, 3];
    let (k, v) = match past {
        Some(len) => {
            let cache = Type::new(DType::F32, vec![Dim::sym("B"), len, Dim::c(kv_heads), Dim::c(d)]);
            let past_k = b.state_input(&format!("{s}k_cache"), cache.clone(), StateInit::Zeros);
            let past_v = b.state_input(&format!("{s}v_cache"), cache, StateInit::Zeros);
            let (new_k, new_v) = (b.transpose(k, &position_major)?, b.transpose(v, &position_major)?);
            let (k_cache, v_cache) = (b.concat(&[past_k, new_k], 1)?, b.concat(&[past_v, new_v], 1)?);
            b.state_output(&format!("{s}k_cache"), k_cache);
            b.state_output(&format!("{s}v_cache"), v_cache);
            (b.transpose(k_cache, &position_major)?, b.transpose(v_cache, &position_major)?)
        }
        None => {
            if b.mode != Mode::Forward {
                let (k_cache, v_cache) = (b.transpose(k, &position_major)?, b.transpose(v, &position_major)?);
                b.state_output(&format!("{s}k_cache"), k_cache);
                b.state_output(&format!("{s}v_cache"), v_cache);
            }
            (k, v)
        }
    };
    // Head h reads kv head ⌊h·Hkv/H⌋ = ⌊h/r⌋ (r = H/Hkv, HF `repeat_kv`). A step groups its
    // queries by kv head instead, `[B, Hkv, r, d]`, so that the cache is read as it is, never
    // repeated; the other modes repeat each kv head r times.
    let (k, v, q) = match b.mode {
        Mode::Step => {
            let batch = b.dim(q, 0)?;
            let grouped = b.reshape(q, vec![batch, Dim::c(kv_heads), Dim::c(heads / kv_heads), Dim::c(d)])?;
            (k, v, grouped)
        }
        _ => (repeat_kv(&mut b.g, k, heads, kv_heads, d)?, repeat_kv(&mut b.g, v, heads, kv_heads, d)?, q),
    };

    // Causal softmax(q kᵀ / √d) v, the softmax made stable by subtracting the row maximum.
    let scores = match b.mode {
        Mode::Step => {
            // One query per head: the keys times the group's queries, read row by row (the cache
            // is never transposed), then turned into rows of scores [B, Hkv, r, L+1].
            let qt = b.transpose_last2(q)?;
            let columns = b.matmul(k, qt)?;
            let rows = b.transpose_last2(columns)?;
            let scale = b.scalar((d as f64).sqrt())?;
            b.div(rows, scale)?
        }
        Mode::Resume { position } => {
            // Every query sees the whole cache and, of the new keys, those up to its own.
            let (past_k, new_k) = (b.slice(k, 2, 0, Some(position as i64))?, b.slice(k, 2, position as i64, None)?);
            let past = scaled_scores(&mut b.g, q, past_k, d)?;
            let new = scaled_scores(&mut b.g, q, new_k, d)?;
            let new = b.tri_mask(new, f64::NEG_INFINITY)?;
            b.concat(&[past, new], -1)? // [B, H, T, L+T]
        }
        _ => {
            let scores = scaled_scores(&mut b.g, q, k, d)?; // [B, H, T, T]
            b.tri_mask(scores, f64::NEG_INFINITY)?
        }
    };
    let probs = softmax(&mut b.g, scores)?;
    let o = b.matmul(probs, v)?; // [B, H, T, d]; a step's [B, Hkv, r, d] is [B, H, 1, d]
    let o = match b.mode {
        Mode::Step => {
            let batch = b.dim(o, 0)?;
            b.reshape(o, vec![batch, Dim::c(heads), Dim::c(1), Dim::c(d)])?
        }
        _ => o,
    };

    let o = b.transpose(o, &[0, 2, 1, 3])?;
    let (batch, len) = (b.dim(x, 0)?, b.dim(x, 1)?);
    let o = b.reshape(o, vec![batch, len, Dim::c(heads * d)])?;
    b.linear(o, &format!("{s}o_proj"), heads * d, dim, Init::Normal { std }, bias.then_some(Init::Zeros))
}

/// `[B, Hkv, T, d]` → `[B, H, T, d]`, kv head j repeated for heads j·r … j·r + r − 1 (r = H/Hkv).
fn repeat_kv(g: &mut Graph, x: ValueId, heads: usize, kv_heads: usize, d: usize) -> Result<ValueId> {
    if heads == kv_heads {
        return Ok(x);
    }
    let (bsym, t) = (Dim::sym("B"), g.dim(x, 2)?);
    let x = g.reshape(x, vec![bsym.clone(), Dim::c(kv_heads), Dim::c(1), t.clone(), Dim::c(d)])?;
    let x = g.broadcast(x, vec![bsym.clone(), Dim::c(kv_heads), Dim::c(heads / kv_heads), t.clone(), Dim::c(d)])?;
    g.reshape(x, vec![bsym, Dim::c(heads), t, Dim::c(d)])
}
