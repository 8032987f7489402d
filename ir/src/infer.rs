//! Type inference: the result types of an op from its operand types. The builder and the verifier
//! share it, so a graph is checked by the same rules it was built with.

use anyhow::{bail, ensure, Context, Result};

use crate::op::{Fused, Grad, Op, Scan, UnaryOp};
use crate::types::{DType, Dim, Type};

pub fn infer(op: &Op, ins: &[&Type]) -> Result<Vec<Type>> {
    let arity = |n: usize| -> Result<()> {
        ensure!(ins.len() == n, "expects {n} operands, got {}", ins.len());
        Ok(())
    };
    let one = |t: Type| Ok(vec![t]);
    match op {
        Op::Unary(u) => {
            arity(1)?;
            if *u != UnaryOp::Neg {
                ensure!(ins[0].dtype == DType::F32, "needs f32, got {}", ins[0]);
            }
            one(ins[0].clone())
        }
        Op::Binary(_) => {
            arity(2)?;
            ensure!(ins[0].dtype == ins[1].dtype, "operand types differ");
            one(Type::new(ins[0].dtype, broadcast_shapes(&ins[0].shape, &ins[1].shape)?))
        }
        Op::Const { dtype, .. } => {
            arity(0)?;
            one(Type::new(*dtype, vec![]))
        }
        Op::Iota { len, dtype } => {
            arity(0)?;
            one(Type::new(*dtype, vec![len.clone()]))
        }
        Op::Cast { to } => {
            arity(1)?;
            one(Type::new(*to, ins[0].shape.clone()))
        }
        Op::Reduce { axis, keepdim, .. } => {
            arity(1)?;
            let t = ins[0];
            ensure!(*axis < t.rank(), "axis {axis} out of range");
            ensure!(t.dtype == DType::F32, "needs f32");
            let mut shape = t.shape.clone();
            if *keepdim {
                shape[*axis] = Dim::c(1);
            } else {
                shape.remove(*axis);
            }
            one(Type::new(t.dtype, shape))
        }
        Op::MatMul => {
            arity(2)?;
            let (a, b) = (ins[0], ins[1]);
            ensure!(a.rank() >= 2 && b.rank() >= 2, "needs rank ≥ 2 operands");
            ensure!(a.dtype == DType::F32 && b.dtype == DType::F32, "needs f32");
            let (ra, rb) = (a.rank(), b.rank());
            ensure!(a.shape[ra - 1] == b.shape[rb - 2], "contracted dimensions differ: {} vs {}", a.shape[ra - 1], b.shape[rb - 2]);
            let mut shape = broadcast_shapes(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
            shape.push(a.shape[ra - 2].clone());
            shape.push(b.shape[rb - 1].clone());
            one(Type::new(DType::F32, shape))
        }
        Op::Reshape { shape } => {
            arity(1)?;
            ensure!(same_volume(&ins[0].shape, shape), "cannot reshape {} to {}", ins[0], Type::new(ins[0].dtype, shape.clone()));
            one(Type::new(ins[0].dtype, shape.clone()))
        }
        Op::Transpose { perm } => {
            arity(1)?;
            let t = ins[0];
            let mut seen = vec![false; t.rank()];
            ensure!(perm.len() == t.rank(), "permutation {perm:?} does not fit rank {}", t.rank());
            for &p in perm {
                ensure!(p < t.rank() && !seen[p], "{perm:?} is not a permutation");
                seen[p] = true;
            }
            one(Type::new(t.dtype, perm.iter().map(|&p| t.shape[p].clone()).collect()))
        }
        Op::Broadcast { shape } => {
            arity(1)?;
            let t = ins[0];
            ensure!(t.rank() <= shape.len(), "cannot broadcast {t} to a lower rank");
            let lead = shape.len() - t.rank();
            for (d, target) in t.shape.iter().zip(&shape[lead..]) {
                ensure!(d == target || d.is_one(), "cannot broadcast {t} to {shape:?}");
            }
            one(Type::new(t.dtype, shape.clone()))
        }
        Op::Slice { axis, start, end } => {
            arity(1)?;
            let t = ins[0];
            ensure!(*axis < t.rank(), "axis {axis} out of range");
            let mut shape = t.shape.clone();
            shape[*axis] = slice_len(&t.shape[*axis], *start, *end)?;
            one(Type::new(t.dtype, shape))
        }
        Op::Concat { axis } => {
            ensure!(!ins.is_empty(), "needs operands");
            let t0 = ins[0];
            ensure!(*axis < t0.rank(), "axis {axis} out of range");
            let mut len = Dim::c(0);
            for t in ins {
                ensure!(t.dtype == t0.dtype && t.rank() == t0.rank(), "operands differ: {t0} vs {t}");
                for (i, (a, b)) in t.shape.iter().zip(&t0.shape).enumerate() {
                    ensure!(i == *axis || a == b, "operands differ off the axis: {t0} vs {t}");
                }
                len = len.add(&t.shape[*axis])?;
            }
            let mut shape = t0.shape.clone();
            shape[*axis] = len;
            one(Type::new(t0.dtype, shape))
        }
        Op::Pad { axis, before, after } => {
            arity(1)?;
            let t = ins[0];
            ensure!(*axis < t.rank(), "axis {axis} out of range");
            let mut shape = t.shape.clone();
            let extra = before.checked_add(*after).and_then(|n| i64::try_from(n).ok());
            let Some(extra) = extra else { bail!("padding {before} + {after} is too large") };
            shape[*axis] = shape[*axis].plus(extra)?;
            one(Type::new(t.dtype, shape))
        }
        Op::Gather { axis } => {
            arity(2)?;
            let (table, index) = (ins[0], ins[1]);
            ensure!(*axis < table.rank(), "axis {axis} out of range");
            ensure!(index.dtype == DType::I64, "index must be i64, got {index}");
            let mut shape = table.shape[..*axis].to_vec();
            shape.extend(index.shape.iter().cloned());
            shape.extend(table.shape[axis + 1..].iter().cloned());
            one(Type::new(table.dtype, shape))
        }
        Op::ScatterAdd { depth } => {
            arity(2)?;
            let (updates, index) = (ins[0], ins[1]);
            ensure!(index.dtype == DType::I64, "index must be i64, got {index}");
            ensure!(updates.dtype == DType::F32, "updates must be f32, got {updates}");
            let s = index.rank();
            ensure!(updates.rank() >= s && updates.shape[..s] == index.shape[..], "updates {updates} must start with the index's shape {index}");
            let mut shape = vec![Dim::c(*depth)];
            shape.extend(updates.shape[s..].iter().cloned());
            one(Type::new(DType::F32, shape))
        }
        Op::OneHot { depth } => {
            arity(1)?;
            ensure!(ins[0].dtype == DType::I64, "needs i64, got {}", ins[0]);
            let mut shape = ins[0].shape.clone();
            shape.push(Dim::c(*depth));
            one(Type::new(DType::F32, shape))
        }
        Op::Barrier | Op::StopGradient => {
            arity(1)?;
            one(ins[0].clone())
        }
        Op::TriMask { window, .. } => {
            arity(1)?;
            ensure!(*window != Some(0), "a window of 0 masks every entry");
            // The kernels add a window to positions and take it as a signed offset.
            ensure!(window.is_none_or(|w| w <= u32::MAX as usize), "a window above 2^32 − 1");
            ensure!(ins[0].rank() >= 2, "needs rank ≥ 2");
            ensure!(ins[0].dtype == DType::F32, "needs f32, got {}", ins[0]);
            one(ins[0].clone())
        }
        Op::Scan(scan) => infer_scan(scan, ins),
        Op::Grad(grad) => infer_grad(grad, ins),
        Op::Fused(fused) => infer_fused(fused, ins),
    }
}

/// A fused region is a call of its body: one operand per body argument, of its type; one result
/// per body output, of its type.
fn infer_fused(fused: &Fused, ins: &[&Type]) -> Result<Vec<Type>> {
    let body = &fused.body;
    ensure!(body.args.len() == ins.len(), "body takes {} arguments, fused has {} operands", body.args.len(), ins.len());
    for (i, (arg, outer)) in body.args.iter().zip(ins).enumerate() {
        let inner = body.types.get(arg.value.index()).with_context(|| format!("body argument {i} has no type"))?;
        ensure!(inner == *outer, "body argument {i} is {inner}, operand is {outer}");
    }
    body.outputs.iter().map(|(name, v)| body.types.get(v.index()).cloned().with_context(|| format!("body output {name} has no type"))).collect()
}

fn infer_grad(grad: &Grad, ins: &[&Type]) -> Result<Vec<Type>> {
    let body = &grad.body;
    ensure!(body.args.len() == ins.len(), "body takes {} arguments, grad has {} operands", body.args.len(), ins.len());
    for (i, (arg, outer)) in body.args.iter().zip(ins).enumerate() {
        let inner = body.ty(arg.value);
        ensure!(inner == *outer, "body argument {i} is {inner}, operand is {outer}");
    }
    ensure!(body.outputs.len() == 1, "body must return one value, returns {}", body.outputs.len());
    let out = body.ty(body.outputs[0].1);
    ensure!(out.dtype == DType::F32 && out.rank() == 0, "body must return an f32 scalar, returns {out}");
    ensure!(!grad.wrt.is_empty(), "needs at least one argument to differentiate");
    grad.wrt
        .iter()
        .map(|&i| {
            let t = ins.get(i).with_context(|| format!("wrt {i} is not an argument"))?;
            ensure!(t.dtype == DType::F32, "cannot differentiate with respect to {t}");
            Ok((*t).clone())
        })
        .collect()
}

fn infer_scan(scan: &Scan, ins: &[&Type]) -> Result<Vec<Type>> {
    let body = &scan.body;
    let (nc, ns) = (scan.carries, scan.seqs);
    ensure!(scan.chunk >= 1, "chunk must be at least 1");
    ensure!(ns >= 1, "needs at least one sequence");
    ensure!(nc.checked_add(ns).is_some_and(|n| ins.len() >= n), "expects at least {nc} + {ns} operands");
    ensure!(body.args.len() == ins.len(), "body takes {} arguments, scan has {} operands", body.args.len(), ins.len());
    ensure!(body.outputs.len() >= nc, "body returns fewer values than carries");
    let iteration = |i: usize| scan.is_iteration_seq(i);
    // The first chunked sequence defines the length (and the body's chunk symbol).
    let Some(first) = (nc..nc + ns).find(|&i| !iteration(i)) else {
        bail!("needs a chunked sequence: every sequence is an iteration sequence (1 along axis {} with chunk {})", scan.axis, scan.chunk)
    };
    let seq_len = ins[first].shape.get(scan.axis).cloned();
    let Some(seq_len) = seq_len else { bail!("axis {} out of range for {}", scan.axis, ins[first]) };
    // The number of iterations: the length of iteration sequences and outputs.
    let iters = || seq_len.chunks(scan.chunk).with_context(|| format!("the number of chunks of {seq_len}"));
    let mut chunk_dim: Option<Dim> = None;
    for (i, (arg, outer)) in body.args.iter().zip(ins).enumerate() {
        let inner = body.ty(arg.value);
        if i >= nc && i < nc + ns {
            if iteration(i) {
                let n = iters()?;
                check_iteration(inner, outer, scan.axis, &n).map_err(|e| anyhow::anyhow!("body argument {i}: {e}"))?;
                continue;
            }
            ensure!(outer.shape.get(scan.axis) == Some(&seq_len), "sequence {i} has another length than the first chunked one ({seq_len})");
            check_chunked(inner, outer, scan, &mut chunk_dim).map_err(|e| anyhow::anyhow!("body argument {i}: {e}"))?;
        } else {
            ensure!(inner == *outer, "body argument {i} is {inner}, operand is {outer}");
        }
    }
    // The chunk symbol is local to the body: it must not name a dimension of any operand (the
    // carries and invariants enter the body with their outer types, where it would mean both).
    let chunk_sym = chunk_dim.as_ref().and_then(|d| d.sym.clone());
    if let Some(s) = &chunk_sym {
        for (i, t) in ins.iter().enumerate() {
            ensure!(!t.shape.iter().any(|d| d.sym.as_ref() == Some(s)), "chunk symbol {s} also names a dimension of operand {i} ({t})");
        }
    }
    let chunk = chunk_dim.expect("checked: at least one chunked sequence");
    let mut outs = Vec::new();
    for (i, (_, v)) in body.outputs.iter().enumerate() {
        let t = body.ty(*v);
        if i < nc {
            ensure!(t == ins[i], "body returns carry {i} as {t}, carried in as {}", ins[i]);
            outs.push(t.clone());
            continue;
        }
        let along = t.shape.get(scan.axis);
        // With chunk > 1, a 1 along the axis is one entry per iteration.
        let per_iteration = scan.chunk > 1 && along.is_some_and(Dim::is_one);
        ensure!(
            per_iteration || along == Some(&chunk),
            "body output {i} ({t}) is not chunked along axis {} (needs {chunk}, or 1 for one entry per iteration)",
            scan.axis
        );
        if let Some(s) = &chunk_sym {
            ensure!(
                t.shape.iter().enumerate().all(|(a, d)| a == scan.axis || d.sym.as_ref() != Some(s)),
                "body output {i} ({t}) uses the chunk symbol {s} off axis {}",
                scan.axis
            );
        }
        let mut shape = t.shape.clone();
        shape[scan.axis] = if per_iteration { iters()? } else { seq_len.clone() };
        outs.push(Type::new(t.dtype, shape));
    }
    Ok(outs)
}

/// An iteration sequence: the body sees element k (length 1 along the axis) of an operand with one
/// element per iteration; elsewhere the types agree.
fn check_iteration(inner: &Type, outer: &Type, axis: usize, iters: &Dim) -> Result<()> {
    ensure!(inner.dtype == outer.dtype && inner.rank() == outer.rank(), "{inner} is not an iteration of {outer}");
    for (a, (di, dout)) in inner.shape.iter().zip(&outer.shape).enumerate() {
        if a == axis {
            ensure!(dout == iters, "iteration sequence {outer} must have one element per chunk ({iters}) along axis {axis}, has {dout}");
        } else {
            ensure!(di == dout, "{inner} is not an iteration of {outer}");
        }
    }
    Ok(())
}

/// A sequence operand and its per-chunk body argument agree except on the scan axis, which in the
/// body is a symbol (or 1 when every chunk has one element); all sequences share that dimension.
fn check_chunked(inner: &Type, outer: &Type, scan: &Scan, chunk_dim: &mut Option<Dim>) -> Result<()> {
    ensure!(inner.dtype == outer.dtype && inner.rank() == outer.rank(), "{inner} does not chunk {outer}");
    for (a, (di, dout)) in inner.shape.iter().zip(&outer.shape).enumerate() {
        if a == scan.axis {
            let ok = (di.sym.is_some() && di.offset == 0 && di.per == 1) || (scan.chunk == 1 && di.is_one());
            ensure!(ok, "chunk dimension must be a plain symbol (or 1 with chunk 1), got {di}");
            match chunk_dim {
                Some(c) => ensure!(c == di, "chunk dimensions differ: {c} vs {di}"),
                None => *chunk_dim = Some(di.clone()),
            }
        } else {
            ensure!(di == dout, "{inner} does not chunk {outer}");
        }
    }
    Ok(())
}

pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let r = a.len().max(b.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = (i + a.len()).checked_sub(r).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(r).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y || y.is_one() => x.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) => bail!("cannot broadcast dimensions {x} and {y}"),
            (None, None) => unreachable!(),
        });
    }
    Ok(out)
}

