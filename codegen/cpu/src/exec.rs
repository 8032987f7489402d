//! Running a plan: kernel launches split over the machine's threads, matrix products through
//! `gemm`, reductions as native loops, scans driven chunk by chunk.

use std::borrow::Cow;

use anyhow::{ensure, Context, Result};
use tttc_ir::interp::{bind_args, broadcast_shape, broadcast_strides, contiguous_strides, drive_scan, eval_op, reduction};
use tttc_ir::{DimEnv, Op, ReduceKind, Tensor};

use crate::kernel::{Jit, KernelFn};
use tttc_lower::elementwise::{row_layout, RowLayout};
use tttc_lower::plan::{Body, KernelStep, LaneScan, ScanPlan, Step};

/// Work below this many element operations (a kernel's elements times its ops per element) or
/// multiply-adds runs on one thread: splitting it costs more than it saves.
const PARALLEL_WORK: usize = 1 << 17;
const PARALLEL_MACS: usize = 1 << 18;

/// Runs the body on `args` (in the order of its graph's arguments) within the bindings `env`.
pub(crate) fn run(body: &Body, jit: &Jit, args: Vec<Cow<'_, Tensor>>, env: &DimEnv) -> Result<Vec<Tensor>> {
    let g = &body.graph;
    let mut env = env.clone();
    bind_args(g, &args.iter().map(|t| &**t).collect::<Vec<_>>(), &mut env)?;
    let mut values: Vec<Option<Cow<'_, Tensor>>> = vec![None; g.types.len()];
    for (a, t) in g.args.iter().zip(args) {
        values[a.value.index()] = Some(t);
    }
    let profiling = crate::profile::enabled();
    for (step, frees) in body.steps.iter().zip(&body.frees) {
        let started = profiling.then(std::time::Instant::now);
        // A reshape, a barrier, a triangular mask or a reduction along an axis of length 1 (the
        // batch of one, summed in a gradient) of a value read for the last time reuses its buffer;
        // a barrier (the identity) of a borrowed value, an argument, borrows it too.
        if let Step::Op(i) | Step::Reduce(i) = step {
            let node = &g.nodes[*i];
            let src = node.inputs.first().copied();
            if let (Op::Barrier, Some(Cow::Borrowed(t))) = (&node.op, src.and_then(|v| values[v.index()].as_ref())) {
                values[node.outputs[0].index()] = Some(Cow::Borrowed(*t));
                continue;
            }
            let along_one = |axis: usize| src.and_then(|v| values[v.index()].as_ref()).is_some_and(|t| t.shape.get(axis) == Some(&1));
            let moves = match node.op {
                Op::Reshape { .. } | Op::Barrier | Op::TriMask { .. } => true,
                Op::Reduce { axis, .. } => along_one(axis),
                _ => false,
            };
            let in_place =
                moves && src.is_some_and(|v| frees.contains(&v) && matches!(values[v.index()], Some(Cow::Owned(Tensor { data: tttc_ir::Data::F32(_), .. }))));
            if let (true, Some(src)) = (in_place, src) {
                let mut t = values[src.index()].take().expect("matched above").into_owned();
                match &node.op {
                    Op::Reshape { shape } => {
                        let dims: Vec<usize> = shape.iter().map(|d| d.resolve(&env)).collect::<Result<_>>()?;
                        ensure!(dims.iter().product::<usize>() == t.len(), "cannot reshape {t} to {dims:?}");
                        t.shape = dims;
                    }
                    Op::TriMask { fill } => tri_mask_in_place(&mut t, *fill as f32)?,
                    Op::Barrier => {}
                    Op::Reduce { axis, keepdim, .. } => {
                        if *keepdim {
                            t.shape[*axis] = 1;
                        } else {
                            t.shape.remove(*axis);
                        }
                    }
                    _ => unreachable!("matched above"),
                }
                values[node.outputs[0].index()] = Some(Cow::Owned(t));
                if let Some(t) = started {
                    crate::profile::record(Some(format!("{} (in place)", node.op.name())), t.elapsed());
                }
                continue;
            }
        }
        let get = |v: &tttc_ir::ValueId| values[v.index()].as_deref().context("an operand is not defined");
        let (results, outputs): (Vec<Tensor>, Vec<tttc_ir::ValueId>) = match step {
            Step::Kernel(k) => {
                // An input read element by element for the last time, with the kernel's own
                // shape, lends its buffer to the first output (each element is read before
                // the same element is written).
                let shape: Vec<usize> = k.shape.iter().map(|d| d.resolve(&env)).collect::<Result<_>>()?;
                let lend = k.inputs.iter().enumerate().position(|(j, v)| {
                    !k.splat[j]
                        && frees.contains(v)
                        && k.inputs.iter().filter(|&w| w == v).count() == 1
                        && matches!(&values[v.index()], Some(Cow::Owned(t)) if t.shape == shape && t.as_f32().is_some())
                });
                let mut lent: Option<Vec<f32>> = lend.map(|j| match values[k.inputs[j].index()].take() {
                    Some(Cow::Owned(Tensor { data: tttc_ir::Data::F32(v), .. })) => v,
                    _ => unreachable!("checked above"),
                });
                let lent_ptr = lent.as_mut().map(|v| v.as_mut_ptr() as *const f32);
                let get = |v: &tttc_ir::ValueId| values[v.index()].as_deref().context("an operand is not defined");
                let ins: Vec<(&[usize], *const f32)> = k
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(j, v)| match (Some(j) == lend, lent_ptr) {
                        (true, Some(p)) => Ok((&shape[..], p)),
                        _ => {
                            let t = get(v)?;
                            Ok((&t.shape[..], t.as_f32().context("kernel input is not f32")?.as_ptr()))
                        }
                    })
                    .collect::<Result<_>>()?;
                let outs = launch(jit.kernels[k.kernel], k, &shape, &ins, lent).with_context(|| format!("kernel {} in {}", k.kernel, g.name))?;
                (outs, k.outputs.clone())
            }
            Step::MatMul(i, [(a, ta), (b, tb)]) => {
                let node = &g.nodes[*i];
                let what = || format!("matmul (defining %{}) in {}", node.outputs[0].0, g.name);
                (vec![matmul(Operand { t: get(a)?, transposed: *ta }, Operand { t: get(b)?, transposed: *tb }).with_context(what)?], node.outputs.clone())
            }
            Step::Op(i) | Step::Reduce(i) | Step::Scan(i, ..) | Step::Fused(i, _) => {
                let node = &g.nodes[*i];
                let ins: Vec<&Tensor> = node.inputs.iter().map(get).collect::<Result<_>>()?;
                let what = || format!("{} (defining %{}) in {}", node.op.name(), node.outputs.first().map_or(0, |v| v.0), g.name);
                let out = match (step, &node.op) {
                    (Step::Reduce(_), Op::Reduce { kind, axis, keepdim }) => vec![reduce(ins[0], *kind, *axis, *keepdim).with_context(what)?],
                    (Step::Scan(_, ScanPlan::Lanes(lanes)), _) => run_in_lanes(lanes, &ins, &env, jit).with_context(what)?,
                    (Step::Scan(_, ScanPlan::Whole(body)), Op::Scan(scan)) => {
                        drive_scan(scan, &ins, &env, &mut |args, env| run(body, jit, args, env)).with_context(what)?
                    }
                    (Step::Fused(_, body), _) => run(body, jit, ins.iter().map(|&t| Cow::Borrowed(t)).collect(), &env).with_context(what)?,
                    _ => eval_op(&node.op, &ins, &env).with_context(what)?,
                };
                (out, node.outputs.clone())
            }
        };
        if let Some(t) = started {
            crate::profile::record(step_kind(step, g), t.elapsed());
        }
        for v in frees {
            values[v.index()] = None;
        }
        for (v, t) in outputs.into_iter().zip(results) {
            values[v.index()] = Some(Cow::Owned(t));
        }
    }
    // Each output's buffer moves out at its last mention (a decoding step's state is large).
    (0..g.outputs.len())
        .map(|i| {
            let (name, v) = &g.outputs[i];
            let again = g.outputs[i + 1..].iter().any(|(_, w)| w == v);
            let slot = &mut values[v.index()];
            let t = if again { slot.as_ref().map(|t| t.clone().into_owned()) } else { slot.take().map(Cow::into_owned) };
            t.with_context(|| format!("output {name} is undefined"))
        })
        .collect()
}

