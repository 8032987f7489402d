//! The first half of the lowering, before sizes are bound: from a graph to the steps that
//! execute it. Runs of elementwise ops of one shape become kernels (see [`crate::elementwise`];
//! several runs stay open at once, and a step that reads none of a run's values goes before its
//! kernel instead of ending it), matrix products read transposes and unit reshapes as views,
//! fused regions are planned as the ops they hold, scans get plans of their own for their bodies
//! (a scan whose lanes stay apart is split for the threads), and every other op (data movement,
//! index math, constants) is left for [`crate::schedule`] to lower once the sizes are bound.

use std::collections::HashMap;

use tttc_ir::{swaps_last_two, DType, Dim, Graph, Node, Op, ValueId};

use crate::elementwise::{Expr, KernelSpec};

pub enum Step {
    /// A node the schedule lowers by its op (data movement, index math, constants).
    Op(usize),
    /// A matrix product reading each operand from its source as [`Read`] says (the transposes
    /// it reads through are never materialised).
    MatMul(usize, [(ValueId, Read); 2]),
    Reduce(usize),
    Kernel(KernelStep),
    Scan(usize, ScanPlan),
    /// Attention's softmax between two products, as one step (see `attention.rs`).
    Attention(Box<crate::attention::Chain>),
    /// Its backward, as one step.
    AttentionBackward(Box<crate::attention::Backward>),
    /// A scan that is Mamba's selective scan, as one step (see `recurrence.rs`).
    Recurrence(usize, crate::recurrence::Recurrence),
    /// A softmax cross-entropy's row statistics, as one step (see `cross_entropy.rs`; its
    /// `backward` is a step of its own).
    CrossEntropy(Box<crate::cross_entropy::Forward>),
    /// Its backward, as one step.
    CrossEntropyBackward(Box<crate::cross_entropy::Backward>),
}

impl Step {
    /// The values the step reads (a product's operands at their sources).
    pub fn reads(&self, g: &Graph) -> Vec<ValueId> {
        match self {
            Step::Op(i) | Step::Reduce(i) | Step::Scan(i, _) | Step::Recurrence(i, _) => g.nodes[*i].inputs.clone(),
            Step::MatMul(_, operands) => operands.iter().map(|(v, _)| *v).collect(),
            Step::Kernel(k) => k.inputs.clone(),
            Step::Attention(c) => vec![c.q.0, c.k.0, c.v.0],
            Step::AttentionBackward(b) => vec![b.q.0, b.k.0, b.v.0, b.d_out.0, b.lse, b.row],
            Step::CrossEntropy(r) => vec![r.x, r.target],
            Step::CrossEntropyBackward(b) => vec![b.x, b.target, b.shift, b.a, b.c],
        }
    }
}

/// Chains of ops a backend runs with code of its own, each as one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Native {
    /// Attention's softmax between two products, and its backward (`attention.rs`).
    pub attention: bool,
    /// Mamba's selective scan (`recurrence.rs`).
    pub recurrences: bool,
    /// A softmax cross-entropy's row statistics and its backward (`cross_entropy.rs`).
    pub cross_entropy: bool,
}

impl Native {
    /// Every chain as its ops.
    pub const NONE: Native = Native { attention: false, recurrences: false, cross_entropy: false };
}

/// How a product reads an operand from its source's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// As stored (a reshape that only adds leading axes of length 1 included).
    Stored,
    /// With its last two axes swapped.
    Transposed,
    /// With its axes permuted: the operand's axis i is the source's `perm[i]` (a position-major
    /// KV cache read head by head, its keys as columns too).
    Permuted(Vec<usize>),
}

impl Read {
    pub fn transposed_if(t: bool) -> Read {
        if t {
            Read::Transposed
        } else {
            Read::Stored
        }
    }
}

/// How a scan runs: its body planned whole, or as narrower scans over slices of its lane axis,
/// one per thread.
pub enum ScanPlan {
    Whole(Box<Body>),
    Lanes(Box<LaneScan>),
}

