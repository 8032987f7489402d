//! Model configurations: Hugging Face `config.json` keys with the references' defaults. Every
//! field is read from the config; a key that asks for something tttc does not define is refused.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::json::key_name;

/// The largest size a config may give (any width, count or length): a product of two sizes, such
/// as a weight's element count or a reshape's volume, stays below 2^64.
pub const MAX_SIZE: usize = 1 << 31;

/// The most layers and convolution taps: the graph repeats its nodes for each layer, and for
/// each tap within a layer, so these bound the graph's size (references use up to ~100 and 4).
pub const MAX_LAYERS: usize = 1024;
pub const MAX_CONV_KERNEL: usize = 64;

/// The largest value of a size key.
fn most(key: &str) -> usize {
    match key {
        "num_hidden_layers" => MAX_LAYERS,
        "conv_kernel" => MAX_CONV_KERNEL,
        _ => MAX_SIZE,
    }
}

/// The keys each family reads (docs/model-toml.md). Any other key is refused unless ignored below.
const TTT_KEYS: &[&str] = &[
    "model_type",
    "hidden_act",
    "pruned_heads",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mini_batch_size",
    "ttt_layer_type",
    "ttt_inner",
    "ttt_base_lr",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "pre_conv",
    "share_qk",
    "use_gate",
    "conv_kernel",
    "tie_word_embeddings",
    "initializer_range",
];
const MAMBA_KEYS: &[&str] = &[
    "model_type",
    "hidden_act",
    "pruned_heads",
    "vocab_size",
    "hidden_size",
    "expand",
    "intermediate_size",
    "num_hidden_layers",
    "state_size",
    "conv_kernel",
    "time_step_rank",
    "layer_norm_epsilon",
    "use_bias",
    "use_conv_bias",
    "tie_word_embeddings",
    "initializer_range",
    "time_step_min",
    "time_step_max",
    "time_step_floor",
    "time_step_scale",
    "time_step_init_scheme",
    "rescale_prenorm_residual",
];
const LLAMA_KEYS: &[&str] = &[
    "model_type",
    "hidden_act",
    "pruned_heads",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "tie_word_embeddings",
    "initializer_range",
];

const LACT_KEYS: &[&str] = &[
    "model_type",
    "hidden_act",
    "pruned_heads",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attn_heads",
    "num_lact_heads",
    "inter_multi",
    "lact_chunk_size",
    "window_size",
    "rope_theta",
    "qkv_bias",
    "attn_qk_norm",
    "qkv_silu",
    "no_v_silu",
    "use_momentum",
    "use_muon",
    "learnable_ttt_scale",
    "ttt_prenorm",
    "ttt_nope",
    "w0_w2_low_rank",
    "norm_eps",
    "hidden_ratio",
    "intermediate_size",
    "tie_word_embeddings",
    "pad_token_id",
    "initializer_range",
    "fw_init_gain",
    "lr_dim",
    "lr_parameterization",
    "ttt_loss_type",
    "use_fused_kernel",
];

const LACT_BIDIRECTIONAL_KEYS: &[&str] = &["model_type", "dim", "head_dim", "inter_multi", "use_o_norm", "qk_l2_norm", "use_muon", "base_lr"];

/// Keys that Hugging Face's `PretrainedConfig` writes into every config.json and whose values
/// cannot change the model's math: bookkeeping, output and precision switches, token ids and
/// labels for tokenizers and other heads, and generation defaults. They are ignored by name.
pub const IGNORED_KEYS: &[&str] = &[
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "transformers_version",
    "architectures",
    "torch_dtype",
    "use_bfloat16",
    "torchscript",
    "tf_legacy_loss",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "use_cache",
    "gradient_checkpointing",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "finetuning_task",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "task_specific_params",
    "tokenizer_class",
    "prefix",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// TTTConfig's keys without effect here: the RoPE positions restart every mini-batch, whatever
/// the maximum; tensor-parallel slices of a matmul sum to the same product; the scan's
/// checkpoint groups only choose what training recomputes.
pub const TTT_IGNORED_KEYS: &[&str] = &["max_position_embeddings", "pretraining_tp", "scan_checkpoint_group_size"];
/// MambaConfig's: the residual's precision (tttc keeps it in f32, as `residual_in_fp32`) and
/// which implementation runs the scan.
pub const MAMBA_IGNORED_KEYS: &[&str] = &["residual_in_fp32", "use_mambapy"];
/// LlamaConfig's: the length of the default RoPE's cache (positions past it are computed alike)
/// and tensor-parallel slices.
pub const LLAMA_IGNORED_KEYS: &[&str] = &["max_position_embeddings", "pretraining_tp"];

/// LaCTSWIGLUConfig's (SPEC-lact.md §2): RoPE positions are not capped; every RMSNorm here has
/// a weight; the fused kernels, states' precision and cache switch choose an implementation.
/// LaCT's shipped configs also carry `attention_bias`, which its code never reads (the qkv bias
/// is `qkv_bias`).
pub const LACT_IGNORED_KEYS: &[&str] = &[
    "max_position_embeddings",
    "elementwise_affine",
    "fuse_norm",
    "last_layer_fuse_norm",
    "fuse_swiglu",
    "fuse_cross_entropy",
    "fp32_states",
    "attention_bias",
];

/// What a number must be.
#[derive(Clone, Copy)]
enum Range {
    Finite,
    NonNegative,
    Positive,
}

impl Range {
    fn holds(self, x: f64) -> bool {
        x.is_finite()
            && match self {
                Range::Finite => true,
                Range::NonNegative => x >= 0.0,
                Range::Positive => x > 0.0,
            }
    }

    fn says(self) -> &'static str {
        match self {
            Range::Finite => "a finite number",
            Range::NonNegative => "a finite number >= 0",
            Range::Positive => "a finite number > 0",
        }
    }
}

