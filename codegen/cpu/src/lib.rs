//! tttc's CPU backend: a graph (after the pass pipeline) compiled to native code for the machine
//! it runs on.
//!
//! * Runs of elementwise ops of one shape (a fused region's epilogues, the mini-batch step's
//!   arithmetic) become one Cranelift-compiled loop each, f32x4 with FMA in the transcendental
//!   polynomials: their intermediate values stay in registers ([`kernel`]).
//! * Matrix products call the `gemm` crate (measured faster than Cranelift-generated GEMMs:
//!   Cranelift's x86-64 backend emits 128-bit vectors only).
//! * Reductions are native loops; data movement and integer index math use the interpreter's
//!   implementations.
//! * Scans and fused regions run their bodies as plans of their own; large launches are split
//!   over the threads of the rayon pool, and a scan whose body keeps its lanes apart (the TTT
//!   mini-batch loop's heads) runs as one narrower scan per thread ([`lanes`]).

pub mod aot;
mod exec;
pub mod kernel;
pub mod profile;

use std::borrow::Cow;
use std::time::Instant;

use anyhow::Result;
use tttc_ir::{DimEnv, Graph, Tensor};

use tttc_lower::plan;
pub use tttc_lower::plan::PlanStats;

/// The worker threads launches are split over (rayon's pool: one per core unless
/// `RAYON_NUM_THREADS` says otherwise).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// A graph compiled for the CPU.
pub struct Program {
    body: plan::Body,
    jit: kernel::Jit,
    stats: Stats,
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
        let body = plan::plan(graph, threads(), &mut specs, &mut plan_stats);
        let jit = kernel::compile(&specs)?;
        let stats = Stats { plan: plan_stats, instructions: jit.instructions, compile_seconds: start.elapsed().as_secs_f64() };
        Ok(Program { body, jit, stats })
    }

    /// Runs the program on its graph's arguments, in order.
    pub fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        exec::run(&self.body, &self.jit, args.iter().map(|&t| Cow::Borrowed(t)).collect(), &DimEnv::new())
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}