/// A scan split into `parts` lanes (see `lanes.rs`).
pub struct LaneScan {
    pub parts: usize,
    /// Per scan operand: its lane axis, or `None` when it is the same for every lane.
    pub operand_lanes: Vec<Option<usize>>,
    /// Per scan result: its lane axis, or `None` for an accumulator (`lanes::LaneSplit`).
    pub result_lanes: Vec<Option<usize>>,
    /// The scan with the narrow body, and that body's plan.
    pub scan: tttc_ir::Scan,
    pub body: Body,
}

/// A kernel launch: `kernel` (an index into the program's compiled kernels) over the elements of
/// `shape`, reading `inputs` (broadcast to it) and writing `outputs`.
pub struct KernelStep {
    pub kernel: usize,
    pub shape: Vec<Dim>,
    pub inputs: Vec<ValueId>,
    /// Per input: read once per row (see `KernelSpec::splat`).
    pub splat: Vec<bool>,
    pub outputs: Vec<ValueId>,
}

/// A graph with its steps.
pub struct Body {
    pub graph: Graph,
    pub steps: Vec<Step>,
}

/// How much of a program runs as generated code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub kernels: usize,
    /// Elementwise graph nodes inside kernels.
    pub kernel_nodes: usize,
    pub matmuls: usize,
    pub reductions: usize,
    /// Nodes lowered one by one (data movement, index math, constants).
    pub other_nodes: usize,
    /// Scans that run as several narrower scans in parallel (see `lanes.rs`).
    pub lane_split_scans: usize,
    /// Attention chains and their backwards run as one step each (see `attention.rs`).
    pub attention: usize,
    pub attention_backward: usize,
    /// Selective scans run as one step each (see `recurrence.rs`).
    pub recurrences: usize,
    /// Softmax cross-entropies' row statistics and backwards run as one step each (see
    /// `cross_entropy.rs`).
    pub cross_entropy: usize,
}

