//! Hoisting the work that depends on the weights alone out of a graph that runs many times with
//! the same weights (a decoding step): Mamba's `A = −exp(A_log)`, RoPE's inverse frequencies.
//! The graph splits in two: `prep` computes those values from the parameters once, and `main`
//! takes them as inputs `hoisted.K`.

use std::collections::HashMap;

use anyhow::Result;
use tttc_ir::{ArgKind, Graph, Op, ValueId};

/// A graph split into its weight-only part and the rest.
pub struct Hoisted {
    /// Parameters (by name, as the original's) → outputs `hoisted.K`.
    pub prep: Graph,
    /// The original's arguments, then inputs `hoisted.K`; the original's outputs.
    pub main: Graph,
}

/// Splits `g` when some node computes from parameters and constants alone, with a result of fixed
/// shape that something else reads. Views of a parameter (reshapes, transposes, broadcasts,
/// slices) stay in `main`: hoisting them would copy weights that the backends read in place.
/// `None` when there is nothing to hoist.
pub fn hoist_invariants(g: &Graph) -> Result<Option<Hoisted>> {
    let mut invariant = vec![false; g.types.len()];
    // Whether a value is a parameter or a view of one (not worth hoisting by itself).
    let mut view = vec![false; g.types.len()];
    for a in &g.args {
        let param = a.kind == ArgKind::Param;
        invariant[a.value.index()] = param;
        view[a.value.index()] = param;
    }
    for node in &g.nodes {
        let fixed = node.outputs.iter().all(|v| g.ty(*v).shape.iter().all(|d| d.as_const().is_some()));
        let from_weights = node.inputs.iter().all(|v| invariant[v.index()]);
        let is_view = matches!(node.op, Op::Reshape { .. } | Op::Transpose { .. } | Op::Broadcast { .. } | Op::Slice { .. } | Op::Barrier | Op::StopGradient)
            && node.inputs.iter().all(|v| view[v.index()]);
        for v in &node.outputs {
            invariant[v.index()] = fixed && from_weights;
            view[v.index()] = fixed && from_weights && is_view;
        }
    }
    // The frontier: invariant values that are computed (not views) and read by the rest.
    let mut frontier: Vec<ValueId> = Vec::new();
    let note = |v: ValueId, frontier: &mut Vec<ValueId>| {
        if invariant[v.index()] && !view[v.index()] && !frontier.contains(&v) {
            frontier.push(v);
        }
    };
    for node in &g.nodes {
        if node.outputs.iter().any(|v| !invariant[v.index()]) {
            for &v in &node.inputs {
                note(v, &mut frontier);
            }
        }
    }
    for (_, v) in &g.outputs {
        note(*v, &mut frontier);
    }
    if frontier.is_empty() {
        return Ok(None);
    }

    let mut prep = Graph::new(&format!("{}_prep", g.name));
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for a in g.args.iter().filter(|a| a.kind == ArgKind::Param) {
        map.insert(a.value, prep.arg(&a.name, ArgKind::Param, g.ty(a.value).clone()));
    }
    for node in g.nodes.iter().filter(|n| n.outputs.iter().all(|v| invariant[v.index()])) {
        let inputs: Vec<ValueId> = node.inputs.iter().map(|v| map[v]).collect();
        for (old, new) in node.outputs.iter().zip(prep.push(node.op.clone(), &inputs)?) {
            map.insert(*old, new);
        }
    }
    for (k, v) in frontier.iter().enumerate() {
        prep.output(&format!("hoisted.{k}"), map[v]);
    }

    let mut main = Graph::new(&g.name);
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for a in &g.args {
        map.insert(a.value, main.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    for (k, v) in frontier.iter().enumerate() {
        map.insert(*v, main.input(&format!("hoisted.{k}"), g.ty(*v).clone()));
    }
    for node in &g.nodes {
        if node.outputs.iter().all(|v| map.contains_key(v)) {
            continue; // hoisted
        }
        let inputs: Vec<ValueId> = node.inputs.iter().map(|v| map[v]).collect();
        for (old, new) in node.outputs.iter().zip(main.push(node.op.clone(), &inputs)?) {
            map.entry(*old).or_insert(new);
        }
    }
    for (name, v) in &g.outputs {
        main.output(name, map[v]);
    }
    Ok(Some(Hoisted { prep: crate::dead_code_elimination(&prep), main: crate::dead_code_elimination(&main) }))
}
