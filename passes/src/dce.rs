//! Dead-code elimination: drop the nodes no output depends on, inside scan bodies too. A scan's
//! per-chunk outputs that nobody uses are dropped from it (its final carries stay: they pair with
//! the body's carried arguments). A fused region is a call: the results nobody uses are dropped
//! from it, then the body is pruned, and the operands it no longer reads.

use tttc_ir::{Fused, Graph, Node, Op, Scan, ValueId};

/// Removes every node whose results no graph output needs.
pub fn dead_code_elimination(g: &Graph) -> Graph {
    let mut live = vec![false; g.types.len()];
    for (_, v) in &g.outputs {
        live[v.index()] = true;
    }
    let mut kept: Vec<Option<Node>> = vec![None; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate().rev() {
        if !node.outputs.iter().any(|v| live[v.index()]) {
            continue;
        }
        let mut n = node.clone();
        match &mut n.op {
            Op::Fused(f) => prune_fused(&mut n.inputs, &mut n.outputs, f, &live),
            Op::Scan(s) => prune_scan_outputs(&mut n.outputs, s, &live),
            op => {
                if let Some(body) = op.body_mut() {
                    *body = dead_code_elimination(body);
                }
            }
        }
        for v in &n.inputs {
            live[v.index()] = true;
        }
        kept[i] = Some(n);
    }
    let mut out = g.clone();
    out.nodes = kept.into_iter().flatten().collect();
    out
}

/// Drops the per-chunk outputs of a scan node that are not `live`, then prunes its body.
fn prune_scan_outputs(outputs: &mut Vec<ValueId>, s: &mut Scan, live: &[bool]) {
    let keep: Vec<bool> = outputs.iter().enumerate().map(|(i, v)| i < s.carries || live[v.index()]).collect();
    let mut k = keep.iter();
    outputs.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    s.body.outputs.retain(|_| *k.next().unwrap());
    s.body = dead_code_elimination(&s.body);
}

/// Drops the results of a fused node that are not `live`, prunes its body, and drops the
/// arguments (and operands) the body no longer reads.
fn prune_fused(inputs: &mut Vec<tttc_ir::ValueId>, outputs: &mut Vec<tttc_ir::ValueId>, f: &mut Fused, live: &[bool]) {
    let keep: Vec<bool> = outputs.iter().map(|v| live[v.index()]).collect();
    let mut k = keep.iter();
    outputs.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    f.body.outputs.retain(|_| *k.next().unwrap());
    f.body = dead_code_elimination(&f.body);
    let mut used = vec![false; f.body.types.len()];
    for n in &f.body.nodes {
        for v in &n.inputs {
            used[v.index()] = true;
        }
    }
    for (_, v) in &f.body.outputs {
        used[v.index()] = true;
    }
    let read: Vec<bool> = f.body.args.iter().map(|a| used[a.value.index()]).collect();
    let mut k = read.iter();
    f.body.args.retain(|_| *k.next().unwrap());
    let mut k = read.iter();
    inputs.retain(|_| *k.next().unwrap());
}

/// The graph restricted to the named outputs, without the nodes only the others needed.
pub fn keep_outputs(g: &Graph, names: &[&str]) -> Graph {
    let mut out = g.clone();
    out.outputs.retain(|(n, _)| names.contains(&n.as_str()));
    dead_code_elimination(&out)
}
