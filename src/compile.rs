//! `tttc compile`: runs the pass pipeline on a model's graph and writes the IR after every pass
//! and a JSON manifest (what ran, how long, cost estimates) into an output folder.
//! docs/passes.md describes the layout and the manifest's fields.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tttc_ir::{DimEnv, Graph, Op};
use tttc_passes::cost::{self, Cost};

/// What `tttc compile` was asked to do.
pub struct Request<'a> {
    pub model: &'a Path,
    pub out: Option<&'a Path>,
    pub batch: usize,
    pub seq_len: usize,
    /// Compile the run that continues from a state at this position (`Mode::Resume`), whose
    /// state tensors are further arguments and outputs `state.NAME`, instead of the forward pass.
    pub resume_at: Option<usize>,
}

#[derive(Serialize)]
struct Manifest {
    tttc_version: &'static str,
    /// Every file of the folder but this manifest: a later compile replaces the folder only when
    /// it holds nothing else.
    files: Vec<String>,
    model: ModelInfo,
    /// The values of the symbolic dimensions the estimates are computed for.
    shapes: BTreeMap<String, usize>,
    /// For a run that continues from a state (`--resume-at`): the state's position.
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_at: Option<usize>,
    /// The frontend's graph, before any pass.
    input: Stage,
    passes: Vec<PassEntry>,
    /// The final (fused) graph split up: its fused regions and scans in node order, then one
    /// entry for the remaining plain nodes.
    regions: Vec<Region>,
    /// What the `fuse` pass did: regions and materialised bytes before and after it (estimated
    /// from the graph: what the regions would save, not what a backend moves today).
    fusion: Option<Fusion>,
    /// The model compiled for this CPU, for linking (docs/cpu-model.md).
    cpu: CpuModel,
    /// The forward pass as PTX kernels and the host program that launches them
    /// (docs/gpu-model.md).
    gpu: GpuModel,
    /// The training step the same way (absent at T = 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_loss_and_grad: Option<GpuModel>,
    /// Decoding's prefill and step the same way (absent when the state grows: a KV cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_prefill: Option<GpuModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_step: Option<GpuModel>,
}

/// The model for NVIDIA GPUs (docs/gpu-model.md), at the manifest's shapes.
#[derive(Serialize)]
struct GpuModel {
    /// Per target, the PTX module holding every kernel.
    modules: BTreeMap<&'static str, String>,
    /// The launch sequence: buffers and steps per function.
    program: String,
    workspace_bytes: usize,
    /// One u32, zero before a run; non-zero after it when a token id or target was out of range.
    status_bytes: usize,
    args: Vec<CpuSlot>,
    outputs: Vec<CpuSlot>,
    kernels: Vec<GpuKernel>,
    /// The `ptxas` that assembled every module (`null` when none was found: no figures then).
    ptxas: Option<String>,
    /// An estimate of one forward pass on an H100 from the sm_90 figures (`null` without ptxas):
    /// not a measurement.
    estimate: Option<GpuEstimate>,
}

#[derive(Serialize)]
struct GpuEstimate {
    gpu: tttc_ptx::estimate::Gpu,
    seconds: f64,
    launches: u64,
    /// Seconds by what bounds each kernel.
    seconds_by_bound: BTreeMap<&'static str, f64>,
}

#[derive(Serialize)]
struct GpuKernel {
    name: String,
    /// Every parameter is a `.u64` global pointer, in this order.
    params: Vec<String>,
    shared_bytes: usize,
    /// In one forward pass: launches, FLOPs and bytes of global memory moved.
    #[serde(flatten)]
    work: tttc_ptx::model::Work,
    /// `ptxas -v` per target: registers, spills, stack and shared memory.
    ptxas: BTreeMap<&'static str, tttc_ptx::ptxas::Figures>,
    /// Occupancy and time on an H100 (an estimate; absent without ptxas figures).
    h100: Option<tttc_ptx::estimate::KernelEstimate>,
}

