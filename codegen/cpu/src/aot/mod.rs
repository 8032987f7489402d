//! Compiled models: a whole graph as one native function that needs nothing but the C library
//! (`sinf`, `cosf`, `memcpy`, `sysconf`, POSIX threads) and serves every length up to the bounds
//! it was compiled for. The same code is written as an object file and a C header for
//! integrators ([`model_object`]) or compiled into this process ([`CompiledModel`], which the
//! tests check against the interpreter).
//!
//! The graph is planned as for the JIT backend (the same kernels), then
//! scheduled with its lengths (`B`, `T`) as symbols the code reads when it is called
//! ([`schedule`], `Lengths::UpTo`): buffers get fixed offsets in one workspace the caller
//! provides, laid out for the longest lengths, so the function allocates nothing; products run
//! through an AVX-512 kernel assembled for CPUs that have it ([`avx512`]) or a blocked GEMM
//! generated with Cranelift ([`gemm`]), everything else through generated loops ([`emit`]).
//! Large products and kernels, and scans split into a lane per processor of the compiling
//! machine, run on threads ([`parallel`]).

mod avx512;
mod emit;
mod gemm;
mod parallel;
mod reduce;

use anyhow::{bail, Result};
use cranelift_jit::JITModule;
use cranelift_module::Linkage;
use tttc_ir::{DType, DimEnv, Graph, Size, Tensor};
use tttc_lower::schedule::{Lengths, Products, Schedule};

pub use emit::{INDEX_OUT_OF_RANGE, LENGTH_OUT_OF_RANGE};
pub use tttc_lower::schedule::{Signature, Slot};

/// The C signature of a compiled model: its lengths (the signature's length symbols, in order),
/// pointers to its arguments and outputs, in the graph's order, and to its workspace; 0,
/// [`INDEX_OUT_OF_RANGE`] or [`LENGTH_OUT_OF_RANGE`].
pub type EntryFn = unsafe extern "C" fn(lengths: *const i64, args: *const *const u8, outputs: *const *mut u8, workspace: *mut u8) -> i32;

/// A model compiled into this process.
pub struct CompiledModel {
    _module: JITModule,
    entry: EntryFn,
    pub signature: Signature,
    workspaces: crate::workspace::Workspaces,
}

// The module's code is immutable once finalized; each run gets its own workspace.
unsafe impl Send for CompiledModel {}
unsafe impl Sync for CompiledModel {}

impl CompiledModel {
    /// Compiles `graph` (after the pass pipeline, holding no `grad`) for every length up to the
    /// ones `env` binds.
    pub fn compile(graph: &Graph, env: &DimEnv) -> Result<CompiledModel> {
        let mut module = crate::kernel::jit_module()?;
        let (s, signature) = schedule_for(cranelift_module::Module::isa(&module), graph, env, Lengths::UpTo)?;
        let symbols: Vec<String> = signature.lengths.iter().map(|(name, _)| name.clone()).collect();
        let shared = shared(&mut module, "tttc", Linkage::Local)?;
        let id = emit::define(&mut module, &s, &symbols, "tttc", "tttc_forward", Linkage::Local, shared)?;
        module.finalize_definitions()?;
        let entry = unsafe { std::mem::transmute::<*const u8, EntryFn>(module.get_finalized_function(id)) };
        Ok(CompiledModel { _module: module, entry, signature, workspaces: Default::default() })
    }

    /// Runs the model on its arguments, at the lengths their shapes give (each at most its
    /// bound).
    pub fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        let sig = &self.signature;
        let values = sig.bind(args)?;
        let lengths: Vec<i64> = values.iter().map(|&v| v as i64).collect();
        let ptrs: Vec<*const u8> = args.iter().map(|t| t.as_ptr()).collect();
        let mut outputs: Vec<Tensor> = sig.outputs.iter().map(|o| Ok(Tensor::zeros(o.dtype, sig.shape(o, &values)?))).collect::<Result<_>>()?;
        let out_ptrs: Vec<*mut u8> = outputs.iter_mut().map(Tensor::as_mut_ptr).collect();
        let workspace = self.workspaces.take(sig.workspace_bytes);
        // SAFETY: the arguments have the shapes the lengths give (checked above), the lengths are
        // within their bounds, and the outputs have those shapes and the workspace its size (its
        // contents on entry do not matter).
        let status = unsafe { (self.entry)(lengths.as_ptr(), ptrs.as_ptr(), out_ptrs.as_ptr(), workspace.ptr()) };
        self.workspaces.give(workspace);
        match status {
            0 => Ok(outputs),
            INDEX_OUT_OF_RANGE => bail!("an index (a token id or a target) is out of range"),
            s => bail!("the compiled model failed with status {s}"),
        }
    }
}

