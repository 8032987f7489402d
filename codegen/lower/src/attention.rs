//! Attention as one step each way, for a backend that runs it so: the forward chain
//! `softmax(scale(q·kᵀ), causally masked) · v` (found by `tttc_passes::attention`) as one tiled
//! instruction with a running softmax, and the backward the autodiff gives it as another, the
//! weights recomputed per block from the row log-sum-exp — the `[.., tq, tk]` scores and weights
//! stored in neither.
//!
//! The backward, as `tttc_passes`' autodiff writes it (`p` read by the two products and `ds` by
//! the last two; every other value read only by the next op, none a graph output):
//!
//! ```text
//! p  = exp(sub(tri_mask(scale(matmul(q, kᵀ)), −∞), lse))     (mask and scale optional)
//! dv = matmul(pᵀ, d)               ds = scale(mul(p, sub(matmul(d, vᵀ), row)))
//! dq = matmul(ds, k)               dk = matmul(dsᵀ, q)
//! ```
//!
//! with `row = rowsum(d ⊙ out)` and `lse` computed before it by other steps.

use std::collections::{HashMap, HashSet};

use tttc_ir::{BinaryOp, Graph, Node, Op, UnaryOp, ValueId};
use tttc_passes::attention::{scale_of, scores, Scores};

/// An operand as a product reads it: its source, and whether transposed.
pub type View = (ValueId, bool);

/// A forward chain, by the planner's operand views (a transpose read as strides).
pub struct Chain {
    /// The last node (`matmul(p, v)`): its result is the chain's.
    pub node: usize,
    /// The other nodes of the chain, which no step needs.
    pub inner: Vec<usize>,
    /// The scores' product operands (`q`, `kᵀ`) and the values.
    pub q: View,
    pub k: View,
    pub v: View,
    /// Each query row's log-sum-exp, when something reads it (the backward).
    pub lse: Option<ValueId>,
    pub scale: Option<(BinaryOp, f32)>,
    pub causal: bool,
    pub window: Option<usize>,
}

/// The backward of a chain.
pub struct Backward {
    /// Where it runs: the node computing `ds`.
    pub node: usize,
    pub inner: Vec<usize>,
    /// The scores' operands (`q`, `kᵀ`), the values as `d·vᵀ` reads them (`vᵀ`) and the
    /// result's adjoint `d`.
    pub q: View,
    pub k: View,
    pub v: View,
    pub d_out: View,
    /// `[.., tq, 1]`: each row's log-sum-exp and `rowsum(d ⊙ out)`.
    pub lse: ValueId,
    pub row: ValueId,
    /// The adjoints `dq` `[.., tq, d]`, `dk` `[.., tk, d]`, `dv` `[.., tk, dv]`, each with
    /// whether it is stored transposed.
    pub dq: (ValueId, bool),
    pub dk: (ValueId, bool),
    pub dv: (ValueId, bool),
    pub scale: Option<(BinaryOp, f32)>,
    pub causal: bool,
    pub window: Option<usize>,
}

/// The forward chains and backwards of `g`, by the node each runs at. `users` lists each
/// value's readers; `views` the operands products read through a view. Chains that share a node
/// are left to their ops.
pub fn find(g: &Graph, users: &[Vec<usize>], views: &HashMap<ValueId, View>) -> (HashMap<usize, Chain>, HashMap<usize, Backward>) {
    let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let view = |x: ValueId| views.get(&x).copied().unwrap_or((x, false));
    let chain = |c: tttc_passes::attention::Chain| Chain {
        node: c.node,
        inner: c.inner,
        q: view(c.q),
        k: view(c.kt),
        v: view(c.v),
        lse: c.lse,
        scale: c.scale.map(|(op, c)| (op, c as f32)),
        causal: c.causal,
        window: c.window,
    };
    let nodes: Vec<&Node> = g.nodes.iter().collect();
    let forward: Vec<Chain> = tttc_passes::attention::chains(g, &nodes, &|v| outputs.contains(&v)).into_iter().map(chain).collect();
    let mut def = vec![usize::MAX; g.types.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        n.outputs.iter().for_each(|v| def[v.index()] = i);
    }
    let m = Matcher { g, users, views, def, outputs };
    let backward: Vec<Backward> = (0..g.nodes.len()).filter_map(|i| m.backward(i)).collect();
    // Every node in one step at most.
    let mut claims = vec![0usize; g.nodes.len()];
    let steps = forward.iter().map(|c| (&c.inner, c.node)).chain(backward.iter().map(|b| (&b.inner, b.node)));
    steps.flat_map(|(inner, node)| inner.iter().copied().chain([node])).for_each(|i| claims[i] += 1);
    let alone = |inner: &[usize], node: usize| inner.iter().chain([&node]).all(|&i| claims[i] == 1);
    (
        forward.into_iter().filter(|c| alone(&c.inner, c.node)).map(|c| (c.node, c)).collect(),
        backward.into_iter().filter(|b| alone(&b.inner, b.node)).map(|b| (b.node, b)).collect(),
    )
}

struct Matcher<'a> {
    g: &'a Graph,
    users: &'a [Vec<usize>],
    views: &'a HashMap<ValueId, View>,
    def: Vec<usize>,
    outputs: HashSet<ValueId>,
}