/// The compiled model (docs/cpu-model.md): its entry points, at the manifest's shapes.
#[derive(Serialize)]
struct CpuModel {
    object: &'static str,
    header: &'static str,
    entries: Vec<CpuEntry>,
    target: String,
}

/// One exported function: `int32_t {symbol}(const void *const *args, void *const *outputs,
/// void *workspace)`.
#[derive(Serialize)]
struct CpuEntry {
    name: String,
    symbol: String,
    about: String,
    workspace_bytes: usize,
    args: Vec<CpuSlot>,
    outputs: Vec<CpuSlot>,
    kernels: usize,
    functions: usize,
}

#[derive(Serialize)]
struct CpuSlot {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
}

impl From<&tttc_codegen_cpu::aot::Slot> for CpuSlot {
    fn from(s: &tttc_codegen_cpu::aot::Slot) -> Self {
        CpuSlot { name: s.name.clone(), dtype: s.dtype.name(), shape: s.shape.clone() }
    }
}

#[derive(Serialize)]
struct Fusion {
    /// Top-level nodes of the graph the `fuse` pass received (each one a kernel of its own).
    regions_before: usize,
    /// Top-level nodes after it: fused regions, scans and plain nodes.
    regions_after: usize,
    fused_regions: usize,
    scans: usize,
    plain_nodes: usize,
    /// Bytes of the values materialised at the top level, before and after fusion.
    intermediate_bytes_before: u64,
    intermediate_bytes_after: u64,
    /// The part of both that scan bodies materialise per iteration (fusion leaves scan bodies
    /// alone: each is already one kernel per step).
    scan_body_intermediate_bytes: u64,
    /// Bytes read and written by the top-level nodes, before and after fusion.
    bytes_moved_before: u64,
    bytes_moved_after: u64,
}

#[derive(Serialize)]
struct ModelInfo {
    path: String,
    model_type: String,
    graph: String,
    parameters: u64,
    parameter_bytes: u64,
}

#[derive(Serialize)]
struct Totals {
    flops: u64,
    bytes_moved: u64,
    intermediate_bytes: u64,
    /// Nodes whose op has no FLOP rule (counted as 0 FLOPs).
    unestimated_nodes: u64,
}

impl From<Cost> for Totals {
    fn from(c: Cost) -> Totals {
        Totals { flops: c.flops, bytes_moved: c.bytes, intermediate_bytes: c.intermediate_bytes, unestimated_nodes: c.unestimated }
    }
}

#[derive(Serialize)]
struct Stage {
    ir: String,
    nodes: usize,
    totals: Totals,
}