/// What a leaf step is, for the profile (scans and fused regions are accounted by their steps).
fn step_kind(step: &Step, g: &tttc_ir::Graph) -> Option<String> {
    match step {
        Step::Kernel(k) => {
            Some(format!("kernel [{}] ({} ops per element)", k.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","), k.ops_per_element))
        }
        Step::MatMul(i, _) => Some(format!("matmul {}", g.ty(g.nodes[*i].outputs[0]))),
        Step::Reduce(i) => {
            let node = &g.nodes[*i];
            Some(format!("{} {} to {}", node.op.name(), g.ty(node.inputs[0]), g.ty(node.outputs[0])))
        }
        Step::Op(i) => {
            Some(format!("{} (interpreter) {}", g.nodes[*i].op.name(), g.nodes[*i].outputs.first().map(|v| g.ty(*v).to_string()).unwrap_or_default()))
        }
        Step::Scan(..) | Step::Fused(..) => None,
    }
}

/// A scan as narrower scans over slices of its lane axis, run in parallel, their results joined
/// along it again.
fn run_in_lanes(lanes: &LaneScan, ins: &[&Tensor], env: &DimEnv, jit: &Jit) -> Result<Vec<Tensor>> {
    let width = |t: &Tensor, axis: usize| t.shape[axis] / lanes.parts;
    let part = |k: usize| -> Result<Vec<Tensor>> {
        // Lane-free operands (invariants the same for every lane) are shared, not copied.
        let args: Vec<Cow<'_, Tensor>> = ins
            .iter()
            .zip(&lanes.operand_lanes)
            .map(|(&t, lane)| match lane {
                Some(axis) => {
                    let w = width(t, *axis);
                    let slice = Op::Slice { axis: *axis, start: (k * w) as i64, end: Some(((k + 1) * w) as i64) };
                    Ok(Cow::Owned(eval_op(&slice, &[t], env)?.remove(0)))
                }
                None => Ok(Cow::Borrowed(t)),
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = args.iter().map(|t| &**t).collect();
        drive_scan(&lanes.scan, &refs, env, &mut |a, e| run(&lanes.body, jit, a, e))
    };
    let mut results: Vec<Result<Vec<Tensor>>> = (0..lanes.parts).map(|_| Ok(Vec::new())).collect();
    rayon::scope(|s| {
        for (k, slot) in results.iter_mut().enumerate() {
            let part = &part;
            s.spawn(move |_| *slot = part(k));
        }
    });
    let results: Vec<Vec<Tensor>> = results.into_iter().collect::<Result<_>>()?;
    (0..results[0].len())
        .map(|r| {
            let pieces: Vec<&Tensor> = results.iter().map(|p| &p[r]).collect();
            Ok(eval_op(&Op::Concat { axis: lanes.result_lanes[r] }, &pieces, env)?.remove(0))
        })
        .collect()
}

/// Raw pointers handed to the worker threads: each writes a disjoint range of the outputs.
#[derive(Clone, Copy)]
struct Shared<T>(T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

/// Runs a kernel over the elements of its shape, walked as [`row_layout`] says; the rows (or,
/// for one long row, its pieces) are split over the threads.
/// `ins`: each input's shape and data; `lent`: a buffer of the kernel's size for the first
/// output (it may be one of the inputs).
fn launch(f: KernelFn, k: &KernelStep, shape: &[usize], ins: &[(&[usize], *const f32)], lent: Option<Vec<f32>>) -> Result<Vec<Tensor>> {
    let total: usize = shape.iter().product();
    let mut outs: Vec<Vec<f32>> = (0..k.outputs.len()).map(|_| Vec::with_capacity(total)).collect();
    if let (Some(buffer), Some(first)) = (lent, outs.first_mut()) {
        *first = buffer;
        first.clear(); // its length is set again below, once the kernel has written it
    }
    if total > 0 {
        let splat = &k.splat;
        let in_shapes: Vec<&[usize]> = ins.iter().map(|(s, _)| *s).collect();
        let RowLayout { n, rows, outer, strides, row_strides } = row_layout(shape, &in_shapes, splat)?;
        let outer = &shape[..outer];
        let in_ptrs: Vec<Shared<*const f32>> = ins.iter().map(|&(_, p)| Shared(p)).collect();
        let out_ptrs: Vec<Shared<*mut f32>> = outs.iter_mut().map(|o| Shared(o.as_mut_ptr())).collect();
        // Rows [q0, q1) of the flattened (outer, row) space, columns [c0, c0 + len) of each.
        let run = |q0: usize, q1: usize, c0: usize, len: usize| {
            let mut ins_at: Vec<*const f32> = vec![std::ptr::null(); in_ptrs.len()];
            let mut outs_at: Vec<*mut f32> = vec![std::ptr::null_mut(); out_ptrs.len()];
            let mut q = q0;
            while q < q1 {
                let (o, r0) = (q / rows, q % rows);
                let count = (rows - r0).min(q1 - q);
                for (j, p) in in_ptrs.iter().enumerate() {
                    let mut off = r0 * row_strides[j] as usize + if splat[j] { 0 } else { c0 };
                    let mut rem = o;
                    for d in (0..outer.len()).rev() {
                        off += (rem % outer[d]) * strides[j][d];
                        rem /= outer[d];
                    }
                    ins_at[j] = unsafe { p.0.add(off) };
                }
                for (j, p) in out_ptrs.iter().enumerate() {
                    outs_at[j] = unsafe { p.0.add(q * n + c0) };
                }
                unsafe { f(len as i64, count as i64, ins_at.as_ptr(), row_strides.as_ptr(), outs_at.as_ptr()) };
                q += count;
            }
        };
        let all_rows = total / n;
        let threads = crate::threads();
        if total * k.ops_per_element < PARALLEL_WORK || threads == 1 {
            run(0, all_rows, 0, n);
        } else if all_rows >= threads {
            let per = all_rows.div_ceil(threads);
            rayon::scope(|s| {
                for t in 0..threads {
                    let run = &run;
                    s.spawn(move |_| run(t * per, ((t + 1) * per).min(all_rows), 0, n));
                }
            });
        } else {
            // Fewer rows than threads: each row's columns are split (a row's pieces stay rows of
            // one: the row stride never applies).
            let per = n.div_ceil(threads);
            rayon::scope(|s| {
                for q in 0..all_rows {
                    for t in 0..threads {
                        let run = &run;
                        let c0 = t * per;
                        if c0 < n {
                            s.spawn(move |_| run(q, q + 1, c0, per.min(n - c0)));
                        }
                    }
                }
            });
        }
        // SAFETY: the kernel calls above wrote every element of every output.
        for o in &mut outs {
            unsafe { o.set_len(total) };
        }
    }
    Ok(outs.into_iter().map(|o| Tensor::f32(shape.to_vec(), o)).collect())
}

/// Over the last two axes, the entries above the diagonal become `fill`; matrices split over the
/// threads when large.
fn tri_mask_in_place(t: &mut Tensor, fill: f32) -> Result<()> {
    let r = t.shape.len();
    ensure!(r >= 2, "tri_mask needs rank 2 or more, got {t}");
    let (rows, cols) = (t.shape[r - 2], t.shape[r - 1]);
    let tttc_ir::Data::F32(v) = &mut t.data else { unreachable!("checked by the caller") };
    let mask = |m: &mut [f32]| {
        for (i, row) in m.chunks_mut(cols.max(1)).enumerate() {
            row.iter_mut().skip(i + 1).for_each(|x| *x = fill);
        }
    };
    let size = (rows * cols).max(1);
    if v.len() >= PARALLEL_WORK {
        use rayon::prelude::*;
        v.par_chunks_mut(size).for_each(mask);
    } else {
        v.chunks_mut(size).for_each(mask);
    }
    Ok(())
}

/// A matrix product's operand: a tensor read as stored, or as the transpose of its last two axes.
#[derive(Clone, Copy)]
struct Operand<'a> {
    t: &'a Tensor,
    transposed: bool,
}

impl Operand<'_> {
    /// The batch axes, and the (rows, columns) of the matrix as read.
    fn dims(&self) -> Result<(&[usize], usize, usize)> {
        let s = &self.t.shape;
        ensure!(s.len() >= 2, "matmul needs operands of rank 2 or more, got {}", self.t);
        let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
        Ok((&s[..s.len() - 2], if self.transposed { c } else { r }, if self.transposed { r } else { c }))
    }

    /// (row stride, column stride) of the matrix as read.
    fn strides(&self) -> (isize, isize) {
        let c = self.t.shape[self.t.shape.len() - 1] as isize;
        if self.transposed {
            (1, c)
        } else {
            (c, 1)
        }
    }
}

/// `a · b` over the last two axes, the leading axes broadcast, through `gemm`.
fn matmul(a: Operand, b: Operand) -> Result<Tensor> {
    let (x, y) = (a.t.as_f32().context("matmul operand is not f32")?, b.t.as_f32().context("matmul operand is not f32")?);
    let ((ba, m, k), (bb, k2, n)) = (a.dims()?, b.dims()?);
    ensure!(k == k2, "matmul contracted dimensions differ: {} and {}", a.t, b.t);
    let batch = broadcast_shape(ba, bb)?;
    let sa = broadcast_strides(ba, &batch)?;
    let sb = broadcast_strides(bb, &batch)?;
    let count: usize = batch.iter().product();
    let mut out = vec![0f32; count * m * n];
    let mut shape = batch.clone();
    shape.extend([m, n]);
    if count == 0 || m == 0 || n == 0 || k == 0 {
        return Ok(Tensor::f32(shape, out));
    }
    let (ra, rb) = (a.strides(), b.strides());
    // A shared right operand (a weight): the left operand's batch rows are one tall matrix.
    if sb.iter().all(|&s| s == 0) && !a.transposed && sa == contiguous_strides(&batch) {
        gemm_into(&mut out, x, ra, y, rb, count * m, k, n, parallelism(count * m * k * n));
        return Ok(Tensor::f32(shape, out));
    }
    let offsets = |i: usize, s: &[usize]| -> usize {
        let mut rem = i;
        let mut off = 0;
        for d in (0..batch.len()).rev() {
            off += (rem % batch[d]) * s[d];
            rem /= batch[d];
        }
        off
    };
    let one = |i: usize, dst: &mut [f32], par: gemm::Parallelism| {
        let (oa, ob) = (offsets(i, &sa) * m * k, offsets(i, &sb) * k * n);
        gemm_into(dst, &x[oa..oa + m * k], ra, &y[ob..ob + k * n], rb, m, k, n, par);
    };
    // Large products split inside gemm; a batch of small ones splits over its members, unless
    // all of it is small.
    if m * k * n >= PARALLEL_MACS || count * m * k * n < PARALLEL_MACS * 4 {
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            one(i, dst, parallelism(m * k * n));
        }
    } else {
        use rayon::prelude::*;
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| one(i, dst, gemm::Parallelism::None));
    }
    Ok(Tensor::f32(shape, out))
}

