//! Where a graph executes: every backend behind one trait, found by name in one registry. Every
//! backend runs every graph the runtime builds: forward passes, gradients (reverse scans
//! included) and decoding steps. A new backend is a file here and a line in [`backends`].

mod cpu;
mod cpu_model;
#[cfg(feature = "cuda")]
mod cuda;
mod gpu;
mod interp;

use std::borrow::Cow;

use anyhow::{anyhow, bail, ensure, Result};
use tttc_ir::{DType, DimEnv, Graph, Tensor, TensorView};

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

    /// [`Program::run`] on arguments some of which the caller gives up (`Cow::Owned`): a backend
    /// may hand such an argument's memory to an output that begins with a copy of it (a KV cache
    /// a decoding step appends to) and write only the rest. Runs as `run` unless it does.
    fn run_taking(&self, args: Vec<Cow<'_, Tensor>>) -> Result<Vec<Tensor>> {
        self.run(&args.iter().map(|a| a.as_ref()).collect::<Vec<_>>())
    }

    /// The bytes a call on arguments of these types and shapes holds at its peak (arguments,
    /// outputs and workspace), where the backend knows them from its own code at those sizes;
    /// `None`: the graph's estimate stands (`tttc_passes::cost::live_peak`, which counts every
    /// value the graph names, such as attention's scores that a backend may never store).
    fn peak_bytes(&self, args: &[(DType, &[usize])]) -> Option<Result<u64>> {
        let _ = args;
        None
    }

    /// [`Program::run`] on arguments in the caller's memory, writing the outputs into `outs`
    /// (shaped as the graph's outputs at the arguments' sizes): a framework's tensors. Copies
    /// them in and out unless the backend reads and writes them in place.
    ///
    /// # Safety
    /// Every view points at dense memory of its type and shape that stays valid for the call;
    /// the outputs overlap neither each other nor the arguments, and nothing else uses them
    /// during the call.
    unsafe fn run_in_place(&self, args: &[TensorView], outs: &[TensorView]) -> Result<()> {
        let args: Vec<Tensor> = args.iter().map(|v| unsafe { v.copied() }).collect();
        let results = self.run(&args.iter().collect::<Vec<_>>())?;
        ensure!(results.len() == outs.len(), "the program has {} outputs, got {}", results.len(), outs.len());
        for (t, out) in results.iter().zip(outs) {
            ensure!(t.dtype() == out.dtype && t.shape == out.shape, "an output is {t}, its place {}{:?}", out.dtype.name(), out.shape);
            let bytes = t.len() * out.dtype.bytes();
            // SAFETY: the caller's output holds `bytes` and overlaps nothing `t` does.
            unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), out.ptr, bytes) };
        }
        Ok(())
    }

    /// [`Program::run_in_place`] on tensors in a GPU's memory, ordered on `at`'s stream.
    ///
    /// # Safety
    /// As [`Program::run_in_place`], the memory being GPU `at.ordinal`'s.
    unsafe fn run_on_device(&self, args: &[TensorView], outs: &[TensorView], at: DeviceStream) -> Result<()> {
        let _ = (args, outs, at);
        bail!("this backend computes in the host's memory: GPU tensors run on the cuda backend")
    }
}

/// Where a framework's GPU tensors live: the GPU's ordinal and the stream (a `CUstream`; 0 for
/// the default stream) the run is ordered on, as the framework's current stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStream {
    pub ordinal: usize,
    pub stream: u64,
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
    /// It computes on this machine's processors, whose GEMM rate is its ceiling (`tttc bench`'s
    /// "% of GEMM rate").
    pub on_cpu: bool,
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
