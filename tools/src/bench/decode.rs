//! `tttc bench --decode`: per-token latency of the step graph at the 125m width, for models of a
//! few depths, after prompts of several lengths, against the memory-bandwidth floor measured in
//! the same run (every weight and the state read once per token, the state written once) and the
//! reference TTT decode (`peer_bench.py --peer ttt-decode`).

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tttc_ir::Tensor;

use super::{Layer, Peers};
use tttc_frontends::StateInit;
use tttc_runtime::generate::{Decoder, Sampling};
use tttc_runtime::Backend;

pub struct DecodeRequest {
    pub layers: Vec<Layer>,
    /// Model depths (layers of the language model).
    pub depths: Vec<usize>,
    /// Prompt lengths before the timed tokens.
    pub contexts: Vec<usize>,
    pub backend: &'static dyn Backend,
    /// Timed tokens per configuration.
    pub tokens: usize,
    pub peers: Option<Peers>,
    /// Profile the steps of each tttc configuration (CPU backend).
    pub profile: bool,
}

/// One configuration's per-token latency.
#[derive(Clone, Debug)]
pub struct DecodeTiming {
    pub model: &'static str,
    pub depth: usize,
    /// Tokens before the timed ones (the reference: prompt + generated).
    pub context: String,
    pub who: String,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Bytes a token must read and write at least: weights, state in and out.
    pub bytes: f64,
    /// Where one token's time went (with `profile`): step kind, milliseconds, calls.
    pub profile: Vec<(String, f64, u64)>,
}

impl DecodeTiming {
    pub fn to_json(&self) -> Value {
        json!({"decode": self.model, "layers": self.depth, "context": self.context, "who": self.who,
               "median_ms": self.median_ms, "min_ms": self.min_ms, "bytes_per_token": self.bytes})
    }
}

impl Layer {
    /// The language model this layer's family decodes with: the layer's config, `depth` layers
    /// (Llama for attention).
    pub(super) fn model_config(self, depth: usize) -> Result<tttc_frontends::ModelConfig> {
        let mut config = self.config();
        config["num_hidden_layers"] = json!(depth);
        tttc_frontends::ModelConfig::from_json(&config)
    }

    pub fn model_name(self) -> &'static str {
        match self {
            Layer::TttLinear => "TTT-Linear",
            Layer::TttMlp => "TTT-MLP",
            Layer::Mamba => "Mamba",
            Layer::Attention => "Llama",
        }
    }
}

/// Read bandwidth of this machine's memory on all threads: GB/s summing 1 GiB of f32, best of
/// three passes.
pub fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let data = vec![1.0f32; 1 << 28];
    (0..3)
        .map(|_| {
            let start = Instant::now();
            // Sixteen running sums, so that the loop vectorises and memory, not adds, limits it.
            let total: f32 = data
                .par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0f32; 16];
                    for block in c.chunks_exact(16) {
                        acc.iter_mut().zip(block).for_each(|(a, &x)| *a += x);
                    }
                    acc.iter().sum::<f32>()
                })
                .sum();
            std::hint::black_box(total);
            (data.len() * 4) as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Times every configuration, calling `report` with each as it is measured.