#[derive(Serialize)]
struct PassEntry {
    name: &'static str,
    about: &'static str,
    ir: String,
    seconds: f64,
    nodes_before: usize,
    nodes_after: usize,
    /// What the pass reported (for dual-form: per scan, what was derived and the e-graph's size
    /// and saturation time).
    notes: Vec<String>,
    totals: Totals,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Region {
    Fused(FusedRegion),
    Scan(ScanRegion),
    Other(OtherRegion),
}

#[derive(Serialize)]
struct FusedRegion {
    /// Position of the fused node among the final graph's top-level nodes.
    node: usize,
    /// Its results as named in the final IR.
    results: String,
    body: String,
    /// Nodes inside the region.
    nodes: usize,
    /// The ops it contains, by name, with their counts.
    ops: BTreeMap<&'static str, usize>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    #[serde(flatten)]
    totals: Totals,
}

#[derive(Serialize)]
struct ScanRegion {
    /// Position of the scan among the final graph's top-level nodes.
    node: usize,
    /// Its results as named in the final IR (`%149, %150, %151`).
    results: String,
    body: String,
    axis: usize,
    chunk: usize,
    iterations: u64,
    /// Nodes of the body (nested bodies included).
    body_nodes: usize,
    inputs: Vec<String>,
    outputs: Vec<String>,
    #[serde(flatten)]
    totals: Totals,
}

#[derive(Serialize)]
struct OtherRegion {
    /// How many top-level nodes are neither fused regions nor scans.
    nodes: usize,
    #[serde(flatten)]
    totals: Totals,
}

/// The output folder's files: path inside it and contents.
type Files = Vec<(String, Vec<u8>)>;

/// The prefix of the compiled model's symbols.
const SYMBOL_PREFIX: &str = "tttc";

const FORWARD_ABOUT: &str = "the logits and, when T > 1, the loss (mean next-token cross-entropy)";
const LOSS_AND_GRAD_ABOUT: &str =
    "the loss and its gradient with respect to every parameter (named as the parameter) and, for a resumed run, every state input (`state.NAME`)";
const PREFILL_ABOUT: &str =
    "a prompt of T tokens from a fresh state: the last position's logits, then the state after the prompt (`state.NAME`, in the step's order)";
const STEP_ABOUT: &str =
    "one token per sequence from the state in args[1..]: its logits, then the state after it in the same order (the next step's args[1..])";

pub fn compile(req: &Request) -> Result<()> {
    let config = tttc_frontends::load_config(req.model)?;
    let builder = match req.resume_at {
        None => tttc_frontends::structure_of(&config)?,
        Some(position) => tttc_frontends::build_for(&config, tttc_frontends::Mode::Resume { position })?,
    };
    let graph = &builder.g;
    let out = match req.out {
        Some(o) => o.to_path_buf(),
        None => default_out_dir(req.model)?,
    };
    let mut outputs = crate::outputs_reading(req.model, &[]);
    let out_dir = outputs.folder("-o", &out, check_replaceable)?;

    let env: DimEnv = [("B".to_string(), req.batch), ("T".to_string(), req.seq_len)].into_iter().collect();
    let results = tttc_passes::run_passes_observed(&tttc_passes::pipeline(), graph, None, |r| {
        eprintln!("{:<16} {:>9.3} ms  {} -> {} nodes", r.name, r.elapsed.as_secs_f64() * 1e3, r.nodes_before, r.nodes_after);
        for note in &r.notes {
            eprintln!("    {note}");
        }
    })?;
    let last = results.last().map_or(graph, |r| &r.graph);
    let fusion = fusion(graph, &results, &env)?;
    if let Some(f) = &fusion {
        eprintln!(
            "fusion: {} top-level nodes -> {} regions ({} fused, {} scans, {} plain); intermediates {} -> {} at {}",
            f.regions_before,
            f.regions_after,
            f.fused_regions,
            f.scans,
            f.plain_nodes,
            tttc_files::human(f.intermediate_bytes_before),
            tttc_files::human(f.intermediate_bytes_after),
            env.iter().collect::<BTreeMap<_, _>>().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        );
    }

    // The training step: the gradient graph of the same model (rematerialised as `tttc grad`
    // runs it). The loss needs a next token.
    let started = std::time::Instant::now();
    let training = if req.seq_len >= 2 { Some(tttc_runtime::GradientStep::of(graph, config.vocab_size(), None)?) } else { None };
    let mut entries = vec![tttc_codegen_cpu::aot::Entry { name: "forward", about: FORWARD_ABOUT, graph: last, env: &env }];
    match &training {
        Some(step) => {
            eprintln!("loss_and_grad: the gradient graph, {} nodes ({:.2} s)", tttc_passes::count_nodes(step.graph()), started.elapsed().as_secs_f64());
            entries.push(tttc_codegen_cpu::aot::Entry { name: "loss_and_grad", about: LOSS_AND_GRAD_ABOUT, graph: step.graph(), env: &env });
        }
        None => eprintln!("note: no loss_and_grad entry point at --seq-len 1 (the loss needs a next token)"),
    }
    let decoding = decoding(&config, req.batch)?;
    if let Some(d) = &decoding {
        entries.push(tttc_codegen_cpu::aot::Entry { name: "prefill", about: PREFILL_ABOUT, graph: &d.prefill, env: &env });
        entries.push(tttc_codegen_cpu::aot::Entry { name: "step", about: STEP_ABOUT, graph: &d.step, env: &env });
    }
    let started = std::time::Instant::now();
    let model = tttc_codegen_cpu::aot::model_object(&entries, SYMBOL_PREFIX).context("compiling the model for the CPU")?;
    for (e, sig) in entries.iter().zip(&model.signatures) {
        eprintln!(
            "cpu: {SYMBOL_PREFIX}_{} in cpu/model.o ({} functions, {} kernels, {} workspace)",
            e.name,
            sig.functions,
            sig.kernels,
            tttc_files::human(sig.workspace_bytes as u64),
        );
    }
    eprintln!("cpu: compiled in {:.2} s, declared in cpu/model.h", started.elapsed().as_secs_f64());

    let ptxas = tttc_ptx::ptxas::find();
    if ptxas.is_none() {
        eprintln!("note: ptxas not found (set TTTC_PTXAS or put it on PATH; pip package nvidia-cuda-nvcc-cu12): the PTX is not assembled and the manifest has no register counts");
    }
    let (gpu_entry, gpu_files) = gpu_program(last, &env, ptxas.as_deref(), "gpu", "the forward pass")?;
    let gpu_training = match &training {
        Some(step) => Some(gpu_program(step.graph(), &env, ptxas.as_deref(), "gpu/loss_and_grad", "the training step")?),
        None => None,
    };
    let gpu_decoding = match &decoding {
        Some(d) => Some((
            gpu_program(&d.prefill, &env, ptxas.as_deref(), "gpu/prefill", "the prefill")?,
            gpu_program(&d.step, &env, ptxas.as_deref(), "gpu/step", "the decoding step")?,
        )),
        None => None,
    };

    let params: Vec<&tttc_ir::Arg> = graph.params().collect();
    let mut parameters = 0u64;
    let mut parameter_bytes = 0u64;
    for a in &params {
        let too_many = || format!("parameter counts overflow at {}", a.name);
        parameters = parameters.checked_add(cost::elements(graph.ty(a.value), &env)?).with_context(too_many)?;
        parameter_bytes = parameter_bytes.checked_add(cost::bytes(graph.ty(a.value), &env)?).with_context(too_many)?;
    }
    let mut files: Files = vec![("ir/00-input.ir".into(), tttc_ir::text::print(graph).into_bytes())];
    for (i, r) in results.iter().enumerate() {
        files.push((ir_file(i + 1, r.name), tttc_ir::text::print(&r.graph).into_bytes()));
    }
    files.push(("cpu/model.o".into(), model.object));
    files.push(("cpu/model.h".into(), model.header.into_bytes()));
    files.extend(gpu_files);
    let mut gpu_entry_of = |(entry, gpu_files): (GpuModel, Files)| {
        files.extend(gpu_files);
        entry
    };
    let gpu_loss_and_grad = gpu_training.map(&mut gpu_entry_of);
    let (gpu_prefill, gpu_step) = gpu_decoding.map(|(prefill, step)| (gpu_entry_of(prefill), gpu_entry_of(step))).unzip();
    let manifest = Manifest {
        tttc_version: env!("CARGO_PKG_VERSION"),
        files: files.iter().map(|(name, _)| name.clone()).collect(),
        model: ModelInfo { path: req.model.display().to_string(), model_type: model_type(req.model)?, graph: graph.name.clone(), parameters, parameter_bytes },
        shapes: env.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        resume_at: req.resume_at,
        input: Stage {
            ir: "ir/00-input.ir".into(),
            nodes: tttc_passes::count_nodes(graph),
            totals: cost::graph_cost(graph, &env).context("input graph")?.into(),
        },
        passes: results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(PassEntry {
                    name: r.name,
                    about: r.about,
                    ir: ir_file(i + 1, r.name),
                    seconds: r.elapsed.as_secs_f64(),
                    nodes_before: r.nodes_before,
                    nodes_after: r.nodes_after,
                    notes: r.notes.clone(),
                    totals: cost::graph_cost(&r.graph, &env).with_context(|| format!("after pass {}", r.name))?.into(),
                })
            })
            .collect::<Result<_>>()?,
        regions: regions(last, &env)?,
        fusion,
        cpu: CpuModel {
            object: "cpu/model.o",
            header: "cpu/model.h",
            entries: entries
                .iter()
                .zip(&model.signatures)
                .map(|(e, sig)| CpuEntry {
                    name: e.name.to_string(),
                    symbol: format!("{SYMBOL_PREFIX}_{}", e.name),
                    about: e.about.to_string(),
                    workspace_bytes: sig.workspace_bytes,
                    args: sig.args.iter().map(CpuSlot::from).collect(),
                    outputs: sig.outputs.iter().map(CpuSlot::from).collect(),
                    kernels: sig.kernels,
                    functions: sig.functions,
                })
                .collect(),
            target: format!("{}-{} (this machine's CPU features)", std::env::consts::ARCH, std::env::consts::OS),
        },
        gpu: gpu_entry,
        gpu_loss_and_grad,
        gpu_prefill,
        gpu_step,
    };

    files.push(("manifest.json".into(), (serde_json::to_string_pretty(&manifest)? + "\n").into_bytes()));
    outputs.write_with(out_dir, |dir| write_files(dir, &files))?;
    outputs.commit()?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `graph` as PTX kernels for every target and the program that launches them, in the folder
