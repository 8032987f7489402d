//! Dead-code elimination: drop the nodes no output depends on, inside scan bodies too. A scan's
//! per-chunk outputs that nobody uses are dropped from it, so are the carries whose final value
//! nobody uses and that no needed part of the body reads, and the sequences and invariants the
//! body no longer reads (a gradient's recomputed forward scan that only records carries the
//! reverse sweep never reads goes entirely). A fused region is a call: the results nobody uses
//! are dropped from it, then the body is pruned, and the operands it no longer reads.

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
            Op::Scan(s) => prune_scan(&mut n.inputs, &mut n.outputs, s, &live),
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

/// Prunes a scan node: its per-chunk outputs that are not `live`, its carries whose final value
/// is not `live` and that the rest of the body does not read, then its body, then the sequences
/// and invariants the body no longer reads (one chunked sequence always stays: it gives the
/// scan's length).
fn prune_scan(inputs: &mut Vec<ValueId>, outputs: &mut Vec<ValueId>, s: &mut Scan, live: &[bool]) {
    let nc = s.carries;
    // Carries needed: those whose result is live, and those the needed body reads, to a fixpoint.
    let mut needed: Vec<bool> = (0..outputs.len()).map(|i| live[outputs[i].index()]).collect();
    loop {
        let mut body = s.body.clone();
        let mut k = needed.iter();
        body.outputs.retain(|_| *k.next().unwrap());
        let read = args_read(&dead_code_elimination(&body));
        let more: Vec<usize> = (0..nc).filter(|&j| !needed[j] && read[j]).collect();
        if more.is_empty() {
            break;
        }
        more.into_iter().for_each(|j| needed[j] = true);
    }
    let dead_carries = (0..nc).filter(|&j| !needed[j]).count();
    let mut k = needed.iter();
    outputs.retain(|_| *k.next().unwrap());
    let mut k = needed.iter();
    s.body.outputs.retain(|_| *k.next().unwrap());
    s.body = dead_code_elimination(&s.body);
    let read = args_read(&s.body);
    // Every argument stays that is a needed carry, is read, or is the first chunked sequence.
    let first_chunked = (nc..nc + s.seqs).find(|&i| !s.is_iteration_seq(i));
    let keep: Vec<bool> = (0..s.body.args.len()).map(|i| if i < nc { needed[i] } else { read[i] || Some(i) == first_chunked }).collect();
    let dropped_seqs = (nc..nc + s.seqs).filter(|&i| !keep[i]).count();
    let mut k = keep.iter();
    s.body.args.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    inputs.retain(|_| *k.next().unwrap());
    s.carries -= dead_carries;
    s.seqs -= dropped_seqs;
}

/// Per argument of `g`: whether a node or an output reads it.
fn args_read(g: &Graph) -> Vec<bool> {
    let mut used = vec![false; g.types.len()];
    for n in &g.nodes {
        for v in &n.inputs {
            used[v.index()] = true;
        }
    }
    for (_, v) in &g.outputs {
        used[v.index()] = true;
    }
    g.args.iter().map(|a| used[a.value.index()]).collect()
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
    let read = args_read(&f.body);
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