/// Plans `graph`, appending the specs of its kernels (and its bodies') to `specs`; scans that
/// keep their lanes apart are split for `threads` threads (not at all for one); with
/// the chains `native` names become one step each (for a backend that runs them).
pub fn plan(graph: &Graph, threads: usize, native: Native, specs: &mut Vec<KernelSpec>, stats: &mut PlanStats) -> Body {
    let graph = &without_regions(graph);
    let mut p = Planner { graph, threads, native, specs, stats, steps: Vec::new(), consts: HashMap::new(), groups: Vec::new(), users: users(graph) };
    let views = operand_views(graph, &p.users);
    let (mut chains, mut backwards) = if native.attention { crate::attention::find(graph, &p.users, &views) } else { Default::default() };
    let mut inside_chains: std::collections::HashSet<usize> =
        chains.values().flat_map(|c| c.inner.iter().copied()).chain(backwards.values().flat_map(|b| b.inner.iter().copied())).collect();
    // A cross-entropy whose nodes an attention chain takes is left to its ops.
    let mut entropies = if native.cross_entropy { crate::cross_entropy::find(graph, &p.users) } else { Vec::new() };
    entropies.retain(|f| !f.nodes().any(|i| inside_chains.contains(&i) || chains.contains_key(&i) || backwards.contains_key(&i)));
    inside_chains.extend(entropies.iter().flat_map(|r| r.inner.iter().copied()));
    let mut entropy_backwards: HashMap<usize, crate::cross_entropy::Backward> = HashMap::new();
    let mut entropies: HashMap<usize, crate::cross_entropy::Forward> = entropies
        .into_iter()
        .map(|mut r| {
            if let Some(b) = r.backward.take() {
                entropy_backwards.insert(b.node, b);
            }
            (r.node, r)
        })
        .collect();
    let chain_nodes =
        inside_chains.iter().chain(chains.keys()).chain(backwards.keys()).chain(entropies.keys()).chain(entropy_backwards.keys()).copied().collect();
    let permuted = permuted_views(graph, &p.users, &chain_nodes);
    for (i, node) in graph.nodes.iter().enumerate() {
        let result = node.outputs.first().copied().unwrap_or(ValueId(u32::MAX));
        if views.contains_key(&result) || permuted.contains_key(&result) || inside_chains.contains(&i) {
            continue;
        }
        // A native chain runs at the node where its values are all defined (attention's at its
        // last, a cross-entropy's rows at their maximum).
        let native = if let Some(chain) = chains.remove(&i) {
            p.stats.attention += 1;
            Some(Step::Attention(Box::new(chain)))
        } else if let Some(backward) = backwards.remove(&i) {
            p.stats.attention_backward += 1;
            Some(Step::AttentionBackward(Box::new(backward)))
        } else if let Some(rows) = entropies.remove(&i) {
            p.stats.cross_entropy += 1;
            Some(Step::CrossEntropy(Box::new(rows)))
        } else if let Some(backward) = entropy_backwards.remove(&i) {
            p.stats.cross_entropy += 1;
            Some(Step::CrossEntropyBackward(Box::new(backward)))
        } else {
            None
        };
        if let Some(step) = native {
            p.close_all();
            p.steps.push(step);
            continue;
        }
        let f32_in = |k: usize| graph.ty(node.inputs[k]).dtype == DType::F32;
        match &node.op {
            Op::Const { value, dtype: DType::F32 } if graph.ty(node.outputs[0]).shape.is_empty() => {
                // Materialised for the steps that read it, inlined into the kernels that do.
                p.consts.insert(node.outputs[0], *value as f32);
                p.steps.push(Step::Op(i));
                p.stats.other_nodes += 1;
            }
            Op::Unary(_) | Op::Binary(_) | Op::Broadcast { .. } if (0..node.inputs.len()).all(f32_in) => {
                if !p.join(i) {
                    p.close_makers(&node.inputs);
                    p.steps.push(Step::Op(i));
                    p.stats.other_nodes += 1;
                }
            }
            op => {
                // The values it reads, through the views it reads them by, are stored first.
                let sources: Vec<ValueId> =
                    node.inputs.iter().map(|v| views.get(v).map(|&(src, _)| src).or_else(|| permuted.get(v).map(|(src, _)| *src)).unwrap_or(*v)).collect();
                p.close_makers(&sources);
                let step = match op {
                    Op::MatMul if f32_in(0) => {
                        p.stats.matmuls += 1;
                        let operand = |v: ValueId| match (views.get(&v), permuted.get(&v)) {
                            (Some(&(src, t)), _) => (src, Read::transposed_if(t)),
                            (None, Some((src, perm))) => (*src, Read::Permuted(perm.clone())),
                            (None, None) => (v, Read::Stored),
                        };
                        Step::MatMul(i, [operand(node.inputs[0]), operand(node.inputs[1])])
                    }
                    Op::Reduce { .. } if f32_in(0) => {
                        p.stats.reductions += 1;
                        Step::Reduce(i)
                    }
                    Op::Scan(s) => match crate::recurrence::find(s).filter(|_| p.native.recurrences) {
                        Some(recurrence) => {
                            p.stats.recurrences += 1;
                            Step::Recurrence(i, recurrence)
                        }
                        None => Step::Scan(
                            i,
                            match crate::lanes::split(s, p.threads) {
                                Some(split) => {
                                    p.stats.lane_split_scans += 1;
                                    let body = plan(&split.body, p.threads, p.native, p.specs, p.stats);
                                    let scan = tttc_ir::Scan { body: split.body, ..(**s).clone() };
                                    let (parts, operand_lanes, result_lanes) = (split.parts, split.operand_lanes, split.result_lanes);
                                    ScanPlan::Lanes(Box::new(LaneScan { parts, operand_lanes, result_lanes, scan, body }))
                                }
                                None => ScanPlan::Whole(Box::new(plan(&s.body, p.threads, p.native, p.specs, p.stats))),
                            },
                        ),
                    },
                    _ => {
                        p.stats.other_nodes += 1;
                        Step::Op(i)
                    }
                };
                p.steps.push(step);
            }
        }
    }
    p.close_all();
    Body { graph: graph.clone(), steps: p.steps }
}

