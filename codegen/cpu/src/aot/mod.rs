//! Compiled models: a whole forward graph, at fixed sizes, as one native function that needs
//! nothing but the C library (`sinf`, `cosf`). The same code is written as an object file and
//! a C header for integrators ([`model_object`]) or compiled into this process
//! ([`CompiledModel`], which the tests check against the interpreter).
//!
//! The graph is planned as for the JIT backend (the same kernels) but for one thread, then
//! scheduled at the given sizes ([`schedule`]): buffers get fixed offsets in one workspace the
//! caller provides, so the function allocates nothing; products run through a generated
//! blocked GEMM ([`gemm`]), everything else through generated loops ([`emit`]).

mod emit;
mod gemm;

use anyhow::{bail, ensure, Result};
use cranelift_jit::JITModule;
use cranelift_module::Linkage;
use tttc_ir::{DType, Data, DimEnv, Graph, Tensor};

pub use emit::INDEX_OUT_OF_RANGE;
pub use tttc_lower::schedule::{Signature, Slot};

/// The C signature of a compiled model: pointers to its arguments and outputs, in the graph's
/// order, and to its workspace; 0, or [`INDEX_OUT_OF_RANGE`].
pub type ForwardFn = unsafe extern "C" fn(args: *const *const u8, outputs: *const *mut u8, workspace: *mut u8) -> i32;

/// A model compiled into this process.
pub struct CompiledModel {
    _module: JITModule,
    forward: ForwardFn,
    pub signature: Signature,
}

// The module's code is immutable once finalized; each run gets its own workspace.
unsafe impl Send for CompiledModel {}
unsafe impl Sync for CompiledModel {}

impl CompiledModel {
    /// Compiles `graph` (after the pass pipeline, holding no `grad`) at the sizes `env` binds.
    pub fn compile(graph: &Graph, env: &DimEnv) -> Result<CompiledModel> {
        let (s, signature) = tttc_lower::schedule::model(graph, env, tttc_lower::schedule::Operands::ContiguousRhsRows)?;
        let mut module = crate::kernel::jit_module()?;
        let id = emit::define(&mut module, &s, "tttc", "tttc_forward", Linkage::Local)?;
        module.finalize_definitions()?;
        let forward = unsafe { std::mem::transmute::<*const u8, ForwardFn>(module.get_finalized_function(id)) };
        Ok(CompiledModel { _module: module, forward, signature })
    }

    /// Runs the model on its arguments, which must have the compiled shapes.
    pub fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        let sig = &self.signature;
        ensure!(args.len() == sig.args.len(), "the model takes {} arguments, got {}", sig.args.len(), args.len());
        for (a, t) in sig.args.iter().zip(args) {
            ensure!(t.dtype() == a.dtype && t.shape == a.shape, "argument {}: compiled for {} {:?}, got {t}", a.name, a.dtype, a.shape);
            ensure!(!matches!(t.data, Data::F64(_)), "argument {}: f64 data", a.name);
        }
        let ptrs: Vec<*const u8> = args
            .iter()
            .map(|t| match &t.data {
                Data::F32(v) => v.as_ptr() as *const u8,
                Data::I64(v) => v.as_ptr() as *const u8,
                Data::F64(v) => v.as_ptr() as *const u8,
            })
            .collect();
        let mut outputs: Vec<Tensor> = sig
            .outputs
            .iter()
            .map(|o| {
                let n = o.shape.iter().product();
                match o.dtype {
                    DType::F32 => Tensor::f32(o.shape.clone(), vec![0.0; n]),
                    DType::I64 => Tensor::i64(o.shape.clone(), vec![0; n]),
                }
            })
            .collect();
        let out_ptrs: Vec<*mut u8> = outputs
            .iter_mut()
            .map(|t| match &mut t.data {
                Data::F32(v) => v.as_mut_ptr() as *mut u8,
                Data::I64(v) => v.as_mut_ptr() as *mut u8,
                Data::F64(v) => v.as_mut_ptr() as *mut u8,
            })
            .collect();
        let mut workspace = vec![0u64; sig.workspace_bytes.div_ceil(8)];
        // SAFETY: the arguments have the compiled shapes (checked above), the outputs and the
        // workspace the compiled sizes.
        let status = unsafe { (self.forward)(ptrs.as_ptr(), out_ptrs.as_ptr(), workspace.as_mut_ptr() as *mut u8) };
        match status {
            0 => Ok(outputs),
            INDEX_OUT_OF_RANGE => bail!("an index (a token id or a target) is out of range"),
            s => bail!("the compiled model failed with status {s}"),
        }
    }
}

