//! Mamba's selective scan as one step, for a backend that runs it so: a scan over time, one
//! position per iteration, whose only carry `h [B, D, N]` follows a diagonal linear recurrence
//! with an input-dependent decay,
//!
//! ```text
//! h  = exp(col(Δ) ⊙ A) ⊙ h + col(Δu) ⊙ b        (col: [B, 1, D] → [B, D, 1]; b: [B, 1, N])
//! y  = row(h · col(c))                          (c: [B, 1, N] → [B, N, 1]; y: [B, 1, D])
//! ```
//!
//! with `A [D, N]` the same for every position. Run op by op it is a few small steps per
//! position, each a pass over the `[B, D, N]` state; as one step a backend keeps a block of
//! channels' state in registers for the whole sequence and computes each decay where it is used
//! (`exp` once per (Δ, A) pair and position), reading the sequences once. The body must be
//! exactly this (the frontend's `selective_scan_step`, as the pass pipeline leaves it), with
//! operands in either order where the op commutes; anything else keeps its ops.

use std::collections::HashMap;

use tttc_ir::{BinaryOp, DType, Dim, Graph, Node, Op, Scan, UnaryOp, ValueId};

/// Where a matched scan's operands are: indices into the scan node's inputs (its body's
/// arguments). Its results are the final state and `y` stacked along time, `[B, T, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recurrence {
    /// The initial state `[B, D, N]` (the carry).
    pub state: usize,
    /// The sequences `Δ` and `Δu` `[B, T, D]`, `b` and `c` `[B, T, N]`.
    pub dt: usize,
    pub du: usize,
    pub b: usize,
    pub c: usize,
    /// `A [D, N]`, an invariant.
    pub a: usize,
}

/// The nodes of the body: two reshapes to columns, three products and an `exp`, the sum, `c`'s
/// column, the contraction and `y`'s reshape.
const NODES: usize = 10;

/// `scan` as a [`Recurrence`], when its body is one.
pub fn find(scan: &Scan) -> Option<Recurrence> {
    let g = &scan.body;
    if scan.chunk != 1 || scan.reverse || scan.axis != 1 || scan.carries != 1 || g.outputs.len() != 2 || g.nodes.len() != NODES {
        return None;
    }
    let m = Matcher { g, producer: g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |&v| (v, i))).collect() };
    let shape = |v: ValueId| g.ty(v).shape.clone();
    let [h_arg, h_new, y] = [g.args[0].value, g.outputs[0].1, g.outputs[1].1];
    let [batch, width, states] = <[Dim; 3]>::try_from(shape(h_arg)).ok()?;
    width.as_const()?;
    states.as_const()?;
    if g.args.iter().any(|a| g.ty(a.value).dtype != DType::F32) {
        return None;
    }
    let one = Dim::c(1);
    let seq = |v: ValueId, last: &Dim| -> Option<usize> {
        let i = m.arg(v)?;
        (i >= scan.carries && i < scan.carries + scan.seqs && shape(v) == [batch.clone(), one.clone(), last.clone()]).then_some(i)
    };
    // A sequence of channels as a column, `[B, 1, D]` → `[B, D, 1]`.
    let column = |v: ValueId| -> Option<usize> {
        let (Op::Reshape { .. }, [x]) = m.node(v).map(|n| (&n.op, n.inputs.as_slice()))? else { return None };
        (shape(v) == [batch.clone(), width.clone(), one.clone()]).then_some(())?;
        seq(*x, &width)
    };
    let [kept, input] = m.binary(h_new, BinaryOp::Add)?;
    let matched = either([kept, input], |kept, input| {
        let decay = either(m.binary(kept, BinaryOp::Mul)?, |decay, h| (h == h_arg).then_some(decay))?;
        let (Op::Unary(UnaryOp::Exp), [rate]) = m.node(decay).map(|n| (&n.op, n.inputs.as_slice()))? else { return None };
        let (dt, a) = either(m.binary(*rate, BinaryOp::Mul)?, |col, a| {
            let i = m.arg(a)?;
            (i >= scan.carries + scan.seqs && shape(a) == [width.clone(), states.clone()]).then_some((column(col)?, i))
        })?;
        let (du, b) = either(m.binary(input, BinaryOp::Mul)?, |col, b| Some((column(col)?, seq(b, &states)?)))?;
        Some((dt, du, b, a))
    })?;
    let (dt, du, b, a) = matched;
    // y = reshape(matmul(h, col(c))), [B, D, 1] → [B, 1, D].
    let (Op::Reshape { .. }, [product]) = m.node(y).map(|n| (&n.op, n.inputs.as_slice()))? else { return None };
    let (Op::MatMul, [h, c_col]) = m.node(*product).map(|n| (&n.op, n.inputs.as_slice()))? else { return None };
    let as_column = |n: &&Node| match &n.op {
        Op::Reshape { .. } => true,
        Op::Transpose { perm } => perm == &[0, 2, 1],
        _ => false,
    };
    let c_column = m.node(*c_col).filter(|n| as_column(n) && shape(*c_col) == [batch.clone(), states.clone(), one.clone()])?;
    let c = seq(c_column.inputs[0], &states)?;
    let distinct = [dt, du, b, c].iter().enumerate().all(|(k, x)| ![dt, du, b, c][k + 1..].contains(x));
    (*h == h_new && shape(y) == [batch, one, width] && distinct).then_some(Recurrence { state: 0, dt, du, b, c, a })
}

/// `f(x, y)`, else `f(y, x)`: an op's operands in either order.
fn either<T>([x, y]: [ValueId; 2], f: impl Fn(ValueId, ValueId) -> Option<T>) -> Option<T> {
    f(x, y).or_else(|| f(y, x))
}

struct Matcher<'a> {
    g: &'a Graph,
    producer: HashMap<ValueId, usize>,
}

impl Matcher<'_> {
    fn node(&self, v: ValueId) -> Option<&Node> {
        self.producer.get(&v).map(|&i| &self.g.nodes[i])
    }

    fn arg(&self, v: ValueId) -> Option<usize> {
        self.g.args.iter().position(|a| a.value == v)
    }

    /// The operands of `v` when a binary `op` of two values of `v`'s dtype computes it.
    fn binary(&self, v: ValueId, op: BinaryOp) -> Option<[ValueId; 2]> {
        let n = self.node(v)?;
        match (&n.op, n.inputs.as_slice()) {
            (Op::Binary(o), &[x, y]) if *o == op => Some([x, y]),
            _ => None,
        }
    }
}
