//! Softmax cross-entropy over the last axis as row steps, for a backend that runs them so: the
//! forward's statistics of each row of logits `x` in one step, and the backward the autodiff
//! gives it in another, the exponentials recomputed and the one-hot targets compared in place —
//! neither stored (each a pass over the `[.., V]` logits written and read again).
//!
//! The forward, as the language models' head writes it (the frontends' `head_and_loss`):
//!
//! ```text
//! m = reduce_max(x)                                  (keepdim; read by other steps too)
//! e = exp(sub(x, m'))      s = reduce_sum(e)         m' = m, or stop_gradient(m)
//! picked = reduce_sum(mul(one_hot(t), x))            (either operand order)
//! ```
//!
//! and its backward: `d = add(mul(a, one_hot(t)), mul(c, e))` (either order anywhere), `a` and
//! `c` per row (`[.., 1]`, broadcast explicitly or not). `e` and the one-hot are read by nothing
//! else, and no value inside is a graph output.

use std::collections::HashSet;

use tttc_ir::{BinaryOp, DType, Dim, Graph, Node, Op, ReduceKind, UnaryOp, ValueId};

/// The forward's statistics of each row of `x` (`[.., V]`), at the reduction of its maximum.
pub struct Forward {
    /// Where it runs: the node computing the maximum.
    pub node: usize,
    /// The chain's other nodes, not run: the steps define or recompute their values (the
    /// backward's included, when it is a step too).
    pub inner: Vec<usize>,
    pub x: ValueId,
    /// i64 `[..]`: each row's target.
    pub target: ValueId,
    /// `[.., 1]`: each row's maximum.
    pub max: ValueId,
    /// `[..]` (or `[.., 1]`): each row's sum of `exp(x − max)`.
    pub sum: ValueId,
    /// `[..]` (or `[.., 1]`): each row's logit at its target.
    pub picked: ValueId,
    pub backward: Option<Backward>,
}

/// The backward: `d = a·one_hot(target) + c·exp(x − shift)`.
pub struct Backward {
    /// Where it runs: the node computing `d`.
    pub node: usize,
    pub x: ValueId,
    pub target: ValueId,
    /// The maximum as the exponentials read it (`m'`).
    pub shift: ValueId,
    /// `[.., 1]` each.
    pub a: ValueId,
    pub c: ValueId,
    pub d: ValueId,
}

/// The chains of `g`, by the node each runs at. `users` lists each value's readers.
pub fn find(g: &Graph, users: &[Vec<usize>]) -> Vec<Forward> {
    let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let mut def = vec![usize::MAX; g.types.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        n.outputs.iter().for_each(|v| def[v.index()] = i);
    }
    let m = Matcher { g, users, def, outputs };
    let found: Vec<Forward> = (0..g.nodes.len()).filter_map(|i| m.rows(i)).collect();
    // Every node in one chain at most.
    let mut claims = vec![0usize; g.nodes.len()];
    found.iter().flat_map(Forward::nodes).for_each(|i| claims[i] += 1);
    found.into_iter().filter(|f| f.nodes().all(|i| claims[i] == 1)).collect()
}

impl Forward {
    /// Every node of the chain: where its steps run and the nodes they replace.
    pub fn nodes(&self) -> impl Iterator<Item = usize> + '_ {
        self.inner.iter().copied().chain([self.node]).chain(self.backward.as_ref().map(|b| b.node))
    }
}

struct Matcher<'a> {
    g: &'a Graph,
    users: &'a [Vec<usize>],
    def: Vec<usize>,
    outputs: HashSet<ValueId>,
}

