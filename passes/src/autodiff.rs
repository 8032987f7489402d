//! Reverse-mode automatic differentiation over the IR.
//!
//! [`expand_grads`] is the `inner-autodiff` pass: every `grad` op (the gradient of a body's scalar
//! output with respect to some of its arguments) is replaced by the body's ops, inlined, followed
//! by the ops of its reverse sweep. [`backprop`] is the reverse sweep itself: one vector-Jacobian
//! product rule per op, adjoints accumulated per value, broadcasting undone by summation.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::{BinaryOp, DType, Dim, Graph, Node, Op, ReduceKind, Scan, Type, UnaryOp, ValueId};

/// Replaces every `grad` op (in scan bodies too) by explicit gradient ops.
pub fn expand_grads(g: &Graph) -> Result<Graph> {
    let mut out = Graph::new(&g.name);
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for a in &g.args {
        map[a.value.index()] = Some(out.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    let at = |map: &[Option<ValueId>], v: ValueId| map[v.index()].context("operand used before it is defined");
    for node in &g.nodes {
        let ins: Vec<ValueId> = node.inputs.iter().map(|&v| at(&map, v)).collect::<Result<_>>()?;
        let outs = match &node.op {
            Op::Grad(grad) => {
                let body = expand_grads(&grad.body)?;
                inline_and_differentiate(&mut out, &body, &ins, &grad.wrt)?
            }
            Op::Scan(scan) => {
                let body = expand_grads(&scan.body)?;
                out.push(Op::Scan(Box::new(Scan { body, ..(**scan).clone() })), &ins)?
            }
            op => out.push(op.clone(), &ins)?,
        };
        for (&o, v) in node.outputs.iter().zip(outs) {
            map[o.index()] = Some(v);
        }
    }
    for (name, v) in &g.outputs {
        out.output(name, at(&map, *v)?);
    }
    Ok(out)
}

/// Copies `body` into `g` with its arguments bound to `args`, then appends the gradient of its
/// output with respect to the arguments `wrt`.
fn inline_and_differentiate(g: &mut Graph, body: &Graph, args: &[ValueId], wrt: &[usize]) -> Result<Vec<ValueId>> {
    let mut args = args.to_vec();
    // An operand passed for two arguments would mix their adjoints: give each its own value.
    for &i in wrt {
        if args.iter().filter(|&&a| a == args[i]).count() > 1 {
            let shape = g.ty(args[i]).shape.clone();
            args[i] = g.reshape(args[i], shape)?;
        }
    }
    let mut map: Vec<Option<ValueId>> = vec![None; body.types.len()];
    for (a, &v) in body.args.iter().zip(&args) {
        map[a.value.index()] = Some(v);
    }
    let mut tape = Vec::with_capacity(body.nodes.len());
    for node in &body.nodes {
        let ins: Vec<ValueId> = node.inputs.iter().map(|v| map[v.index()].context("undefined operand")).collect::<Result<_>>()?;
        let outs = g.push(node.op.clone(), &ins)?;
        for (&o, &v) in node.outputs.iter().zip(&outs) {
            map[o.index()] = Some(v);
        }
        tape.push(Node { op: node.op.clone(), inputs: ins, outputs: outs });
    }
    let loss = map[body.outputs[0].1.index()].context("grad body output undefined")?;
    let targets: Vec<ValueId> = wrt.iter().map(|&i| args[i]).collect();
    backprop(g, &tape, loss, &targets)
}

/// Appends to `g` the gradient of the scalar `out` with respect to each of `wrt`, through the
/// nodes of `tape` (already in `g`, in execution order). A value `out` does not depend on gets a
/// zero gradient.
pub fn backprop(g: &mut Graph, tape: &[Node], out: ValueId, wrt: &[ValueId]) -> Result<Vec<ValueId>> {
    ensure!(g.ty(out).rank() == 0, "can only differentiate a scalar, got {}", g.ty(out));
    let mut adj: HashMap<ValueId, ValueId> = HashMap::new();
    adj.insert(out, g.scalar(1.0)?);
    for node in tape.iter().rev() {
        let seeds: Vec<Option<ValueId>> = node.outputs.iter().map(|o| adj.get(o).copied()).collect();
        if seeds.iter().all(Option::is_none) {
            continue;
        }
        let grads = vjp(g, node, &seeds).with_context(|| format!("differentiating {}", node.op.name()))?;
        for (&input, grad) in node.inputs.iter().zip(grads) {
            if let Some(d) = grad {
                let total = match adj.get(&input) {
                    Some(&prev) => g.add(prev, d)?,
                    None => d,
                };
                adj.insert(input, total);
            }
        }
    }
    wrt.iter()
        .map(|&w| match adj.get(&w) {
            Some(&d) => Ok(d),
            None => zeros_like(g, w),
        })
        .collect()
}

fn zeros_like(g: &mut Graph, v: ValueId) -> Result<ValueId> {
    let shape = g.ty(v).shape.clone();
    let zero = g.scalar(0.0)?;
    g.broadcast(zero, shape)
}

/// The vector-Jacobian product of one node: the adjoint of each input (`None`: no gradient flows,
/// as into integer operands), given the adjoints of its outputs.
fn vjp(g: &mut Graph, node: &Node, seeds: &[Option<ValueId>]) -> Result<Vec<Option<ValueId>>> {
    let ins = &node.inputs;
    let y = node.outputs.first().copied();
    let d = match seeds {
        [Some(d)] => *d,
        _ => bail!("{} is not differentiable yet", node.op.name()),
    };
    let y = y.expect("one seed, one output");
    let x = |i: usize| ins[i];
    Ok(match &node.op {
        Op::Unary(u) => vec![Some(unary_vjp(g, *u, x(0), y, d)?)],
        Op::Binary(b) => {
            let (a, c) = (x(0), x(1));
            if g.ty(a).dtype != DType::F32 {
                return Ok(vec![None, None]);
            }
            let (da, dc) = match b {
                BinaryOp::Add => (d, d),
                BinaryOp::Sub => (d, g.unary(UnaryOp::Neg, d)?),
                BinaryOp::Mul => (g.mul(d, c)?, g.mul(d, a)?),
                BinaryOp::Div => {
                    let da = g.div(d, c)?;
                    let q = g.div(y, c)?;
                    let dq = g.mul(d, q)?;
                    (da, g.unary(UnaryOp::Neg, dq)?)
                }
                BinaryOp::Max => {
                    // Ties go to the first operand.
                    let first = g.binary(BinaryOp::Ge, a, c)?;
                    let one = g.scalar(1.0)?;
                    let second = g.sub(one, first)?;
                    (g.mul(d, first)?, g.mul(d, second)?)
                }
                BinaryOp::Ge => return Ok(vec![None, None]),
            };
            vec![Some(unbroadcast(g, da, a)?), Some(unbroadcast(g, dc, c)?)]
        }
        Op::Const { .. } | Op::Iota { .. } | Op::OneHot { .. } => vec![None; ins.len()],
        Op::Cast { .. } => {
            let both_float = g.ty(x(0)).dtype == DType::F32 && g.ty(y).dtype == DType::F32;
            vec![if both_float { Some(d) } else { None }]
        }
        Op::Reduce { kind, axis, keepdim } => {
            let xt = g.ty(x(0)).clone();
            let mut kept = xt.shape.clone();
            kept[*axis] = Dim::c(1);
            let (dk, yk) = if *keepdim {
                (d, y)
            } else {
                (g.reshape(d, kept.clone())?, g.reshape(y, kept)?)
            };
            let spread = g.broadcast(dk, xt.shape.clone())?;
            vec![Some(match kind {
                ReduceKind::Sum => spread,
                ReduceKind::Mean => {
                    let count = axis_length(g, &xt, *axis)?;
                    g.div(spread, count)?
                }
                ReduceKind::Max => {
                    // The gradient goes to every position that attains the maximum.
                    let at_max = g.binary(BinaryOp::Ge, x(0), yk)?;
                    g.mul(spread, at_max)?
                }
            })]
        }
        Op::MatMul => {
            let (a, b) = (x(0), x(1));
            let bt = g.transpose_last2(b)?;
            let da = g.matmul(d, bt)?;
            let at = g.transpose_last2(a)?;
            let db = g.matmul(at, d)?;
            vec![Some(unbroadcast(g, da, a)?), Some(unbroadcast(g, db, b)?)]
        }
        Op::Reshape { .. } => {
            let shape = g.ty(x(0)).shape.clone();
            vec![Some(g.reshape(d, shape)?)]
        }
        Op::Transpose { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(g.transpose(d, &inverse)?)]
        }
        Op::Broadcast { .. } => vec![Some(unbroadcast(g, d, x(0))?)],
        Op::Slice { axis, start, end } => vec![Some(slice_vjp(g, d, x(0), *axis, *start, *end)?)],
        Op::Concat { axis } => concat_vjp(g, d, ins, *axis)?,
        Op::Pad { axis, before, after } => {
            let end = if *after == 0 { None } else { Some(-(*after as i64)) };
            vec![Some(g.slice(d, *axis as i64, *before as i64, end)?)]
        }
        Op::TriMask { .. } => vec![Some(g.tri_mask(d, 0.0)?)],
        Op::Gather { .. } => bail!("gather is not differentiable yet (needs a scatter-add)"),
        Op::Scan(_) => bail!("scan is not differentiable yet"),
        Op::Grad(_) => bail!("nested grad must be expanded first"),
        Op::Fused(_) => bail!("fused regions are not differentiable: differentiate before the fuse pass"),
    })
}

fn unary_vjp(g: &mut Graph, u: UnaryOp, x: ValueId, y: ValueId, d: ValueId) -> Result<ValueId> {
    let local = match u {
        UnaryOp::Neg => return g.unary(UnaryOp::Neg, d),
        UnaryOp::Exp => y,
        UnaryOp::Log => return g.div(d, x),
        UnaryOp::Sqrt => {
            let half = g.scalar(0.5)?;
            let h = g.mul(d, half)?;
            return g.div(h, y);
        }
        UnaryOp::Rsqrt => {
            // d/dx x^-½ = −½ y³
            let y2 = g.mul(y, y)?;
            let y3 = g.mul(y2, y)?;
            let k = g.scalar(-0.5)?;
            g.mul(k, y3)?
        }
        UnaryOp::Tanh => {
            let one = g.scalar(1.0)?;
            let y2 = g.mul(y, y)?;
            g.sub(one, y2)?
        }
        UnaryOp::Sigmoid => {
            let one = g.scalar(1.0)?;
            let c = g.sub(one, y)?;
            g.mul(y, c)?
        }
        UnaryOp::Silu => {
            // s + x·s·(1 − s), s = sigmoid(x)
            let s = g.unary(UnaryOp::Sigmoid, x)?;
            let one = g.scalar(1.0)?;
            let c = g.sub(one, s)?;
            let xc = g.mul(x, c)?;
            let t = g.add(one, xc)?;
            g.mul(s, t)?
        }
        UnaryOp::GeluTanh => gelu_tanh_derivative(g, x)?,
        UnaryOp::Softplus => g.unary(UnaryOp::Sigmoid, x)?,
        UnaryOp::Sin => g.unary(UnaryOp::Cos, x)?,
        UnaryOp::Cos => {
            let s = g.unary(UnaryOp::Sin, x)?;
            g.unary(UnaryOp::Neg, s)?
        }
    };
    g.mul(d, local)
}

/// d gelu_tanh(x) / dx = ½(1 + t) + ½x(1 − t²)·c(1 + 3·0.044715x²), t = tanh(c(x + 0.044715x³)), c = √(2/π).
fn gelu_tanh_derivative(g: &mut Graph, x: ValueId) -> Result<ValueId> {
    let c = g.scalar((2.0 / std::f64::consts::PI).sqrt())?;
    let one = g.scalar(1.0)?;
    let half = g.scalar(0.5)?;
    let x2 = g.mul(x, x)?;
    let k = g.scalar(0.044715)?;
    let kx2 = g.mul(k, x2)?;
    let inner = g.add(one, kx2)?;
    let u = g.mul(x, inner)?;
    let u = g.mul(c, u)?;
    let t = g.unary(UnaryOp::Tanh, u)?;
    let left = g.add(one, t)?;
    let left = g.mul(half, left)?;
    let t2 = g.mul(t, t)?;
    let sech2 = g.sub(one, t2)?;
    let k3 = g.scalar(3.0 * 0.044715)?;
    let k3x2 = g.mul(k3, x2)?;
    let du = g.add(one, k3x2)?;
    let du = g.mul(c, du)?;
    let right = g.mul(x, sech2)?;
    let right = g.mul(right, du)?;
    let right = g.mul(half, right)?;
    g.add(left, right)
}

/// The length of `axis` of a value of type `t`, as an f32 scalar (a `[…, 1, …]` tensor when the
/// length is symbolic: the sum of ones along the axis).
fn axis_length(g: &mut Graph, t: &Type, axis: usize) -> Result<ValueId> {
    if let Some(n) = t.shape[axis].as_const() {
        return g.scalar(n as f64);
    }
    let one = g.scalar(1.0)?;
    let ones = g.broadcast(one, vec![t.shape[axis].clone()])?;
    g.reduce(ReduceKind::Sum, ones, 0, false)
}

/// Sums `d` (the adjoint of a broadcast result) back to the shape of `x`.
fn unbroadcast(g: &mut Graph, d: ValueId, x: ValueId) -> Result<ValueId> {
    let want = g.ty(x).shape.clone();
    let mut d = d;
    while g.ty(d).rank() > want.len() {
        d = g.reduce(ReduceKind::Sum, d, 0, false)?;
    }
    for (axis, w) in want.iter().enumerate() {
        if w.is_one() && !g.ty(d).shape[axis].is_one() {
            d = g.reduce(ReduceKind::Sum, d, axis as i64, true)?;
        }
    }
    ensure!(g.ty(d).shape == want, "cannot sum {} back to {}", g.ty(d), g.ty(x));
    Ok(d)
}

/// The adjoint of `x[start:end]` along `axis`: `d` zero-padded back to `x`'s length.
fn slice_vjp(g: &mut Graph, d: ValueId, x: ValueId, axis: usize, start: i64, end: Option<i64>) -> Result<ValueId> {
    let len = g.ty(x).shape[axis].clone();
    let before = if start >= 0 { Some(start as usize) } else { len.as_const().map(|n| (n as i64 + start) as usize) };
    let after = match end {
        None => Some(0),
        Some(e) if e < 0 => Some((-e) as usize),
        Some(e) => len.as_const().map(|n| n - e as usize),
    };
    match (before, after) {
        (Some(b), Some(a)) => g.pad(d, axis as i64, b, a),
        _ => bail!("the adjoint of slice [{start}:{end:?}] of symbolic length {len} has no static padding"),
    }
}

/// The adjoints of concatenated operands: the matching pieces of `d`.
fn concat_vjp(g: &mut Graph, d: ValueId, ins: &[ValueId], axis: usize) -> Result<Vec<Option<ValueId>>> {
    let mut start = 0i64;
    let mut out = Vec::with_capacity(ins.len());
    for (i, &x) in ins.iter().enumerate() {
        let len = g.ty(x).shape[axis].clone();
        let end = match len.as_const() {
            Some(n) if i + 1 < ins.len() => Some(start + n as i64),
            _ if i + 1 == ins.len() => None,
            _ => bail!("the adjoint of concat needs static lengths before the last operand"),
        };
        out.push(Some(g.slice(d, axis as i64, start, end)?));
        if let Some(e) = end {
            start = e;
        }
    }
    Ok(out)
}