impl Matcher<'_> {
    fn view(&self, x: ValueId) -> View {
        self.views.get(&x).copied().unwrap_or((x, false))
    }

    /// The node defining `v` when `v` has exactly `readers` readers and is no graph output.
    fn take(&self, inner: &mut Vec<usize>, v: ValueId, readers: usize) -> Option<&Node> {
        let i = self.def[v.index()];
        (i != usize::MAX && self.users[v.index()].len() == readers && !self.outputs.contains(&v)).then(|| {
            inner.push(i);
            &self.g.nodes[i]
        })
    }

    /// The only reader of `v`, when it has one and is no graph output.
    fn next(&self, inner: &mut Vec<usize>, v: ValueId) -> Option<&Node> {
        let [i] = self.users[v.index()][..] else { return None };
        (!self.outputs.contains(&v)).then(|| {
            inner.push(i);
            &self.g.nodes[i]
        })
    }

    /// The product that reader `u` of `x` is or leads to (through a transposed view of `x`),
    /// when it computes `left·right` (`x` read as one of them): its result and whether it is
    /// stored transposed (computed as `rightᵀ·leftᵀ`). Its nodes go to `inner`.
    fn product(&self, inner: &mut Vec<usize>, x: ValueId, u: usize, left: View, right: View) -> Option<(ValueId, bool)> {
        let n = &self.g.nodes[u];
        let node = match n.op {
            Op::MatMul => u,
            Op::Transpose { .. } if self.views.get(&n.outputs[0]) == Some(&(x, true)) => {
                let [product] = self.users[n.outputs[0].index()][..] else { return None };
                inner.push(u);
                product
            }
            _ => return None,
        };
        let p = &self.g.nodes[node];
        if !matches!(p.op, Op::MatMul) {
            return None;
        }
        let flip = |(v, t): View| (v, !t);
        let operands = (self.view(p.inputs[0]), self.view(p.inputs[1]));
        let transposed = if operands == (left, right) {
            false
        } else if operands == (flip(right), flip(left)) {
            true
        } else {
            return None;
        };
        inner.push(node);
        Some((p.outputs[0], transposed))
    }

    /// The value of a scalar constant.
    fn constant(&self, v: ValueId) -> Option<f64> {
        match self.g.nodes.get(self.def[v.index()])?.op {
            Op::Const { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The backward whose weights `p` node `e` recomputes, if it is one.
    fn backward(&self, e: usize) -> Option<Backward> {
        let g = self.g;
        let exp = &g.nodes[e];
        if !matches!(exp.op, Op::Unary(UnaryOp::Exp)) {
            return None;
        }
        let p = exp.outputs[0];
        let shape = &g.ty(p).shape;
        let rank = shape.len();
        let mut inner = vec![e];
        let sub = self.take(&mut inner, exp.inputs[0], 1)?;
        let [a, lse] = sub.inputs[..] else { return None };
        let mut row_shape = shape.clone();
        *row_shape.last_mut()? = tttc_ir::Dim::c(1);
        if !matches!(sub.op, Op::Binary(BinaryOp::Sub)) || g.ty(a).shape != *shape || g.ty(lse).shape != row_shape {
            return None;
        }
        let a = self.take(&mut inner, a, 1)?;
        let Scores { product: s, scale, causal, window } = scores(g, a, |x| self.take(&mut inner, x, 1), |v| self.constant(v))?;
        if rank < 2 || g.ty(p).dtype != tttc_ir::DType::F32 {
            return None;
        }
        let (q, k) = (self.view(s.inputs[0]), self.view(s.inputs[1]));
        // p: read by `mul(p, ·)` and by the product `pᵀ·d`.
        let [u0, u1] = self.users[p.index()][..] else { return None };
        let (mul, dv) = if matches!(g.nodes[u0].op, Op::Binary(BinaryOp::Mul)) { (u0, u1) } else { (u1, u0) };
        if self.outputs.contains(&p) || !matches!(g.nodes[mul].op, Op::Binary(BinaryOp::Mul)) {
            return None;
        }
        inner.push(mul);
        let centred = match g.nodes[mul].inputs[..] {
            [x, c] if x == p => c,
            [c, x] if x == p => c,
            _ => return None,
        };
        let centred = self.take(&mut inner, centred, 1)?;
        let [dp, row] = centred.inputs[..] else { return None };
        if !matches!(centred.op, Op::Binary(BinaryOp::Sub)) || g.ty(row).shape != row_shape {
            return None;
        }
        let dp = self.take(&mut inner, dp, 1)?;
        if !matches!(dp.op, Op::MatMul) {
            return None;
        }
        let (d_out, v) = (self.view(dp.inputs[0]), self.view(dp.inputs[1]));
        let dv = self.product(&mut inner, p, dv, (p, true), d_out)?;
        // ds, scaled as the scores were.
        let mut ds = g.nodes[mul].outputs[0];
        if let Some(want) = scale {
            let n = self.next(&mut inner, ds)?;
            if n.inputs[0] != ds || scale_of(g, n, |v| self.constant(v)) != Some(want) {
                return None;
            }
            ds = n.outputs[0];
        }
        // ds: read by the products `ds·k` and `dsᵀ·q`.
        let [u0, u1] = self.users[ds.index()][..] else { return None };
        if self.outputs.contains(&ds) {
            return None;
        }
        let both = |dq: usize, dk: usize| {
            let mut inner = inner.clone();
            let dq = self.product(&mut inner, ds, dq, (ds, false), (k.0, !k.1))?;
            let dk = self.product(&mut inner, ds, dk, (ds, true), q)?;
            Some((inner, dq, dk))
        };
        let (mut inner, dq, dk) = both(u0, u1).or_else(|| both(u1, u0))?;
        // The step runs where ds is computed: after every value it reads (each read on the way
        // to ds), before its results' products and so before anything reads them.
        let node = self.def[ds.index()];
        inner.retain(|&i| i != node);
        let scale = scale.map(|(op, c)| (op, c as f32));
        Some(Backward { node, inner, q, k, v, d_out, lse, row, dq, dk, dv, scale, causal, window })
    }
}