/// One exported function of a model object: a graph after the pass pipeline, compiled for every
/// length up to the ones `env` binds, exported as `{prefix}_{name}`.
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
    /// The lengths every entry point takes (each one's are among them), in order, with their
    /// bounds.
    pub lengths: Vec<(String, usize)>,
}

/// Compiles every entry into one object file exporting, per entry,
/// `int32_t {prefix}_{name}(const int64_t *lengths, const void *const *args, void *const *outputs, void *workspace)`.
pub fn model_object(entries: &[Entry], prefix: &str) -> Result<ModelObject> {
    let mut module = crate::kernel::object_module()?;
    let isa = cranelift_module::Module::isa(&module);
    let scheduled: Vec<_> = entries.iter().map(|e| schedule_for(isa, e.graph, e.env, Lengths::UpTo)).collect::<Result<_>>()?;
    let mut lengths: Vec<(String, usize)> = scheduled.iter().flat_map(|(_, sig)| sig.lengths.clone()).collect();
    lengths.sort();
    lengths.dedup();
    let symbols: Vec<String> = lengths.iter().map(|(name, _)| name.clone()).collect();
    let shared = shared(&mut module, prefix, Linkage::Export)?;
    let mut signatures = Vec::new();
    for (e, (s, signature)) in entries.iter().zip(scheduled) {
        let symbol = format!("{prefix}_{}", e.name);
        emit::define(&mut module, &s, &symbols, &symbol, &symbol, Linkage::Export, shared)?;
        signatures.push(signature);
    }
    let object = module.finish().emit()?;
    let header = header(entries, prefix, &signatures, &lengths);
    Ok(ModelObject { object, header, signatures, lengths })
}

/// The schedule of a model compiled for this machine (as [`CompiledModel`] and [`model_object`]
/// make it): its products as this CPU's kernel takes them, its scans split into a lane per
/// processor.
pub fn schedule(graph: &Graph, env: &DimEnv, lengths: Lengths) -> Result<(Schedule, Signature)> {
    schedule_for(&*crate::kernel::host_isa(false)?, graph, env, lengths)
}

/// The schedule for a module targeting `isa`, whose product [`gemm::define`] picks by the same
/// test.
fn schedule_for(isa: &dyn cranelift_codegen::isa::TargetIsa, graph: &Graph, env: &DimEnv, lengths: Lengths) -> Result<(Schedule, Signature)> {
    let products = if crate::kernel::avx512::supported(isa) { Products::CPU_MODEL_AVX512 } else { Products::CPU_MODEL };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tttc_lower::schedule::model(graph, env, lengths, products, threads)
}

/// The functions a module's models share: the matrix product (the kernel for this CPU, large
/// products split over threads) and the runner of parallel parts, with the thread count
/// `{prefix}_threads` (with `linkage`).
fn shared<M: cranelift_module::Module>(module: &mut M, prefix: &str, linkage: Linkage) -> Result<emit::Shared> {
    let threads = parallel::Threads::declare(module, prefix, linkage)?;
    let kernel = gemm::define(module, &format!("{prefix}_matmul_kernel"))?;
    let matmul = parallel::define_product(module, prefix, &threads, kernel)?;
    let parallel = parallel::define_parts(module, prefix, &threads)?;
    let kernel_rows = parallel::define_kernel_rows(module, prefix, &threads)?;
    let reduce = parallel::define_reduce(module, prefix, &threads)?;
    let reductions = reduce::define(module, prefix)?;
    Ok(emit::Shared { matmul, parallel, kernel_rows, reduce, reductions })
}