pub fn decode(req: &DecodeRequest, mut report: impl FnMut(&DecodeTiming)) -> Result<Vec<DecodeTiming>> {
    anyhow::ensure!(req.tokens > 0, "time at least one token");
    let mut all = Vec::new();
    for &layer in &req.layers {
        for &depth in &req.depths {
            let config = layer.model_config(depth)?;
            let builder = tttc_frontends::build(&config)?;
            let weights = tttc_frontends::init::initialise(&builder, 0);
            let model = tttc_frontends::Model { config, config_json: Value::Null, builder, weights };
            let decoder = Decoder::new(&model)?;
            let weight_bytes = step_weight_bytes(&model, &decoder);
            for &context in &req.contexts {
                let prompt = Tensor::i64(vec![1, context], (0..context as i64).map(|i| (i * 7919) % 32000).collect());
                let mut stamps = Vec::with_capacity(req.tokens + 1);
                let mut state_bytes = 0.0;
                // The profile covers the timed steps (the prefill is done when the first token is
                // chosen), divided by their number below.
                let profiling = req.profile && req.backend.capabilities().profiled;
                decoder.generate(&model.weights, &prompt, None, req.tokens + 1, &Sampling::greedy(), req.backend, |k, _| {
                    if profiling && k == 0 {
                        tttc_codegen_cpu::profile::set_enabled(true);
                    }
                    stamps.push(Instant::now())
                })?;
                let profile = if profiling {
                    tttc_codegen_cpu::profile::set_enabled(false);
                    let per = req.tokens as f64;
                    tttc_codegen_cpu::profile::report().into_iter().map(|(k, d, n)| (k, d.as_secs_f64() * 1e3 / per, (n as f64 / per).round() as u64)).collect()
                } else {
                    Vec::new()
                };
                // The state a step reads: measured from the step graph's inputs at this context.
                for spec in decoder.state_specs() {
                    let env: tttc_ir::DimEnv = [("B".to_string(), 1), ("L".to_string(), context)].into_iter().collect();
                    state_bytes += 4.0 * spec.ty.resolve(&env)?.iter().product::<usize>() as f64;
                }
                let mut gaps: Vec<f64> = stamps.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect();
                gaps.sort_by(f64::total_cmp);
                let t = DecodeTiming {
                    model: layer.model_name(),
                    depth,
                    context: context.to_string(),
                    who: format!("tttc ({})", req.backend.name()),
                    median_ms: gaps[gaps.len() / 2],
                    min_ms: gaps[0],
                    bytes: weight_bytes + 2.0 * state_bytes,
                    profile,
                };
                report(&t);
                all.push(t);
            }
            if let (Some(p), Layer::TttLinear | Layer::TttMlp) = (&req.peers, layer) {
                let t = reference_decode(p, layer, depth, weight_bytes).with_context(|| format!("the reference decode of {}", layer.model_name()))?;
                report(&t);
                all.push(t);
            }
        }
    }
    Ok(all)
}

/// Bytes of the weights a step reads: all of them but the token embedding, of which it reads a
/// row (unless the head is tied to it, and reads it all), and but those that only start a state
/// (TTT's inner weights: the step reads the state instead, counted with it).
fn step_weight_bytes(model: &tttc_frontends::Model, decoder: &Decoder) -> f64 {
    let embedding = model.builder.embedding.clone().unwrap_or_default();
    let tied = !model.weights.contains_key("lm_head.weight");
    let state_starts: Vec<&str> =
        decoder.state_specs().iter().filter_map(|s| if let StateInit::Param(p) = &s.init { Some(p.as_str()) } else { None }).collect();
    model
        .weights
        .iter()
        .filter(|(name, _)| !state_starts.contains(&name.as_str()))
        .map(|(name, t)| if *name == embedding && !tied { t.shape.last().copied().unwrap_or(0) } else { t.len() })
        .sum::<usize>() as f64
        * 4.0
}

/// The reference TTT decode (`peer_bench.py run --peer ttt-decode`): a 16-token prompt, then 64
/// tokens one step at a time.
fn reference_decode(p: &Peers, layer: Layer, depth: usize, weight_bytes: f64) -> Result<DecodeTiming> {
    let kind = if layer == Layer::TttLinear { "linear" } else { "mlp" };
    let extra: Vec<String> = ["--kind", kind, "--layers", &depth.to_string(), "--prompt", "16", "--gen", "64"].iter().map(|s| s.to_string()).collect();
    let v = super::peer_json(p, "ttt-decode", &extra)?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("the reference decode's result has no {k}"));
    Ok(DecodeTiming {
        model: layer.model_name(),
        depth,
        context: "16+64".into(),
        who: "ttt-lm-pytorch decode (eager)".into(),
        median_ms: num("median_ms")?,
        min_ms: num("min_ms")?,
        bytes: weight_bytes,
        profile: Vec::new(),
    })
}
