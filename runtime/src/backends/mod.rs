//! Where a graph executes: every backend behind one trait, found by name in one registry. Every
//! backend runs every graph the runtime builds: forward passes, gradients (reverse scans
//! included) and decoding steps. A new backend is a file here and a line in [`backends`].

mod cpu;
mod cpu_model;
#[cfg(feature = "cuda")]
mod cuda;
mod gpu;
mod interp;

use anyhow::{anyhow, Result};
use tttc_ir::{DimEnv, Graph, Tensor};

/// A way of executing graphs: compiles a graph into a [`Program`].
pub trait Backend: Send + Sync {
    /// What `--backend` takes: `cpu`, `ptx-sim`.
    fn name(&self) -> &'static str;
    /// One line for `--help`.
    fn about(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// `graph` ready to run at the sizes `sizes` binds (see [`Capabilities::sizes`]).
    fn compile(&self, graph: &Graph, sizes: &DimEnv) -> Result<Box<dyn Program>>;
}

/// A graph compiled by a [`Backend`].
pub trait Program: Send + Sync {
    /// The graph's outputs from its arguments, in the graph's order.
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>>;
}

/// What a backend can do, for the code that would otherwise check for a backend by name.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Which sizes a compiled program serves.
    pub sizes: Sizes,
    /// It needs a GPU on this machine.
    pub needs_device: bool,
    /// Its runs are recorded by `tttc_codegen_cpu::profile` (`tttc bench --profile`).
    pub profiled: bool,
}

/// The sizes a program a backend compiles serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// Every set of sizes (it reschedules per shape itself).
    Any,
    /// Every size up to the ones it was compiled at (its lengths read at each call).
    UpTo,
}

static BACKENDS: &[&dyn Backend] = &[
    &interp::Interp,
    &cpu::Cpu,
    &cpu_model::CpuModel,
    &gpu::PtxSim,
    #[cfg(feature = "cuda")]
    &gpu::Cuda,
];

/// Every backend, in the order `--help` lists them.
pub fn backends() -> &'static [&'static dyn Backend] {
    BACKENDS
}

/// The backend called `name`.
pub fn backend(name: &str) -> Result<&'static dyn Backend> {
    BACKENDS.iter().copied().find(|b| b.name() == name).ok_or_else(|| {
        let names: Vec<&str> = BACKENDS.iter().map(|b| b.name()).collect();
        anyhow!("no backend {name:?} (the backends: {})", names.join(", "))
    })
}
