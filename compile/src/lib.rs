//! `tttc compile`: runs the pass pipeline on a model's graph and writes the IR after every pass,
//! the model compiled for the CPU and for NVIDIA GPUs, and a JSON manifest (what ran, how long,
//! cost estimates) into an output folder. docs/passes.md describes the layout and the manifest's
//! fields. A config that describes one layer (LaCT's bidirectional layer) compiles the layer's
//! forward pass and its vector–Jacobian product instead of a language model's entry points.

mod folder;
mod gpu;
mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::{DimEnv, Graph};
use tttc_passes::cost;

use manifest::{CpuEntry, CpuLength, CpuModel, CpuSlot, GpuModel, Manifest, ModelInfo, PassEntry, Stage};

/// What `tttc compile` was asked to do.
pub struct Request<'a> {
    pub model: &'a Path,
    pub out: Option<&'a Path>,
    pub batch: usize,
    pub seq_len: usize,
    /// Compile the run that continues from a state at this position (`Mode::Resume`), whose
    /// state tensors are further arguments and outputs `state.NAME`, instead of the forward pass.
    pub resume_at: Option<usize>,
    /// Assemble the PTX with `ptxas` when it is found (its figures go into the manifest).
    pub assemble: bool,
}

/// What a compile made.
pub struct Report {
    /// The output folder, complete.
    pub out: PathBuf,
}

/// The output folder's files: path inside it and contents.
pub(crate) type Files = Vec<(String, Vec<u8>)>;

/// The prefix of the compiled model's symbols.
const SYMBOL_PREFIX: &str = "tttc";

const FORWARD_ABOUT: &str = "the logits and, when T > 1, the loss (mean next-token cross-entropy)";
const LAYER_FORWARD_ABOUT: &str = "the layer's output y for its input x";
const VJP_ABOUT: &str =
    "the layer's vector-Jacobian product: for the cotangent d.y of its output, the gradients d.x of its input and d.NAME of every parameter";
const LOSS_AND_GRAD_ABOUT: &str =
    "the loss and its gradient with respect to every parameter (named as the parameter) and, for a resumed run, every state input (`state.NAME`)";
const PREFILL_ABOUT: &str =
    "a prompt of T tokens from a fresh state: the last position's logits, then the state after the prompt (`state.NAME`, in the step's order)";
const STEP_ABOUT: &str =
    "one token per sequence from the state in args[1..]: its logits, then the state after it in the same order (the next step's args[1..])";

