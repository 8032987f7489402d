//! `tttc bench`: one sequence-mixing layer at the 125m width (D 768, 12 heads, mini-batch 16),
//! batch 1, f32, timed on a backend across context lengths, and the peers (PyTorch, torch.compile,
//! jax.jit, through the peer harness) timed in the same run so that ratios compare like with like;
//! decoding's per-token latency in [`decode`].

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tttc_ir::Tensor;

use tttc_runtime::Backend;

pub mod decode;
pub mod packed;

/// A layer the benchmark times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    TttLinear,
    TttMlp,
    Mamba,
    Attention,
}

impl Layer {
    pub const ALL: [Layer; 4] = [Layer::TttLinear, Layer::TttMlp, Layer::Mamba, Layer::Attention];

    pub fn name(self) -> &'static str {
        match self {
            Layer::TttLinear => "ttt-linear",
            Layer::TttMlp => "ttt-mlp",
            Layer::Mamba => "mamba",
            Layer::Attention => "attention",
        }
    }

    /// The layer's config at the 125m width; the TTT layers as the peers run them (no conv, no
    /// gate, separate q/k/v).
    fn config(self) -> Value {
        let ttt = |kind: &str| {
            json!({"model_type": "ttt", "hidden_size": 768, "num_attention_heads": 12, "mini_batch_size": 16,
                   "ttt_layer_type": kind, "pre_conv": false, "share_qk": false, "use_gate": false,
                   "num_hidden_layers": 1, "intermediate_size": 2048, "vocab_size": 32000})
        };
        match self {
            Layer::TttLinear => ttt("linear"),
            Layer::TttMlp => ttt("mlp"),
            Layer::Mamba => json!({"model_type": "mamba", "hidden_size": 768, "intermediate_size": 1536, "state_size": 16,
                                   "time_step_rank": 48, "conv_kernel": 4, "num_hidden_layers": 1, "vocab_size": 32000}),
            Layer::Attention => json!({"model_type": "llama", "hidden_size": 768, "num_attention_heads": 12,
                                       "num_key_value_heads": 12, "intermediate_size": 2048, "num_hidden_layers": 1,
                                       "vocab_size": 32000}),
        }
    }

    /// FLOPs of one forward at length `t`, counted as the peer harness counts them (a
    /// multiply-add is 2; the dual form's masked products dense; Mamba's scan 7 per element;
    /// attention's causal half).
    pub fn flops(self, t: usize) -> f64 {
        let (t, d, h, k) = (t as f64, 768.0, 12.0, 16.0);
        let f = d / h;
        let proj = 4.0 * 2.0 * t * d * d + 2.0 * t * d * h;
        let mini_batches = (t / k).floor();
        match self {
            Layer::TttLinear => proj + h * mini_batches * (3.0 * 2.0 * k * f * f + 3.0 * 2.0 * k * k * f),
            Layer::TttMlp => {
                let hid = 4.0 * f;
                proj + h * mini_batches * (7.0 * 2.0 * k * f * hid + 3.0 * 2.0 * k * k * hid + 3.0 * 2.0 * k * k * f)
            }
            Layer::Mamba => {
                let (di, n, r, conv) = (1536.0, 16.0, 48.0, 4.0);
                2.0 * t * (d * 2.0 * di + di * (r + 2.0 * n) + r * di + di * d) + 2.0 * t * di * conv + 7.0 * t * di * n
            }
            Layer::Attention => 4.0 * 2.0 * t * d * d + 2.0 * t * t * d,
        }
    }

    /// The peer runs for this layer at length `t`: (peer, extra arguments); torch.compile only up
    /// to `compile_max_t` (it compiles for minutes beyond). With `grad`, forward + backward, and
    /// PyTorch eager besides.
    fn peers(self, t: usize, compile_max_t: usize, grad: bool) -> Vec<(&'static str, Vec<String>)> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut out = Vec::new();
        match self {
            Layer::TttLinear | Layer::TttMlp => {
                let kind = if self == Layer::TttLinear { "linear" } else { "mlp" };
                out.push(("ttt-jax", s(&["--kind", kind])));
                if grad {
                    out.push(("ttt-torch", s(&["--kind", kind, "--mode", "eager"])));
                }
                if t <= compile_max_t {
                    out.push(("ttt-torch", s(&["--kind", kind, "--mode", "compile"])));
                }
            }
            // The reference mixer's scan is a Python loop over tokens: its eager backward takes
            // many minutes beyond `compile_max_t`, so gradients are compared only up to it.
            Layer::Mamba if t <= compile_max_t => {
                if grad {
                    out.push(("mamba", s(&["--mode", "eager"])));
                }
                out.push(("mamba", s(&["--mode", "compile"])));
            }
            Layer::Mamba if !grad => out.push(("mamba", s(&["--mode", "eager"]))),
            Layer::Mamba => {}
            Layer::Attention => {
                out.push(("attn", s(&["--mode", "eager"])));
            }
        }
        if grad {
            out.iter_mut().for_each(|(_, extra)| extra.push("--grad".to_string()));
        }
        out
    }
}