impl Matcher<'_> {
    fn node(&self, v: ValueId) -> Option<&Node> {
        self.g.nodes.get(self.def[v.index()])
    }

    /// The readers of `v`, when it is no graph output.
    fn readers(&self, v: ValueId) -> Option<&[usize]> {
        (!self.outputs.contains(&v)).then(|| &self.users[v.index()][..])
    }

    /// Whether node `i` sums its operand over the last axis (either keepdim).
    fn row_sum(&self, i: usize) -> bool {
        let n = &self.g.nodes[i];
        matches!(n.op, Op::Reduce { kind: ReduceKind::Sum, axis, .. } if axis + 1 == self.g.ty(n.inputs[0]).rank())
    }

    /// The other operand of binary node `i` (of kind `op`), one of whose operands is `v`.
    fn other(&self, i: usize, op: BinaryOp, v: ValueId) -> Option<ValueId> {
        let n = &self.g.nodes[i];
        match (&n.op, &n.inputs[..]) {
            (Op::Binary(b), &[x, y]) if *b == op && x == v => Some(y),
            (Op::Binary(b), &[x, y]) if *b == op && y == v => Some(x),
            _ => None,
        }
    }

    fn rows(&self, i: usize) -> Option<Forward> {
        let g = self.g;
        let n = &g.nodes[i];
        let x = *n.inputs.first()?;
        let shape = &g.ty(x).shape;
        let rank = shape.len();
        if !matches!(n.op, Op::Reduce { kind: ReduceKind::Max, axis, keepdim: true } if axis + 1 == rank) || g.ty(x).dtype != DType::F32 {
            return None;
        }
        let depth = shape.last()?.as_const().filter(|&d| d > 0)?;
        let max = n.outputs[0];
        let mut inner = Vec::new();
        // The shift the exponentials subtract: the maximum, or it through a stop_gradient.
        let (sub, shift) = self.users[max.index()].iter().find_map(|&u| {
            let un = &g.nodes[u];
            match un.op {
                Op::Binary(BinaryOp::Sub) if un.inputs[..] == [x, max] => Some((u, max)),
                Op::StopGradient => {
                    let held = un.outputs[0];
                    self.users[held.index()]
                        .iter()
                        .find(|&&s| g.nodes[s].op == Op::Binary(BinaryOp::Sub) && g.nodes[s].inputs[..] == [x, held])
                        .map(|&s| (s, held))
                }
                _ => None,
            }
        })?;
        inner.push(sub);
        let [exp] = *self.readers(g.nodes[sub].outputs[0])? else { return None };
        if g.nodes[exp].op != Op::Unary(UnaryOp::Exp) {
            return None;
        }
        inner.push(exp);
        let e = g.nodes[exp].outputs[0];
        let e_readers = self.readers(e)?;
        let sum_node = *e_readers.iter().find(|&&u| self.row_sum(u))?;
        inner.push(sum_node);
        // The target's logit: a product with a one-hot of the row's length, summed.
        let (one_hot, product, picked_node) = self.users[x.index()].iter().find_map(|&u| {
            let oh = self.other(u, BinaryOp::Mul, x)?;
            let ohn = self.node(oh)?;
            let [sum] = *self.readers(g.nodes[u].outputs[0])? else { return None };
            let rows_alike = g.ty(oh).shape == *shape && g.ty(g.nodes[u].outputs[0]).shape == *shape;
            (matches!(ohn.op, Op::OneHot { depth: d } if d == depth) && rows_alike && self.row_sum(sum)).then_some((oh, u, sum))
        })?;
        let target = self.node(one_hot)?.inputs[0];
        // The target defined before the step runs (at the maximum), as x is, and the target
        // logit read only after.
        let target_at = self.def[target.index()];
        if (target_at != usize::MAX && target_at >= i) || picked_node < i {
            return None;
        }
        inner.extend([self.def[one_hot.index()], product, picked_node]);
        let oh_readers = self.readers(one_hot)?;
        let backward = match (e_readers.len(), oh_readers.len()) {
            (1, 1) => None,
            (2, 2) => {
                let e_mul = *e_readers.iter().find(|&&u| u != sum_node)?;
                let oh_mul = *oh_readers.iter().find(|&&u| u != product)?;
                Some(self.backward(&mut inner, (x, target), (e, e_mul), (one_hot, oh_mul), shift)?)
            }
            _ => return None,
        };
        let (sum, picked) = (g.nodes[sum_node].outputs[0], g.nodes[picked_node].outputs[0]);
        Some(Forward { node: i, inner, x, target, max, sum, picked, backward })
    }

    /// `d = add(mul(a, one_hot), mul(c, e))`, from the readers of `e` and of the one-hot.
    fn backward(
        &self,
        inner: &mut Vec<usize>,
        (x, target): (ValueId, ValueId),
        (e, e_mul): (ValueId, usize),
        (one_hot, oh_mul): (ValueId, usize),
        shift: ValueId,
    ) -> Option<Backward> {
        let g = self.g;
        let shape = &g.ty(x).shape;
        let mut row = shape.clone();
        *row.last_mut()? = Dim::c(1);
        // A per-row coefficient, broadcast explicitly (that broadcast read by nothing else) or not.
        let coefficient = |inner: &mut Vec<usize>, v: ValueId| -> Option<ValueId> {
            if g.ty(v).shape == row {
                return Some(v);
            }
            let n = self.node(v)?;
            let source = *n.inputs.first()?;
            (matches!(n.op, Op::Broadcast { .. }) && g.ty(source).shape == row && self.readers(v)?.len() == 1).then(|| {
                inner.push(self.def[v.index()]);
                source
            })
        };
        let c = coefficient(inner, self.other(e_mul, BinaryOp::Mul, e)?)?;
        let a = coefficient(inner, self.other(oh_mul, BinaryOp::Mul, one_hot)?)?;
        let (ce, aoh) = (g.nodes[e_mul].outputs[0], g.nodes[oh_mul].outputs[0]);
        let ([add], [add2]) = (self.readers(ce)?, self.readers(aoh)?) else { return None };
        if add != add2 || self.other(*add, BinaryOp::Add, ce) != Some(aoh) || g.ty(ce).shape != *shape || g.ty(aoh).shape != *shape {
            return None;
        }
        inner.extend([e_mul, oh_mul]);
        Some(Backward { node: *add, x, target, shift, a, c, d: g.nodes[*add].outputs[0] })
    }
}
