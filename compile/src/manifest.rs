//! `manifest.json`: what ran, how long, cost estimates, and what was compiled (docs/passes.md
//! describes its fields).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use tttc_ir::{DimEnv, Graph, Op};
use tttc_passes::cost::{self, Cost};

#[derive(Serialize)]
pub(crate) struct Manifest {
    pub(crate) tttc_version: &'static str,
    /// Every file of the folder but this manifest: a later compile replaces the folder only when
    /// it holds nothing else.
    pub(crate) files: Vec<String>,
    pub(crate) model: ModelInfo,
    /// The values of the symbolic dimensions the estimates are computed for.
    pub(crate) shapes: BTreeMap<String, usize>,
    /// For a run that continues from a state (`--resume-at`): the state's position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resume_at: Option<usize>,
    /// The frontend's graph, before any pass.
    pub(crate) input: Stage,
    pub(crate) passes: Vec<PassEntry>,
    /// The final (fused) graph split up: its fused regions and scans in node order, then one
    /// entry for the remaining plain nodes.
    pub(crate) regions: Vec<Region>,
    /// What the `fuse` pass did: regions and materialised bytes before and after it (estimated
    /// from the graph: what the regions would save, not what a backend moves today).
    pub(crate) fusion: Option<Fusion>,
    /// The model compiled for this CPU, for linking (docs/cpu-model.md).
    pub(crate) cpu: CpuModel,
    /// The forward pass as PTX kernels and the host program that launches them
    /// (docs/gpu-model.md).
    pub(crate) gpu: GpuModel,
    /// The training step the same way (absent at T = 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gpu_loss_and_grad: Option<GpuModel>,
    /// A layer's vector-Jacobian product the same way (a layer's compile only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gpu_vjp: Option<GpuModel>,
    /// Decoding's prefill and step the same way (absent when the state grows: a KV cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gpu_prefill: Option<GpuModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gpu_step: Option<GpuModel>,
}

/// The model for NVIDIA GPUs (docs/gpu-model.md), at the manifest's shapes.
#[derive(Serialize)]
pub(crate) struct GpuModel {
    /// Per target, the PTX module holding every kernel.
    pub(crate) modules: BTreeMap<&'static str, String>,
    /// The launch sequence: buffers and steps per function.
    pub(crate) program: String,
    /// Enough for every length up to the bounds.
    pub(crate) workspace_bytes: usize,
    /// One u32, zero before a run; non-zero after it when a token id or target was out of range.
    pub(crate) status_bytes: usize,
    /// The lengths a run is launched with (an `int64` each, in this order, in device memory
    /// passed to every kernel that takes `lengths`) and the greatest each may be.
    pub(crate) lengths: Vec<CpuLength>,
    pub(crate) args: Vec<CpuSlot>,
    pub(crate) outputs: Vec<CpuSlot>,
    pub(crate) kernels: Vec<GpuKernel>,
    /// The `ptxas` that assembled every module (`null` when none was found: no figures then).
    pub(crate) ptxas: Option<String>,
    /// An estimate of one forward pass on an H100 from the sm_90 figures (`null` without ptxas):
    /// not a measurement.
    pub(crate) estimate: Option<GpuEstimate>,
}

#[derive(Serialize)]
pub(crate) struct GpuEstimate {
    pub(crate) gpu: tttc_ptx::estimate::Gpu,
    pub(crate) seconds: f64,
    pub(crate) launches: u64,
    /// Seconds by what bounds each kernel.
    pub(crate) seconds_by_bound: BTreeMap<&'static str, f64>,
}

#[derive(Serialize)]
pub(crate) struct GpuKernel {
    pub(crate) name: String,
    /// Every parameter is a `.u64` global pointer, in this order.
    pub(crate) params: Vec<String>,
    pub(crate) shared_bytes: usize,
    /// In one forward pass: launches, FLOPs and bytes of global memory moved.
    #[serde(flatten)]
    pub(crate) work: tttc_ptx::model::Work,
    /// `ptxas -v` per target: registers, spills, stack and shared memory.
    pub(crate) ptxas: BTreeMap<&'static str, tttc_ptx::ptxas::Figures>,
    /// Occupancy and time on an H100 (an estimate; absent without ptxas figures).
    pub(crate) h100: Option<tttc_ptx::estimate::KernelEstimate>,
}

/// The compiled model (docs/cpu-model.md): its entry points, at the manifest's shapes.
#[derive(Serialize)]
pub(crate) struct CpuModel {
    pub(crate) object: &'static str,
    pub(crate) header: &'static str,
    /// The lengths every entry point takes (in `lengths`, in this order) and the greatest each
    /// may be; a length compiled at 1 is not among them.
    pub(crate) lengths: Vec<CpuLength>,
    pub(crate) entries: Vec<CpuEntry>,
    pub(crate) target: String,
}

#[derive(Serialize)]
pub(crate) struct CpuLength {
    pub(crate) name: String,
    pub(crate) max: usize,
}

