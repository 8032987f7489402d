//! The runtime: checks a run's inputs, executes a model's graph on a backend, and reads and writes
//! tensor files.

mod backends;
pub mod generate;
mod io;
pub mod packed;
pub mod state;

use anyhow::{bail, ensure, Context, Result};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use tttc_frontends::weights::Weights;
use tttc_frontends::Model;

use tttc_ir::{DType, DimEnv, Graph, Tensor, TensorView};

pub use backends::{backend, backends, Backend, Capabilities, DeviceStream, Program, Sizes};
pub use io::{read_tensors, tensor_bytes, write_tensors};

/// A forward pass's results: `logits` `[B, T, V]`, and `loss` unless T = 1 (no next token).
pub struct Forward {
    pub logits: Tensor,
    pub loss: Option<Tensor>,
}

/// Checks `input_ids` against the model: i64, `[B, T]` with B, T ≥ 1, ids in `0..V`.
pub fn check_input_ids(ids: &Tensor, vocab: usize) -> Result<()> {
    ensure!(ids.as_i64().is_some(), "input_ids must hold i64 token ids, got a float tensor of shape {:?}", ids.shape);
    ensure!(ids.shape.len() == 2, "input_ids must have shape [B, T], got {:?}", ids.shape);
    ensure!(ids.shape[0] > 0, "input_ids has batch size B = 0");
    ensure!(ids.shape[1] > 0, "input_ids has sequence length T = 0");
    if let Some((i, &id)) = ids.as_i64().unwrap().iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= vocab) {
        let t = ids.shape[1];
        bail!("input_ids[{}, {}] = {id} is outside the vocabulary 0..{vocab}", i / t, i % t);
    }
    Ok(())
}

/// Runs the model forward on `input_ids`: the model's graph goes through the pass pipeline
/// (`tttc_passes::pipeline`), then executes.
pub fn forward(model: &Model, ids: &Tensor, backend: &dyn Backend) -> Result<Forward> {
    Ok(run_sequence(model, &model.builder.g, ids, &State::new(), backend)?.0)
}

/// The recurrent state after a sequence, by name (the step graph's `state.NAME` without the
/// prefix; docs/state.md): what decoding continues from.
pub type State = Vec<(String, Tensor)>;

/// [`forward`], and the state after the sequence (`tttc run --state-out`): the model built in
/// `Mode::Run`, which gives the prefill's state outputs beside the logits and loss.
pub fn forward_with_state(model: &Model, ids: &Tensor, backend: &dyn Backend) -> Result<(Forward, State)> {
    let run = tttc_frontends::build_for(&model.config, tttc_frontends::Mode::Run)?;
    run_sequence(model, &run.g, ids, &State::new(), backend)
}

/// [`forward_with_state`] for a sequence that continues from `start`, the state an earlier run
/// ended in (`tttc run --state-in`): the same logits as one run over both sequences.
pub fn forward_from_state(model: &Model, ids: &Tensor, start: &State, backend: &dyn Backend) -> Result<(Forward, State)> {
    run_sequence(model, &state::resumed_graph(model, start)?, ids, start, backend)
}

/// Runs a frontend's `graph` of `model` on `input_ids` from the state `start` (empty: a fresh
/// state).
fn run_sequence(model: &Model, graph: &Graph, ids: &Tensor, start: &State, backend: &dyn Backend) -> Result<(Forward, State)> {
    check_input_ids(ids, model.config.vocab_size())?;
    run_graph(&model.weights, graph, ids, start, backend)
}

/// [`run_sequence`] on `input_ids` already checked: the state checked against the graph before
/// the graph is compiled.
fn run_graph(weights: &Weights, graph: &Graph, ids: &Tensor, start: &State, backend: &dyn Backend) -> Result<(Forward, State)> {
    let inputs = state::arguments(graph, start, ids.shape[0])?;
    // The pass pipeline first: it expands `grad` ops, which no backend executes. Pruning the
    // loss for T = 1 comes after it.
    let compiled = tttc_passes::compile(graph)?;
    let exe = Executable::new(if ids.shape[1] > 1 { compiled } else { without_loss(&compiled) });
    run_compiled(&exe, weights, ids, inputs, backend)
}