/// Where the peer harness and its Python live.
pub struct Peers {
    pub python: PathBuf,
    pub script: PathBuf,
    pub ttt_pytorch: Option<PathBuf>,
    pub ttt_jax: Option<PathBuf>,
    pub compile_max_t: usize,
}

pub struct BenchRequest {
    pub layers: Vec<Layer>,
    pub seq_lens: Vec<usize>,
    pub backend: &'static dyn Backend,
    pub reps: usize,
    pub peers: Option<Peers>,
    /// Profile one more call of each tttc configuration (CPU backend).
    pub profile: bool,
    /// Time forward + backward: the gradient of `sum(y · r)` (`r` fixed) with respect to the
    /// layer's input and every parameter, as the peers' `--grad` runs.
    pub grad: bool,
}

/// One timed configuration.
#[derive(Clone, Debug)]
pub struct Timing {
    pub layer: &'static str,
    pub t: usize,
    /// `tttc (cpu)`, or the peer and its mode.
    pub who: String,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Compile (and first-call) time.
    pub first_s: f64,
    pub gflops: f64,
    /// Where one call's time went (with `profile`): step kind, milliseconds, calls.
    pub profile: Vec<(String, f64, u64)>,
}

impl Timing {
    pub fn to_json(&self) -> Value {
        json!({"layer": self.layer, "T": self.t, "who": self.who, "median_ms": self.median_ms, "min_ms": self.min_ms,
               "first_s": self.first_s, "gflop_per_s": self.gflops})
    }
}

/// Runs the benchmark, calling `report` with each timing as it is measured.
pub fn bench(req: &BenchRequest, mut report: impl FnMut(&Timing)) -> Result<Vec<Timing>> {
    let mut all = Vec::new();
    for &layer in &req.layers {
        let config = tttc_frontends::ModelConfig::from_json(&layer.config())?;
        let builder = tttc_frontends::build_layer(&config)?;
        let weights = tttc_frontends::init::initialise(&builder, 0);
        for &t in &req.seq_lens {
            let x = hidden_input(t, 768);
            let r = cotangent(t, 768);
            let start = Instant::now();
            let exe = tttc_runtime::Executable::new(if req.grad { layer_gradient(&builder.g)? } else { tttc_passes::compile(&builder.g)? });
            let inputs: Vec<(&str, &Tensor)> = if req.grad { vec![("x", &x), ("d.y", &r)] } else { vec![("x", &x)] };
            let run = || exe.run_with(&weights, &inputs, req.backend);
            run()?;
            let first_s = start.elapsed().as_secs_f64();
            let times = time_calls(req.reps, || run().map(|_| ()))?;
            let mut profile = Vec::new();
            if req.profile && req.backend.capabilities().profiled {
                profile = profiled(|| run().map(|_| ()))?;
            }
            let timing = Timing {
                layer: layer.name(),
                t,
                who: format!("tttc ({})", req.backend.name()),
                median_ms: times.0,
                min_ms: times.1,
                first_s,
                gflops: layer.flops(t) * flop_factor(req.grad) / times.0 / 1e6,
                profile,
            };
            report(&timing);
            all.push(timing);
            if let Some(peers) = &req.peers {
                for (peer, extra) in layer.peers(t, peers.compile_max_t, req.grad) {
                    let timing = run_peer(peers, layer, peer, &extra, t, req.grad)?;
                    report(&timing);
                    all.push(timing);
                }
            }
        }
    }
    Ok(all)
}

/// A deterministic `[1, t, dim]` input in [−1, 1].
fn hidden_input(t: usize, dim: usize) -> Tensor {
    let mut rng = tttc_frontends::rng::SplitMix64::keyed(1, "bench input");
    Tensor::f32(vec![1, t, dim], (0..t * dim).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect())
}