fn parallelism(macs: usize) -> gemm::Parallelism {
    let threads = crate::threads();
    if macs >= PARALLEL_MACS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`: `dst` row-major, the operands with the (row, column)
/// strides given.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    lhs: &[f32],
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (isize, isize),
    m: usize,
    k: usize,
    n: usize,
    par: gemm::Parallelism,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the slices hold the matrices the strides describe (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Sum, mean or max along `axis`, eight partial sums at a time along a contiguous axis.
fn reduce(t: &Tensor, kind: ReduceKind, axis: usize, keepdim: bool) -> Result<Tensor> {
    let x = t.as_f32().context("reduction operand is not f32")?;
    let (outer, len, inner, shape) = reduction(&t.shape, kind, axis, keepdim)?;
    let mut out = vec![0f32; outer * inner];
    let reduce_block = |o: usize, dst: &mut [f32]| {
        let block = &x[o * len * inner..(o + 1) * len * inner];
        if inner == 1 {
            dst[0] = match kind {
                ReduceKind::Sum | ReduceKind::Mean => sum(block),
                ReduceKind::Max => max(block),
            };
        } else {
            match kind {
                ReduceKind::Sum | ReduceKind::Mean => {
                    dst.fill(0.0);
                    for row in block.chunks_exact(inner) {
                        dst.iter_mut().zip(row).for_each(|(d, &v)| *d += v);
                    }
                }
                ReduceKind::Max => {
                    dst.copy_from_slice(&block[..inner]);
                    for row in block.chunks_exact(inner).skip(1) {
                        dst.iter_mut().zip(row).for_each(|(d, &v)| {
                            if v > *d {
                                *d = v
                            }
                        });
                    }
                }
            }
        }
        if kind == ReduceKind::Mean {
            dst.iter_mut().for_each(|d| *d /= len as f32);
        }
    };
    if outer * len * inner >= PARALLEL_WORK && outer > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(inner).enumerate().for_each(|(o, dst)| reduce_block(o, dst));
    } else {
        out.chunks_mut(inner.max(1)).enumerate().for_each(|(o, dst)| reduce_block(o, dst));
    }
    Ok(Tensor::f32(shape, out))
}

/// The largest element (NaN never wins; −∞ for none), in eight interleaved partial maxima (which
/// the compiler vectorises), then combined.
fn max(v: &[f32]) -> f32 {
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, larger);
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = larger(*a, x);
        }
    }
    acc.iter().copied().fold(tail, larger)
}

/// A sum in eight interleaved partial sums (which the compiler vectorises), then combined.
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}
