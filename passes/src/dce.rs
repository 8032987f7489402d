//! Dead-code elimination: drop the nodes no output depends on, inside scan bodies too (a body
//! keeps every output: the scan's results are positional).

use tttc_ir::Graph;

/// Removes every node whose results no graph output needs.
pub fn dead_code_elimination(g: &Graph) -> Graph {
    let mut live = vec![false; g.types.len()];
    for (_, v) in &g.outputs {
        live[v.index()] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|v| live[v.index()]) {
            keep[i] = true;
            for v in &node.inputs {
                live[v.index()] = true;
            }
        }
    }
    let mut out = g.clone();
    out.nodes = g
        .nodes
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(n, _)| {
            let mut n = n.clone();
            if let Some(body) = n.op.body_mut() {
                *body = dead_code_elimination(body);
            }
            n
        })
        .collect();
    out
}

/// The graph restricted to the named outputs, without the nodes only the others needed.
pub fn keep_outputs(g: &Graph, names: &[&str]) -> Graph {
    let mut out = g.clone();
    out.outputs.retain(|(n, _)| names.contains(&n.as_str()));
    dead_code_elimination(&out)
}
