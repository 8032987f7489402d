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

/// The reference inner models, named by `ttt_layer_type`: presets of [`InnerSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerModel {
    Linear,
    Mlp,
}

impl InnerModel {
    /// `linear`: `f(x) = x + LN(x W1 + b1)`; `mlp`: `f(x) = x + LN(gelu_tanh(x W1 + b1) W2 + b2)`
    /// with a hidden width of 4d (SPEC §2 step 4).
    pub fn spec(self) -> InnerSpec {
        let widths = match self {
            InnerModel::Linear => vec![],
            InnerModel::Mlp => vec![4],
        };
        InnerSpec {
            widths,
            bias: true,
            activation: Activation::GeluTanh,
            residual: true,
            norm: InnerNorm::LayerNorm,
            loss: InnerLoss::Reconstruction,
        }
    }
}

/// The TTT inner learner built from parts (config key `ttt_inner`, docs/model-toml.md): per head,
/// `len(widths) + 1` linear layers `d → widths[0]·d → … → d` with `activation` between
/// consecutive layers, `N` the inner LayerNorm or the identity, and
/// `f(x) = x + N(Z(x))` with `residual`, `N(Z(x))` without. The self-supervised loss of a token is
/// `ℓ = ½‖f(k) − v‖²`, built as `½‖N(Z(k)) − t‖²` with target `t = v − k` (residual) or `t = v`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InnerSpec {
    /// Hidden widths as multiples of the head dimension d (0 to 2 of them).
    pub widths: Vec<usize>,
    /// Whether every layer has a bias `b{l}`.
    pub bias: bool,
    /// Between consecutive layers (unused by a one-layer model).
    pub activation: Activation,
    pub residual: bool,
    pub norm: InnerNorm,
    pub loss: InnerLoss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`
    GeluTanh,
    /// `max(x, 0)`
    Relu,
    /// `x · sigmoid(x)`
    Silu,
}

/// The normalisation of the inner model's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerNorm {
    /// LayerNorm over d, eps 1e-6, weight `ttt_norm_weight[h]`, bias `ttt_norm_bias[h]`.
    LayerNorm,
    /// None, and no `ttt_norm_*` weights.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerLoss {
    /// `½‖f(k) − v‖²`.
    Reconstruction,
}

/// The keys of a `ttt_inner` table.
const INNER_KEYS: [&str; 6] = ["widths", "bias", "activation", "residual", "norm", "loss"];

/// Most layers an inner model may have.
pub const MAX_INNER_DEPTH: usize = 3;

impl InnerSpec {
    /// The number of linear layers.
    pub fn depth(&self) -> usize {
        self.widths.len() + 1
    }

    /// The preset this spec is, if any (the activation of a one-layer model does not count).
    pub fn preset(&self) -> Option<InnerModel> {
        [InnerModel::Linear, InnerModel::Mlp].into_iter().find(|m| {
            let p = m.spec();
            let act = self.widths.is_empty() || self.activation == p.activation;
            act && InnerSpec { activation: p.activation, ..self.clone() } == p
        })
    }

    /// `ttt_layer_type`'s preset with the keys of `ttt_inner` (when present) replacing its fields.
    fn from_keys(k: &Keys) -> Result<InnerSpec> {
        let mut spec = match k.str_or("ttt_layer_type", "linear")? {
            "linear" => InnerModel::Linear,
            "mlp" => InnerModel::Mlp,
            other => bail!("unknown ttt_layer_type {other:?} (expected \"linear\" or \"mlp\")"),
        }
        .spec();
        let Some(table) = k.get("ttt_inner") else { return Ok(spec) };
        let table = table
            .as_object()
            .with_context(|| format!("config key ttt_inner must be a table of inner-learner keys, got {table}"))?;
        if let Some(key) = table.keys().find(|key| !INNER_KEYS.contains(&key.as_str())) {
            bail!("unknown config key ttt_inner.{key} (expected {})", INNER_KEYS.join(", "));
        }
        // Errors name the keys with their table: `ttt_inner.bias`.
        let prefixed: Map<String, Value> = table.iter().map(|(key, v)| (format!("ttt_inner.{key}"), v.clone())).collect();
        let t = Keys(&prefixed);
        if let Some(v) = t.get("ttt_inner.widths") {
            let list = v.as_array().with_context(|| {
                format!("config key ttt_inner.widths must be a list of positive integers (hidden widths in multiples of the head dimension), got {v}")
            })?;
            spec.widths = list
                .iter()
                .map(|w| match w.as_u64() {
                    Some(n) if n > 0 => Ok(n as usize),
                    _ => bail!("config key ttt_inner.widths must hold positive integers (multiples of the head dimension), got {w}"),
                })
                .collect::<Result<_>>()?;
            if spec.depth() > MAX_INNER_DEPTH {
                bail!(
                    "config key ttt_inner.widths = {v} makes an inner model of depth {} (at most {MAX_INNER_DEPTH} layers: 0 to {} hidden widths)",
                    spec.depth(),
                    MAX_INNER_DEPTH - 1
                );
            }
        }
        spec.bias = t.bool_or("ttt_inner.bias", spec.bias)?;
        spec.residual = t.bool_or("ttt_inner.residual", spec.residual)?;
        if t.get("ttt_inner.activation").is_some() {
            spec.activation = match t.str_or("ttt_inner.activation", "")? {
                "gelu_tanh" => Activation::GeluTanh,
                "relu" => Activation::Relu,
                "silu" => Activation::Silu,
                other => bail!("config key ttt_inner.activation = {other:?} is not supported (expected \"gelu_tanh\", \"relu\" or \"silu\")"),
            };
        }
        if t.get("ttt_inner.norm").is_some() {
            spec.norm = match t.str_or("ttt_inner.norm", "")? {
                "layer_norm" => InnerNorm::LayerNorm,
                "none" => InnerNorm::None,
                other => bail!("config key ttt_inner.norm = {other:?} is not supported (expected \"layer_norm\" or \"none\")"),
            };
        }
        if t.get("ttt_inner.loss").is_some() {
            spec.loss = match t.str_or("ttt_inner.loss", "")? {
                "reconstruction" => InnerLoss::Reconstruction,
                other => bail!("config key ttt_inner.loss = {other:?} is not supported (only \"reconstruction\")"),
            };
        }
        Ok(spec)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TttConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_heads: usize,
    pub mini_batch_size: usize,
    /// The inner learner: `ttt_layer_type`'s preset, or its `ttt_inner` refinement.
    pub inner: InnerSpec,
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
    if !hidden.is_multiple_of(heads) {
        bail!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
    }
    Ok(())
}

impl TttConfig {
    pub fn from_keys(k: &Keys) -> Result<TttConfig> {
        k.require_silu()?;
        let inner = InnerSpec::from_keys(k)?;
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
        if !(c.hidden_size / c.num_heads).is_multiple_of(2) {
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
        if !c.num_heads.is_multiple_of(c.num_kv_heads) {
            bail!("num_attention_heads {} is not a multiple of num_key_value_heads {}", c.num_heads, c.num_kv_heads);
        }
        if let Some(hd) = k.get("head_dim") {
            if hd.as_u64() != Some((c.hidden_size / c.num_heads) as u64) {
                bail!("config key head_dim = {hd} is not supported (only hidden_size / num_attention_heads)");
            }
        }
        if !(c.hidden_size / c.num_heads).is_multiple_of(2) {
            bail!("head dimension {} must be even for RoPE", c.hidden_size / c.num_heads);
        }
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The layer count, which a model's size grows with: memory estimates build one and two layers
/// and extrapolate.
impl ModelConfig {
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            ModelConfig::Ttt(c) => c.num_hidden_layers,
            ModelConfig::Mamba(c) => c.num_hidden_layers,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        }
    }

    /// The same model with `layers` layers.
    pub fn with_layers(&self, layers: usize) -> ModelConfig {
        let mut c = self.clone();
        match &mut c {
            ModelConfig::Ttt(c) => c.num_hidden_layers = layers,
            ModelConfig::Mamba(c) => c.num_hidden_layers = layers,
            ModelConfig::Llama(c) => c.num_hidden_layers = layers,
        }
        c
    }
}