/// `g` with each fused region's body in place of its node. A region is a description of what
/// may run as one kernel, and the planner does that from the ops themselves: with the regions'
/// walls gone its kernels span them, and a product sees the transposes and reshapes of its
/// operands even where the `fuse` pass put them in another region (a weight gradient's `xᵀ`, an
/// epilogue of the region that computed `x`).
fn without_regions(g: &Graph) -> Graph {
    let mut flat = Graph { name: g.name.clone(), types: g.types.clone(), args: g.args.clone(), nodes: Vec::new(), outputs: g.outputs.clone() };
    // The values a region's results stand for, once its body is in place.
    let mut inlined: HashMap<ValueId, ValueId> = HashMap::new();
    let resolve = |inlined: &HashMap<ValueId, ValueId>, v: ValueId| inlined.get(&v).copied().unwrap_or(v);
    for n in &g.nodes {
        let inputs: Vec<ValueId> = n.inputs.iter().map(|&v| resolve(&inlined, v)).collect();
        let Op::Fused(f) = &n.op else {
            flat.nodes.push(Node { op: n.op.clone(), inputs, outputs: n.outputs.clone() });
            continue;
        };
        let mut map: HashMap<ValueId, ValueId> = f.body.args.iter().map(|a| a.value).zip(inputs).collect();
        for bn in &f.body.nodes {
            let mut outputs = Vec::with_capacity(bn.outputs.len());
            for &o in &bn.outputs {
                flat.types.push(f.body.ty(o).clone());
                let v = ValueId((flat.types.len() - 1) as u32);
                map.insert(o, v);
                outputs.push(v);
            }
            flat.nodes.push(Node { op: bn.op.clone(), inputs: bn.inputs.iter().map(|v| map[v]).collect(), outputs });
        }
        for ((_, inner), &outer) in f.body.outputs.iter().zip(&n.outputs) {
            inlined.insert(outer, map[inner]);
        }
    }
    for (_, v) in &mut flat.outputs {
        *v = resolve(&inlined, *v);
    }
    flat
}

/// Values that only matrix products read and that need not exist: transposes of the last two
/// axes (the products read the source with swapped strides) and reshapes that only add leading
/// axes of length 1 to a matrix (batch broadcasting reads the source as it is), when each product's other
/// operand has at least as many axes, so that the product's shape stays the same; and such a
/// reshape of such a transpose (a gradient's `xᵀ` given a batch axis), when the reshapes are all
/// that read the transpose. By result: the source, and whether it is read transposed.
fn operand_views(g: &Graph, users: &[Vec<usize>]) -> HashMap<ValueId, (ValueId, bool)> {
    let mut views = direct_views(g, users);
    for n in &g.nodes {
        let Op::Transpose { perm } = &n.op else { continue };
        let (t, src) = (n.outputs[0], n.inputs[0]);
        let readers = &users[t.index()];
        let through_reshapes = swaps_last_two(perm)
            && g.ty(src).dtype == DType::F32
            && !g.outputs.iter().any(|(_, v)| *v == t)
            && !readers.is_empty()
            && readers.iter().all(|&u| matches!(g.nodes[u].op, Op::Reshape { .. }) && views.get(&g.nodes[u].outputs[0]) == Some(&(t, false)));
        if through_reshapes {
            for &u in readers {
                views.insert(g.nodes[u].outputs[0], (src, true));
            }
            views.insert(t, (src, true));
        }
    }
    views
}

/// [`operand_views`] of one node each: transposes and reshapes read directly by products.
fn direct_views(g: &Graph, users: &[Vec<usize>]) -> HashMap<ValueId, (ValueId, bool)> {
    let outputs: std::collections::HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    // A reshape's result may itself be read through its source: never count on its rank.
    let reshaped: std::collections::HashSet<ValueId> = g.nodes.iter().filter(|n| matches!(n.op, Op::Reshape { .. })).map(|n| n.outputs[0]).collect();
    g.nodes
        .iter()
        .filter_map(|n| {
            let (v, src) = (*n.outputs.first()?, *n.inputs.first()?);
            let readers = &users[v.index()];
            let only_matmuls = !readers.is_empty() && readers.iter().all(|&u| matches!(g.nodes[u].op, Op::MatMul));
            if !only_matmuls || outputs.contains(&v) || g.ty(src).dtype != DType::F32 {
                return None;
            }
            match &n.op {
                Op::Transpose { perm } if swaps_last_two(perm) => Some((v, (src, true))),
                Op::Reshape { shape } => {
                    let from = &g.ty(src).shape;
                    let extra = shape.len().checked_sub(from.len())?;
                    // The source must be a matrix itself: a vector given a row axis is not one.
                    let unit_prefix = from.len() >= 2 && shape[..extra].iter().all(Dim::is_one) && shape[extra..] == from[..];
                    let others_wide =
                        readers.iter().all(|&u| g.nodes[u].inputs.iter().all(|&o| o == v || (g.ty(o).rank() >= shape.len() && !reshaped.contains(&o))));
                    (unit_prefix && others_wide).then_some((v, (src, false)))
                }
                _ => None,
            }
        })
        .collect()
}