fn header(entries: &[Entry], prefix: &str, signatures: &[Signature], lengths: &[(String, usize)]) -> String {
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
    let open =
        |names: &[&str]| names.iter().map(|n| format!("{n} (1 to {})", sizes.iter().find(|(k, _)| k == n).map_or(0, |s| s.1))).collect::<Vec<_>>().join(", ");
    let symbols: Vec<&str> = lengths.iter().map(|(k, _)| k.as_str()).collect();
    let fixed: Vec<String> = sizes.iter().filter(|(k, _)| !symbols.contains(&k.as_str())).map(|(k, v)| format!("{k} = {v}")).collect();
    let mut h = format!(
        concat!(
            "/* Generated by tttc {version}, compiled for this machine's CPU{fixed}{open}.\n",
            " *\n",
            " * Each entry point f(lengths, args, outputs, workspace) reads args[j] and writes outputs[j],\n",
            " * each a pointer to a dense row-major array of the type and shape listed below, where the\n",
            " * shapes' lengths are the values in `lengths` ({upper}_LENGTH_NAMES, in that order; each from 1\n",
            " * to its bound in {upper}_MAX_LENGTHS). It uses its *_WORKSPACE_BYTES bytes at `workspace` (any\n",
            " * alignment, contents ignored; enough for every length). It allocates nothing and keeps no\n",
            " * state: calls with separate workspaces and outputs may run at once. Large matrix products\n",
            " * and kernels, and the lanes of scans, are split over {prefix}_threads threads (0, the\n",
            " * default: one per online processor; 1: all on the calling thread). Arguments and outputs\n",
            " * must not overlap. It returns 0, {oob} when a token id or target is out of range (the\n",
            " * outputs are then incomplete), or {bad_length} when a length is out of range (nothing is\n",
            " * written). Link with -lm -lpthread.\n",
            " */\n\n",
            "#ifndef {upper}_MODEL_H\n#define {upper}_MODEL_H\n\n#include <stdint.h>\n\n",
            "/* Threads large matrix products and kernels and a scan's lanes are split over (0: one per\n",
            " * online processor). */\n",
            "extern int32_t {prefix}_threads;\n\n",
        ),
        version = env!("CARGO_PKG_VERSION"),
        fixed = if fixed.is_empty() { String::new() } else { format!(" at {}", fixed.join(", ")) },
        open = if symbols.is_empty() { String::new() } else { format!("{}for any {}", if fixed.is_empty() { " " } else { ", " }, open(&symbols)) },
        upper = upper,
        prefix = prefix,
        oob = INDEX_OUT_OF_RANGE,
        bad_length = LENGTH_OUT_OF_RANGE,
    );
    for (k, v) in &sizes {
        h += &format!("#define {upper}_MAX_{} {v}\n", k.to_uppercase());
    }
    // A trailing 0 keeps each array non-empty when every length is fixed.
    h += &format!(
        "#define {upper}_LENGTHS {}\nstatic const char *const {upper}_LENGTH_NAMES[] = {{{}0}};\nstatic const int64_t {upper}_MAX_LENGTHS[] = {{{}0}};\n",
        lengths.len(),
        lengths.iter().map(|(k, _)| format!("\"{k}\", ")).collect::<String>(),
        lengths.iter().map(|(_, v)| format!("{v}, ")).collect::<String>(),
    );
    let names = |slots: &[Slot]| slots.iter().map(|s| format!("\"{}\"", s.name)).collect::<Vec<_>>().join(", ");
    // The bytes of each slot at the lengths given, as a C function.
    let bytes = |function: &str, slots: &[Slot]| {
        let mut f = format!("static inline int64_t {function}(const int64_t *lengths, int j) {{\n");
        for (i, k) in symbols.iter().enumerate() {
            f += &format!("    const int64_t {k} = lengths[{i}];\n    (void){k};\n");
        }
        f += "    (void)lengths;\n    switch (j) {\n";
        for (j, s) in slots.iter().enumerate() {
            let bytes = s.shape.iter().copied().product::<Size>() * if s.dtype == DType::F32 { 4 } else { 8 };
            f += &format!("    case {j}: return {bytes};\n");
        }
        f + "    default: return 0;\n    }\n}\n"
    };
    for (e, sig) in entries.iter().zip(signatures) {
        let (symbol, at) = (format!("{prefix}_{}", e.name), format!("{upper}_{}", e.name.to_uppercase()));
        h += &format!(
            concat!(
                "\n/* {symbol}: {about} (graph `{graph}`).\n *\n * Arguments:\n{args} *\n * Outputs:\n{outs} */\n",
                "#define {at}_WORKSPACE_BYTES {ws}u\n#define {at}_ARGS {nargs}\n#define {at}_OUTPUTS {nouts}\n",
                "static const char *const {at}_ARG_NAMES[] = {{{arg_names}}};\n",
                "static const char *const {at}_OUTPUT_NAMES[] = {{{out_names}}};\n",
                "/* The bytes of argument or output j at the given lengths. */\n{arg_bytes}{out_bytes}",
                "int32_t {symbol}(const int64_t *lengths, const void *const *args, void *const *outputs, void *workspace);\n",
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
            out_names = names(&sig.outputs),
            arg_bytes = bytes(&format!("{symbol}_arg_bytes"), &sig.args),
            out_bytes = bytes(&format!("{symbol}_output_bytes"), &sig.outputs),
        );
    }
    h += "\n#endif\n";
    h
}