/// A config's key/value map with typed look-ups whose errors name the key (after `prefix`, the
/// table's name: `ttt_inner.`). `known` lists the keys that may be read.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    prefix: &'static str,
    known: &'static [&'static str],
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        debug_assert!(self.known.contains(&key), "{key} is read but not listed as known");
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Refuses a key that is neither known nor in `ignored`, suggesting the closest name.
    fn refuse_unknown(&self, ignored: &[&str]) -> Result<()> {
        let names = || self.known.iter().chain(ignored);
        let Some(key) = self.map.keys().find(|key| !names().any(|k| k == key)) else { return Ok(()) };
        // Close: at most a third of the key's characters differ.
        let limit = (key.chars().count() / 3).max(1);
        let hint = names()
            .filter_map(|k| edit_distance(key, k, limit).map(|d| (d, k)))
            .min()
            .map(|(_, k)| format!(" (did you mean {}?)", self.name(k)))
            .unwrap_or_default();
        bail!("unknown config key {}{hint}", key_name(&self.name(key)));
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let name = self.name(key);
        let v = self.get(key).with_context(|| format!("config key {name} is missing"))?;
        let n = v.as_u64().with_context(|| format!("config key {name} must be a non-negative integer, got {v}"))?;
        let most = most(key);
        if n > most as u64 {
            bail!("config key {name} = {n} is too large (at most {most})");
        }
        Ok(n as usize)
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_some() {
            self.usize(key)
        } else {
            Ok(default)
        }
    }

    /// A positive size.
    fn size(&self, key: &str) -> Result<usize> {
        positive(&self.name(key), self.usize(key)?)
    }

    fn size_or(&self, key: &str, default: usize) -> Result<usize> {
        positive(&self.name(key), self.usize_or(key, default)?)
    }

    fn f64_or(&self, key: &str, default: f64, range: Range) -> Result<f64> {
        let Some(v) = self.get(key) else { return Ok(default) };
        match v.as_f64() {
            Some(x) if range.holds(x) => Ok(x),
            _ => bail!("config key {} must be {}, got {v}", self.name(key), range.says()),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().with_context(|| format!("config key {} must be true or false, got {v}", self.name(key))),
        }
    }

    /// An integer that may be negative (LaCT's `w0_w2_low_rank`, where ≤ 0 means "off").
    fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        let Some(v) = self.get(key) else { return Ok(default) };
        v.as_i64().with_context(|| format!("config key {} must be an integer, got {v}", self.name(key)))
    }

    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().with_context(|| format!("config key {} must be a string, got {v}", self.name(key))),
        }
    }

    /// Refuses a value of `key` that `ok` does not accept (absent and null are the references'
    /// defaults): a setting of the references that tttc does not implement. `only` says what is.
    fn only(&self, key: &str, only: &str, ok: impl Fn(&Value) -> bool) -> Result<()> {
        match self.get(key) {
            Some(v) if !ok(v) => bail!("config key {} = {v} is not supported (only {only})", self.name(key)),
            _ => Ok(()),
        }
    }
}

/// The Levenshtein distance between `a` and `b` when it is at most `limit`.
fn edit_distance(a: &str, b: &str, limit: usize) -> Option<usize> {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Skips the table for lengths that differ by more (and so a huge key costs nothing).
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    Some(row[b.len()]).filter(|&d| d <= limit)
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
            InnerModel::Mlp => vec![4.0],
        };
        InnerSpec {
            widths,
            bias: true,
            activation: Activation::GeluTanh,
            glu: false,
            residual: true,
            norm: InnerNorm::LayerNorm,
            loss: InnerLoss::Reconstruction,
        }
    }
}

/// The TTT inner learner built from parts (config key `ttt_inner`, docs/model-toml.md): per head,
/// `len(widths) + 1` linear layers `d → ⌊widths[0]·d⌋ → … → d` with `activation` between
/// consecutive layers (with `glu`, a hidden layer is `act(x G + c) ⊙ (x W + b)`), `N` the inner
/// LayerNorm or the identity, and `f(x) = x + N(Z(x))` with `residual`, `N(Z(x))` without. The
/// self-supervised loss of a token is `ℓ = ½‖f(k) − v‖²`, built as `½‖N(Z(k)) − t‖²` with target
/// `t = v − k` (residual) or `t = v`, or LaCT's `ℓ = −v · f(k)`.
#[derive(Clone, Debug, PartialEq)]
pub struct InnerSpec {
    /// Hidden widths as multiples of the head dimension d, each ⌊w·d⌋ (0 to 2 of them; LaCT's
    /// `inter_multi` may be fractional).
    pub widths: Vec<f64>,
    /// Whether every layer has a bias `b{l}`.
    pub bias: bool,
    /// Between consecutive layers (unused by a one-layer model).
    pub activation: Activation,
    /// Whether every hidden layer is gated (a GLU: SwiGLU with silu): `act(x G{l} + c{l}) ⊙ (x
    /// W{l} + b{l})`, with the gate's weights `W{l}_gate` (and `b{l}_gate`).
    pub glu: bool,
    pub residual: bool,
    pub norm: InnerNorm,
    pub loss: InnerLoss,
}

