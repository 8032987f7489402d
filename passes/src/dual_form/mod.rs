//! The `dual-form` pass: re-derives the linear algebra of every scan body with equality
//! saturation.
//!
//! Each value of the body that feeds a non-linear op or leaves the body and involves a
//! contraction (a root) is lowered to index notation ([`lower`]); all roots share one e-graph,
//! which general rules saturate ([`ix`]); each root's cheapest term under a FLOP cost model at the
//! scan's chunk size is lifted back to IR ops ([`lift`]) when it is cheaper than the original.
//! For a TTT mini-batch written in primal form (per-token weights `W_i = W₀ − Σ_j η_ij g_j`), the
//! cheapest terms are the dual form: `Σ_a q_ia (Σ_j η_ij k_ja G_jc)` becomes
//! `Σ_j η_ij (Σ_a q_ia k_ja) G_jc`, i.e. `(η ⊙ QKᵀ) G`, without materialising any `W_i`.

mod ix;
mod lift;
mod lower;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use egg::Id;
use tttc_ir::{Dim, Graph, Op, Scan, ValueId};

use lift::Lifter;
use lower::Lowering;

/// E-graph limits per scan body. The node and iteration limits bind (the largest e-graphs reach
/// the node limit in about a second), so what the pass derives does not depend on the machine's
/// speed or load; the time limit is a last resort.
const NODE_LIMIT: usize = 100_000;
const ITER_LIMIT: usize = 30;
const TIME_LIMIT: Duration = Duration::from_secs(30);

/// What the derivation did for one scan body.
#[derive(Clone, Debug)]
pub struct DualFormReport {
    pub roots: usize,
    pub rewritten: usize,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub iterations: usize,
    pub saturated: bool,
    pub seconds: f64,
    /// FLOPs of the roots per chunk (at the chunk size, batch 1) before and after.
    pub flops_before: f64,
    pub flops_after: f64,
    /// Whether the body, after derivation, still materialises per-token copies of the carried
    /// state (the primal form): a value at least `chunk` times the largest carry.
    pub primal_left: bool,
    /// Whether the body may hold per-token copies of its state: the primal form the derivation
    /// is for. A body that updates a state once per chunk of several tokens (applies its state
    /// to the chunk, then updates it) has none and is kept as it is.
    pub per_token_state: bool,
    /// Whether the body's terms outgrew the lowering's limit, and the body was kept as written.
    pub cut_off: bool,
    /// Roots whose term reads a value another root computes (for one token per chunk: the
    /// output reads the updated state, the primal form).
    pub shared: usize,
}

/// The pass with a note per scan body: what was derived, the e-graph's size and saturation time.
pub fn derive_with_notes(g: &Graph) -> Result<crate::Rewrite> {
    let (graph, reports) = derive_with_report(g)?;
    let scans = g.nodes.iter().filter_map(|n| match &n.op {
        Op::Scan(s) => Some((n.outputs[0], &s.body.name)),
        _ => None,
    });
    let notes = scans.zip(&reports).map(|((v, name), r)| format!("scan %{} ({name}): {}", v.0, r.summary())).collect();
    Ok(crate::Rewrite { graph, notes })
}

