//! A gradient's reverse sweep run inside the forward scan it differentiates. The reverse scan of
//! a scan restarts each chunk's forward step from the recorded carry; when its own carries are
//! order-free (each passed through unchanged, or summed into), the chunks may be visited in any
//! order. When, besides, it reads nothing the forward scan computes, it can run in the forward
//! scan: one scan over the chunks whose body holds both steps, so that `simplify` computes their
//! shared work once. For the LM head, one product with the vocabulary per chunk instead of two.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tttc_ir::{BinaryOp, Graph, Node, Op, Scan, ValueId};

/// `g` with every reverse scan that can be merged into an earlier forward scan over the same
/// sequence merged into it.
pub fn merge_reverse_scans(g: &Graph) -> Result<Graph> {
    let mut g = g.clone();
    while let Some((f, r)) = mergeable_pair(&g) {
        g = merged(&g, f, r)?;
    }
    Ok(g)
}

/// The first (forward, reverse) pair of scan nodes that can be merged.
fn mergeable_pair(g: &Graph) -> Option<(usize, usize)> {
    for (r, node) in g.nodes.iter().enumerate() {
        let Op::Scan(rs) = &node.op else { continue };
        if !rs.reverse || !order_free(rs) {
            continue;
        }
        for f in (0..r).rev() {
            let Op::Scan(fs) = &g.nodes[f].op else { continue };
            if fs.reverse || fs.axis != rs.axis || fs.chunk != rs.chunk || chunk_symbol(fs) != chunk_symbol(rs) {
                continue;
            }
            let shares_a_sequence = chunked_seqs(fs, &g.nodes[f]).iter().any(|v| chunked_seqs(rs, node).contains(v));
            if shares_a_sequence && !reads_results_of(g, f, r) {
                return Some((f, r));
            }
        }
    }
    None
}

/// Whether every carry of the scan is passed through unchanged or only summed into (`c + e`, read
/// by nothing but the output, with `c` read by nothing but that sum): then the chunks may be
/// visited in any order.
fn order_free(s: &Scan) -> bool {
    let body = &s.body;
    let mut sums = Vec::new(); // (carry argument, the node summing into it)
    for (a, (_, out)) in body.args[..s.carries].iter().zip(&body.outputs) {
        if *out == a.value {
            continue;
        }
        let sum = body.nodes.iter().position(|n| n.outputs.contains(out));
        match sum {
            Some(k)
                if matches!(body.nodes[k].op, Op::Binary(BinaryOp::Add)) && body.nodes[k].inputs.contains(&a.value) && body.ty(*out) == body.ty(a.value) =>
            {
                sums.push((a.value, k))
            }
            _ => return false,
        }
    }
    body.nodes
        .iter()
        .enumerate()
        .all(|(i, n)| sums.iter().all(|&(carry, k)| (i == k || !n.inputs.contains(&carry)) && body.nodes[k].outputs.iter().all(|o| !n.inputs.contains(o))))
}

/// The name of the scan's chunk symbol in its body (`None` for chunk 1).
fn chunk_symbol(s: &Scan) -> Option<String> {
    let first = (s.carries..s.carries + s.seqs).find(|&i| !s.is_iteration_seq(i))?;
    s.body.ty(s.body.args[first].value).shape.get(s.axis)?.sym.clone()
}

/// The scan node's chunked sequence operands.
fn chunked_seqs(s: &Scan, node: &Node) -> Vec<ValueId> {
    (s.carries..s.carries + s.seqs).filter(|&i| !s.is_iteration_seq(i)).map(|i| node.inputs[i]).collect()
}

/// Whether node `r` reads, directly or through nodes between them, a result of node `f`.
fn reads_results_of(g: &Graph, f: usize, r: usize) -> bool {
    let mut tainted = vec![false; g.types.len()];
    g.nodes[f].outputs.iter().for_each(|v| tainted[v.index()] = true);
    for node in &g.nodes[f + 1..r] {
        if node.inputs.iter().any(|v| tainted[v.index()]) {
            node.outputs.iter().for_each(|v| tainted[v.index()] = true);
        }
    }
    g.nodes[r].inputs.iter().any(|v| tainted[v.index()])
}