/// One tensor of the inner model: its name under the layer, `[rows, cols]` per head, and whether
/// it is a bias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InnerTensor {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub bias: bool,
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
    /// `−v · f(k)` (LaCT's: a step ascends the values' dot product with the output).
    DotProduct,
}

/// The keys of a `ttt_inner` table: the learner's, then the inner optimizer's.
const INNER_KEYS: [&str; 13] =
    ["widths", "bias", "activation", "glu", "residual", "norm", "loss", "update", "momentum", "forget", "muon", "renormalize", "learning_rates"];

/// The `ttt_inner` table's keys, when the config has one.
fn inner_table<'a>(k: &'a Keys) -> Result<Option<Keys<'a>>> {
    let Some(table) = k.get("ttt_inner") else { return Ok(None) };
    let table = table.as_object().with_context(|| format!("config key ttt_inner must be a table of inner-learner and inner-optimizer keys, got {table}"))?;
    let t = Keys { map: table, prefix: "ttt_inner.", known: &INNER_KEYS };
    t.refuse_unknown(&[])?;
    Ok(Some(t))
}

/// How the inner weights follow their gradients (SPEC §2 step 5 and "Gated inner optimizer", and
/// docs/model-toml.md for `update = "per_chunk"`).
///
/// Per token (the default, the references' granularity): without either gate or Muon, the
/// references' rule `W_i = W₀ − τ[i]·Σ_{j≤i} lr_j g_j` with the learned token scale τ. With one,
/// per token `S_i = β_i·S_{i−1} + lr_i·g_i` and `W_i = (1 − α_i)·W_{i−1} − S_i` (Muon: minus
/// `Muon(S_i)`), the gates β (momentum) and α (forgetting) computed from the layer's input like
/// the learning rate, and no τ.
///
/// Per chunk (LaCT's apply-then-update): a mini-batch's tokens read the weights it started from,
/// then its step `Δ = −Σ_j lr_j g_j` moves them once: with momentum `M ← Δ + β̄·M` (β̄ the
/// mini-batch's mean gate) and the step `M`; with Muon the step orthogonalised; then
/// `W ← (1 − ᾱ)·W + step`, and with renormalisation every unit's weights back to their initial
/// norm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InnerOptimizer {
    pub update: Update,
    /// β from `learnable_ttt_momentum_{weight,bias}` (else β ≡ 0).
    pub momentum: bool,
    /// α from `learnable_ttt_forget_{weight,bias}` (else α ≡ 0): forgetting, or decoupled weight
    /// decay.
    pub forget: bool,
    /// Muon: each step orthogonalised by Newton–Schulz.
    pub muon: bool,
    /// The weights' units renormalised to their initial norms after each step (per chunk only).
    pub renormalize: Option<Renormalize>,
    /// A learning rate per token for each inner matrix (a bias takes its matrix's), LaCT's,
    /// instead of one per token (per chunk only).
    pub lr_per_matrix: bool,
}

/// When the inner weights move (`ttt_inner.update`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Update {
    /// `"per_token"`: every token reads weights that its own gradient has moved (TTT's dual form).
    #[default]
    PerToken,
    /// `"per_chunk"`: a mini-batch reads the weights it started from, then updates them once.
    PerChunk,
}

/// Where the renormalisation to the initial norms sits (`ttt_inner.renormalize`, LaCT's
/// `ttt_prenorm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renormalize {
    /// `"post"`: the weights take the step and are renormalised.
    Post,
    /// `"pre"`: unnormalised weights take the steps; the weights read are their renormalisation.
    Pre,
}

impl InnerOptimizer {
    /// Whether the per-token gated rule replaces the references' (per token, either gate or
    /// Muon on: Muon takes the rule's recurrence, with or without its gates).
    pub fn gated_rule(self) -> bool {
        self.update == Update::PerToken && (self.momentum || self.forget || self.muon)
    }

    fn from_keys(k: &Keys) -> Result<InnerOptimizer> {
        let Some(t) = inner_table(k)? else { return Ok(InnerOptimizer::default()) };
        let update = match t.str_or("update", "per_token")? {
            "per_token" => Update::PerToken,
            "per_chunk" => Update::PerChunk,
            other => bail!("config key ttt_inner.update = {other:?} is not supported (expected \"per_token\" or \"per_chunk\")"),
        };
        let renormalize = match t.get("renormalize").map(|_| t.str_or("renormalize", "")).transpose()? {
            None => None,
            Some("post") => Some(Renormalize::Post),
            Some("pre") => Some(Renormalize::Pre),
            Some(other) => bail!("config key ttt_inner.renormalize = {other:?} is not supported (expected \"post\" or \"pre\")"),
        };
        let o = InnerOptimizer {
            update,
            momentum: t.bool_or("momentum", false)?,
            forget: t.bool_or("forget", false)?,
            muon: t.bool_or("muon", false)?,
            renormalize,
            lr_per_matrix: match t.str_or("learning_rates", "per_token")? {
                "per_token" => false,
                "per_matrix" => true,
                other => bail!("config key ttt_inner.learning_rates = {other:?} is not supported (expected \"per_token\" or \"per_matrix\")"),
            },
        };
        if update == Update::PerToken && o.lr_per_matrix {
            // Per token, η would differ per matrix: the references' form has one.
            bail!("config key ttt_inner.learning_rates = \"per_matrix\" needs ttt_inner.update = \"per_chunk\"");
        }
        if update == Update::PerToken && o.renormalize.is_some() {
            // Renormalised per token, each token's weights would depend nonlinearly on the last
            // token's: no form of a mini-batch at once, as the gradients at its start need.
            bail!("config key ttt_inner.renormalize needs ttt_inner.update = \"per_chunk\" (renormalised per token, a token's weights are no sum of its mini-batch's steps)");
        }
        Ok(o)
    }
}