/// Equal element counts, decided symbolically: the same constant product and the same symbolic factors.
fn same_volume(a: &[Dim], b: &[Dim]) -> bool {
    // The constant product is `None` on overflow (or a negative dimension): never the same volume.
    fn split(s: &[Dim]) -> (Option<usize>, Vec<&Dim>) {
        let mut c = Some(1usize);
        let mut syms: Vec<&Dim> = Vec::new();
        for d in s {
            match d.sym {
                None => c = c.and_then(|c| c.checked_mul(usize::try_from(d.offset).ok()?)),
                Some(_) => syms.push(d),
            }
        }
        syms.sort_by_key(|d| d.to_string());
        (c, syms)
    }
    let (sa, sb) = (split(a), split(b));
    sa.0.is_some() && sa == sb
}

/// The length of `x[start:end]` (Python bounds) along a dimension of length `len`.
pub fn slice_len(len: &Dim, start: i64, end: Option<i64>) -> Result<Dim> {
    if let Some(n) = len.as_const() {
        let (s, e) = concrete_bounds(n, start, end)?;
        return Ok(Dim::c(e - s));
    }
    // Bounds on the same side of the dimension must be ordered, as the interpreter requires.
    let ordered = |e: i64| -> Result<Dim> {
        ensure!(start <= e, "slice [{start}:{e}] is empty the wrong way round");
        Ok(Dim::c(e.checked_sub(start).and_then(|n| usize::try_from(n).ok()).unwrap_or(usize::MAX)))
    };
    match (start >= 0, end) {
        (true, None) => len.plus(-start),
        (true, Some(e)) if e < 0 => match e.checked_sub(start) {
            Some(k) => len.plus(k),
            None => bail!("slice [{start}:{e}] is out of range"),
        },
        (true, Some(e)) => ordered(e),
        (false, None) => match start.checked_neg().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(Dim::c(n)),
            None => bail!("slice start {start} is out of range"),
        },
        (false, Some(e)) if e < 0 => ordered(e),
        (false, Some(_)) => bail!("slice [{start}:{end:?}] of symbolic dimension {len} has no static length"),
    }
}

/// Resolves Python slice bounds against a concrete length; out-of-range bounds are errors, not clamped.
pub fn concrete_bounds(n: usize, start: i64, end: Option<i64>) -> Result<(usize, usize)> {
    let n_i = i64::try_from(n).unwrap_or(i64::MAX);
    let fix = |b: i64| if b < 0 { b.saturating_add(n_i) } else { b };
    let (s, e) = (fix(start), end.map(fix).unwrap_or(n_i));
    ensure!(0 <= s && s <= e && e <= n_i, "slice [{start}:{end:?}] out of range for length {n}");
    Ok((s as usize, e as usize))
}
