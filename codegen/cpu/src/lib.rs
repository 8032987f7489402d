//! tttc's CPU backend: a graph (after the pass pipeline) compiled to native code for the machine
//! it runs on, from the one lowering every backend shares (`tttc_lower`): the graph is planned
//! once and scheduled at the sizes of each call (the last few schedules are kept).
//!
//! * Runs of elementwise ops of one shape (a fused region's epilogues, the mini-batch step's
//!   arithmetic) become one loop each, their intermediate values in registers ([`kernel`]):
//!   assembled in AVX-512 (16 lanes) where the CPU has it, else compiled by Cranelift (f32x4),
//!   FMA in the transcendental polynomials either way.
//! * Matrix products call the `gemm` crate (measured faster than Cranelift-generated GEMMs:
//!   Cranelift's x86-64 backend emits 128-bit vectors only).
//! * Reductions, copies and index instructions are native loops; every buffer lives in one
//!   workspace laid out by the schedule.
//! * Scans call their body's function once per chunk; large launches are split over the threads
//!   of the rayon pool, and a scan whose body keeps its lanes apart (the TTT mini-batch loop's
//!   heads) runs as one narrower scan per thread.
//!
//! [`aot`] emits the same schedule as an object file.

pub mod aot;
mod attention;
mod attention_backward;
mod cross_entropy;
mod exec;
pub mod kernel;
pub mod profile;
mod recurrence;
mod reuse;
mod scalar;
mod simd;
mod small_product;
mod workspace;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use tttc_ir::{DType, Data, DimEnv, Graph, Tensor, TensorView};

use tttc_lower::elementwise::KernelSpec;
use tttc_lower::plan;
pub use tttc_lower::plan::PlanStats;
use tttc_lower::schedule::{self, Schedule};
use workspace::Workspaces;

/// The worker threads launches are split over (rayon's pool: one per core unless
/// `RAYON_NUM_THREADS` says otherwise).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// A graph compiled for the CPU: planned and its kernels compiled once, scheduled per set of
/// argument shapes.
pub struct Program {
    body: plan::Body,
    specs: Vec<KernelSpec>,
    jit: kernel::Jit,
    /// Schedules by argument shapes, the most recent last.
    scheduled: Mutex<Vec<(Shapes, Arc<Scheduled>)>>,
    /// Workspaces of finished calls, for the next.
    workspaces: Workspaces,
    stats: Stats,
}

/// The shapes of a call's arguments, in order.
type Shapes = Vec<Vec<usize>>;

/// Schedules kept per program (a Llama decoding loop grows its cache length every step).
const SCHEDULES: usize = 8;

/// A program scheduled at one set of sizes.
struct Scheduled {
    schedule: Schedule,
    /// Per kernel of the schedule: the planned ones, then any the schedule added (an
    /// elementwise op whose broadcast only the sizes tell), compiled in `extra`.
    kernels: Vec<kernel::KernelFn>,
    _extra: Option<kernel::Jit>,
    /// Per output: its type and shape.
    outputs: Vec<(DType, Vec<usize>)>,
    /// `(output, argument)`: outputs that begin with a copy of an argument.
    prefixes: Vec<(usize, usize)>,
}

/// What compiling produced and how long it took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub plan: PlanStats,
    /// Cranelift instructions over all kernels.
    pub instructions: usize,
    pub compile_seconds: f64,
}

impl Program {
    /// Plans `graph` (which must hold no `grad` op: run the pass pipeline first) and compiles its
    /// kernels.
    pub fn compile(graph: &Graph) -> Result<Program> {
        let start = Instant::now();
        let mut specs = Vec::new();
        let mut plan_stats = PlanStats::default();
        let body = plan::plan(graph, threads(), schedule::Products::CPU.native, &mut specs, &mut plan_stats);
        let jit = kernel::compile(&specs, false)?;
        let stats = Stats { plan: plan_stats, instructions: jit.instructions, compile_seconds: start.elapsed().as_secs_f64() };
        Ok(Program { body, specs, jit, scheduled: Mutex::new(Vec::new()), workspaces: Workspaces::default(), stats })
    }

