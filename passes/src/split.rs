//! A graph cut in two at some of its inputs: the part that does not depend on them and the part
//! that does. A framework calls a layer's vector–Jacobian product in two halves, as its autograd
//! does: the forward pass before the cotangents exist, keeping what the backward reads, and the
//! backward pass when they arrive; so the backward does not compute the forward again.

use anyhow::{Context, Result};
use tttc_ir::{ArgKind, Graph, Op, ValueId};

/// What the residuals the first part hands to the second are called: `saved.K`.
pub const SAVED: &str = "saved.";

/// A graph cut by [`split_at`].
pub struct Split {
    /// The nodes that do not depend on the inputs cut at, from the graph's other arguments; its
    /// outputs are the graph's outputs that do not depend on them, then the residuals
    /// `saved.0`, `saved.1`, … that `after` reads.
    pub before: Graph,
    /// The rest: it takes every argument of the graph, then the residuals, and gives the graph's
    /// outputs that depend on the inputs cut at, and what follows a barrier. Views and constants
    /// the rest reads are computed again in it rather than saved.
    pub after: Graph,
}

/// Cuts `g` at its inputs named in `at` (see [`Split`]). Every output of `g` is an output of
/// exactly one part, under its name.
pub fn split_at(g: &Graph, at: &[&str]) -> Result<Split> {
    let mut depends = vec![false; g.types.len()];
    for a in &g.args {
        depends[a.value.index()] = a.kind == ArgKind::Input && at.contains(&a.name.as_str());
    }
    for node in &g.nodes {
        // A barrier starts a recomputation for the backward (attention's weights): it runs there,
        // from what the barrier reads, rather than being computed early and saved.
        let d = matches!(node.op, Op::Barrier) || node.inputs.iter().any(|v| depends[v.index()]);
        for o in &node.outputs {
            depends[o.index()] = d;
        }
    }
    let is_arg = |v: ValueId| g.args.iter().any(|a| a.value == v);
    let mut producer = vec![usize::MAX; g.types.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for o in &node.outputs {
            producer[o.index()] = i;
        }
    }
    // The residuals: values of the first part, not arguments, that the second reads. A view of
    // another value or a constant is computed again in the second part instead (it costs nothing
    // there, and saved it would be a copy): what it reads is read by the second part.
    let mut again = vec![false; g.nodes.len()];
    let mut saved: Vec<ValueId> = Vec::new();
    let mut wanted: Vec<ValueId> = g.nodes.iter().filter(|n| n.outputs.iter().any(|o| depends[o.index()])).flat_map(|n| n.inputs.iter().copied()).collect();
    while let Some(v) = wanted.pop() {
        if depends[v.index()] || is_arg(v) || saved.contains(&v) {
            continue;
        }
        let at = producer[v.index()];
        let node = &g.nodes[at];
        if matches!(node.op, Op::Reshape { .. } | Op::Transpose { .. } | Op::Broadcast { .. } | Op::Const { .. } | Op::Iota { .. }) {
            if !again[at] {
                again[at] = true;
                wanted.extend(node.inputs.iter().copied());
            }
        } else {
            saved.push(v);
        }
    }
    saved.sort();
    let mut before = Graph::new(&format!("{}_before", g.name));
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for a in g.args.iter().filter(|a| !depends[a.value.index()]) {
        map[a.value.index()] = Some(before.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    copy_nodes(g, &mut before, &mut map, |i| !depends[g.nodes[i].outputs[0].index()])?;
    for (name, v) in g.outputs.iter().filter(|(_, v)| !depends[v.index()]) {
        before.output(name, map[v.index()].context("an output of the first part is undefined")?);
    }
    for (k, &v) in saved.iter().enumerate() {
        before.output(&format!("{SAVED}{k}"), map[v.index()].context("a residual is undefined")?);
    }

    let mut after = Graph::new(&format!("{}_after", g.name));
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for a in &g.args {
        map[a.value.index()] = Some(after.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    for (k, &v) in saved.iter().enumerate() {
        map[v.index()] = Some(after.input(&format!("{SAVED}{k}"), g.ty(v).clone()));
    }
    copy_nodes(g, &mut after, &mut map, |i| again[i] || depends[g.nodes[i].outputs[0].index()])?;
    for (name, v) in g.outputs.iter().filter(|(_, v)| depends[v.index()]) {
        after.output(name, map[v.index()].context("an output of the second part is undefined")?);
    }
    Ok(Split { before, after })
}

/// Copies the nodes of `g` that `keep` accepts (by index) into `to`.
fn copy_nodes(g: &Graph, to: &mut Graph, map: &mut [Option<ValueId>], keep: impl Fn(usize) -> bool) -> Result<()> {
    for (i, node) in g.nodes.iter().enumerate() {
        if node.outputs.is_empty() || !keep(i) {
            continue;
        }
        let ins: Vec<ValueId> = node.inputs.iter().map(|v| map[v.index()].context("an operand is undefined")).collect::<Result<_>>()?;
        for (o, n) in node.outputs.iter().zip(to.push(node.op.clone(), &ins)?) {
            map[o.index()] = Some(n);
        }
    }
    Ok(())
}
