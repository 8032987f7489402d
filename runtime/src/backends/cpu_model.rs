//! The whole graph compiled ahead of time for lengths up to the arguments', as `tttc compile` writes it
//! (`tttc_codegen_cpu::aot`), run in this process (large products and scans' lanes on threads).

use anyhow::Result;
use tttc_codegen_cpu::aot::CompiledModel;
use tttc_ir::{DimEnv, Graph, Tensor};

use super::{Backend, Capabilities, Program, Sizes};

pub struct CpuModel;

impl Backend for CpuModel {
    fn name(&self) -> &'static str {
        "cpu-model"
    }

    fn about(&self) -> &'static str {
        "The whole graph compiled ahead of time (large products and scans' lanes on threads): the code `tttc compile` writes to cpu/model.o, run in \
this process (compiled for lengths up to the input's rounded up to a power of two, and reused for every length up to those)"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { sizes: Sizes::UpTo, needs_device: false, profiled: false, on_cpu: true }
    }

    fn compile(&self, graph: &Graph, sizes: &DimEnv) -> Result<Box<dyn Program>> {
        Ok(Box::new(CompiledModel::compile(graph, sizes)?))
    }
}

impl Program for CompiledModel {
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        CompiledModel::run(self, args)
    }
}
