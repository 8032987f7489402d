//! Model configurations: Hugging Face `config.json` keys with the references' defaults. Every
//! field is read from the config; a key that asks for something tttc does not define is refused.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// A config's key/value map with typed look-ups whose errors name the key.
pub struct Keys<'a>(pub &'a Map<String, Value>);

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key).with_context(|| format!("config key {key} is missing"))?;
        v.as_u64().map(|n| n as usize).with_context(|| format!("config key {key} must be a non-negative integer, got {v}"))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_some() { self.usize(key) } else { Ok(default) }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().with_context(|| format!("config key {key} must be a number, got {v}")),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().with_context(|| format!("config key {key} must be true or false, got {v}")),
        }
    }

    pub fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().with_context(|| format!("config key {key} must be a string, got {v}")),
        }
    }

    /// Refuses `hidden_act` other than silu: the families here define SwiGLU / the Mamba gate with it.
    fn require_silu(&self) -> Result<()> {
        let act = self.str_or("hidden_act", "silu")?;
        if act != "silu" {
            bail!("config key hidden_act = {act:?} is not supported (only \"silu\")");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerModel {
    Linear,
    Mlp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TttConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_heads: usize,
    pub mini_batch_size: usize,
    pub inner: InnerModel,
    pub ttt_base_lr: f64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub pre_conv: bool,
    pub share_qk: bool,
    pub use_gate: bool,
    pub conv_kernel: usize,
    pub tie_word_embeddings: bool,
    pub initializer_range: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MambaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub state_size: usize,
    pub conv_kernel: usize,
    pub time_step_rank: usize,
    pub layer_norm_epsilon: f64,
    pub use_bias: bool,
    pub use_conv_bias: bool,
    pub tie_word_embeddings: bool,
    pub initializer_range: f64,
    pub time_step_min: f64,
    pub time_step_max: f64,
    pub time_step_floor: f64,
    pub time_step_scale: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub initializer_range: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Ttt(TttConfig),
    Mamba(MambaConfig),
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// Reads a Hugging Face style config (a JSON object holding `model_type`).
    pub fn from_json(v: &Value) -> Result<ModelConfig> {
        let map = v.as_object().context("config must be a JSON object")?;
        let k = Keys(map);
        let model_type = k.get("model_type").context("config key model_type is missing")?;
        match model_type.as_str() {
            Some("ttt") => Ok(ModelConfig::Ttt(TttConfig::from_keys(&k)?)),
            Some("mamba") => Ok(ModelConfig::Mamba(MambaConfig::from_keys(&k)?)),
            Some("llama") => Ok(ModelConfig::Llama(LlamaConfig::from_keys(&k)?)),
            _ => bail!("unknown model_type {model_type} (expected \"ttt\", \"mamba\" or \"llama\")"),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Ttt(c) => c.vocab_size,
            ModelConfig::Mamba(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            ModelConfig::Ttt(c) => c.tie_word_embeddings,
            ModelConfig::Mamba(c) => c.tie_word_embeddings,
            ModelConfig::Llama(c) => c.tie_word_embeddings,
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Ttt(_) => "ttt",
            ModelConfig::Mamba(_) => "mamba",
            ModelConfig::Llama(_) => "llama",
        }
    }
}

fn positive(key: &str, v: usize) -> Result<usize> {
    if v == 0 {
        bail!("config key {key} must be positive");
    }
    Ok(v)
}

fn heads_divide(hidden: usize, heads: usize) -> Result<()> {
    if hidden % heads != 0 {
        bail!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
    }
    Ok(())
}

impl TttConfig {
    pub fn from_keys(k: &Keys) -> Result<TttConfig> {
        k.require_silu()?;
        let inner = match k.str_or("ttt_layer_type", "linear")? {
            "linear" => InnerModel::Linear,
            "mlp" => InnerModel::Mlp,
            other => bail!("unknown ttt_layer_type {other:?} (expected \"linear\" or \"mlp\")"),
        };
        let c = TttConfig {
            vocab_size: positive("vocab_size", k.usize("vocab_size")?)?,
            hidden_size: positive("hidden_size", k.usize("hidden_size")?)?,
            intermediate_size: positive("intermediate_size", k.usize("intermediate_size")?)?,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            num_heads: positive("num_attention_heads", k.usize("num_attention_heads")?)?,
            mini_batch_size: positive("mini_batch_size", k.usize_or("mini_batch_size", 16)?)?,
            inner,
            ttt_base_lr: k.f64_or("ttt_base_lr", 1.0)?,
            rope_theta: k.f64_or("rope_theta", 10000.0)?,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
            pre_conv: k.bool_or("pre_conv", false)?,
            share_qk: k.bool_or("share_qk", false)?,
            use_gate: k.bool_or("use_gate", false)?,
            conv_kernel: positive("conv_kernel", k.usize_or("conv_kernel", 4)?)?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", true)?,
            initializer_range: k.f64_or("initializer_range", 0.02)?,
        };
        heads_divide(c.hidden_size, c.num_heads)?;
        if (c.hidden_size / c.num_heads) % 2 != 0 {
            bail!("head dimension {} must be even for RoPE", c.hidden_size / c.num_heads);
        }
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

impl MambaConfig {
    pub fn from_keys(k: &Keys) -> Result<MambaConfig> {
        k.require_silu()?;
        let hidden = positive("hidden_size", k.usize("hidden_size")?)?;
        let expand = k.usize_or("expand", 2)?;
        let time_step_rank = match k.get("time_step_rank") {
            None => hidden.div_ceil(16),
            Some(Value::String(s)) if s == "auto" => hidden.div_ceil(16),
            Some(_) => positive("time_step_rank", k.usize("time_step_rank")?)?,
        };
        Ok(MambaConfig {
            vocab_size: positive("vocab_size", k.usize("vocab_size")?)?,
            hidden_size: hidden,
            intermediate_size: positive("intermediate_size", k.usize_or("intermediate_size", expand * hidden)?)?,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            state_size: positive("state_size", k.usize_or("state_size", 16)?)?,
            conv_kernel: positive("conv_kernel", k.usize_or("conv_kernel", 4)?)?,
            time_step_rank,
            layer_norm_epsilon: k.f64_or("layer_norm_epsilon", 1e-5)?,
            use_bias: k.bool_or("use_bias", false)?,
            use_conv_bias: k.bool_or("use_conv_bias", true)?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", true)?,
            initializer_range: k.f64_or("initializer_range", 0.1)?,
            time_step_min: k.f64_or("time_step_min", 0.001)?,
            time_step_max: k.f64_or("time_step_max", 0.1)?,
            time_step_floor: k.f64_or("time_step_floor", 1e-4)?,
            time_step_scale: k.f64_or("time_step_scale", 1.0)?,
        })
    }
}

impl LlamaConfig {
    pub fn from_keys(k: &Keys) -> Result<LlamaConfig> {
        k.require_silu()?;
        if let Some(v) = k.get("rope_scaling") {
            bail!("config key rope_scaling = {v} is not supported (only null)");
        }
        let heads = positive("num_attention_heads", k.usize("num_attention_heads")?)?;
        let c = LlamaConfig {
            vocab_size: positive("vocab_size", k.usize("vocab_size")?)?,
            hidden_size: positive("hidden_size", k.usize("hidden_size")?)?,
            intermediate_size: positive("intermediate_size", k.usize("intermediate_size")?)?,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: positive("num_key_value_heads", k.usize_or("num_key_value_heads", heads)?)?,
            rope_theta: k.f64_or("rope_theta", 10000.0)?,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
            attention_bias: k.bool_or("attention_bias", false)?,
            mlp_bias: k.bool_or("mlp_bias", false)?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", false)?,
            initializer_range: k.f64_or("initializer_range", 0.02)?,
        };
        heads_divide(c.hidden_size, c.num_heads)?;
        if c.num_heads % c.num_kv_heads != 0 {
            bail!("num_attention_heads {} is not a multiple of num_key_value_heads {}", c.num_heads, c.num_kv_heads);
        }
        if let Some(hd) = k.get("head_dim") {
            if hd.as_u64() != Some((c.hidden_size / c.num_heads) as u64) {
                bail!("config key head_dim = {hd} is not supported (only hidden_size / num_attention_heads)");
            }
        }
        if (c.hidden_size / c.num_heads) % 2 != 0 {
            bail!("head dimension {} must be even for RoPE", c.hidden_size / c.num_heads);
        }
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}