/// Transposes of three or more axes that only matrix products read (none of them an attention
/// chain's node, `chains`): the products read the source through permuted strides. By result:
/// the source and the permutation.
fn permuted_views(g: &Graph, users: &[Vec<usize>], chains: &std::collections::HashSet<usize>) -> HashMap<ValueId, (ValueId, Vec<usize>)> {
    g.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let Op::Transpose { perm } = &n.op else { return None };
            let (v, src) = (n.outputs[0], n.inputs[0]);
            let readers = &users[v.index()];
            let only_products = !readers.is_empty() && readers.iter().all(|&u| matches!(g.nodes[u].op, Op::MatMul) && !chains.contains(&u));
            let usable = perm.len() >= 3 && only_products && !chains.contains(&i) && g.ty(src).dtype == DType::F32 && !g.outputs.iter().any(|(_, o)| *o == v);
            usable.then(|| (v, (src, perm.clone())))
        })
        .collect()
}

/// For each value, the nodes that read it.
fn users(g: &Graph) -> Vec<Vec<usize>> {
    let mut u = vec![Vec::new(); g.types.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for v in &n.inputs {
            u[v.index()].push(i);
        }
    }
    u
}

/// An elementwise run being collected.
struct Group {
    shape: Vec<Dim>,
    spec: KernelSpec,
    inputs: Vec<ValueId>,
    /// Graph value → its entry in `spec.exprs`.
    at: HashMap<ValueId, usize>,
    nodes: Vec<usize>,
    /// The values its nodes compute.
    made: std::collections::HashSet<ValueId>,
}

struct Planner<'a> {
    graph: &'a Graph,
    threads: usize,
    native: Native,
    specs: &'a mut Vec<KernelSpec>,
    stats: &'a mut PlanStats,
    steps: Vec<Step>,
    consts: HashMap<ValueId, f32>,
    /// The elementwise runs still open, each of its own shape's or apart from the others': none
    /// reads a value another computes (a run that one reads is closed first). Steps that read
    /// none of a run's values go before its kernel, so a scalar computed between two ops of a
    /// run does not split it.
    groups: Vec<Group>,
    users: Vec<Vec<usize>>,
}