/// Runs a compiled sequence graph on `input_ids` and the state `inputs` ([`state::arguments`]):
/// its logits, loss and state after it.
fn run_compiled<'a>(
    exe: &Executable,
    weights: &Weights,
    ids: &'a Tensor,
    mut inputs: Vec<(String, &'a Tensor)>,
    backend: &dyn Backend,
) -> Result<(Forward, State)> {
    inputs.push(("input_ids".to_string(), ids));
    let outs = exe.run_with(weights, &named(&inputs), backend)?;
    split_outputs(&exe.graph, outs)
}

/// `(name, tensor)` pairs as [`Executable::run_with`] takes them.
fn named<'a>(inputs: &'a [(String, &'a Tensor)]) -> Vec<(&'a str, &'a Tensor)> {
    inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect()
}

/// `graph` without its `loss` output: a one-token sequence has no next-token target.
fn without_loss(graph: &Graph) -> Graph {
    let keep: Vec<&str> = graph.outputs.iter().map(|(n, _)| n.as_str()).filter(|&n| n != "loss").collect();
    tttc_passes::keep_outputs(graph, &keep)
}

/// A run's outputs by name: `logits`, `loss` when there, and the `state.*` outputs.
fn split_outputs(graph: &Graph, outs: Vec<Tensor>) -> Result<(Forward, State)> {
    let (mut logits, mut loss, mut state) = (None, None, Vec::new());
    for ((name, _), t) in graph.outputs.iter().zip(outs) {
        match name.as_str() {
            "logits" => logits = Some(t),
            "loss" => loss = Some(t),
            other => state.push((other.strip_prefix(state::PREFIX).context("an output that is neither logits, loss nor state")?.to_string(), t)),
        }
    }
    Ok((Forward { logits: logits.context("graph has no logits output")?, loss }, state))
}

/// The loss and its gradient with respect to every parameter, by name (`tttc grad`), and, for a
/// run from a saved state, with respect to each state tensor (named `state.NAME`).
pub struct Gradients {
    pub loss: Tensor,
    pub grads: Vec<(String, Tensor)>,
}

/// Runs the model forward and backward on `input_ids` (T ≥ 2: the loss needs a next token). The
/// inner gradients are expanded first, then the whole graph is differentiated (through the scans,
/// exactly: TTT's outer gradient includes the second-order terms of its inner updates), then the
/// pass pipeline runs on the result.
pub fn gradients(model: &Model, ids: &Tensor, backend: &dyn Backend) -> Result<Gradients> {
    GradientStep::new(model)?.run(&model.weights, ids, backend)
}

/// The model's gradient graph, compiled once and run on any weights and `input_ids` (training
/// runs it every step).
pub struct GradientStep {
    graph: Executable,
    vocab: usize,
}

/// A graph ready to run on any backend: compiled for a backend on its first run there, and for
/// the backends whose programs serve sizes up to a bound, again when a run's sizes are not
/// served.
pub struct Executable {
    pub graph: Graph,
    /// Compiled programs, the most recent last: a Llama decoding loop grows its cache length
    /// every step, so only the last few are kept.
    programs: Mutex<Vec<(Compiled, Arc<dyn Program>)>>,
    /// The backend and sizes whose memory estimate last fitted the budget: a training or
    /// decoding loop runs at the same sizes every call and is checked once.
    fits: Mutex<Option<(&'static str, DimEnv)>>,
}

/// What a program was compiled for: a backend, and the sizes (sorted) unless it serves any.
type Compiled = (&'static str, Option<Vec<(String, usize)>>);

/// Compiled programs kept per executable.
const PROGRAMS_KEPT: usize = 8;

impl Executable {
    pub fn new(graph: Graph) -> Executable {
        Executable { graph, programs: Mutex::new(Vec::new()), fits: Mutex::new(None) }
    }

    /// The program `backend` compiled for the sizes `env`, compiled now unless a recent run
    /// compiled one that serves them. A backend whose programs serve every size up to their own
    /// ([`Sizes::UpTo`]) compiles at each size rounded up to a power of two (where that fits the
    /// memory budget), so a decoding loop whose cache grows every token, or training at varying
    /// context, compiles a few times rather than at every size.
    fn program(&self, backend: &dyn Backend, env: &DimEnv) -> Result<Arc<dyn Program>> {
        let serves = backend.capabilities().sizes;
        let sorted = |env: &DimEnv| {
            let mut sizes: Vec<(String, usize)> = env.iter().map(|(k, &v)| (k.clone(), v)).collect();
            sizes.sort();
            sizes
        };
        let wanted = sorted(env);
        let covers = |have: &Option<Vec<(String, usize)>>| match (serves, have) {
            (Sizes::Any, _) => true,
            (Sizes::UpTo, Some(have)) => have.len() == wanted.len() && have.iter().zip(&wanted).all(|((hk, hv), (wk, wv))| hk == wk && hv >= wv),
            (_, None) => false,
        };
        let mut cache = self.programs.lock().expect("not poisoned");
        if let Some(at) = cache.iter().position(|((name, have), _)| *name == backend.name() && covers(have)) {
            let hit = cache.remove(at);
            let program = hit.1.clone();
            cache.push(hit);
            return Ok(program);
        }
        let at = match serves {
            Sizes::UpTo => {
                let rounded: DimEnv = env.iter().map(|(k, &v)| (k.clone(), v.next_power_of_two())).collect();
                let fits = tttc_passes::cost::live_peak(&self.graph, &rounded).is_ok_and(|peak| tttc_files::memory::check("", peak.bytes).is_ok());
                if fits {
                    rounded
                } else {
                    env.clone()
                }
            }
            Sizes::Any => env.clone(),
        };
        let program: Arc<dyn Program> = backend.compile(&self.graph, &at)?.into();
        if cache.len() == PROGRAMS_KEPT {
            cache.remove(0);
        }
        cache.push(((backend.name(), (serves != Sizes::Any).then(|| sorted(&at))), program.clone()));
        Ok(program)
    }

    /// The sizes `args` bind and `backend`'s program for them, refused when the peak of live
    /// memory there exceeds the budget: as the program knows it from its code at those sizes
    /// ([`Program::peak_bytes`]), or else as estimated from the graph (weights, activations,
    /// the largest scan body's workspace).
    fn program_that_fits(&self, args: &[(DType, &[usize])], backend: &dyn Backend) -> Result<Arc<dyn Program>> {
        let mut env = DimEnv::new();
        tttc_ir::interp::bind_shapes(&self.graph, args, &mut env)?;
        let program = self.program(backend, &env)?;
        let mut fits = self.fits.lock().expect("not poisoned");
        if !matches!(fits.as_ref(), Some((name, fitted)) if *name == backend.name() && *fitted == env) {
            let peak = match program.peak_bytes(args) {
                Some(bytes) => bytes?,
                None => tttc_passes::cost::live_peak(&self.graph, &env)?.bytes,
            };
            let sizes: Vec<String> = env.iter().collect::<std::collections::BTreeMap<_, _>>().iter().map(|(k, v)| format!("{k} = {v}")).collect();
            tttc_files::memory::check(&format!("running {} at {}", self.graph.name, sizes.join(", ")), peak)?;
            *fits = Some((backend.name(), env));
        }
        Ok(program)
    }

    /// The type and shape of each output of a run on arguments of these types and shapes.
    pub fn output_types(&self, args: &[(DType, &[usize])]) -> Result<Vec<(DType, Vec<usize>)>> {
        let mut env = DimEnv::new();
        tttc_ir::interp::bind_shapes(&self.graph, args, &mut env)?;
        self.graph.outputs.iter().map(|&(_, v)| Ok((self.graph.ty(v).dtype, self.graph.ty(v).resolve(&env)?))).collect()
    }

    /// Runs the graph on its arguments (all of them, in order) in the caller's memory, writing
    /// its outputs into `outs` ([`Executable::output_types`]): a framework's tensors, used in
    /// place where the backend can.
    ///
    /// # Safety
    /// As [`Program::run_in_place`].
    pub unsafe fn run_in_place(&self, args: &[TensorView], outs: &[TensorView], backend: &dyn Backend) -> Result<()> {
        let types: Vec<(DType, &[usize])> = args.iter().map(|v| (v.dtype, v.shape)).collect();
        let program = self.program_that_fits(&types, backend)?;
        // SAFETY: the caller's promise, passed on.
        unsafe { program.run_in_place(args, outs) }
    }

    /// [`Executable::run_in_place`] on tensors in a GPU's memory, ordered on `at`'s stream (the
    /// `cuda` backend).
    ///
    /// # Safety
    /// As [`Program::run_on_device`].
    pub unsafe fn run_on_device(&self, args: &[TensorView], outs: &[TensorView], backend: &dyn Backend, at: DeviceStream) -> Result<()> {
        let types: Vec<(DType, &[usize])> = args.iter().map(|v| (v.dtype, v.shape)).collect();
        let mut env = DimEnv::new();
        tttc_ir::interp::bind_shapes(&self.graph, &types, &mut env)?;
        // SAFETY: the caller's promise, passed on.
        unsafe { self.program(backend, &env)?.run_on_device(args, outs, at) }
    }

    /// Runs the graph with `input_ids` and the weights (by name) as its arguments.
    pub fn run(&self, weights: &Weights, ids: &Tensor, backend: &dyn Backend) -> Result<Vec<Tensor>> {
        self.run_with(weights, &[("input_ids", ids)], backend)
    }

    /// Runs the graph with the named `inputs` and the weights (by name) as its arguments.
    pub fn run_with(&self, weights: &Weights, inputs: &[(&str, &Tensor)], backend: &dyn Backend) -> Result<Vec<Tensor>> {
        self.run_taking(weights, inputs.iter().map(|&(n, t)| (n, Cow::Borrowed(t))).collect(), backend)
    }

    /// [`Executable::run_with`] where the caller gives up the inputs it passes owned: an output
    /// may take over one's memory ([`Program::run_taking`]).
    pub fn run_taking(&self, weights: &Weights, mut inputs: Vec<(&str, Cow<'_, Tensor>)>, backend: &dyn Backend) -> Result<Vec<Tensor>> {
        let args = self
            .graph
            .args
            .iter()
            .map(|a| match a.kind {
                tttc_ir::ArgKind::Input => {
                    let at = inputs.iter().position(|(n, _)| *n == a.name).with_context(|| format!("graph input {} has no value", a.name))?;
                    Ok(inputs.swap_remove(at).1)
                }
                tttc_ir::ArgKind::Param => weights.get(&a.name).map(Cow::Borrowed).with_context(|| format!("no weight {}", a.name)),
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<(DType, &[usize])> = args.iter().map(|t| (t.dtype(), t.shape.as_slice())).collect();
        let program = self.program_that_fits(&types, backend)?;
        program.run_taking(args)
    }
}

impl GradientStep {
    /// Expands the inner gradients, differentiates the whole graph with respect to every
    /// parameter and runs the pass pipeline on the result. The forward is rematerialised: one
    /// more forward pass for a peak memory of about the values crossing segment boundaries plus
    /// one segment's activations. Of the segment counts around ⌈√nodes⌉ (a quarter, half, once
    /// and twice that), the one whose compiled graph has the smallest estimated peak of live
    /// memory at B = 1, T = 4096 is used.
    pub fn new(model: &Model) -> Result<GradientStep> {
        GradientStep::with_segments(model, None)
    }

    /// [`GradientStep::new`] with the number of rematerialisation segments given (`Some(1)`:
    /// keep every activation, no recomputation).
    pub fn with_segments(model: &Model, segments: Option<usize>) -> Result<GradientStep> {
        GradientStep::of(&model.builder.g, model.config.vocab_size(), segments)
    }

    /// The gradient step of a sequence that continues from `start` (`tttc grad --state-in`): the
    /// gradients with respect to the parameters and to every tensor of the state (truncated
    /// backpropagation through time carries these back to the run before).
    pub fn resumed(model: &Model, start: &State, segments: Option<usize>) -> Result<GradientStep> {
        GradientStep::of(&state::resumed_graph(model, start)?, model.config.vocab_size(), segments)
    }

    /// The gradient step of a frontend's graph of a model with `vocab` tokens (before the pass
    /// pipeline), with respect to its parameters and its state inputs.
    pub fn of(graph: &Graph, vocab: usize, segments: Option<usize>) -> Result<GradientStep> {
        let forward = tttc_passes::differentiable(graph)?;
        let wrt: Vec<String> = state::inputs(&forward).iter().map(|n| format!("{}{n}", state::PREFIX)).collect();
        let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
        let build = |k: usize| tttc_passes::compile(&tttc_passes::gradient_graph_wrt(&forward, "loss", k, &wrt)?);
        let graph = match segments {
            Some(k) => build(k)?,
            None => {
                let root = (forward.nodes.len() as f64).sqrt().ceil() as usize;
                let env: DimEnv = [("B".to_string(), 1), ("T".to_string(), 4096)].into_iter().collect();
                let mut best: Option<(u64, Graph)> = None;
                for k in [root.div_ceil(4), root.div_ceil(2), root, 2 * root] {
                    let g = build(k.max(1))?;
                    let peak = tttc_passes::cost::live_peak(&g, &env)?.bytes;
                    if best.as_ref().is_none_or(|(b, _)| peak < *b) {
                        best = Some((peak, g));
                    }
                }
                best.expect("at least one candidate").1
            }
        };
        Ok(GradientStep { graph: Executable::new(graph), vocab })
    }

    /// The compiled gradient graph: the forward graph's arguments in, `loss` and then one
    /// gradient per parameter (and state input, as `state.NAME`) out.
    pub fn graph(&self) -> &Graph {
        &self.graph.graph
    }

    /// Refuses steps on `batch` × `context` tokens whose estimated peak of live memory, with
    /// `held` bytes kept beside it (optimizer moments, validation batches), exceeds the budget.
    pub fn check_memory(&self, batch: usize, context: usize, held: u64) -> Result<()> {
        let env: DimEnv = [("B".to_string(), batch), ("T".to_string(), context)].into_iter().collect();
        let peak = tttc_passes::cost::live_peak(&self.graph.graph, &env)?.bytes;
        tttc_files::memory::check(&format!("training on batches of {batch} × {context} tokens"), peak.saturating_add(held))
    }

    /// The loss and the gradients at `weights` (one per graph parameter, by name) on `ids` (T ≥ 2).
    pub fn run(&self, weights: &Weights, ids: &Tensor, backend: &dyn Backend) -> Result<Gradients> {
        self.run_from(weights, ids, &State::new(), backend)
    }

    /// [`GradientStep::run`] from the state `start` (a step built by [`GradientStep::resumed`]).
    pub fn run_from(&self, weights: &Weights, ids: &Tensor, start: &State, backend: &dyn Backend) -> Result<Gradients> {
        check_input_ids(ids, self.vocab)?;
        ensure!(ids.shape[1] > 1, "input_ids has T = 1: the loss needs at least two tokens");
        // The gradient graph takes the forward graph's arguments.
        let mut inputs = state::arguments(&self.graph.graph, start, ids.shape[0])?;
        inputs.push(("input_ids".to_string(), ids));
        let mut outs = self.graph.run_with(weights, &named(&inputs), backend)?.into_iter();
        let loss = outs.next().context("gradient graph has no loss")?;
        let names = self.graph.graph.outputs[1..].iter().map(|(n, _)| n.clone());
        Ok(Gradients { loss, grads: names.zip(outs).collect() })
    }
}