/// One exported function: `int32_t {symbol}(const int64_t *lengths, const void *const *args,
/// void *const *outputs, void *workspace)`.
#[derive(Serialize)]
pub(crate) struct CpuEntry {
    pub(crate) name: String,
    pub(crate) symbol: String,
    pub(crate) about: String,
    pub(crate) workspace_bytes: usize,
    /// What one call computes and moves, counted on its schedule (not estimated from the graph).
    pub(crate) flops: u64,
    pub(crate) bytes_moved: u64,
    pub(crate) args: Vec<CpuSlot>,
    pub(crate) outputs: Vec<CpuSlot>,
    pub(crate) kernels: usize,
    pub(crate) functions: usize,
}

#[derive(Serialize)]
pub(crate) struct CpuSlot {
    pub(crate) name: String,
    pub(crate) dtype: &'static str,
    /// Each axis: its length, or the C expression of the lengths it is (`"T"`, `"T-1"`).
    pub(crate) shape: Vec<tttc_ir::Size>,
}

impl From<&tttc_codegen_cpu::aot::Slot> for CpuSlot {
    fn from(s: &tttc_codegen_cpu::aot::Slot) -> Self {
        CpuSlot { name: s.name.clone(), dtype: s.dtype.name(), shape: s.shape.clone() }
    }
}

#[derive(Serialize)]
pub(crate) struct Fusion {
    /// Top-level nodes of the graph the `fuse` pass received (each one a kernel of its own).
    pub(crate) regions_before: usize,
    /// Top-level nodes after it: fused regions, scans and plain nodes.
    pub(crate) regions_after: usize,
    pub(crate) fused_regions: usize,
    pub(crate) scans: usize,
    pub(crate) plain_nodes: usize,
    /// Bytes of the values materialised at the top level, before and after fusion.
    pub(crate) intermediate_bytes_before: u64,
    pub(crate) intermediate_bytes_after: u64,
    /// The part of both that scan bodies materialise per iteration (fusion leaves scan bodies
    /// alone: each is already one kernel per step).
    pub(crate) scan_body_intermediate_bytes: u64,
    /// Bytes read and written by the top-level nodes, before and after fusion.
    pub(crate) bytes_moved_before: u64,
    pub(crate) bytes_moved_after: u64,
}

#[derive(Serialize)]
pub(crate) struct ModelInfo {
    pub(crate) path: String,
    pub(crate) model_type: String,
    pub(crate) graph: String,
    pub(crate) parameters: u64,
    pub(crate) parameter_bytes: u64,
}

#[derive(Serialize)]
pub(crate) struct Totals {
    pub(crate) flops: u64,
    pub(crate) bytes_moved: u64,
    pub(crate) intermediate_bytes: u64,
    /// Nodes whose op has no FLOP rule (counted as 0 FLOPs).
    pub(crate) unestimated_nodes: u64,
}

impl From<Cost> for Totals {
    fn from(c: Cost) -> Totals {
        Totals { flops: c.flops, bytes_moved: c.bytes, intermediate_bytes: c.intermediate_bytes, unestimated_nodes: c.unestimated }
    }
}

#[derive(Serialize)]
pub(crate) struct Stage {
    pub(crate) ir: String,
    pub(crate) nodes: usize,
    pub(crate) totals: Totals,
}

#[derive(Serialize)]
pub(crate) struct PassEntry {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    pub(crate) ir: String,
    pub(crate) seconds: f64,
    pub(crate) nodes_before: usize,
    pub(crate) nodes_after: usize,
    /// What the pass reported (for dual-form: per scan, what was derived and the e-graph's size
    /// and saturation time).
    pub(crate) notes: Vec<String>,
    pub(crate) totals: Totals,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Region {
    Fused(FusedRegion),
    Scan(ScanRegion),
    Other(OtherRegion),
}

#[derive(Serialize)]
pub(crate) struct FusedRegion {
    /// Position of the fused node among the final graph's top-level nodes.
    pub(crate) node: usize,
    /// Its results as named in the final IR.
    pub(crate) results: String,
    pub(crate) body: String,
    /// Nodes inside the region.
    pub(crate) nodes: usize,
    /// The ops it contains, by name, with their counts.
    pub(crate) ops: BTreeMap<&'static str, usize>,
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    #[serde(flatten)]
    pub(crate) totals: Totals,
}

#[derive(Serialize)]
pub(crate) struct ScanRegion {
    /// Position of the scan among the final graph's top-level nodes.
    pub(crate) node: usize,
    /// Its results as named in the final IR (`%149, %150, %151`).
    pub(crate) results: String,
    pub(crate) body: String,
    pub(crate) axis: usize,
    pub(crate) chunk: usize,
    pub(crate) iterations: u64,
    /// Nodes of the body (nested bodies included).
    pub(crate) body_nodes: usize,
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    #[serde(flatten)]
    pub(crate) totals: Totals,
}

#[derive(Serialize)]
pub(crate) struct OtherRegion {
    /// How many top-level nodes are neither fused regions nor scans.
    pub(crate) nodes: usize,
    #[serde(flatten)]
    pub(crate) totals: Totals,
}

/// The graph the `fuse` pass received and the one it made, compared (None when the pipeline has
/// no `fuse` pass).
pub(crate) fn fusion(input: &Graph, results: &[tttc_passes::PassResult], env: &DimEnv) -> Result<Option<Fusion>> {
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
pub(crate) fn regions(g: &Graph, env: &DimEnv) -> Result<Vec<Region>> {
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
