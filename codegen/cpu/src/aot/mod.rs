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
        let (s, signature) = tttc_lower::schedule::model(graph, env, tttc_lower::schedule::Products::CPU_MODEL)?;
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
        let ptrs: Vec<*const u8> = args.iter().map(|t| t.as_ptr()).collect();
        let mut outputs: Vec<Tensor> = sig.outputs.iter().map(|o| Tensor::zeros(o.dtype, o.shape.clone())).collect();
        let out_ptrs: Vec<*mut u8> = outputs.iter_mut().map(Tensor::as_mut_ptr).collect();
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

/// One exported function of a model object: a graph after the pass pipeline, compiled at the
/// sizes `env` binds, exported as `{prefix}_{name}`.
pub struct Entry<'a> {
    pub name: &'a str,
    /// What it computes, for the header (one line).
    pub about: &'a str,
    pub graph: &'a Graph,
    pub env: &'a DimEnv,
}

/// A model as a relocatable object file for this machine and the C header that declares its
/// entry points.
pub struct ModelObject {
    pub object: Vec<u8>,
    pub header: String,
    /// Per entry point, in the order given.
    pub signatures: Vec<Signature>,
}

/// Compiles every entry into one object file exporting, per entry,
/// `int32_t {prefix}_{name}(const void *const *args, void *const *outputs, void *workspace)`.
pub fn model_object(entries: &[Entry], prefix: &str) -> Result<ModelObject> {
    let mut module = crate::kernel::object_module()?;
    let mut signatures = Vec::new();
    for e in entries {
        let (s, signature) = tttc_lower::schedule::model(e.graph, e.env, tttc_lower::schedule::Products::CPU_MODEL)?;
        let symbol = format!("{prefix}_{}", e.name);
        emit::define(&mut module, &s, &symbol, &symbol, Linkage::Export)?;
        signatures.push(signature);
    }
    let object = module.finish().emit()?;
    let header = header(entries, prefix, &signatures);
    Ok(ModelObject { object, header, signatures })
}

fn header(entries: &[Entry], prefix: &str, signatures: &[Signature]) -> String {
    let upper = prefix.to_uppercase();
    let mut sizes: Vec<(String, usize)> = entries.iter().flat_map(|e| e.env.iter().map(|(k, &v)| (k.clone(), v))).collect();
    sizes.sort();
    sizes.dedup();
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
            "/* Generated by tttc {version}, compiled for this machine's CPU at {sizes}.\n",
            " *\n",
            " * Each entry point f(args, outputs, workspace) reads args[j] and writes outputs[j], each a\n",
            " * pointer to a dense row-major array of the type and shape listed below, and uses its\n",
            " * *_WORKSPACE_BYTES bytes at `workspace` (any alignment, contents ignored). It allocates\n",
            " * nothing, runs on the calling thread and keeps no state: calls with separate workspaces and\n",
            " * outputs may run at once. Arguments and outputs must not overlap. It returns 0, or {oob} when\n",
            " * a token id or target is out of range (the outputs are then incomplete). Link with -lm.\n",
            " */\n\n",
            "#ifndef {upper}_MODEL_H\n#define {upper}_MODEL_H\n\n#include <stdint.h>\n\n",
        ),
        version = env!("CARGO_PKG_VERSION"),
        sizes = sizes.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "),
        upper = upper,
        oob = INDEX_OUT_OF_RANGE,
    );
    for (k, v) in &sizes {
        h += &format!("#define {upper}_{} {v}\n", k.to_uppercase());
    }
    let names = |slots: &[Slot]| slots.iter().map(|s| format!("\"{}\"", s.name)).collect::<Vec<_>>().join(", ");
    let bytes = |slots: &[Slot]| {
        slots.iter().map(|s| format!("{}", s.shape.iter().product::<usize>() * if s.dtype == DType::F32 { 4 } else { 8 })).collect::<Vec<_>>().join(", ")
    };
    for (e, sig) in entries.iter().zip(signatures) {
        let (symbol, at) = (format!("{prefix}_{}", e.name), format!("{upper}_{}", e.name.to_uppercase()));
        h += &format!(
            concat!(
                "\n/* {symbol}: {about} (graph `{graph}`).\n *\n * Arguments:\n{args} *\n * Outputs:\n{outs} */\n",
                "#define {at}_WORKSPACE_BYTES {ws}u\n#define {at}_ARGS {nargs}\n#define {at}_OUTPUTS {nouts}\n",
                "static const char *const {at}_ARG_NAMES[] = {{{arg_names}}};\nstatic const int64_t {at}_ARG_BYTES[] = {{{arg_bytes}}};\n",
                "static const char *const {at}_OUTPUT_NAMES[] = {{{out_names}}};\nstatic const int64_t {at}_OUTPUT_BYTES[] = {{{out_bytes}}};\n",
                "int32_t {symbol}(const void *const *args, void *const *outputs, void *workspace);\n",
            ),
            symbol = symbol,
            about = e.about,
            graph = e.graph.name,
            args = list(&sig.args),
            outs = list(&sig.outputs),
            at = at,
            ws = sig.workspace_bytes,
            nargs = sig.args.len(),
            nouts = sig.outputs.len(),
            arg_names = names(&sig.args),
            arg_bytes = bytes(&sig.args),
            out_names = names(&sig.outputs),
            out_bytes = bytes(&sig.outputs),
        );
    }
    h += "\n#endif\n";
    h
}
