//! Attention as one step: `softmax(scale(q·kᵀ), causally masked) · v`, the chain of general ops
//! the frontends build it from, found so that a backend that can runs it as one tiled
//! instruction (a running softmax over blocks of keys; the `[.., T, T]` scores never stored whole,
//! the masked blocks never computed).
//!
//! The chain, each value read only by the next op (the masked scores by the maximum and the
//! subtraction, the exponentials by the sum and the division) and none a graph output:
//!
//! ```text
//! s = matmul(q, kᵀ)              m = reduce_max(a, last axis)    l = reduce_sum(e, last axis)
//! s' = div|mul(s, c)  (optional)  e = exp(sub(a, m))              o = matmul(div(e, l), v)
//! a = tri_mask(s', −∞) (optional)
//! ```

use std::collections::{HashMap, HashSet};

use tttc_ir::{BinaryOp, Graph, Op, ReduceKind, UnaryOp, ValueId};

/// A chain found in a graph, by the planner's operand views (a transpose read as strides).
pub struct Chain {
    /// The last node (`matmul(p, v)`): its result is the chain's.
    pub node: usize,
    /// The other nodes of the chain, which no step needs.
    pub inner: Vec<usize>,
    /// The scores' product operands (`q`, `kᵀ`) and the values, as the products read them.
    pub q: (ValueId, bool),
    pub k: (ValueId, bool),
    pub v: (ValueId, bool),
    /// The scores divided or multiplied by a constant.
    pub scale: Option<(BinaryOp, f32)>,
    /// Entries above the diagonal (a key after its query) masked out.
    pub causal: bool,
}

/// The chains of `g`, by their last node. `users` lists each value's readers; `views` the
/// operands products read through a view (source, transposed). Chains that share a node (one's
/// result the other's scores) are left to their ops.
pub fn chains(g: &Graph, users: &[Vec<usize>], views: &HashMap<ValueId, (ValueId, bool)>) -> HashMap<usize, Chain> {
    let mut def = vec![usize::MAX; g.types.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        n.outputs.iter().for_each(|v| def[v.index()] = i);
    }
    let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let found: Vec<Chain> = (0..g.nodes.len()).filter_map(|node| chain(g, &def, users, &outputs, views, node)).collect();
    let mut claims = vec![0usize; g.nodes.len()];
    found.iter().flat_map(|c| c.inner.iter().chain([&c.node])).for_each(|&i| claims[i] += 1);
    found.into_iter().filter(|c| c.inner.iter().chain([&c.node]).all(|&i| claims[i] == 1)).map(|c| (c.node, c)).collect()
}

/// The chain ending at node `last`, if it is one.
fn chain(g: &Graph, def: &[usize], users: &[Vec<usize>], outputs: &HashSet<ValueId>, views: &HashMap<ValueId, (ValueId, bool)>, last: usize) -> Option<Chain> {
    let mut inner = Vec::new();
    // The node defining `v` when `v` has exactly `readers` readers and is no graph output.
    let mut take = |v: ValueId, readers: usize| -> Option<&tttc_ir::Node> {
        let i = def[v.index()];
        (i != usize::MAX && users[v.index()].len() == readers && !outputs.contains(&v)).then(|| {
            inner.push(i);
            &g.nodes[i]
        })
    };
    let o = &g.nodes[last];
    if !matches!(o.op, Op::MatMul) {
        return None;
    }
    let (p, v) = (o.inputs[0], o.inputs[1]);
    let shape = &g.ty(p).shape;
    let rank = shape.len();
    let last_axis = |n: &tttc_ir::Node, kind: ReduceKind| matches!(n.op, Op::Reduce { kind: k, axis, keepdim: true } if k == kind && axis + 1 == rank);
    let div = take(p, 1)?;
    let [e, l] = div.inputs[..] else { return None };
    if !matches!(div.op, Op::Binary(BinaryOp::Div)) || g.ty(e).shape != *shape {
        return None;
    }
    let sum = take(l, 1)?;
    if !last_axis(sum, ReduceKind::Sum) || sum.inputs[0] != e {
        return None;
    }
    let exp = take(e, 2)?;
    if !matches!(exp.op, Op::Unary(UnaryOp::Exp)) {
        return None;
    }
    let sub = take(exp.inputs[0], 1)?;
    let [a, m] = sub.inputs[..] else { return None };
    if !matches!(sub.op, Op::Binary(BinaryOp::Sub)) || g.ty(a).shape != *shape {
        return None;
    }
    let max = take(m, 1)?;
    if !last_axis(max, ReduceKind::Max) || max.inputs[0] != a {
        return None;
    }
    // The masked (or plain) scores: read by the maximum and the subtraction.
    let mut s = take(a, 2)?;
    let causal = matches!(s.op, Op::TriMask { fill } if fill == f64::NEG_INFINITY);
    if causal {
        s = take(s.inputs[0], 1)?;
    }
    let mut scale = None;
    if let Op::Binary(op @ (BinaryOp::Div | BinaryOp::Mul)) = s.op {
        let c = def[s.inputs[1].index()];
        let Op::Const { value, .. } = g.nodes.get(c)?.op else { return None };
        if !g.ty(s.inputs[1]).shape.is_empty() || g.ty(s.inputs[0]).shape != *shape {
            return None;
        }
        scale = Some((op, value as f32));
        s = take(s.inputs[0], 1)?;
    }
    if !matches!(s.op, Op::MatMul) || rank < 2 || [s.inputs[0], s.inputs[1], v].iter().any(|&x| g.ty(x).dtype != tttc_ir::DType::F32) {
        return None;
    }
    let view = |x: ValueId| views.get(&x).copied().unwrap_or((x, false));
    let (q, k, v) = (view(s.inputs[0]), view(s.inputs[1]), view(v));
    Some(Chain { node: last, inner, q, k, v, scale, causal })
}
