//! The whole graph compiled ahead of time at the arguments' sizes, as `tttc compile` writes it
//! (`tttc_codegen_cpu::aot`), run in this process on one thread.

use anyhow::Result;
use tttc_codegen_cpu::aot::CompiledModel;
use tttc_ir::{DimEnv, Graph, Tensor};

use super::{Backend, Capabilities, Program};

pub struct CpuModel;

impl Backend for CpuModel {
    fn name(&self) -> &'static str {
        "cpu-model"
    }

    fn about(&self) -> &'static str {
        "The whole graph compiled ahead of time at the input's sizes, one thread: the code `tttc compile` writes to \
cpu/model.o, run in this process (compiled once per set of sizes)"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { any_size: false, needs_device: false, profiled: false }
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