/// A model as a relocatable object file for this machine and the C header that declares it.
pub struct ModelObject {
    pub object: Vec<u8>,
    pub header: String,
    pub signature: Signature,
}

/// Compiles `graph` at the sizes `env` binds into an object file exporting
/// `int32_t {prefix}_forward(const void *const *args, void *const *outputs, void *workspace)`.
pub fn model_object(graph: &Graph, env: &DimEnv, prefix: &str) -> Result<ModelObject> {
    let (s, signature) = tttc_lower::schedule::model(graph, env, tttc_lower::schedule::Operands::ContiguousRhsRows)?;
    let mut module = crate::kernel::object_module()?;
    emit::define(&mut module, &s, prefix, &format!("{prefix}_forward"), Linkage::Export)?;
    let object = module.finish().emit()?;
    let header = header(graph, env, prefix, &signature);
    Ok(ModelObject { object, header, signature })
}

fn header(graph: &Graph, env: &DimEnv, prefix: &str, sig: &Signature) -> String {
    let upper = prefix.to_uppercase();
    let mut sizes: Vec<_> = env.iter().collect();
    sizes.sort();
    let c_type = |d: DType| match d {
        DType::F32 => "float",
        DType::I64 => "int64_t",
    };
    let list = |slots: &[Slot]| {
        slots
            .iter()
            .enumerate()
            .map(|(j, s)| format!(" *   [{j}] {} {}[{}]\n", c_type(s.dtype), s.name, s.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("][")))
            .collect::<String>()
    };
    let mut h = format!(
        concat!(
            "/* Generated by tttc {version}: graph `{graph}` compiled for this machine's CPU at {sizes}.\n",
            " *\n",
            " * {prefix}_forward(args, outputs, workspace) reads args[j] and writes outputs[j], each a\n",
            " * pointer to a dense row-major array of the type and shape listed below, and uses\n",
            " * {upper}_WORKSPACE_BYTES bytes at `workspace` (any alignment, contents ignored). It\n",
            " * allocates nothing, runs on the calling thread and keeps no state: calls with separate\n",
            " * workspaces and outputs may run at once. Arguments and outputs must not overlap. It\n",
            " * returns 0, or {oob} when a token id or target is out of range (the outputs are then\n",
            " * incomplete). Link with -lm.\n",
            " *\n",
            " * Arguments:\n{args} *\n * Outputs:\n{outs} */\n\n",
            "#ifndef {upper}_MODEL_H\n#define {upper}_MODEL_H\n\n#include <stdint.h>\n\n",
            "#define {upper}_WORKSPACE_BYTES {ws}u\n#define {upper}_ARGS {nargs}\n#define {upper}_OUTPUTS {nouts}\n",
        ),
        version = env!("CARGO_PKG_VERSION"),
        graph = graph.name,
        sizes = sizes.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "),
        prefix = prefix,
        upper = upper,
        oob = INDEX_OUT_OF_RANGE,
        args = list(&sig.args),
        outs = list(&sig.outputs),
        ws = sig.workspace_bytes,
        nargs = sig.args.len(),
        nouts = sig.outputs.len(),
    );
    for (k, v) in &sizes {
        h += &format!("#define {upper}_{} {v}\n", k.to_uppercase());
    }
    let names = |slots: &[Slot]| slots.iter().map(|s| format!("\"{}\"", s.name)).collect::<Vec<_>>().join(", ");
    let bytes = |slots: &[Slot]| {
        slots.iter().map(|s| format!("{}", s.shape.iter().product::<usize>() * if s.dtype == DType::F32 { 4 } else { 8 })).collect::<Vec<_>>().join(", ")
    };
    h += &format!(
        "\n/* The arguments' and outputs' names and sizes in bytes, in order. */\nstatic const char *const {upper}_ARG_NAMES[] = {{{}}};\nstatic const int64_t {upper}_ARG_BYTES[] = {{{}}};\nstatic const char *const {upper}_OUTPUT_NAMES[] = {{{}}};\nstatic const int64_t {upper}_OUTPUT_BYTES[] = {{{}}};\n",
        names(&sig.args),
        bytes(&sig.args),
        names(&sig.outputs),
        bytes(&sig.outputs)
    );
    h += &format!("\nint32_t {prefix}_forward(const void *const *args, void *const *outputs, void *workspace);\n\n#endif\n");
    h
}