/// Most layers an inner model may have.
pub const MAX_INNER_DEPTH: usize = 3;

impl InnerSpec {
    /// The number of linear layers.
    pub fn depth(&self) -> usize {
        self.widths.len() + 1
    }

    /// The preset this spec is, if any (the activation and gating of a one-layer model do not
    /// count: it has no hidden layer).
    pub fn preset(&self) -> Option<InnerModel> {
        let hidden = !self.widths.is_empty();
        [InnerModel::Linear, InnerModel::Mlp].into_iter().find(|m| {
            let p = m.spec();
            let act = !hidden || self.activation == p.activation;
            act && InnerSpec { activation: p.activation, glu: hidden && self.glu, ..self.clone() } == p
        })
    }

    /// Whether layer `l` (from 0) has a gate: a GLU's hidden layers.
    pub fn gated(&self, l: usize) -> bool {
        self.glu && l + 1 < self.depth()
    }

    /// The inner model's tensors in the order its weights are laid out: per layer `W{l}`
    /// `[in, out]`, `b{l}` `[1, out]` with bias, then on a gated layer `W{l}_gate` and
    /// `b{l}_gate`, for head dimension `d`.
    pub fn tensors(&self, d: usize) -> Vec<InnerTensor> {
        let mut sizes = vec![d];
        sizes.extend(self.widths.iter().map(|w| Self::hidden_width(*w, d)));
        sizes.push(d);
        self.layout()
            .into_iter()
            .map(|(l, gate, bias, _)| {
                let (name, rows) = if bias { (format!("b{}{gate}", l + 1), 1) } else { (format!("W{}{gate}", l + 1), sizes[l]) };
                InnerTensor { name, rows, cols: sizes[l + 1], bias }
            })
            .collect()
    }

    /// The matrix each tensor belongs to, in [`InnerSpec::tensors`]' order.
    pub fn matrix_of_tensors(&self) -> Vec<usize> {
        self.layout().into_iter().map(|(.., matrix)| matrix).collect()
    }