/// `dir` of the output, assembled by `ptxas` when there is one: the manifest's entry and the files.
fn gpu_program(graph: &Graph, env: &DimEnv, ptxas: Option<&Path>, dir: &str, what: &str) -> Result<(GpuModel, Files)> {
    let started = std::time::Instant::now();
    let gpu = tttc_ptx::model::GpuModel::compile(graph, env).with_context(|| format!("compiling {what} for the GPU"))?;
    let modules: Vec<(&'static str, String)> = tttc_ptx::TARGETS.iter().map(|&t| (t, gpu.module(t).to_text())).collect();
    let mut figures: BTreeMap<String, BTreeMap<&'static str, tttc_ptx::ptxas::Figures>> = BTreeMap::new();
    if let Some(ptxas) = ptxas {
        for (target, text) in &modules {
            for (kernel, f) in tttc_ptx::ptxas::assemble(ptxas, text, target)? {
                figures.entry(kernel).or_default().insert(target, f);
            }
        }
    }
    let work = gpu.work();
    let dims = gpu.launch_dims();
    let h100 = &tttc_ptx::estimate::H100_SXM;
    let estimates: Vec<Option<tttc_ptx::estimate::KernelEstimate>> = gpu
        .kernels
        .iter()
        .zip(&work)
        .zip(&dims)
        .map(|((k, w), d)| {
            let f = figures.get(&k.name)?.get("sm_90")?;
            let (grid, block) = (*d)?;
            Some(h100.kernel(w, grid.iter().map(|&g| g as u64).product(), block.iter().product(), f, k.uses_tensor_cores()))
        })
        .collect();
    let estimate = (ptxas.is_some() && estimates.iter().all(Option::is_some)).then(|| {
        let mut by_bound: BTreeMap<&'static str, f64> = BTreeMap::new();
        for e in estimates.iter().flatten() {
            *by_bound.entry(e.bound).or_default() += e.seconds;
        }
        GpuEstimate { gpu: h100.clone(), seconds: by_bound.values().sum(), launches: work.iter().map(|w| w.launches).sum(), seconds_by_bound: by_bound }
    });
    if let Some(e) = &estimate {
        eprintln!(
            "gpu estimate for the {} (no GPU measured): {:.2} ms per call of {what}, {} launches ({})",
            e.gpu.name,
            e.seconds * 1e3,
            e.launches,
            e.seconds_by_bound.iter().map(|(k, v)| format!("{k}-bound {:.2} ms", v * 1e3)).collect::<Vec<_>>().join(", ")
        );
    }
    eprintln!(
        "gpu: {what}, {} kernels in {dir}/sm_80.ptx and {dir}/sm_90.ptx{}, launched as {dir}/program.json says ({} workspace; {:.2} s)",
        gpu.kernels.len(),
        if ptxas.is_some() { ", assembled by ptxas" } else { "" },
        tttc_files::human(gpu.signature.workspace_bytes as u64),
        started.elapsed().as_secs_f64()
    );
    let entry = GpuModel {
        modules: modules.iter().map(|(t, _)| (*t, format!("{dir}/{t}.ptx"))).collect(),
        program: format!("{dir}/program.json"),
        workspace_bytes: gpu.signature.workspace_bytes,
        status_bytes: 4,
        args: gpu.signature.args.iter().map(CpuSlot::from).collect(),
        outputs: gpu.signature.outputs.iter().map(CpuSlot::from).collect(),
        kernels: gpu
            .kernels
            .iter()
            .zip(&work)
            .zip(estimates)
            .map(|((k, w), h100)| GpuKernel {
                name: k.name.clone(),
                params: k.params.iter().map(|p| p.name.clone()).collect(),
                shared_bytes: k.shared_bytes(),
                work: *w,
                ptxas: figures.remove(&k.name).unwrap_or_default(),
                h100,
            })
            .collect(),
        ptxas: ptxas.map(|p| p.display().to_string()),
        estimate,
    };
    let mut files: Files = modules.into_iter().map(|(target, text)| (format!("{dir}/{target}.ptx"), text.into_bytes())).collect();
    files.push((format!("{dir}/program.json"), (serde_json::to_string_pretty(&gpu.program())? + "\n").into_bytes()));
    Ok((entry, files))
}

/// Decoding's prefill and step graphs after the pass pipeline, their slots in the order
/// docs/cpu-model.md ("Decoding") gives.
struct Decoding {
    prefill: Graph,
    step: Graph,
}

/// The prefill and step graphs of `config` with their slots in one order: arguments `input_ids`,
/// the state `state.NAME` (the step's), the weights; outputs `logits`, then the state. A step's
/// state outputs are then the next step's arguments 1.., and the prefill's the first step's.
/// The step keeps its weight-only work (`tttc_passes::hoist_invariants`): for the compiled
/// sizes those are mostly constants, immediates in compiled code, and the rest (Mamba's
/// `−exp(A_log)`) is a thousandth of a step. `None`, with a note, when the state grows with
/// every step (a KV cache), which entry points of fixed sizes cannot hold.
fn decoding(config: &tttc_frontends::ModelConfig, batch: usize) -> Result<Option<Decoding>> {
    let step = tttc_frontends::build_for(config, tttc_frontends::Mode::Step)?;
    let at_batch: DimEnv = [("B".to_string(), batch)].into_iter().collect();
    if let Some(s) = step.states.iter().find(|s| s.ty.resolve(&at_batch).is_err()) {
        eprintln!("note: no prefill or step entry points: the state {} ({}) grows with every step, and compiled entry points have fixed sizes", s.name, s.ty);
        return Ok(None);
    }
    let order: Vec<String> = step.states.iter().map(|s| format!("state.{}", s.name)).collect();
    let prefill = tttc_frontends::build_for(config, tttc_frontends::Mode::Prefill)?;
    // The prefill hands over every state a step takes, and nothing else.
    let handed: Vec<&String> = prefill.g.outputs.iter().map(|(n, _)| n).filter(|n| n.starts_with("state.")).collect();
    ensure!(handed.len() == order.len(), "the prefill hands over {} states, a step takes {}", handed.len(), order.len());
    for (name, spec) in order.iter().zip(&step.states) {
        let (_, v) = prefill.g.outputs.iter().find(|(n, _)| n == name).with_context(|| format!("the prefill does not hand over {name}"))?;
        ensure!(prefill.g.ty(*v).resolve(&at_batch)? == spec.ty.resolve(&at_batch)?, "the prefill's {name} is {}, a step takes {}", prefill.g.ty(*v), spec.ty);
    }
    let in_order = |g: &Graph, what: &str| -> Result<Graph> {
        let mut g = tttc_passes::compile(g).with_context(|| format!("compiling the {what} graph"))?;
        let rank = |name: &str| match order.iter().position(|s| s == name) {
            Some(i) => (1, i),
            None if name == "input_ids" || name == "logits" => (0, 0),
            None => (2, 0),
        };
        g.args.sort_by_key(|a| rank(&a.name));
        g.outputs.sort_by_key(|(n, _)| rank(n));
        let g = g.canonical();
        tttc_ir::verify(&g)?;
        Ok(g)
    };
    Ok(Some(Decoding { prefill: in_order(&prefill.g, "prefill")?, step: in_order(&step.g, "step")? }))
}

fn ir_file(index: usize, pass: &str) -> String {
    format!("ir/{index:02}-{pass}.ir")
}

/// The graph the `fuse` pass received and the one it made, compared (None when the pipeline has
/// no `fuse` pass).
fn fusion(input: &Graph, results: &[tttc_passes::PassResult], env: &DimEnv) -> Result<Option<Fusion>> {
    let Some(i) = results.iter().position(|r| r.name == "fuse") else { return Ok(None) };
    let before = if i == 0 { input } else { &results[i - 1].graph };
    let after = &results[i].graph;
    let count = |f: fn(&Op) -> bool| after.nodes.iter().filter(|n| f(&n.op)).count();
    let fused_regions = count(|op| matches!(op, Op::Fused(_)));
    let scans = count(|op| matches!(op, Op::Scan(_)));
    let (cb, ca) = (cost::graph_cost(before, env)?, cost::graph_cost(after, env)?);
    let mut scan_body_intermediate_bytes = 0u64;
    for n in after.nodes.iter().filter(|n| matches!(n.op, Op::Scan(_))) {
        let results = n.outputs.iter().try_fold(0u64, |acc, v| Ok::<_, anyhow::Error>(acc + cost::bytes(after.ty(*v), env)?))?;
        scan_body_intermediate_bytes += cost::node_cost(after, n, env)?.intermediate_bytes - results;
    }
    Ok(Some(Fusion {
        regions_before: before.nodes.len(),
        regions_after: after.nodes.len(),
        fused_regions,
        scans,
        plain_nodes: after.nodes.len() - fused_regions - scans,
        intermediate_bytes_before: cb.intermediate_bytes,
        intermediate_bytes_after: ca.intermediate_bytes,
        scan_body_intermediate_bytes,
        bytes_moved_before: cb.bytes,
        bytes_moved_after: ca.bytes,
    }))
}

/// One region per top-level fused region and scan of `g`, in node order, then one for all other
/// nodes.
fn regions(g: &Graph, env: &DimEnv) -> Result<Vec<Region>> {
    let mut regions = Vec::new();
    let mut other = Cost::default();
    let mut other_nodes = 0;
    let show = |vs: &[tttc_ir::ValueId]| vs.iter().map(|v| g.ty(*v).to_string()).collect::<Vec<_>>();
    for (i, node) in g.nodes.iter().enumerate() {
        let c = cost::node_cost(g, node, env)?;
        let results: Vec<String> = node.outputs.iter().map(|v| format!("%{}", v.0)).collect();
        match &node.op {
            Op::Fused(f) => {
                let mut ops = BTreeMap::new();
                for n in &f.body.nodes {
                    *ops.entry(n.op.name()).or_insert(0) += 1;
                }
                regions.push(Region::Fused(FusedRegion {
                    node: i,
                    results: results.join(", "),
                    body: f.body.name.clone(),
                    nodes: tttc_passes::count_nodes(&f.body),
                    ops,
                    inputs: show(&node.inputs),
                    outputs: show(&node.outputs),
                    totals: c.into(),
                }));
            }
            Op::Scan(scan) => {
                regions.push(Region::Scan(ScanRegion {
                    node: i,
                    results: results.join(", "),
                    body: scan.body.name.clone(),
                    axis: scan.axis,
                    chunk: scan.chunk,
                    iterations: cost::scan_iterations(g, node, env)?,
                    body_nodes: tttc_passes::count_nodes(&scan.body),
                    inputs: show(&node.inputs),
                    outputs: show(&node.outputs),
                    totals: c.into(),
                }));
            }
            _ => {
                other = other.plus(c)?;
                other_nodes += 1;
            }
        }
    }
    regions.push(Region::Other(OtherRegion { nodes: other_nodes, totals: other.into() }));
    Ok(regions)
}

/// `<model stem>.tttc` in the current folder.
fn default_out_dir(model: &Path) -> Result<PathBuf> {
    let stem = match model.file_stem() {
        Some(s) => s.to_os_string(),
        None => {
            let full = model.canonicalize().with_context(|| format!("cannot resolve {}", model.display()))?;
            full.file_stem().context("cannot name the output folder after the model: give -o DIR")?.to_os_string()
        }
    };
    Ok(PathBuf::from(format!("{}.tttc", stem.to_string_lossy())))
}

/// An existing `out` is replaced only when it is empty, or when an earlier `tttc compile` wrote
/// it: its manifest.json lists every other file it holds. Anything else is named and left alone.
fn check_replaceable(out: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(out).with_context(|| format!("cannot read {}", out.display()))?;
    ensure!(meta.is_dir(), "{} exists and is not a folder; not replacing it", out.display());
    let found = walk(out, Path::new(""))?;
    if found.is_empty() {
        return Ok(());
    }
    let manifest = out.join("manifest.json");
    let listed: Option<Vec<String>> = tttc_files::read_text(&manifest, tttc_files::Cap::CONFIG)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter(|m| m["tttc_version"].is_string())
        .and_then(|m| m["files"].as_array()?.iter().map(|f| f.as_str().map(str::to_string)).collect());
    let listed =
        listed.with_context(|| format!("{} is not the output of tttc compile (no manifest.json listing its files); not replacing it", out.display()))?;
    if let Some(other) = found.iter().find(|f| f.as_str() != "manifest.json" && !listed.contains(f)) {
        bail!("{} holds {other}, which tttc compile did not write; not replacing the folder (move that file out, or choose another -o)", out.display());
    }
    Ok(())
}

/// The paths of everything below `dir/rel` that is not a folder, relative to `dir` (a folder
/// with nothing in it counts as itself).
fn walk(dir: &Path, rel: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let here = dir.join(rel);
    for entry in std::fs::read_dir(&here).with_context(|| format!("cannot read {}", here.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", here.display()))?;
        let path = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            let inner = walk(dir, &path)?;
            if inner.is_empty() {
                found.push(format!("{}/", path.display()));
            }
            found.extend(inner);
        } else {
            found.push(path.display().to_string());
        }
    }
    Ok(found)
}

/// Writes `files` (paths relative to `dir`) into the folder `dir`.
fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The `model_type` of the definition at `path` (already read successfully by the frontend).
fn model_type(path: &Path) -> Result<String> {
    let value = if path.is_dir() {
        let text = tttc_files::read_text(&path.join("config.json"), tttc_files::Cap::CONFIG)?;
        serde_json::from_str::<serde_json::Value>(&text)?.get("model_type").and_then(|v| v.as_str()).map(str::to_string)
    } else {
        let text = tttc_files::read_text(path, tttc_files::Cap::CONFIG)?;
        toml::from_str::<toml::Table>(&text)?.get("model_type").and_then(|v| v.as_str()).map(str::to_string)
    };
    value.with_context(|| format!("{} has no model_type", path.display()))
}