/// Compiles the model `req` names into its output folder; progress goes to `log`, a line at a time.
pub fn compile(req: &Request, log: &mut dyn FnMut(&str)) -> Result<Report> {
    let config = tttc_frontends::load_config(req.model)?;
    let layer = config.is_layer();
    let builder = match (req.resume_at, layer) {
        (None, false) => tttc_frontends::structure_of(&config)?,
        (Some(position), false) => tttc_frontends::build_for(&config, tttc_frontends::Mode::Resume { position })?,
        (None, true) => tttc_frontends::build_layer(&config)?,
        (Some(_), true) => bail!("--resume-at: {} describes one layer, which keeps no state between calls", req.model.display()),
    };
    let graph = &builder.g;
    let out = match req.out {
        Some(o) => o.to_path_buf(),
        None => folder::default_out_dir(req.model)?,
    };
    let mut outputs = tttc_frontends::outputs_reading_model(req.model);
    let out_dir = outputs.folder("-o", &out, folder::check_replaceable)?;

    let env: DimEnv = [("B".to_string(), req.batch), ("T".to_string(), req.seq_len)].into_iter().collect();
    let results = tttc_passes::run_passes_observed(&tttc_passes::pipeline(), graph, None, |r| {
        log(&format!("{:<16} {:>9.3} ms  {} -> {} nodes", r.name, r.elapsed.as_secs_f64() * 1e3, r.nodes_before, r.nodes_after));
        for note in &r.notes {
            log(&format!("    {note}"));
        }
    })?;
    let last = results.last().map_or(graph, |r| &r.graph);
    let fusion = manifest::fusion(graph, &results, &env)?;
    if let Some(f) = &fusion {
        log(&format!(
            "fusion: {} top-level nodes -> {} regions ({} fused, {} scans, {} plain); intermediates {} -> {} at {}",
            f.regions_before,
            f.regions_after,
            f.fused_regions,
            f.scans,
            f.plain_nodes,
            tttc_files::human(f.intermediate_bytes_before),
            tttc_files::human(f.intermediate_bytes_after),
            env.iter().collect::<BTreeMap<_, _>>().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        ));
    }

    // The training step: the gradient graph of the same model (rematerialised as `tttc grad`
    // runs it; the loss needs a next token); or a layer's vector-Jacobian product.
    let started = std::time::Instant::now();
    let training = match layer {
        true => Some(Backward { name: "vjp", about: VJP_ABOUT, what: "the layer's vector-Jacobian product", graph: layer_vjp(graph)? }),
        false if req.seq_len >= 2 => Some(Backward {
            name: "loss_and_grad",
            about: LOSS_AND_GRAD_ABOUT,
            what: "the training step",
            graph: tttc_runtime::GradientStep::of(graph, config.vocab_size(), None)?.graph().clone(),
        }),
        false => None,
    };
    let about = if layer { LAYER_FORWARD_ABOUT } else { FORWARD_ABOUT };
    let mut entries = vec![tttc_codegen_cpu::aot::Entry { name: "forward", about, graph: last, env: &env }];
    match &training {
        Some(step) => {
            log(&format!("{}: the gradient graph, {} nodes ({:.2} s)", step.name, tttc_passes::count_nodes(&step.graph), started.elapsed().as_secs_f64()));
            entries.push(tttc_codegen_cpu::aot::Entry { name: step.name, about: step.about, graph: &step.graph, env: &env });
        }
        None => log("note: no loss_and_grad entry point at --seq-len 1 (the loss needs a next token)"),
    }
    let decoding = if layer { None } else { decoding(&config, req.batch, log)? };
    if let Some(d) = &decoding {
        entries.push(tttc_codegen_cpu::aot::Entry { name: "prefill", about: PREFILL_ABOUT, graph: &d.prefill, env: &env });
        entries.push(tttc_codegen_cpu::aot::Entry { name: "step", about: STEP_ABOUT, graph: &d.step, env: &env });
    }
    let started = std::time::Instant::now();
    let model = tttc_codegen_cpu::aot::model_object(&entries, SYMBOL_PREFIX).context("compiling the model for the CPU")?;
    for (e, sig) in entries.iter().zip(&model.signatures) {
        log(&format!(
            "cpu: {SYMBOL_PREFIX}_{} in cpu/model.o ({} functions, {} kernels, {} workspace)",
            e.name,
            sig.functions,
            sig.kernels,
            tttc_files::human(sig.workspace_bytes as u64),
        ));
    }
    let lengths: Vec<String> = model.lengths.iter().map(|(name, max)| format!("{name} from 1 to {max}")).collect();
    let lengths = if lengths.is_empty() { "the lengths fixed".to_string() } else { format!("any {}, given at each call", lengths.join(", ")) };
    log(&format!("cpu: compiled in {:.2} s for {lengths}, declared in cpu/model.h", started.elapsed().as_secs_f64()));

    let ptxas = if req.assemble { tttc_ptx::ptxas::find() } else { None };
    if req.assemble && ptxas.is_none() {
        log("note: ptxas not found (set TTTC_PTXAS or put it on PATH; pip package nvidia-cuda-nvcc-cu12): the PTX is not assembled and the manifest has no register counts");
    }
    let (gpu_entry, gpu_files) = gpu::gpu_program(last, &env, ptxas.as_deref(), "gpu", "the forward pass", log)?;
    let gpu_training = match &training {
        Some(step) => Some(gpu::gpu_program(&step.graph, &env, ptxas.as_deref(), &format!("gpu/{}", step.name), step.what, log)?),
        None => None,
    };
    let gpu_decoding = match &decoding {
        Some(d) => Some((
            gpu::gpu_program(&d.prefill, &env, ptxas.as_deref(), "gpu/prefill", "the prefill", log)?,
            gpu::gpu_program(&d.step, &env, ptxas.as_deref(), "gpu/step", "the decoding step", log)?,
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
    let gpu_training = gpu_training.map(&mut gpu_entry_of);
    let (gpu_vjp, gpu_loss_and_grad) = if layer { (gpu_training, None) } else { (None, gpu_training) };
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
        regions: manifest::regions(last, &env)?,
        fusion,
        cpu: CpuModel {
            object: "cpu/model.o",
            header: "cpu/model.h",
            lengths: model.lengths.iter().map(|(name, max)| CpuLength { name: name.clone(), max: *max }).collect(),
            entries: entries
                .iter()
                .zip(&model.signatures)
                .map(|(e, sig)| CpuEntry {
                    name: e.name.to_string(),
                    symbol: format!("{SYMBOL_PREFIX}_{}", e.name),
                    about: e.about.to_string(),
                    workspace_bytes: sig.workspace_bytes,
                    flops: sig.traffic.flops,
                    bytes_moved: sig.traffic.bytes,
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
        gpu_vjp,
        gpu_prefill,
        gpu_step,
    };

    files.push(("manifest.json".into(), (serde_json::to_string_pretty(&manifest)? + "\n").into_bytes()));
    outputs.write_with(out_dir, |dir| folder::write_files(dir, &files))?;
    outputs.commit()?;
    Ok(Report { out })
}

/// The second entry point: a language model's training step or a layer's vector-Jacobian
/// product, with the log's words for it.
struct Backward {
    name: &'static str,
    about: &'static str,
    what: &'static str,
    graph: Graph,
}

/// A layer's vector-Jacobian product (`x`, the parameters and the cotangent `d.y` → `d.x` and
/// `d.NAME` of every parameter), from the passes' one reverse-mode autodiff, after the pipeline.
fn layer_vjp(forward: &Graph) -> Result<Graph> {
    let vjp = tttc_passes::vector_jacobian_product(&tttc_passes::differentiable(forward)?, &[])?;
    tttc_passes::compile(&tttc_passes::gradients_only(&vjp)).context("compiling the layer's vector-Jacobian product")
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
fn decoding(config: &tttc_frontends::ModelConfig, batch: usize, log: &mut dyn FnMut(&str)) -> Result<Option<Decoding>> {
    let step = tttc_frontends::build_for(config, tttc_frontends::Mode::Step)?;
    let at_batch: DimEnv = [("B".to_string(), batch)].into_iter().collect();
    if let Some(s) = step.states.iter().find(|s| s.ty.resolve(&at_batch).is_err()) {
        log(&format!(
            "note: no prefill or step entry points: the state {} ({}) grows with every step, and compiled entry points have fixed sizes",
            s.name, s.ty
        ));
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