impl Planner<'_> {
    /// Adds node `i` to an open run of its result's shape (the one computing one of its
    /// operands, else the latest), or to a new run, when every operand is a run value, a constant
    /// or a value that broadcasts to the run's shape in a way known from the types alone. The
    /// other runs computing its operands are closed first.
    fn join(&mut self, i: usize) -> bool {
        let node = &self.graph.nodes[i];
        let shape = self.graph.ty(node.outputs[0]).shape.clone();
        let reads = |g: &Group| node.inputs.iter().any(|v| g.made.contains(v));
        let fits = |g: Option<&Group>| {
            node.inputs
                .iter()
                .all(|v| g.is_some_and(|g| g.at.contains_key(v)) || self.consts.contains_key(v) || splat_kind(&self.graph.ty(*v).shape, &shape).is_some())
        };
        let same_shape = |g: &Group| g.shape == shape && fits(Some(g));
        let target = self.groups.iter().rposition(|g| same_shape(g) && reads(g)).or_else(|| self.groups.iter().rposition(same_shape));
        if target.is_none() && !fits(None) {
            return false;
        }
        let mut g = match target {
            Some(k) => self.groups.remove(k),
            None => {
                let spec = KernelSpec { exprs: Vec::new(), splat: Vec::new(), outputs: Vec::new() };
                Group { shape, spec, inputs: Vec::new(), at: HashMap::new(), nodes: Vec::new(), made: Default::default() }
            }
        };
        // The run taken out, the others computing its operands are closed first.
        self.close_makers(&node.inputs);
        let operands: Vec<usize> = node.inputs.iter().map(|&v| self.operand(&mut g, v)).collect();
        let e = match &node.op {
            Op::Unary(u) => Some(Expr::Unary(*u, operands[0])),
            Op::Binary(b) => Some(Expr::Binary(*b, operands[0], operands[1])),
            // A broadcast is its operand read with the run's strides.
            _ => None,
        };
        let at = match e {
            Some(e) => {
                g.spec.exprs.push(e);
                g.spec.exprs.len() - 1
            }
            None => operands[0],
        };
        g.at.insert(node.outputs[0], at);
        g.made.insert(node.outputs[0]);
        g.nodes.push(i);
        self.groups.push(g);
        true
    }

    /// The entry of `v` in the run: a run value, an inlined constant, or an input (added once).
    fn operand(&self, g: &mut Group, v: ValueId) -> usize {
        if let Some(&k) = g.at.get(&v) {
            return k;
        }
        let e = match self.consts.get(&v) {
            Some(&c) => Expr::Const(c),
            None => {
                g.inputs.push(v);
                g.spec.splat.push(splat_kind(&self.graph.ty(v).shape, &g.shape).expect("checked by join"));
                Expr::Input(g.inputs.len() - 1)
            }
        };
        g.spec.exprs.push(e);
        g.at.insert(v, g.spec.exprs.len() - 1);
        g.spec.exprs.len() - 1
    }

    /// Closes the runs that compute any of `values`.
    fn close_makers(&mut self, values: &[ValueId]) {
        while let Some(k) = self.groups.iter().position(|g| values.iter().any(|v| g.made.contains(v))) {
            let g = self.groups.remove(k);
            self.close(g);
        }
    }

    /// Closes every open run (they read none of each other's values: any order).
    fn close_all(&mut self) {
        for g in std::mem::take(&mut self.groups) {
            self.close(g);
        }
    }

    /// Ends a run: a kernel storing the run values read after it.
    fn close(&mut self, mut g: Group) {
        let inside: std::collections::HashSet<usize> = g.nodes.iter().copied().collect();
        let graph_outputs: std::collections::HashSet<ValueId> = self.graph.outputs.iter().map(|(_, v)| *v).collect();
        let mut outputs = Vec::new();
        for &i in &g.nodes {
            let v = self.graph.nodes[i].outputs[0];
            let read_later = self.users[v.index()].iter().any(|u| !inside.contains(u)) || graph_outputs.contains(&v);
            if read_later {
                outputs.push(v);
                g.spec.outputs.push(g.at[&v]);
            }
        }
        if outputs.is_empty() {
            return;
        }
        self.stats.kernels += 1;
        self.stats.kernel_nodes += g.nodes.len();
        let splat = g.spec.splat.clone();
        self.specs.push(g.spec);
        self.steps.push(Step::Kernel(KernelStep { kernel: self.specs.len() - 1, shape: g.shape, inputs: g.inputs, splat, outputs }));
    }
}

/// Whether a value of shape `from` broadcast to `to` (NumPy rules, aligned at the right) is read
/// once per row (`Some(true)`: one element along the last axis) or per element (`Some(false)`);
/// `None` when the types do not show that it broadcasts.
fn splat_kind(from: &[Dim], to: &[Dim]) -> Option<bool> {
    if from.len() > to.len() {
        return None;
    }
    let lead = to.len() - from.len();
    for (k, d) in from.iter().enumerate() {
        if *d != to[lead + k] && !d.is_one() {
            return None;
        }
    }
    match (from.last(), to.last()) {
        (_, None) => Some(false),
        (None, Some(_)) => Some(true),
        (Some(f), Some(t)) => Some(f != t),
    }
}