impl DualFormReport {
    /// A body kept as written, before any e-graph.
    fn kept(per_token_state: bool, primal_left: bool) -> DualFormReport {
        DualFormReport {
            per_token_state,
            primal_left,
            roots: 0,
            rewritten: 0,
            egraph_nodes: 0,
            egraph_classes: 0,
            iterations: 0,
            saturated: true,
            seconds: 0.0,
            flops_before: 0.0,
            flops_after: 0.0,
            shared: 0,
            cut_off: false,
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        if self.cut_off {
            let kept = if self.primal_left { "no dual form found: keeping the primal form" } else { "kept as written" };
            return format!("{kept} (its terms outgrew {} e-graph classes before any rewriting)", self.egraph_classes);
        }
        let sat = if self.saturated { "saturated" } else { "stopped at a limit" };
        let what = if !self.per_token_state {
            "nothing to derive (the state is not copied per token)".to_string()
        } else if self.roots == 0 {
            "nothing to derive (no contraction)".to_string()
        } else if self.primal_left {
            format!("no dual form found: keeping the primal form ({} of {} regions rewritten)", self.rewritten, self.roots)
        } else if self.shared > 0 {
            format!("{} of {} regions read values the state update computes (the recurrent, primal form)", self.shared, self.roots)
        } else if self.flops_after < self.flops_before {
            format!("dual form derived ({} of {} regions rewritten)", self.rewritten, self.roots)
        } else {
            format!("no cheaper form ({} regions re-derived as they were)", self.roots)
        };
        format!(
            "{what}; FLOPs per chunk {:.3e} → {:.3e}; e-graph {} nodes, {} classes, {sat} after {} iterations in {:.1} ms",
            self.flops_before,
            self.flops_after,
            self.egraph_nodes,
            self.egraph_classes,
            self.iterations,
            self.seconds * 1e3
        )
    }
}

/// The pass, with a report per scan body (in node order).
pub fn derive_with_report(g: &Graph) -> Result<(Graph, Vec<DualFormReport>)> {
    let mut out = g.clone();
    let mut reports = Vec::new();
    for node in out.nodes.iter_mut() {
        if let Op::Scan(scan) = &node.op {
            let (body, report) = derived(&scan.body, scan.chunk, scan.carries)?;
            node.op = Op::Scan(Box::new(Scan { body, ..(**scan).clone() }));
            reports.push(report);
        }
    }
    Ok((out, reports))
}

/// Bodies derived recently, by their text, chunk and carries: every layer's scan has the same
/// body, and a gradient step builds its graph several times (one per rematerialisation
/// candidate), so most derivations repeat one already made.
type Derived = std::collections::HashMap<(String, usize, usize), (Graph, DualFormReport)>;
static DERIVED: std::sync::Mutex<Option<Derived>> = std::sync::Mutex::new(None);

/// Bodies kept in [`DERIVED`] before it starts over.
const DERIVED_KEPT: usize = 64;

/// [`derive_body`], reusing the result for a body derived before.
fn derived(body: &Graph, chunk: usize, carries: usize) -> Result<(Graph, DualFormReport)> {
    let key = (tttc_ir::text::print(body), chunk, carries);
    if let Some(hit) = DERIVED.lock().expect("not poisoned").as_ref().and_then(|d| d.get(&key)) {
        return Ok(hit.clone());
    }
    let result = derive_body(body, chunk, carries)?;
    let mut cache = DERIVED.lock().expect("not poisoned");
    let d = cache.get_or_insert_with(Derived::new);
    if d.len() >= DERIVED_KEPT {
        d.clear();
    }
    d.insert(key, result.clone());
    Ok(result)
}

fn producing_op(g: &Graph) -> Vec<Option<&Op>> {
    let mut p = vec![None; g.types.len()];
    for n in &g.nodes {
        for o in &n.outputs {
            p[o.index()] = Some(&n.op);
        }
    }
    p
}

/// Ops the lowering understands (see `lower.rs`).
fn is_linear(op: &Op) -> bool {
    use tttc_ir::{BinaryOp::*, UnaryOp::Neg};
    matches!(
        op,
        Op::Unary(Neg)
            | Op::Binary(Add | Sub | Mul)
            | Op::Broadcast { .. }
            | Op::Transpose { .. }
            | Op::Reshape { .. }
            | Op::Slice { .. }
            | Op::TriMask { .. }
            | Op::MatMul
    )
}

/// The region boundaries of a body: values made by linear ops that a non-linear op reads or that
/// the body returns, and the two factors of a product of two values that each hold a contraction
/// (in a gated layer's inner gradient, the gate's adjoint: the product's adjoint times the
/// projection). Each factor is then computed once, and the terms that read the product do not
/// carry both expansions, which the dual form, reading them twice, would pay twice. Each root is
/// lowered up to the others.
fn roots(g: &Graph) -> Vec<ValueId> {
    let producer = producing_op(g);
    let push = |out: &mut Vec<ValueId>, v: ValueId| {
        if producer[v.index()].is_some_and(is_linear) && !out.contains(&v) {
            out.push(v);
        }
    };
    let mut out: Vec<ValueId> = Vec::new();
    for n in g.nodes.iter().filter(|n| !is_linear(&n.op)) {
        n.inputs.iter().for_each(|&v| push(&mut out, v));
    }
    g.outputs.iter().for_each(|(_, v)| push(&mut out, *v));
    let has = contracting(g, &out);
    for n in g.nodes.iter().filter(|n| matches!(n.op, Op::Binary(tttc_ir::BinaryOp::Mul)) && n.inputs.iter().all(|v| has[v.index()])) {
        n.inputs.iter().for_each(|&v| push(&mut out, v));
    }
    out
}

/// Whether some value of `body` holds `chunk` or more copies of its largest carried state (at
/// batch 1, a full chunk): per-token weights. (With chunks of one token the forms coincide.)
fn materialises_per_token_state(body: &Graph, chunk: usize, carries: usize) -> bool {
    per_token_copies(body, chunk, carries) == Some(true)
}

/// Whether `body` carries a state of more than one element through chunks of two or more
/// tokens and materialises per-token copies of it (`None`: no such state or chunk).
fn per_token_copies(body: &Graph, chunk: usize, carries: usize) -> Option<bool> {
    if chunk < 2 {
        return None;
    }
    let env: tttc_ir::DimEnv = [("B".to_string(), 1)].into_iter().collect();
    let chunk_sym = body.args.iter().flat_map(|a| body.ty(a.value).shape.iter()).find_map(|d| d.sym.clone().filter(|s| s != "B"));
    let mut env = env;
    if let Some(s) = chunk_sym {
        env.insert(s, chunk);
    }
    let size = |v: &ValueId| body.ty(*v).resolve(&env).map_or(0, |s| s.iter().product::<usize>());
    let largest = body.args[..carries].iter().map(|a| size(&a.value)).max().filter(|&n| n > 1)?;
    Some(body.nodes.iter().flat_map(|n| &n.outputs).any(|v| size(v) >= chunk * largest))
}

/// Values holding exactly the data of a next-state output: the chain of reshapes, and `[-1:]`
/// slices of a length-1 axis, that makes the output (one token per step: the per-token weights
/// are the next state).
fn state_aliases(g: &Graph, state: &[ValueId]) -> HashMap<ValueId, ValueId> {
    let mut producer: HashMap<ValueId, &tttc_ir::Node> = HashMap::new();
    for n in &g.nodes {
        for o in &n.outputs {
            producer.insert(*o, n);
        }
    }
    let mut aliases = HashMap::new();
    for &s in state {
        let mut v = s;
        while let Some(n) = producer.get(&v) {
            let same_data = match &n.op {
                Op::Reshape { .. } => true,
                Op::Slice { axis, start: -1, end: None } => g.ty(n.inputs[0]).shape[*axis].is_one(),
                _ => false,
            };
            if !same_data {
                break;
            }
            v = n.inputs[0];
            aliases.insert(v, s);
        }
    }
    aliases
}

/// For each value: whether a matmul lies in its region (linear ops back to the boundaries).
fn contracting(g: &Graph, boundary: &[ValueId]) -> Vec<bool> {
    let mut has = vec![false; g.types.len()];
    for n in &g.nodes {
        let through = is_linear(&n.op) && n.inputs.iter().any(|v| has[v.index()] && !boundary.contains(v));
        for o in &n.outputs {
            has[o.index()] = matches!(n.op, Op::MatMul) || through;
        }
    }
    has
}

/// Whether the term of class `id` (before saturation: one node per class) contains a Σ.
fn has_sum(eg: &ix::IxGraph, id: Id) -> bool {
    let mut stack = vec![id];
    let mut seen = std::collections::HashSet::new();
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        for n in &eg[c].nodes {
            if matches!(n, ix::Ix::Sum(_)) {
                return true;
            }
            stack.extend(egg::Language::children(n).iter().copied());
        }
    }
    false
}