    /// `(layer, gate suffix, is a bias, matrix)` of each tensor in order.
    fn layout(&self) -> Vec<(usize, &'static str, bool, usize)> {
        let (mut out, mut matrix) = (Vec::new(), 0);
        for l in 0..self.depth() {
            let gates: &[&'static str] = if self.gated(l) { &["", "_gate"] } else { &[""] };
            for &gate in gates {
                out.push((l, gate, false, matrix));
                if self.bias {
                    out.push((l, gate, true, matrix));
                }
                matrix += 1;
            }
        }
        out
    }

    /// A hidden width `⌊w·d⌋` (LaCT's `m = ⌊d · inter_multi⌋`).
    pub fn hidden_width(w: f64, d: usize) -> usize {
        (d as f64 * w).floor() as usize
    }

    /// LaCT's fast weights (SPEC-lact.md §5.6): `f(x) = (silu(x W1_gate) ⊙ (x W1)) W2` with the
    /// hidden width ⌊d · inter_multi⌋, no bias, residual or norm, and the dot-product loss.
    pub fn lact(inter_multi: f64) -> InnerSpec {
        InnerSpec {
            widths: vec![inter_multi],
            bias: false,
            activation: Activation::Silu,
            glu: true,
            residual: false,
            norm: InnerNorm::None,
            loss: InnerLoss::DotProduct,
        }
    }

    /// The number of inner matrices (layers and gates).
    pub fn matrices(&self) -> usize {
        self.matrix_of_tensors().last().map_or(0, |m| m + 1)
    }

    /// `ttt_layer_type`'s preset with the keys of `ttt_inner` (when present) replacing its fields.
    fn from_keys(k: &Keys) -> Result<InnerSpec> {
        let mut spec = match k.str_or("ttt_layer_type", "linear")? {
            "linear" => InnerModel::Linear,
            "mlp" => InnerModel::Mlp,
            other => bail!("unknown ttt_layer_type {other:?} (expected \"linear\" or \"mlp\")"),
        }
        .spec();
        let Some(t) = inner_table(k)? else { return Ok(spec) };
        if let Some(v) = t.get("widths") {
            let list = v.as_array().with_context(|| {
                format!("config key ttt_inner.widths must be a list of positive numbers (hidden widths in multiples of the head dimension), got {v}")
            })?;
            spec.widths = list
                .iter()
                .map(|w| match w.as_f64() {
                    Some(n) if n > 0.0 && n.is_finite() => Ok(n),
                    _ => bail!("config key ttt_inner.widths must hold positive numbers (multiples of the head dimension), got {w}"),
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
        spec.bias = t.bool_or("bias", spec.bias)?;
        spec.glu = t.bool_or("glu", spec.glu)?;
        spec.residual = t.bool_or("residual", spec.residual)?;
        if t.get("activation").is_some() {
            spec.activation = match t.str_or("activation", "")? {
                "gelu_tanh" => Activation::GeluTanh,
                "relu" => Activation::Relu,
                "silu" => Activation::Silu,
                other => bail!("config key ttt_inner.activation = {other:?} is not supported (expected \"gelu_tanh\", \"relu\" or \"silu\")"),
            };
        }
        if t.get("norm").is_some() {
            spec.norm = match t.str_or("norm", "")? {
                "layer_norm" => InnerNorm::LayerNorm,
                "none" => InnerNorm::None,
                other => bail!("config key ttt_inner.norm = {other:?} is not supported (expected \"layer_norm\" or \"none\")"),
            };
        }
        if t.get("loss").is_some() {
            spec.loss = match t.str_or("loss", "")? {
                "reconstruction" => InnerLoss::Reconstruction,
                "dot_product" => InnerLoss::DotProduct,
                other => bail!("config key ttt_inner.loss = {other:?} is not supported (expected \"reconstruction\" or \"dot_product\")"),
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
    /// The inner optimizer: the references' rule, or the gated one (`ttt_inner.momentum` /
    /// `ttt_inner.forget`).
    pub optimizer: InnerOptimizer,
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

/// LaCT's language model (`model_type "lact_swiglu"`, SPEC-lact.md): per layer, sliding-window
/// attention and SwiGLU fast weights updated once per large chunk, then a SwiGLU MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct LactConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attn_heads: usize,
    pub num_lact_heads: usize,
    /// The fast weights' hidden size as a multiple of their head size (m = ⌊d · inter_multi⌋).
    pub inter_multi: f64,
    pub chunk_size: usize,
    /// The attention's window W (keys t − W < j ≤ t); `None`: all earlier keys.
    pub window_size: Option<usize>,
    pub rope_theta: f64,
    pub qkv_bias: bool,
    pub attn_qk_norm: bool,
    pub qkv_silu: bool,
    pub no_v_silu: bool,
    pub use_momentum: bool,
    pub use_muon: bool,
    pub learnable_ttt_scale: bool,
    /// Pre-norm renormalisation: a raw copy of the fast weights takes the steps.
    pub ttt_prenorm: bool,
    /// No RoPE on the fast q and k.
    pub ttt_nope: bool,
    /// The rank of `w0` and `w2`'s low-rank parameterisation (`None`: full matrices).
    pub low_rank: Option<usize>,
    pub norm_eps: f64,
    pub intermediate_size: usize,
    pub tie_word_embeddings: bool,
    /// The embedding row that gets no gradient from the lookup.
    pub pad_token_id: Option<usize>,
    pub initializer_range: f64,
    pub fw_init_gain: f64,
}

/// LaCT's bidirectional layer (`model_type "lact_bidirectional_layer"`, SPEC-lact.md §8), for
/// video and image models: one update of the fast weights on the whole sequence, then applied
/// to every token. A layer, not a language model.
#[derive(Clone, Debug, PartialEq)]
pub struct LactBidirectionalConfig {
    pub dim: usize,
    /// d: the fast weights' head size (D/d heads).
    pub head_dim: usize,
    pub inter_multi: f64,
    pub use_o_norm: bool,
    pub qk_l2_norm: bool,
    pub use_muon: bool,
    /// The learning rates' value at a zero projection.
    pub base_lr: f64,
}

impl LactBidirectionalConfig {
    fn from_keys(k: &Keys) -> Result<LactBidirectionalConfig> {
        let c = LactBidirectionalConfig {
            dim: k.size("dim")?,
            head_dim: k.size("head_dim")?,
            inter_multi: k.f64_or("inter_multi", 1.0, Range::Positive)?,
            use_o_norm: k.bool_or("use_o_norm", true)?,
            qk_l2_norm: k.bool_or("qk_l2_norm", true)?,
            use_muon: k.bool_or("use_muon", true)?,
            base_lr: k.f64_or("base_lr", 1e-2, Range::Positive)?,
        };
        if !c.dim.is_multiple_of(c.head_dim) {
            bail!("config key dim = {} is not a multiple of head_dim {}", c.dim, c.head_dim);
        }
        if c.fast_hidden() == 0 || c.fast_hidden() > MAX_SIZE {
            bail!("config key inter_multi = {} makes a fast-weight hidden size of {} (1 to {MAX_SIZE})", c.inter_multi, c.fast_hidden());
        }
        Ok(c)
    }

    /// The number of fast-weight heads, D/d.
    pub fn heads(&self) -> usize {
        self.dim / self.head_dim
    }

    /// m = ⌊d · inter_multi⌋.
    pub fn fast_hidden(&self) -> usize {
        InnerSpec::hidden_width(self.inter_multi, self.head_dim)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Ttt(TttConfig),
    Mamba(MambaConfig),
    Llama(LlamaConfig),
    Lact(LactConfig),
    /// A layer only: building a language model from it is refused.
    LactBidirectional(LactBidirectionalConfig),
}

impl ModelConfig {
    /// Reads a Hugging Face style config (a JSON object holding `model_type`).
    pub fn from_json(v: &Value) -> Result<ModelConfig> {
        let map = v.as_object().context("config must be a JSON object")?;
        let model_type = map.get("model_type").filter(|v| !v.is_null()).context("config key model_type is missing")?;
        let family = model_type.as_str();
        let (known, ignored) = match family {
            Some("ttt") => (TTT_KEYS, TTT_IGNORED_KEYS),
            Some("mamba") => (MAMBA_KEYS, MAMBA_IGNORED_KEYS),
            Some("llama") => (LLAMA_KEYS, LLAMA_IGNORED_KEYS),
            Some("lact_swiglu") => (LACT_KEYS, LACT_IGNORED_KEYS),
            Some("lact_bidirectional_layer") => (LACT_BIDIRECTIONAL_KEYS, &[][..]),
            _ => bail!("unknown model_type {model_type} (expected \"ttt\", \"mamba\", \"llama\", \"lact_swiglu\" or \"lact_bidirectional_layer\")"),
        };
        let k = Keys { map, prefix: "", known };
        if family == Some("lact_bidirectional_layer") {
            // A layer's constructor arguments: nothing else belongs in its config.
            k.refuse_unknown(&[])?;
            return Ok(ModelConfig::LactBidirectional(LactBidirectionalConfig::from_keys(&k)?));
        }
        k.refuse_unknown(&[IGNORED_KEYS, ignored].concat())?;
        // The families here define SwiGLU / the Mamba gate with silu (LaCT's config calls it
        // swish); pruned heads would change the attention and TTT heads' shapes.
        let silu = if family == Some("lact_swiglu") { "swish" } else { "silu" };
        k.only("hidden_act", &format!("{silu:?}"), |v| v == silu)?;
        k.only("pruned_heads", "{}", |v| v.as_object().is_some_and(Map::is_empty))?;
        Ok(match family {
            Some("ttt") => ModelConfig::Ttt(TttConfig::from_keys(&k)?),
            Some("mamba") => ModelConfig::Mamba(MambaConfig::from_keys(&k)?),
            Some("lact_swiglu") => ModelConfig::Lact(LactConfig::from_keys(&k)?),
            _ => ModelConfig::Llama(LlamaConfig::from_keys(&k)?),
        })
    }

    /// Whether the config describes one layer (LaCT's bidirectional layer), not a language model.
    pub fn is_layer(&self) -> bool {
        matches!(self, ModelConfig::LactBidirectional(_))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Ttt(c) => c.vocab_size,
            ModelConfig::Mamba(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Lact(c) => c.vocab_size,
            // A layer has no vocabulary; a language model is never built from it.
            ModelConfig::LactBidirectional(_) => 0,
        }
    }

    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            ModelConfig::Ttt(c) => c.tie_word_embeddings,
            ModelConfig::Mamba(c) => c.tie_word_embeddings,
            ModelConfig::Llama(c) => c.tie_word_embeddings,
            ModelConfig::Lact(c) => c.tie_word_embeddings,
            ModelConfig::LactBidirectional(_) => false,
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Ttt(_) => "ttt",
            ModelConfig::Mamba(_) => "mamba",
            ModelConfig::Llama(_) => "llama",
            ModelConfig::Lact(_) => "lact_swiglu",
            ModelConfig::LactBidirectional(_) => "lact_bidirectional_layer",
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

fn even_head_dim(d: usize) -> Result<()> {
    if !d.is_multiple_of(2) {
        bail!("head dimension {d} must be even for RoPE");
    }
    Ok(())
}

impl TttConfig {
    fn from_keys(k: &Keys) -> Result<TttConfig> {
        k.only("rope_scaling", "null", |_| false)?;
        let c = TttConfig {
            vocab_size: k.size("vocab_size")?,
            hidden_size: k.size("hidden_size")?,
            intermediate_size: k.size("intermediate_size")?,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            num_heads: k.size("num_attention_heads")?,
            mini_batch_size: k.size_or("mini_batch_size", 16)?,
            inner: InnerSpec::from_keys(k)?,
            optimizer: InnerOptimizer::from_keys(k)?,
            ttt_base_lr: k.f64_or("ttt_base_lr", 1.0, Range::Finite)?,
            rope_theta: k.f64_or("rope_theta", 10000.0, Range::Positive)?,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-6, Range::Positive)?,
            pre_conv: k.bool_or("pre_conv", false)?,
            share_qk: k.bool_or("share_qk", false)?,
            use_gate: k.bool_or("use_gate", false)?,
            conv_kernel: k.size_or("conv_kernel", 4)?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", true)?,
            initializer_range: k.f64_or("initializer_range", 0.02, Range::NonNegative)?,
        };
        heads_divide(c.hidden_size, c.num_heads)?;
        even_head_dim(c.head_dim())?;
        // A hidden width of the inner model is a size too: ⌊w · head dimension⌋.
        for &w in &c.inner.widths {
            let width = w * c.head_dim() as f64;
            if width.floor() > MAX_SIZE as f64 {
                bail!("config key ttt_inner.widths holds {w}: a hidden width of {w} · {} is too large (at most {MAX_SIZE})", c.head_dim());
            }
            // A matrix of one unit learns little.
            if width < 2.0 {
                bail!("config key ttt_inner.widths holds {w}: a hidden width of ⌊{w} · {}⌋ is below 2", c.head_dim());
            }
        }
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

impl MambaConfig {
    fn from_keys(k: &Keys) -> Result<MambaConfig> {
        k.only("time_step_init_scheme", "\"random\"", |v| v == "random")?;
        k.only("rescale_prenorm_residual", "false", |v| v == false)?;
        let hidden = k.size("hidden_size")?;
        let expand = k.size_or("expand", 2)?;
        let intermediate = match k.get("intermediate_size") {
            Some(_) => k.size("intermediate_size")?,
            None => expand
                .checked_mul(hidden)
                .filter(|&n| n <= MAX_SIZE)
                .with_context(|| format!("config key expand = {expand} makes intermediate_size = expand · hidden_size too large (at most {MAX_SIZE})"))?,
        };
        let time_step_rank = match k.get("time_step_rank") {
            Some(Value::String(s)) if s == "auto" => hidden.div_ceil(16),
            Some(_) => k.size("time_step_rank")?,
            None => hidden.div_ceil(16),
        };
        let c = MambaConfig {
            vocab_size: k.size("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            state_size: k.size_or("state_size", 16)?,
            conv_kernel: k.size_or("conv_kernel", 4)?,
            time_step_rank,
            layer_norm_epsilon: k.f64_or("layer_norm_epsilon", 1e-5, Range::Positive)?,
            use_bias: k.bool_or("use_bias", false)?,
            use_conv_bias: k.bool_or("use_conv_bias", true)?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", true)?,
            initializer_range: k.f64_or("initializer_range", 0.1, Range::NonNegative)?,
            time_step_min: k.f64_or("time_step_min", 0.001, Range::Positive)?,
            time_step_max: k.f64_or("time_step_max", 0.1, Range::Positive)?,
            time_step_floor: k.f64_or("time_step_floor", 1e-4, Range::Finite)?,
            time_step_scale: k.f64_or("time_step_scale", 1.0, Range::Finite)?,
        };
        if c.time_step_min > c.time_step_max {
            bail!("config key time_step_min = {} is above time_step_max = {}", c.time_step_min, c.time_step_max);
        }
        Ok(c)
    }
}

impl LlamaConfig {
    fn from_keys(k: &Keys) -> Result<LlamaConfig> {
        k.only("rope_scaling", "null", |_| false)?;
        // Dropout changes training; tttc trains without it.
        k.only("attention_dropout", "0", |v| v.as_f64() == Some(0.0))?;
        let heads = k.size("num_attention_heads")?;
        let c = LlamaConfig {
            vocab_size: k.size("vocab_size")?,
            hidden_size: k.size("hidden_size")?,
            intermediate_size: k.size("intermediate_size")?,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: k.size_or("num_key_value_heads", heads)?,
            rope_theta: k.f64_or("rope_theta", 10000.0, Range::Positive)?,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-6, Range::Positive)?,
            attention_bias: k.bool_or("attention_bias", false)?,
            mlp_bias: k.bool_or("mlp_bias", false)?,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", false)?,
            initializer_range: k.f64_or("initializer_range", 0.02, Range::NonNegative)?,
        };
        heads_divide(c.hidden_size, c.num_heads)?;
        if !c.num_heads.is_multiple_of(c.num_kv_heads) {
            bail!("num_attention_heads {} is not a multiple of num_key_value_heads {}", c.num_heads, c.num_kv_heads);
        }
        k.only("head_dim", "hidden_size / num_attention_heads", |hd| hd.as_u64() == Some(c.head_dim() as u64))?;
        even_head_dim(c.head_dim())?;
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

impl LactConfig {
    fn from_keys(k: &Keys) -> Result<LactConfig> {
        // What LaCT's code computes only for these values (SPEC-lact.md §2).
        k.only("lr_dim", "1", |v| v.as_u64() == Some(1))?;
        k.only("lr_parameterization", "\"mamba\"", |v| v == "mamba")?;
        k.only("ttt_loss_type", "\"dot_product\"", |v| v == "dot_product")?;
        if k.map.get("rope_theta").is_some_and(Value::is_null) {
            bail!("config key rope_theta = null is not supported (LaCT's attention needs a RoPE base)");
        }
        // LaCTSWIGLUConfig's defaults, even for the keys every checkpoint sets.
        let hidden = k.size_or("hidden_size", 2048)?;
        let use_muon = k.bool_or("use_muon", false)?;
        if use_muon && k.bool_or("use_fused_kernel", false)? {
            bail!("config key use_fused_kernel = true is not supported with use_muon = true (the fused kernel orthogonalises the stacked update of W0 and W2 jointly, a different function)");
        }
        let inter_multi = k.f64_or("inter_multi", 1.0, Range::Positive)?;
        let hidden_ratio = k.f64_or("hidden_ratio", 4.0, Range::Positive)?;
        let intermediate_size = match k.get("intermediate_size") {
            Some(_) => k.size("intermediate_size")?,
            // fla's GatedMLP: ⌊D · ratio · 2/3⌋ rounded up to a multiple of 256.
            None => {
                let n = (hidden as f64 * hidden_ratio * 2.0 / 3.0).floor();
                if !(1.0..=MAX_SIZE as f64).contains(&n) {
                    bail!("config key hidden_ratio = {hidden_ratio} makes an intermediate size of {n} (1 to {MAX_SIZE})");
                }
                (n as usize).div_ceil(256) * 256
            }
        };
        // Null is unbounded causal attention; absent is the config's default.
        let window_size = match k.map.get("window_size") {
            Some(Value::Null) => None,
            _ => Some(k.size_or("window_size", 2048)?),
        };
        let low_rank = k.i64_or("w0_w2_low_rank", -1)?;
        let c = LactConfig {
            vocab_size: k.size_or("vocab_size", 32000)?,
            hidden_size: hidden,
            num_hidden_layers: k.usize_or("num_hidden_layers", 24)?,
            num_attn_heads: k.size_or("num_attn_heads", 32)?,
            num_lact_heads: k.size_or("num_lact_heads", 4)?,
            inter_multi,
            chunk_size: k.size_or("lact_chunk_size", 2048)?,
            window_size,
            rope_theta: k.f64_or("rope_theta", 10000.0, Range::Positive)?,
            qkv_bias: k.bool_or("qkv_bias", false)?,
            attn_qk_norm: k.bool_or("attn_qk_norm", false)?,
            qkv_silu: k.bool_or("qkv_silu", true)?,
            no_v_silu: k.bool_or("no_v_silu", false)?,
            use_momentum: k.bool_or("use_momentum", true)?,
            use_muon,
            learnable_ttt_scale: k.bool_or("learnable_ttt_scale", true)?,
            ttt_prenorm: k.bool_or("ttt_prenorm", false)?,
            ttt_nope: k.bool_or("ttt_nope", false)?,
            low_rank: (low_rank > 0).then_some(low_rank as usize),
            norm_eps: k.f64_or("norm_eps", 1e-6, Range::Positive)?,
            intermediate_size,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", false)?,
            pad_token_id: k.get("pad_token_id").map(|_| k.usize("pad_token_id")).transpose()?,
            initializer_range: k.f64_or("initializer_range", 0.006, Range::NonNegative)?,
            fw_init_gain: k.f64_or("fw_init_gain", 0.5, Range::NonNegative)?,
        };
        if !hidden.is_multiple_of(c.num_attn_heads) {
            bail!("hidden_size {hidden} is not a multiple of num_attn_heads {}", c.num_attn_heads);
        }
        if !hidden.is_multiple_of(c.num_lact_heads) {
            bail!("hidden_size {hidden} is not a multiple of num_lact_heads {}", c.num_lact_heads);
        }
        even_head_dim(c.attention_head_dim())?;
        if c.fast_hidden() == 0 || c.fast_hidden() > MAX_SIZE {
            bail!("config key inter_multi = {inter_multi} makes a fast-weight hidden size of {} (1 to {MAX_SIZE})", c.fast_hidden());
        }
        if let Some(r) = c.low_rank.filter(|&r| r > MAX_SIZE) {
            bail!("config key w0_w2_low_rank = {r} is too large (at most {MAX_SIZE})");
        }
        if let Some(pad) = c.pad_token_id.filter(|&p| p >= c.vocab_size) {
            bail!("config key pad_token_id = {pad} is outside the vocabulary of {}", c.vocab_size);
        }
        Ok(c)
    }

    /// dh: the attention heads' size, which also groups the fast q and k's RoPE.
    pub fn attention_head_dim(&self) -> usize {
        self.hidden_size / self.num_attn_heads
    }

    /// d: the fast weights' head size.
    pub fn fast_dim(&self) -> usize {
        self.hidden_size / self.num_lact_heads
    }

    /// m = ⌊d · inter_multi⌋: the fast weights' hidden size.
    pub fn fast_hidden(&self) -> usize {
        InnerSpec::hidden_width(self.inter_multi, self.fast_dim())
    }

    /// What a user should know about this config that is not an error.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.use_muon && self.chunk_size < self.fast_dim() {
            w.push(format!(
                "lact_chunk_size {} is below the fast weights' head size {} with use_muon: Newton-Schulz on these rank-deficient updates is ill-conditioned in f32 (SPEC-lact.md §6)",
                self.chunk_size,
                self.fast_dim()
            ));
        }
        w
    }
}

impl ModelConfig {
    /// What a user should know about this config that is not an error, one line each.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            ModelConfig::Lact(c) => c.warnings(),
            _ => Vec::new(),
        }
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
            ModelConfig::Lact(c) => c.num_hidden_layers,
            ModelConfig::LactBidirectional(_) => 1,
        }
    }

    /// The same model with `layers` layers.
    pub fn with_layers(&self, layers: usize) -> ModelConfig {
        let mut c = self.clone();
        match &mut c {
            ModelConfig::Ttt(c) => c.num_hidden_layers = layers,
            ModelConfig::Mamba(c) => c.num_hidden_layers = layers,
            ModelConfig::Llama(c) => c.num_hidden_layers = layers,
            ModelConfig::Lact(c) => c.num_hidden_layers = layers,
            ModelConfig::LactBidirectional(_) => {}
        }
        c
    }
}
