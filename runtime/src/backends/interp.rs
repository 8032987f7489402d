//! The reference interpreter (`tttc_ir::interp`) as a backend.

use anyhow::Result;
use tttc_ir::{DimEnv, Graph, Precision, Tensor};

use super::{Backend, Capabilities, Program, Sizes};

pub struct Interp;

impl Backend for Interp {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn about(&self) -> &'static str {
        "The reference interpreter"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { sizes: Sizes::Any, needs_device: false, profiled: false, on_cpu: true }
    }

    fn compile(&self, graph: &Graph, _: &DimEnv) -> Result<Box<dyn Program>> {
        Ok(Box::new(Interpreted(graph.clone())))
    }
}

/// The interpreter walks the graph itself on every run.
struct Interpreted(Graph);

impl Program for Interpreted {
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        tttc_ir::run(&self.0, args, Precision::F32)
    }
}