    /// Runs the program on its graph's arguments, in order.
    pub fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        self.run_taking(args.iter().map(|&t| Cow::Borrowed(t)).collect())
    }

    /// [`Program::run`] on arguments some of which the caller gives up (`Cow::Owned`): an output
    /// that begins with a copy of such an argument (`schedule::Function::prefix_copies`: a KV
    /// cache a decoding step appends to) takes over its memory, grown as a `Vec` grows, so the
    /// call writes only what follows it.
    pub fn run_taking(&self, mut args: Vec<Cow<'_, Tensor>>) -> Result<Vec<Tensor>> {
        ensure!(args.iter().all(|t| !matches!(t.data, Data::F64(_))), "f64 data: the CPU backend computes in f32");
        let (shapes, env) = self.bind_views(&args.iter().map(|t| t.view()).collect::<Vec<_>>())?;
        let s = self.scheduled(&shapes, &env)?;
        // Uninitialised until the call writes every element (a decoding step's state is large:
        // zeroing it first would cost as much as the step's copies).
        let mut outputs: Vec<Output> = s
            .outputs
            .iter()
            .map(|(dtype, shape)| match dtype {
                DType::F32 => Output::F32(Vec::with_capacity(shape.iter().product()), shape.clone()),
                DType::I64 => Output::I64(Vec::with_capacity(shape.iter().product()), shape.clone()),
            })
            .collect();
        // Arguments whose memory an output took: read there.
        let mut moved: Vec<Option<usize>> = vec![None; args.len()];
        for &(o, j) in &s.prefixes {
            if let (Cow::Owned(Tensor { data: Data::F32(given), .. }), Output::F32(out, shape)) = (&mut args[j], &mut outputs[o]) {
                let mut memory = std::mem::take(given);
                memory.reserve(shape.iter().product::<usize>() - memory.len());
                *out = memory;
                moved[j] = Some(o);
            }
        }
        let out_views: Vec<TensorView> = outputs
            .iter_mut()
            .map(|o| match o {
                Output::F32(v, shape) => TensorView { dtype: DType::F32, shape, ptr: v.as_mut_ptr() as *mut u8 },
                Output::I64(v, shape) => TensorView { dtype: DType::I64, shape, ptr: v.as_mut_ptr() as *mut u8 },
            })
            .collect();
        let views: Vec<TensorView> =
            args.iter().zip(&moved).map(|(t, m)| m.map_or_else(|| t.view(), |o| TensorView { ptr: out_views[o].ptr, ..t.view() })).collect();
        // SAFETY: the arguments are tensors of their shapes, those an output took still there (its
        // first elements, which only the copy onto itself writes); the outputs were just
        // allocated at their shapes and nothing else holds them.
        unsafe { self.run_in_place(&views, &out_views)? };
        // SAFETY: the schedule writes every element of every output.
        let tensors = outputs.into_iter().map(|o| match o {
            Output::F32(mut v, shape) => Tensor::f32(shape.clone(), unsafe { set_len(&mut v, shape.iter().product()) }),
            Output::I64(mut v, shape) => Tensor::i64(shape.clone(), unsafe { set_len(&mut v, shape.iter().product()) }),
        });
        Ok(tensors.collect())
    }

    /// The type and shape of each output of a call on `args`.
    pub fn output_types(&self, args: &[TensorView]) -> Result<Vec<(DType, Vec<usize>)>> {
        let (shapes, env) = self.bind_views(args)?;
        Ok(self.scheduled(&shapes, &env)?.outputs.clone())
    }

    /// The bytes a call on arguments of these types and shapes holds: the arguments, the
    /// outputs and the workspace its schedule lays out (scheduled now, for the call that
    /// follows).
    pub fn peak_bytes(&self, args: &[(DType, &[usize])]) -> Result<u64> {
        let (shapes, env) = self.bind(args)?;
        let s = self.scheduled(&shapes, &env)?;
        let bytes = |(dtype, shape): (DType, &[usize])| (dtype.bytes() * shape.iter().product::<usize>()) as u64;
        let outputs: u64 = s.outputs.iter().map(|(dtype, shape)| bytes((*dtype, shape))).sum();
        let workspace = s.schedule.functions.last().map_or(0, |f| f.workspace) as u64;
        Ok(args.iter().copied().map(bytes).sum::<u64>() + outputs + workspace)
    }

    fn bind(&self, args: &[(DType, &[usize])]) -> Result<(Shapes, DimEnv)> {
        let mut env = DimEnv::new();
        tttc_ir::interp::bind_shapes(&self.body.graph, args, &mut env)?;
        Ok((args.iter().map(|(_, shape)| shape.to_vec()).collect(), env))
    }

    fn bind_views(&self, args: &[TensorView]) -> Result<(Shapes, DimEnv)> {
        let types: Vec<(DType, &[usize])> = args.iter().map(|v| (v.dtype, v.shape)).collect();
        self.bind(&types)
    }

    /// Runs the program on its graph's arguments, in order, writing its outputs into `outs`
    /// (their types and shapes checked against [`Program::output_types`]): a framework's tensors
    /// used in place.
    ///
    /// # Safety
    /// Every view points at dense memory of its type and shape that stays valid for the call;
    /// the outputs overlap neither each other nor the arguments, and nothing else uses them
    /// during the call.
    pub unsafe fn run_in_place(&self, args: &[TensorView], outs: &[TensorView]) -> Result<()> {
        let (shapes, env) = self.bind_views(args)?;
        let s = self.scheduled(&shapes, &env)?;
        ensure!(outs.len() == s.outputs.len(), "{} has {} outputs, got {}", self.body.graph.name, s.outputs.len(), outs.len());
        for ((name, _), (out, (dtype, shape))) in self.body.graph.outputs.iter().zip(outs.iter().zip(&s.outputs)) {
            ensure!(
                out.dtype == *dtype && out.shape == shape.as_slice(),
                "output {name}: expected {}{shape:?}, got {}{:?}",
                dtype.name(),
                out.dtype.name(),
                out.shape
            );
        }
        let arg_ptrs: Vec<*const u8> = args.iter().map(|v| v.ptr as *const u8).collect();
        let out_ptrs: Vec<*mut u8> = outs.iter().map(|v| v.ptr).collect();
        let entry = s.schedule.functions.len() - 1;
        let bytes = s.schedule.functions[entry].workspace;
        let workspace = self.workspaces.take(bytes);
        let machine = exec::Machine { schedule: &s.schedule, kernels: &s.kernels };
        // SAFETY: the arguments bound the graph's types and the outputs have the shapes
        // scheduled for them (the caller vouches for their memory); the workspace is this call's.
        let ran = unsafe { machine.call(entry, &arg_ptrs, &out_ptrs, workspace.ptr()) };
        self.workspaces.give(workspace);
        ran.with_context(|| format!("running {}", self.body.graph.name))
    }

    /// The schedule for arguments of `shapes`: a recent one, or made now.
    fn scheduled(&self, shapes: &[Vec<usize>], env: &DimEnv) -> Result<Arc<Scheduled>> {
        let mut cache = self.scheduled.lock().expect("not poisoned");
        if let Some(at) = cache.iter().position(|(s, _)| s == shapes) {
            let hit = cache.remove(at);
            let s = hit.1.clone();
            cache.push(hit);
            return Ok(s);
        }
        let schedule = schedule::schedule_with_shapes(&self.body, self.specs.clone(), env, shapes, schedule::Products::CPU)
            .with_context(|| format!("scheduling {}", self.body.graph.name))?;
        let extra = (schedule.specs.len() > self.specs.len()).then(|| kernel::compile(&schedule.specs[self.specs.len()..], false)).transpose()?;
        let kernels = self.jit.kernels.iter().chain(extra.iter().flat_map(|j| &j.kernels)).copied().collect();
        let entry = schedule.functions.last().context("an empty schedule")?;
        let mut outputs = vec![(DType::F32, Vec::new()); self.body.graph.outputs.len()];
        for b in &entry.bufs {
            if let schedule::Home::Out(j) = b.home {
                outputs[j] = (b.dtype, b.shape.iter().map(|s| s.fixed()).collect());
            }
        }
        let prefixes = entry.prefix_copies();
        let s = Arc::new(Scheduled { schedule, kernels, _extra: extra, outputs, prefixes });
        if cache.len() == SCHEDULES {
            cache.remove(0);
        }
        cache.push((shapes.to_vec(), s.clone()));
        Ok(s)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}

/// An output being written, and its shape.
enum Output {
    F32(Vec<f32>, Vec<usize>),
    I64(Vec<i64>, Vec<usize>),
}

/// `v` with its first `n` elements (written through its pointer) taken as initialised.
///
/// # Safety
/// The first `n` elements of `v`'s allocation are initialised.
unsafe fn set_len<T>(v: &mut Vec<T>, n: usize) -> Vec<T> {
    v.set_len(n);
    std::mem::take(v)
}