/// One untimed warm-up, then at least `reps` timed calls (more for short calls, up to about a
/// second in all): (median, minimum) in milliseconds.
fn time_calls(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut times = Vec::new();
    let budget = Instant::now();
    while times.len() < reps.max(1) || (times.len() < 30 && budget.elapsed().as_secs_f64() < 1.0) {
        let s = Instant::now();
        f()?;
        times.push(s.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

/// Runs one job of the peer harness (`run --peer PEER EXTRA…`): its JSON result.
fn peer_json(p: &Peers, peer: &str, extra: &[String]) -> Result<Value> {
    let mut cmd = Command::new(&p.python);
    cmd.arg(&p.script).args(["run", "--peer", peer]).args(extra);
    if let Some(path) = &p.ttt_pytorch {
        cmd.arg("--ttt-pytorch-path").arg(path);
    }
    if let Some(path) = &p.ttt_jax {
        cmd.arg("--ttt-jax-path").arg(path);
    }
    let out = cmd.output().with_context(|| format!("cannot start the peer harness with {}", p.python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{'));
    let Some(line) = line.filter(|_| out.status.success()) else {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("peer {peer} {} failed: {}", extra.join(" "), err.lines().last().unwrap_or("no output"));
    };
    serde_json::from_str(line).with_context(|| format!("peer {peer} printed no JSON result"))
}

fn run_peer(p: &Peers, layer: Layer, peer: &str, extra: &[String], t: usize, grad: bool) -> Result<Timing> {
    let mut args = vec!["--T".to_string(), t.to_string()];
    args.extend_from_slice(extra);
    let v = peer_json(p, peer, &args)?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("peer {peer}'s result has no {k}"));
    let mode = v["mode"].as_str().unwrap_or("");
    let who = match (peer, mode) {
        ("ttt-jax", _) => "ttt-lm-jax jax.jit".to_string(),
        ("ttt-torch", "compile") => "ttt-lm-pytorch torch.compile".to_string(),
        ("ttt-torch", _) => "ttt-lm-pytorch eager".to_string(),
        ("attn", _) => format!("torch SDPA ({mode})"),
        (other, mode) => format!("{other} torch ({mode})"),
    };
    let median_ms = num("median_ms")?;
    Ok(Timing {
        layer: layer.name(),
        t,
        who,
        median_ms,
        min_ms: num("min_ms")?,
        first_s: num("first_call_s").unwrap_or(f64::NAN),
        gflops: layer.flops(t) * flop_factor(grad) / median_ms / 1e6,
        profile: Vec::new(),
    })
}

/// Forward + backward counted as three forwards' FLOPs, as the peer harness counts them.
fn flop_factor(grad: bool) -> f64 {
    if grad {
        3.0
    } else {
        1.0
    }
}

/// A deterministic `[1, t, dim]` cotangent `r` for `sum(y · r)`, in [−1, 1].
fn cotangent(t: usize, dim: usize) -> Tensor {
    let mut rng = tttc_frontends::rng::SplitMix64::keyed(7, "bench cotangent");
    Tensor::f32(vec![1, t, dim], (0..t * dim).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect())
}

/// The vector–Jacobian product of a layer (its input `y`'s cotangent `d.y`: the gradient of
/// `sum(y · d.y)`) with respect to the layer's input `x` and every parameter, through the pass
/// pipeline: the layer's share of a training step, as the peers' `--grad` measures it.
fn layer_gradient(layer: &tttc_ir::Graph) -> Result<tttc_ir::Graph> {
    tttc_passes::compile(&tttc_passes::vector_jacobian_product(&tttc_passes::differentiable(layer)?, &[])?)
}

/// The fp32 GEMM rate of this machine through `gemm` on all threads (2048×768×768, as the peer
/// harness measures torch's): GFLOP/s, median of a second's calls.
pub fn gemm_ceiling() -> Result<f64> {
    let (m, k, n) = (2048, 768, 768);
    let a = Tensor::f32(vec![m, k], vec![0.5; m * k]);
    let b = Tensor::f32(vec![k, n], vec![0.25; k * n]);
    let mut g = tttc_ir::Graph::new("gemm");
    let x = g.input("a", tttc_ir::Type::f32(&[m, k]));
    let y = g.input("b", tttc_ir::Type::f32(&[k, n]));
    let z = g.matmul(x, y)?;
    g.output("c", z);
    let program = tttc_codegen_cpu::Program::compile(&g)?;
    let (median, _) = time_calls(10, || program.run(&[&a, &b]).map(|_| ()))?;
    Ok(2.0 * (m * k * n) as f64 / median / 1e6)
}

/// A language model of the 125m size's width (D 768, 12 heads, intermediate 2048, vocabulary
/// 32000, TTT-Linear with the Mamba backbone's conv and gate) with `layers` layers.
fn lm_125m(layers: usize) -> Result<tttc_frontends::ModelConfig> {
    tttc_frontends::ModelConfig::from_json(&json!({
        "model_type": "ttt", "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048,
        "num_hidden_layers": layers, "vocab_size": 32000, "mini_batch_size": 16, "ttt_layer_type": "linear",
        "pre_conv": true, "share_qk": true, "use_gate": true}))
}

/// Seconds to compile the 12-layer 125m TTT-Linear for the CPU: (graph and pass pipeline, CPU
/// code generation).
pub fn compile_time() -> Result<(f64, f64)> {
    let start = Instant::now();
    let builder = tttc_frontends::build(&lm_125m(12)?)?;
    let graph = tttc_passes::compile(&builder.g)?;
    let passes = start.elapsed().as_secs_f64();
    let program = tttc_codegen_cpu::Program::compile(&graph)?;
    Ok((passes, program.stats().compile_seconds))
}

/// One gradient step (forward and backward through every layer, rematerialised) of a 2-layer
/// model at the 125m width on `t` tokens, timed over at most three calls after a warm-up: (median
/// ms, time to build and compile the step in s).
pub fn gradient_step(t: usize, backend: &dyn Backend, reps: usize, profile: bool, peers: Option<&Peers>) -> Result<GradientTiming> {
    let config = lm_125m(2)?;
    let builder = tttc_frontends::build(&config)?;
    let weights = tttc_frontends::init::initialise(&builder, 0);
    let model = tttc_frontends::Model { config, config_json: Value::Null, builder, weights };
    let start = Instant::now();
    let step = tttc_runtime::GradientStep::new(&model)?;
    let build_s = start.elapsed().as_secs_f64();
    let mut rng = tttc_frontends::rng::SplitMix64::keyed(2, "bench tokens");
    let ids = Tensor::i64(vec![1, t], (0..t).map(|_| rng.below(32000) as i64).collect());
    let (median_ms, _) = time_calls(reps.min(3), || step.run(&model.weights, &ids, backend).map(|_| ()))?;
    let profile = if profile && backend.capabilities().profiled { profiled(|| step.run(&model.weights, &ids, backend).map(|_| ()))? } else { Vec::new() };
    let eager_ms = match peers {
        Some(p) => {
            let extra: Vec<String> =
                ["--kind", "linear", "--layers", "2", "--T", &t.to_string(), "--reps", &reps.min(3).to_string()].map(String::from).to_vec();
            let v = peer_json(p, "ttt-lm-grad", &extra)?;
            Some(v["median_ms"].as_f64().context("peer ttt-lm-grad's result has no median_ms")?)
        }
        None => None,
    };
    Ok(GradientTiming { median_ms, build_s, profile, eager_ms })
}

/// One gradient step of the 2-layer LM: its median time, the time to build and compile it, where
/// one more step's time went (with `--profile`), and the reference's step in PyTorch.
pub struct GradientTiming {
    pub median_ms: f64,
    pub build_s: f64,
    pub profile: Vec<(String, f64, u64)>,
    /// ttt-lm-pytorch's TTTForCausalLM, forward + `loss.backward()` in eager PyTorch, in the
    /// same run (with the peers).
    pub eager_ms: Option<f64>,
}

/// Runs `call` once with the CPU backend's profile on: per kind of step, milliseconds and calls.
fn profiled(call: impl FnOnce() -> Result<()>) -> Result<Vec<(String, f64, u64)>> {
    tttc_codegen_cpu::profile::set_enabled(true);
    let result = call();
    tttc_codegen_cpu::profile::set_enabled(false);
    result?;
    Ok(tttc_codegen_cpu::profile::report().into_iter().map(|(k, d, n)| (k, d.as_secs_f64() * 1e3, n)).collect())
}

#[cfg(test)]
mod tests {
    use super::Layer;

    fn modes(layer: Layer, t: usize, grad: bool) -> Vec<String> {
        layer.peers(t, 512, grad).into_iter().map(|(peer, extra)| format!("{peer} {}", extra.join(" "))).collect()
    }

    #[test]
    fn mamba_gradients_are_compared_only_where_the_reference_compiles() {
        assert_eq!(modes(Layer::Mamba, 512, true), ["mamba --mode eager --grad", "mamba --mode compile --grad"]);
        assert!(modes(Layer::Mamba, 2048, true).is_empty());
        assert_eq!(modes(Layer::Mamba, 2048, false), ["mamba --mode eager"]);
    }

    #[test]
    fn ttt_layers_meet_jax_at_every_length_and_torch_compile_up_to_its_limit() {
        assert_eq!(modes(Layer::TttLinear, 8192, true), ["ttt-jax --kind linear --grad", "ttt-torch --kind linear --mode eager --grad"]);
        assert_eq!(modes(Layer::TttMlp, 512, false), ["ttt-jax --kind mlp", "ttt-torch --kind mlp --mode compile"]);
    }
}