/// `g` with scans `f` (forward) and `r` (reverse, order-free) replaced by one forward scan; nodes
/// are then reordered so that each follows what it reads.
fn merged(g: &Graph, f: usize, r: usize) -> Result<Graph> {
    let (fnode, rnode) = (&g.nodes[f], &g.nodes[r]);
    let (Op::Scan(fs), Op::Scan(rs)) = (&fnode.op, &rnode.op) else { unreachable!("both are scans") };
    let mut body = Graph::new(&format!("{}_and_{}", fs.body.name, rs.body.name));
    let mut inputs = Vec::new();
    // Body values of each scan, mapped into the merged body.
    let (mut fmap, mut rmap): (HashMap<ValueId, ValueId>, HashMap<ValueId, ValueId>) = (HashMap::new(), HashMap::new());
    let arg = |body: &mut Graph, s: &Scan, i: usize| {
        let a = &s.body.args[i];
        body.arg(&a.name, a.kind, s.body.ty(a.value).clone())
    };
    // Carries, then sequences, then invariants: each kind from the forward scan, then those of
    // the reverse scan it does not already take (the same value, read the same way).
    let kinds = |s: &Scan| [(0, s.carries), (s.carries, s.carries + s.seqs), (s.carries + s.seqs, s.body.args.len())];
    let mut counts = [0usize; 3];
    for (kind, ((fa, fb), (ra, rb))) in kinds(fs).into_iter().zip(kinds(rs)).enumerate() {
        for i in fa..fb {
            fmap.insert(fs.body.args[i].value, arg(&mut body, fs, i));
            inputs.push(fnode.inputs[i]);
            counts[kind] += 1;
        }
        for i in ra..rb {
            let shared = (kind > 0)
                .then(|| (fa..fb).find(|&k| fnode.inputs[k] == rnode.inputs[i] && fs.body.ty(fs.body.args[k].value) == rs.body.ty(rs.body.args[i].value)))
                .flatten();
            let v = match shared {
                Some(k) => fmap[&fs.body.args[k].value],
                None => {
                    inputs.push(rnode.inputs[i]);
                    counts[kind] += 1;
                    arg(&mut body, rs, i)
                }
            };
            rmap.insert(rs.body.args[i].value, v);
        }
    }
    copy_nodes(&mut body, &fs.body, &mut fmap)?;
    copy_nodes(&mut body, &rs.body, &mut rmap)?;
    let out = |s: &Scan, map: &HashMap<ValueId, ValueId>, range: std::ops::Range<usize>| -> Vec<(String, ValueId)> {
        s.body.outputs[range].iter().map(|(n, v)| (n.clone(), map[v])).collect()
    };
    let (fo, ro) = (fs.body.outputs.len(), rs.body.outputs.len());
    body.outputs = [out(fs, &fmap, 0..fs.carries), out(rs, &rmap, 0..rs.carries), out(fs, &fmap, fs.carries..fo), out(rs, &rmap, rs.carries..ro)].concat();
    let scan = Scan { axis: fs.axis, chunk: fs.chunk, carries: counts[0], seqs: counts[1], body, reverse: false };
    let outputs = [&fnode.outputs[..fs.carries], &rnode.outputs[..rs.carries], &fnode.outputs[fs.carries..], &rnode.outputs[rs.carries..]].concat();
    let node = Node { op: Op::Scan(Box::new(scan)), inputs, outputs };
    let mut nodes: Vec<Node> = g.nodes.iter().enumerate().filter(|&(i, _)| i != f && i != r).map(|(_, n)| n.clone()).collect();
    nodes.insert(r - 1, node);
    let mut out = g.clone();
    out.nodes = in_dependency_order(g, nodes);
    tttc_ir::verify(&out).context("merging a reverse scan into its forward scan")?;
    Ok(out)
}

/// Appends the nodes of `from` to `to`, reading their operands through `map` (which they extend).
fn copy_nodes(to: &mut Graph, from: &Graph, map: &mut HashMap<ValueId, ValueId>) -> Result<()> {
    for node in &from.nodes {
        let ins: Vec<ValueId> = node.inputs.iter().map(|v| map[v]).collect();
        for (o, n) in node.outputs.iter().zip(to.push(node.op.clone(), &ins)?) {
            map.insert(*o, n);
        }
    }
    Ok(())
}

/// `nodes` reordered so that every node comes after the nodes whose results it reads, otherwise
/// keeping their order (each step takes the first node that is ready).
fn in_dependency_order(g: &Graph, mut nodes: Vec<Node>) -> Vec<Node> {
    let mut defined = vec![false; g.types.len()];
    g.args.iter().for_each(|a| defined[a.value.index()] = true);
    let mut order = Vec::with_capacity(nodes.len());
    while !nodes.is_empty() {
        let ready = nodes.iter().position(|n| n.inputs.iter().all(|v| defined[v.index()])).expect("the graph has no cycle");
        let node = nodes.remove(ready);
        node.outputs.iter().for_each(|v| defined[v.index()] = true);
        order.push(node);
    }
    order
}
