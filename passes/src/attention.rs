//! Attention's chain of general ops, `softmax(scale(q·kᵀ), causally masked) · v`, as the
//! frontends build it. The autodiff gives it a backward that recomputes the weights from the
//! row log-sum-exp instead of keeping them ([`crate::autodiff`]); a backend that can runs the
//! chain and that backward as one tiled step each (`tttc_lower::attention`).
//!
//! The chain, each value read only by the next op (the masked scores by the maximum and the
//! subtraction, the exponentials by the sum and the division):
//!
//! ```text
//! s = matmul(q, kᵀ)              m = reduce_max(a, last axis)    l = reduce_sum(e, last axis)
//! s' = div|mul(s, c)  (optional)  e = exp(sub(a, m))              o = matmul(div(e, l), v)
//! a = tri_mask(s', −∞) (optional; with a window or not)
//! ```
//!
//! with, optionally, the row log-sum-exp `add(m, log(l))` also read from `m` and `l` (what the
//! backward keeps).

use std::collections::HashMap;

use tttc_ir::{BinaryOp, DType, Graph, Node, Op, ReduceKind, UnaryOp, ValueId};

/// A chain found in a list of nodes.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The last node (`matmul(p, v)`): its result is the chain's.
    pub node: usize,
    /// The chain's other nodes (the log-sum-exp's included).
    pub inner: Vec<usize>,
    /// The scores' product operands (`q`, `kᵀ`) and the values, as the graph holds them.
    pub q: ValueId,
    pub kt: ValueId,
    pub v: ValueId,
    /// Each query row's maximum score and sum of exponentials (`[.., tq, 1]`).
    pub max: ValueId,
    pub sum: ValueId,
    /// `add(max, log(sum))`, when the nodes compute it.
    pub lse: Option<ValueId>,
    /// The scores divided or multiplied by a constant.
    pub scale: Option<(BinaryOp, f64)>,
    /// Entries above the diagonal (a key after its query) masked out.
    pub causal: bool,
    /// With the causal mask, entries `window` or more below the diagonal masked out too.
    pub window: Option<usize>,
}

/// The chains among `nodes` (values typed by `g`), none of whose values but the result and the
/// log-sum-exp is `pinned` (read from elsewhere). Chains that share a node (one's result the
/// other's scores) are left out.
pub fn chains(g: &Graph, nodes: &[&Node], pinned: &dyn Fn(ValueId) -> bool) -> Vec<Chain> {
    let mut def = HashMap::new();
    let mut users: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        n.outputs.iter().for_each(|&v| _ = def.insert(v, i));
        n.inputs.iter().for_each(|&v| users.entry(v).or_default().push(i));
    }
    let m = Matcher { g, nodes, def, users, pinned };
    let found: Vec<Chain> = (0..nodes.len()).filter_map(|node| m.chain(node)).collect();
    let mut claims = vec![0usize; nodes.len()];
    found.iter().flat_map(|c| c.inner.iter().chain([&c.node])).for_each(|&i| claims[i] += 1);
    found.into_iter().filter(|c| c.inner.iter().chain([&c.node]).all(|&i| claims[i] == 1)).collect()
}

struct Matcher<'a> {
    g: &'a Graph,
    nodes: &'a [&'a Node],
    def: HashMap<ValueId, usize>,
    users: HashMap<ValueId, Vec<usize>>,
    pinned: &'a dyn Fn(ValueId) -> bool,
}

