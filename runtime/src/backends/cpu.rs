//! Native code for this machine (`tttc_codegen_cpu`), compiled once for every size.

use std::borrow::Cow;

use anyhow::Result;
use tttc_ir::{DType, DimEnv, Graph, Tensor, TensorView};

use super::{Backend, Capabilities, Program, Sizes};

pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn about(&self) -> &'static str {
        "Native code for this machine (Cranelift kernels, gemm matrix products)"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { sizes: Sizes::Any, needs_device: false, profiled: true, on_cpu: true }
    }

    fn compile(&self, graph: &Graph, _: &DimEnv) -> Result<Box<dyn Program>> {
        Ok(Box::new(tttc_codegen_cpu::Program::compile(graph)?))
    }
}

impl Program for tttc_codegen_cpu::Program {
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        tttc_codegen_cpu::Program::run(self, args)
    }

    fn run_taking(&self, args: Vec<Cow<'_, Tensor>>) -> Result<Vec<Tensor>> {
        tttc_codegen_cpu::Program::run_taking(self, args)
    }

    fn peak_bytes(&self, args: &[(DType, &[usize])]) -> Option<Result<u64>> {
        Some(tttc_codegen_cpu::Program::peak_bytes(self, args))
    }

    unsafe fn run_in_place(&self, args: &[TensorView], outs: &[TensorView]) -> Result<()> {
        // SAFETY: the caller's promise, passed on.
        unsafe { tttc_codegen_cpu::Program::run_in_place(self, args, outs) }
    }
}
