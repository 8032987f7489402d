//! Frontends: model definitions (a Hugging Face folder with `config.json`, or a `model.toml`)
//! into a graph of general IR ops plus its weights, loaded from safetensors or initialised from a
//! seed.

pub mod builder;
mod chunk_update;
pub mod config;
pub mod init;
mod json;
mod lact;
mod learner;
mod llama;
mod mamba;
pub mod math;
pub mod rng;
mod source;
mod ttt;
pub mod weights;

use anyhow::Result;

pub use builder::{Init, Mode, ModelBuilder, StateInit, StateSpec};
pub use config::{InnerModel, InnerOptimizer, LlamaConfig, MambaConfig, ModelConfig, TttConfig};
pub use source::{load, load_config, load_structure, outputs_reading_model, parse_config_json, source_files, structure_of, Model, DEFAULT_SEED};

/// Builds the graph of one sequence-mixing layer: argument `x` f32 `[B, T, D]`, the layer's
/// weights (named as layer 0's in the whole model), output `y` `[B, T, D]`. TTT: the TTT layer
/// (projections, the inner loop, post-norm, gate, output projection); Mamba: the mixer; Llama:
/// self-attention; LaCT: its layer (attention and fast weights), or the bidirectional layer.
pub fn build_layer(config: &ModelConfig) -> Result<ModelBuilder> {
    build_layer_for(config, Mode::Forward)
}

/// What the names of a [`build_layer`] graph's weights and state start with: layer 0's place in
/// the whole model (`model.layers.0.seq_modeling_block.` for TTT).
pub fn layer_prefix(config: &ModelConfig) -> &'static str {
    match config {
        ModelConfig::Ttt(_) => ttt::LAYER_PREFIX,
        ModelConfig::Mamba(_) => mamba::LAYER_PREFIX,
        ModelConfig::Llama(_) => llama::LAYER_PREFIX,
        ModelConfig::Lact(_) => lact::LAYER_PREFIX,
        ModelConfig::LactBidirectional(_) => "",
    }
}

/// [`build_layer`] in a sequence mode: `Forward`, `Run` (the state after the sequence as outputs
/// `state.NAME`, `position` among them, laid out as docs/state.md says) or `Resume` (the sequence
/// continues from the state given as inputs `state.NAME`, and the state after it is output).
pub fn build_layer_for(config: &ModelConfig, mode: Mode) -> Result<ModelBuilder> {
    anyhow::ensure!(
        matches!(mode, Mode::Forward | Mode::Run | Mode::Resume { .. }),
        "a layer is built for a whole sequence (forward, run or resume), not {mode:?}"
    );
    let mut b = match config {
        ModelConfig::Ttt(c) => ttt::layer(c, mode),
        ModelConfig::Mamba(c) => mamba::layer(c, mode),
        ModelConfig::Llama(c) => llama::layer(c, mode),
        ModelConfig::Lact(c) => lact::layer(c, mode),
        ModelConfig::LactBidirectional(c) => lact::bidirectional_layer(c, mode),
    }?;
    if mode != Mode::Forward {
        let period = match config {
            ModelConfig::Ttt(c) => Some(c.mini_batch_size),
            _ => None,
        };
        let next = b.next_position(period)?;
        b.state_output("position", next);
    }
    b.g = b.g.canonical();
    Ok(b)
}

/// Builds the forward graph of a model: argument `input_ids` i64 `[B, T]`, one `Param` argument per
/// weight (Hugging Face names), outputs `logits` `[B, T, V]` and `loss` `[]`.
/// Values are numbered in definition order (`Graph::canonical`), as the text parser numbers them.
pub fn build(config: &ModelConfig) -> Result<ModelBuilder> {
    build_for(config, Mode::Forward)
}

/// Builds one of a model's graphs (see [`Mode`]): the forward pass, a prefill or a decoding step.
pub fn build_for(config: &ModelConfig, mode: Mode) -> Result<ModelBuilder> {
    let mut b = match config {
        ModelConfig::Ttt(c) => ttt::build(c, mode),
        ModelConfig::Mamba(c) => mamba::build(c, mode),
        ModelConfig::Llama(c) => llama::build(c, mode),
        ModelConfig::Lact(c) => lact::build(c, mode),
        ModelConfig::LactBidirectional(_) => {
            anyhow::bail!(
                "model_type \"lact_bidirectional_layer\" describes one layer, not a language model: use it as a layer (the Python binding's tttc.Layer, or tttc compile)"
            )
        }
    }?;
    b.g = b.g.canonical();
    Ok(b)
}