impl Matcher<'_> {
    fn readers(&self, v: ValueId) -> &[usize] {
        self.users.get(&v).map_or(&[], Vec::as_slice)
    }

    /// The node defining `v` when `v` has exactly `readers` readers and is not pinned.
    fn take(&self, inner: &mut Vec<usize>, v: ValueId, readers: usize) -> Option<&Node> {
        let &i = self.def.get(&v)?;
        (self.readers(v).len() == readers && !(self.pinned)(v)).then(|| {
            inner.push(i);
            self.nodes[i]
        })
    }

    /// `add(max, log(sum))` among the readers of `max` and `sum` (a second reader of each).
    fn log_sum_exp(&self, inner: &mut Vec<usize>, max: ValueId, sum: ValueId) -> Option<ValueId> {
        let (&[a, b], &[c, d]) = (self.readers(max), self.readers(sum)) else { return None };
        let log = [c, d].into_iter().find(|&i| matches!(self.nodes[i].op, Op::Unary(UnaryOp::Log)))?;
        let lv = self.nodes[log].outputs[0];
        let add = [a, b].into_iter().find(|&i| {
            let n = &self.nodes[i];
            matches!(n.op, Op::Binary(BinaryOp::Add)) && (n.inputs[..] == [max, lv] || n.inputs[..] == [lv, max])
        })?;
        (self.readers(lv).len() == 1 && !(self.pinned)(lv)).then_some(())?;
        inner.extend([log, add]);
        Some(self.nodes[add].outputs[0])
    }

    /// The chain ending at node `last`, if it is one.
    fn chain(&self, last: usize) -> Option<Chain> {
        let g = self.g;
        let mut inner = Vec::new();
        let o = self.nodes[last];
        if !matches!(o.op, Op::MatMul) {
            return None;
        }
        let (p, v) = (o.inputs[0], o.inputs[1]);
        let shape = &g.ty(p).shape;
        let rank = shape.len();
        let last_axis = |n: &Node, kind: ReduceKind| matches!(n.op, Op::Reduce { kind: k, axis, keepdim: true } if k == kind && axis + 1 == rank);
        let div = self.take(&mut inner, p, 1)?;
        let [e, l] = div.inputs[..] else { return None };
        if !matches!(div.op, Op::Binary(BinaryOp::Div)) || g.ty(e).shape != *shape {
            return None;
        }
        let lse_readers = self.readers(l).len();
        let sum = self.take(&mut inner, l, lse_readers.clamp(1, 2))?;
        if !last_axis(sum, ReduceKind::Sum) || sum.inputs[0] != e {
            return None;
        }
        let exp = self.take(&mut inner, e, 2)?;
        if !matches!(exp.op, Op::Unary(UnaryOp::Exp)) {
            return None;
        }
        let sub = self.take(&mut inner, exp.inputs[0], 1)?;
        let [a, m] = sub.inputs[..] else { return None };
        if !matches!(sub.op, Op::Binary(BinaryOp::Sub)) || g.ty(a).shape != *shape {
            return None;
        }
        let max = self.take(&mut inner, m, lse_readers.clamp(1, 2))?;
        if !last_axis(max, ReduceKind::Max) || max.inputs[0] != a {
            return None;
        }
        let lse = if lse_readers == 2 { Some(self.log_sum_exp(&mut inner, m, l)?) } else { None };
        // The masked (or plain) scores: read by the maximum and the subtraction.
        let a = self.take(&mut inner, a, 2)?;
        let constant = |v: ValueId| match self.def.get(&v).map(|&i| &self.nodes[i].op) {
            Some(Op::Const { value, .. }) => Some(*value),
            _ => None,
        };
        let Scores { product: s, scale, causal, window } = scores(g, a, |x| self.take(&mut inner, x, 1), constant)?;
        if rank < 2 || [s.inputs[0], s.inputs[1], v].iter().any(|&x| g.ty(x).dtype != DType::F32) {
            return None;
        }
        let (q, kt) = (s.inputs[0], s.inputs[1]);
        Some(Chain { node: last, inner, q, kt, v, max: m, sum: l, lse, scale, causal, window })
    }
}

/// Attention's scores as the softmax reads them: `q·kᵀ`, then optionally a scaling by a scalar
/// constant, then optionally the causal mask (with a window or not).
pub struct Scores<'n> {
    /// The product `q·kᵀ`.
    pub product: &'n Node,
    pub scale: Option<(BinaryOp, f64)>,
    pub causal: bool,
    pub window: Option<usize>,
}

/// The [`Scores`] whose last node is `s`, walking to each node before through `next` (which
/// checks that its value is read only on the way); `constant` gives a scalar constant's value.
pub fn scores<'n>(
    g: &Graph,
    mut s: &'n Node,
    mut next: impl FnMut(ValueId) -> Option<&'n Node>,
    constant: impl Fn(ValueId) -> Option<f64>,
) -> Option<Scores<'n>> {
    let (causal, window) = match s.op {
        Op::TriMask { fill, window } if fill == f64::NEG_INFINITY => (true, window),
        _ => (false, None),
    };
    if causal {
        s = next(s.inputs[0])?;
    }
    let scale = scale_of(g, s, constant);
    if scale.is_some() {
        s = next(s.inputs[0])?;
    }
    matches!(s.op, Op::MatMul).then_some(Scores { product: s, scale, causal, window })
}

/// `s = op(x, c)` as `(op, c)`, when `op` divides or multiplies by a scalar constant.
pub fn scale_of(g: &Graph, s: &Node, constant: impl Fn(ValueId) -> Option<f64>) -> Option<(BinaryOp, f64)> {
    let Op::Binary(op @ (BinaryOp::Div | BinaryOp::Mul)) = s.op else { return None };
    let c = constant(s.inputs[1])?;
    (g.ty(s.inputs[1]).shape.is_empty() && g.ty(s.inputs[0]).shape == g.ty(s.outputs[0]).shape).then_some((op, c))
}
