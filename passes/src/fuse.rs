//! Operator fusion: the `fuse` pass partitions the top-level graph into regions and wraps each
//! region of more than one node in a `fused` node, whose body is the region's nodes: what should
//! run as one kernel, the values inside never materialised. The backends deliver part of that
//! (docs/passes.md, "What the backends do with regions"): the schedule inlines the body, runs of
//! same-shape elementwise ops become one kernel, a product reads transposes as strides, and on the
//! GPU a product's elementwise epilogue is applied before its store; the CPU stores it first.
//!
//! Rules, over the top-level node list:
//!
//! * Every node with a body (`scan`, and `grad` or `fused` should one be left) is a region by
//!   itself. A scan's body is already the per-step fused kernel (the TTT mini-batch step with the
//!   inner state carried across mini-batches, Mamba's recurrence step); nothing is fused inside it.
//! * A `matmul` or a `gather` (embedding) is an **anchor**: it starts a new region, and the
//!   elementwise, reduction and data-movement ops that follow it in node order join it as its
//!   epilogue (bias, activation, residual add, the next norm's reductions, …) until the next
//!   anchor or scan. Nodes before the first anchor, or after a scan, form a region of their own.
//! * Nodes that depend on graph arguments alone (a weight's transpose or reshape, a constant, a
//!   slice of the token ids) are first moved down to just before their first user (a topological
//!   reordering). Those that end up right before an anchor join the anchor's region as its
//!   prologue: a transposed weight is read by the matmul's kernel, not materialised.
//! * Regions are contiguous runs of the (reordered) node list, so topological order holds. A
//!   region's body arguments are the values it reads from outside (graph arguments, earlier
//!   regions' results), in order of first use; its outputs are the values it defines that later
//!   nodes or graph outputs use, in definition order. A one-node region stays a plain node.
//! * Operand-free nodes (`const`, `iota`) are rematerialised: a region that uses one defined
//!   elsewhere gets its own copy instead of an argument, so a scalar constant shared by many
//!   layers is never passed between kernels. Such a node stays at the top level only where a
//!   plain node, a scan or a graph output uses it.

use anyhow::{Context, Result};
use tttc_ir::{ArgKind, Graph, Node, Op, ValueId};

use crate::manager::Rewrite;

/// What [`fuse`] made of a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// Top-level nodes before the pass.
    pub nodes_before: usize,
    /// `fused` nodes made.
    pub fused: usize,
    /// Top-level nodes moved into them.
    pub fused_nodes: usize,
    /// Top-level scans (each a region of its own).
    pub scans: usize,
    /// Other nodes left alone (one-node regions).
    pub plain: usize,
}

impl FuseReport {
    /// Regions after the pass: the fused regions, the scans and the plain nodes (the top-level
    /// nodes of the fused graph).
    pub fn regions(&self) -> usize {
        self.fused + self.scans + self.plain
    }
}

/// The `fuse` pass: [`fuse_with_report`] without the report.
pub fn fuse(g: &Graph) -> Result<Graph> {
    Ok(fuse_with_report(g)?.0)
}

/// The `fuse` pass for the pass manager: the fused graph and one note.
pub(crate) fn fuse_with_notes(g: &Graph) -> Result<Rewrite> {
    let (graph, r) = fuse_with_report(g)?;
    let note = format!(
        "{} top-level nodes -> {} regions: {} fused ({} nodes), {} scans, {} plain",
        r.nodes_before,
        r.regions(),
        r.fused,
        r.fused_nodes,
        r.scans,
        r.plain
    );
    Ok(Rewrite { graph, notes: vec![note] })
}

/// Ops that start a region: the big data-parallel kernels whose epilogues the cheap ops become.
fn is_anchor(op: &Op) -> bool {
    matches!(op, Op::MatMul | Op::Gather { .. } | Op::ScatterAdd { .. })
}