fn derive_body(body: &Graph, chunk: usize, carries: usize) -> Result<(Graph, DualFormReport)> {
    // A state updated once per chunk of several tokens (apply, then update) has no per-token
    // form to turn into a dual one.
    if per_token_copies(body, chunk, carries) == Some(false) {
        return Ok((body.clone(), DualFormReport::kept(false, false)));
    }
    let roots = roots(body);
    let state: Vec<ValueId> = body.outputs[..carries.min(body.outputs.len())].iter().map(|(_, v)| *v).collect();
    let mut lowering = Lowering::new(body, &roots, contracting(body, &roots), state_aliases(body, &state));
    let mut lowered: Vec<(ValueId, Id, Vec<lower::Axis>)> = roots.iter().filter_map(|&v| lowering.root(v).map(|(id, axes)| (v, id, axes))).collect();
    if lowering.exceeded {
        // Terms too large to saturate or extract: the body stays as written.
        let report = DualFormReport {
            roots: lowered.len(),
            egraph_nodes: lowering.eg.total_number_of_nodes(),
            egraph_classes: lowering.eg.number_of_classes(),
            saturated: false,
            cut_off: true,
            ..DualFormReport::kept(per_token_copies(body, chunk, carries) == Some(true), materialises_per_token_state(body, chunk, carries))
        };
        return Ok((body.clone(), report));
    }
    // The next state is computed anyway (with or without a contraction): the other roots may
    // read it for free.
    lowered.retain(|(v, id, _)| state.contains(v) || has_sum(&lowering.eg, *id));
    lowered.sort_by_key(|(v, _, _)| !state.contains(v));
    let computing: Vec<bool> = lowered.iter().map(|(v, _, _)| state.contains(v)).collect();
    // Sizes for the cost model: the chunk symbol at the chunk size, other symbols (batch) at 1.
    let sizes: Vec<f64> =
        lowering.atoms.iter().map(|d: &Dim| d.as_const().map_or(if d.sym.as_deref() == Some("B") { 1.0 } else { chunk as f64 }, |n| n as f64)).collect();
    let ids: Vec<Id> = lowered.iter().map(|(_, id, _)| *id).collect();
    // The cost of the terms as written: no root reads another's value.
    let before = ix::extract(&lowering.eg, &sizes, &ids, &vec![true; ids.len()], &lowering.alias_leaves);
    let sat = ix::saturate(&mut lowering.eg, ix::rules(), NODE_LIMIT, ITER_LIMIT, TIME_LIMIT);
    let ids: Vec<Id> = ids.iter().map(|&id| lowering.eg.find(id)).collect();
    let after = ix::extract(&lowering.eg, &sizes, &ids, &computing, &lowering.alias_leaves);

    // Rebuild the body, each improved root defined by its lifted term.
    let mut g = Graph::new(&body.name);
    let mut map: Vec<Option<ValueId>> = vec![None; body.types.len()];
    for a in &body.args {
        map[a.value.index()] = Some(g.arg(&a.name, a.kind, body.ty(a.value).clone()));
    }
    let mut rewritten = 0;
    let (mut flops_before, mut flops_after) = (0.0, 0.0);
    for node in &body.nodes {
        let root = lowered.iter().position(|(v, _, _)| node.outputs.first() == Some(v));
        if let Some(r) = root {
            let (v, _, axes) = &lowered[r];
            let (cost_before, cost_after, expr) = (&before[r].cost, &after[r].cost, &after[r].expr);
            flops_before += cost_before;
            if cost_after <= cost_before {
                let snapshot = map.clone();
                let value = move |old: ValueId| snapshot[old.index()].context("leaf defined after its root");
                let mut lifter = Lifter { g: &mut g, atoms: &lowering.atoms, leaves: &lowering.leaves, value: &value };
                let new = lifter.lift_root(expr, axes, &body.ty(*v).shape).with_context(|| format!("lifting %{}", v.0))?;
                map[v.index()] = Some(new);
                rewritten += 1;
                flops_after += cost_after;
                continue;
            }
            flops_after += cost_before;
        }
        let ins: Vec<ValueId> = node.inputs.iter().map(|v| map[v.index()].context("operand undefined")).collect::<Result<_>>()?;
        let outs = g.push(node.op.clone(), &ins)?;
        for (o, n) in node.outputs.iter().zip(outs) {
            map[o.index()] = Some(n);
        }
    }
    for (name, v) in &body.outputs {
        g.output(name, map[v.index()].context("output undefined")?);
    }
    let primal_left = materialises_per_token_state(&crate::dce::dead_code_elimination(&g), chunk, carries);
    let shared = after.iter().filter(|e| e.shares).count();
    let report = DualFormReport {
        per_token_state: true,
        primal_left,
        shared,
        roots: lowered.len(),
        rewritten,
        egraph_nodes: sat.nodes,
        egraph_classes: sat.classes,
        iterations: sat.iterations,
        saturated: sat.saturated,
        seconds: sat.seconds,
        flops_before,
        flops_after,
        cut_off: false,
    };
    Ok((g, report))
}