/// Partitions `g`'s top-level nodes into regions (see the module documentation) and wraps each
/// region of two or more nodes in a `fused` node.
pub fn fuse_with_report(g: &Graph) -> Result<(Graph, FuseReport)> {
    let producer = producers(g);
    let arg_only = argument_only(g, &producer);
    let order = sink_argument_only(g, &producer, &arg_only);
    let runs = partition(g, &order, &arg_only);

    // Where each value is used last, in the new order, and whether a graph output needs it.
    let mut last_use = vec![None::<usize>; g.types.len()];
    for (pos, &i) in order.iter().enumerate() {
        for v in &g.nodes[i].inputs {
            last_use[v.index()] = Some(pos);
        }
    }
    let mut is_output = vec![false; g.types.len()];
    for (_, v) in &g.outputs {
        is_output[v.index()] = true;
    }

    // Operand-free nodes are copied into each region that uses them; at the top level a value
    // of theirs is needed only by a graph output, a plain node or a scan.
    let remat = |v: ValueId| producer[v.index()].is_some_and(|i| rematerialised(&g.nodes[i]));
    let mut needed_at_top = is_output.clone();
    {
        let mut start = 0;
        for &run in &runs {
            if run == 1 {
                for v in &g.nodes[order[start]].inputs {
                    needed_at_top[v.index()] = true;
                }
            }
            start += run;
        }
    }

    let mut out = Graph::new(&g.name);
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for a in &g.args {
        map[a.value.index()] = Some(out.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    let at = |map: &[Option<ValueId>], v: &ValueId| map[v.index()].context("operand used before it is defined");

    let mut report = FuseReport { nodes_before: g.nodes.len(), ..FuseReport::default() };
    let mut start = 0;
    for run in runs {
        let end = start + run;
        let nodes: Vec<&Node> = order[start..end].iter().map(|&i| &g.nodes[i]).collect();
        if let [node] = nodes[..] {
            if rematerialised(node) && !node.outputs.iter().any(|v| needed_at_top[v.index()]) {
                // Every user has its own copy.
                start = end;
                continue;
            }
            let ins: Vec<ValueId> = node.inputs.iter().map(|v| at(&map, v)).collect::<Result<_>>()?;
            let outs = out.push(node.op.clone(), &ins).with_context(|| format!("copying {}", node.op.name()))?;
            for (o, v) in node.outputs.iter().zip(outs) {
                map[o.index()] = Some(v);
            }
            if matches!(node.op, Op::Scan(_)) {
                report.scans += 1;
            } else {
                report.plain += 1;
            }
        } else {
            let used_after = |v: ValueId| {
                if remat(v) {
                    needed_at_top[v.index()]
                } else {
                    is_output[v.index()] || last_use[v.index()].is_some_and(|p| p >= end)
                }
            };
            let (body, inputs, outputs) = region_body(g, &producer, &nodes, report.fused, used_after)?;
            let ins: Vec<ValueId> = inputs.iter().map(|v| at(&map, v)).collect::<Result<_>>()?;
            let outs = out.fused(body, &ins).context("building a fused region")?;
            for (o, v) in outputs.iter().zip(outs) {
                map[o.index()] = Some(v);
            }
            report.fused += 1;
            report.fused_nodes += nodes.len();
        }
        start = end;
    }
    for (name, v) in &g.outputs {
        out.output(name, at(&map, v)?);
    }
    Ok((out, report))
}

/// The node order with every argument-only node (one that reads graph arguments and other
/// argument-only nodes alone: weight transposes, constants, slices of the token ids) moved down
/// to just before its first user. Anchors and nodes with bodies stay where they are.
fn sink_argument_only(g: &Graph, producer: &[Option<usize>], arg_only: &[bool]) -> Vec<usize> {
    let mut emitted = vec![false; g.nodes.len()];
    let mut order = Vec::with_capacity(g.nodes.len());
    // Emits the deferred producers of `i`'s operands (recursively, operands in order), then `i`.
    fn emit(i: usize, g: &Graph, producer: &[Option<usize>], emitted: &mut [bool], order: &mut Vec<usize>) {
        if emitted[i] {
            return;
        }
        emitted[i] = true;
        for v in &g.nodes[i].inputs {
            if let Some(p) = producer[v.index()] {
                emit(p, g, producer, emitted, order);
            }
        }
        order.push(i);
    }
    for (i, _) in arg_only.iter().enumerate().filter(|(_, &a)| !a) {
        emit(i, g, producer, &mut emitted, &mut order);
    }
    // Argument-only nodes that only graph outputs use (or nothing: dce has not run) go last.
    for i in 0..g.nodes.len() {
        emit(i, g, producer, &mut emitted, &mut order);
    }
    order
}

/// Splits `order` into contiguous regions; returns their lengths.
fn partition(g: &Graph, order: &[usize], arg_only: &[bool]) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut cur = 0usize; // length of the open region
    for (pos, &i) in order.iter().enumerate() {
        let op = &g.nodes[i].op;
        if op.body().is_some() {
            if cur > 0 {
                runs.push(cur);
            }
            runs.push(1);
            cur = 0;
        } else if is_anchor(op) {
            // The argument-only nodes right before the anchor are its prologue.
            let prologue = order[..pos].iter().rev().take(cur).take_while(|&&j| arg_only[j]).count();
            if cur > prologue {
                runs.push(cur - prologue);
            }
            cur = prologue + 1;
        } else {
            cur += 1;
        }
    }
    if cur > 0 {
        runs.push(cur);
    }
    runs
}

/// The body of the region made of `nodes` (the `k`th fused region), the outer values it reads
/// (its operands, in order of first use) and the outer values it defines that are used after it
/// (its results, in definition order).
fn region_body(
    g: &Graph,
    producer: &[Option<usize>],
    nodes: &[&Node],
    k: usize,
    used_after: impl Fn(ValueId) -> bool,
) -> Result<(Graph, Vec<ValueId>, Vec<ValueId>)> {
    let mut defined = vec![false; g.types.len()];
    let mut inputs = Vec::new();
    let mut is_input = vec![false; g.types.len()];
    // Operand-free nodes defined outside the region and used in it: copied in, in order of use.
    let mut copies: Vec<&Node> = Vec::new();
    for n in nodes {
        for v in &n.inputs {
            if defined[v.index()] || is_input[v.index()] {
                continue;
            }
            match producer[v.index()].map(|i| &g.nodes[i]).filter(|p| rematerialised(p)) {
                Some(p) => {
                    copies.push(p);
                    for o in &p.outputs {
                        defined[o.index()] = true;
                    }
                }
                None => {
                    is_input[v.index()] = true;
                    inputs.push(*v);
                }
            }
        }
        for v in &n.outputs {
            defined[v.index()] = true;
        }
    }
    let outputs: Vec<ValueId> = nodes.iter().flat_map(|n| n.outputs.iter().copied()).filter(|&v| used_after(v)).collect();

    let arg_name: Vec<Option<&str>> = {
        let mut names = vec![None; g.types.len()];
        for a in &g.args {
            names[a.value.index()] = Some(a.name.as_str());
        }
        names
    };
    let out_name: Vec<Option<&str>> = {
        let mut names = vec![None; g.types.len()];
        for (name, v) in &g.outputs {
            names[v.index()].get_or_insert(name.as_str());
        }
        names
    };

    let mut body = Graph::new(&format!("region{k}"));
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    let mut taken = std::collections::HashSet::new();
    for (j, &v) in inputs.iter().enumerate() {
        // Graph arguments keep their names (a weight's checkpoint name); other values are x0, x1, …
        let name = unique(arg_name[v.index()].map_or_else(|| format!("x{j}"), str::to_string), &mut taken);
        map[v.index()] = Some(body.arg(&name, ArgKind::Input, g.ty(v).clone()));
    }
    for n in copies.into_iter().chain(nodes.iter().copied()) {
        let ins: Vec<ValueId> = n.inputs.iter().map(|v| map[v.index()].context("region operand")).collect::<Result<_>>()?;
        let outs = body.push(n.op.clone(), &ins).with_context(|| format!("copying {} into a fused region", n.op.name()))?;
        for (o, v) in n.outputs.iter().zip(outs) {
            map[o.index()] = Some(v);
        }
    }
    let mut taken = std::collections::HashSet::new();
    for (j, &v) in outputs.iter().enumerate() {
        // A graph output keeps its name (logits, loss); other results are y0, y1, …
        let name = unique(out_name[v.index()].map_or_else(|| format!("y{j}"), str::to_string), &mut taken);
        body.output(&name, map[v.index()].context("region result")?);
    }
    Ok((body, inputs, outputs))
}

/// For each value of `g`, the index of the node that defines it (None for arguments).
fn producers(g: &Graph) -> Vec<Option<usize>> {
    let mut producer = vec![None; g.types.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for v in &n.outputs {
            producer[v.index()] = Some(i);
        }
    }
    producer
}

/// Which nodes read graph arguments and other such nodes alone (never an anchor or a node with
/// a body).
fn argument_only(g: &Graph, producer: &[Option<usize>]) -> Vec<bool> {
    let mut arg_only = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        arg_only[i] = !is_anchor(&n.op) && n.op.body().is_none() && n.inputs.iter().all(|v| producer[v.index()].is_none_or(|p| arg_only[p]));
    }
    arg_only
}

/// Whether a node is copied into each region that uses it rather than passed in: it has no
/// operands (`const`, `iota`).
fn rematerialised(n: &Node) -> bool {
    n.inputs.is_empty() && n.op.body().is_none()
}

/// `name`, or `name_2`, `name_3`, … when it is taken.
fn unique(name: String, taken: &mut std::collections::HashSet<String>) -> String {
    let mut candidate = name.clone();
    let mut k = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{name}_{k}");
        k += 1;
    }
    candidate
}
