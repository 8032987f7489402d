//! Every compiled backend against the interpreter (the oracle) on small graphs: the CPU backend,
//! the model compiled ahead of time, and the model's PTX kernels run by the PTX simulator. Every
//! elementwise op,
//! including the transcendental approximations over their whole useful range and at their edges,
//! with broadcasts in every position, rows that are not a multiple of the vector width, matrix
//! products with broadcast batches, and reductions along every axis.

use tttc_codegen_cpu::aot::CompiledModel;
use tttc_codegen_cpu::Program;
use tttc_ir::{DType, Dim, Graph, Op, ReduceKind, Scan, Tensor, Type, UnaryOp, ValueId};
use tttc_ptx::model::GpuModel;
use tttc_ptx_sim::SimDevice;

fn f32t(shape: &[usize]) -> Type {
    Type::f32(shape)
}

/// Deterministic values in [lo, hi].
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Runs `g` on the interpreter, the CPU program, the model compiled ahead of time at the
/// arguments' sizes and its PTX kernels in the simulator (loaded from their text); returns the
/// largest |compiled − interp| / (atol + rtol·|interp|) over all outputs of all three (NaN and
/// infinities must match exactly).
fn compare(g: &Graph, args: &[Tensor], rtol: f32, atol: f32) -> f32 {
    tttc_ir::verify(g).unwrap();
    let refs: Vec<&Tensor> = args.iter().collect();
    let want = tttc_ir::run(g, &refs, tttc_ir::Precision::F32).unwrap();
    let mut env = tttc_ir::DimEnv::new();
    tttc_ir::interp::bind_args(g, &refs, &mut env).unwrap();
    let program = Program::compile(g).unwrap().run(&refs).unwrap();
    let model = CompiledModel::compile(g, &env).unwrap().run(&refs).unwrap();
    let gpu = GpuModel::compile(g, &env).unwrap();
    let mut device = SimDevice::load(&gpu.module("sm_80").to_text()).unwrap();
    let simulated = gpu.run(&mut device, &refs).unwrap();
    assert_eq!(device.memory.allocated(), 0, "the run frees what it allocates");
    let mut worst = 0f32;
    for (who, got) in [("cpu", program), ("cpu-model", model), ("ptx-sim", simulated)] {
        for (w, o) in want.iter().zip(&got) {
            assert_eq!(w.shape, o.shape, "{who}");
            for (i, (&a, &b)) in o.as_f32().unwrap().iter().zip(w.as_f32().unwrap()).enumerate() {
                if !b.is_finite() || !a.is_finite() {
                    assert!(a == b || (a.is_nan() && b.is_nan()), "element {i}: {who} {a}, interp {b}");
                    continue;
                }
                worst = worst.max((a - b).abs() / (atol + rtol * b.abs()));
            }
        }
    }
    worst
}

fn unary_graph(u: UnaryOp, n: usize) -> Graph {
    let mut g = Graph::new("unary");
    let x = g.input("x", f32t(&[n]));
    let y = g.unary(u, x).unwrap();
    g.output("y", y);
    g
}

/// Each unary op over a range that covers its use, to within a few ulp (relative 1e-6, or 1e-7
/// absolute near zero), on rows of every length modulo the vector width.
#[test]
fn unary_ops_match_to_a_few_ulp() {
    let ranges: [(UnaryOp, f32, f32); 12] = [
        (UnaryOp::Neg, -10.0, 10.0),
        (UnaryOp::Exp, -90.0, 90.0),
        (UnaryOp::Log, 1e-30, 1e30),
        (UnaryOp::Sqrt, 0.0, 1e6),
        (UnaryOp::Rsqrt, 1e-6, 1e6),
        (UnaryOp::Tanh, -12.0, 12.0),
        (UnaryOp::Sigmoid, -30.0, 30.0),
        (UnaryOp::Silu, -30.0, 30.0),
        (UnaryOp::GeluTanh, -12.0, 12.0),
        (UnaryOp::Softplus, -30.0, 40.0),
        (UnaryOp::Sin, -50.0, 50.0),
        (UnaryOp::Cos, -50.0, 50.0),
    ];
    for (k, (u, lo, hi)) in ranges.into_iter().enumerate() {
        for n in [1, 3, 4, 7, 4099] {
            let mut x = values(n, k as u64 + n as u64, lo, hi);
            if u == UnaryOp::Log {
                // Log-uniform: every binade.
                x.iter_mut().for_each(|v| *v = (v.ln() / 1e30f32.ln() * 69.0).exp2().max(1e-30));
            }
            let worst = compare(&unary_graph(u, n), &[Tensor::f32(vec![n], x)], 1e-6, 1e-7);
            assert!(worst <= 1.0, "{u:?} n={n}: error {worst:.2} of tolerance");
        }
    }
}

/// Edges: exp under- and overflow, log of 0, negatives and infinity, NaN passing through.
#[test]
fn transcendental_edges() {
    let x = vec![-1000.0, -87.0, 0.0, 88.0, 1000.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
    let n = x.len();
    assert!(compare(&unary_graph(UnaryOp::Exp, n), &[Tensor::f32(vec![n], x.clone())], 1e-6, 1e-30) <= 1.0);
    let y = vec![0.0, -1.0, 1.0, f32::INFINITY, f32::NAN, 1e-38, f32::MIN_POSITIVE, 3.0];
    assert!(compare(&unary_graph(UnaryOp::Log, n), &[Tensor::f32(vec![n], y)], 1e-6, 1e-7) <= 1.0);
    let t = vec![-1e-8, 1e-8, 0.6249, 0.6251, -0.6251, 50.0, -50.0, 0.0];
    assert!(compare(&unary_graph(UnaryOp::Tanh, n), &[Tensor::f32(vec![n], t)], 1e-6, 1e-12) <= 1.0);
}

/// Binary ops with their operands broadcast in every way the kernels read them: per element,
/// once per row (a column), a row repeated over rows, a scalar, and a constant.
#[test]
fn binary_ops_under_broadcasts() {
    for op in Op::BINARY {
        for (a_shape, b_shape) in [
            (vec![3, 5, 7], vec![3, 5, 7]),
            (vec![3, 5, 7], vec![3, 5, 1]),
            (vec![3, 5, 7], vec![7]),
            (vec![3, 5, 7], vec![]),
            (vec![3, 1, 7], vec![1, 5, 1]),
            (vec![1], vec![2, 9]),
        ] {
            let mut g = Graph::new("binary");
            let a = g.input("a", f32t(&a_shape));
            let b = g.input("b", f32t(&b_shape));
            let c = g.scalar(0.5).unwrap();
            let y = g.binary(op, a, b).unwrap();
            let y = g.binary(op, y, c).unwrap();
            g.output("y", y);
            let av = values(a_shape.iter().product(), 1, -2.0, 2.0);
            let bv = values(b_shape.iter().product(), 2, 0.5, 2.0);
            let worst = compare(&g, &[Tensor::f32(a_shape.clone(), av), Tensor::f32(b_shape.clone(), bv)], 1e-6, 1e-7);
            assert!(worst <= 1.0, "{op:?} {a_shape:?} with {b_shape:?}: error {worst:.2} of tolerance");
        }
    }
}

/// A norm-like chain: runs of several shapes, a reduction between them, values read by later
/// runs and graph outputs taken from inside a run.
#[test]
fn runs_with_reductions_between_them() {
    let mut g = Graph::new("norm");
    let shape = vec![Dim::sym("B"), Dim::sym("T"), Dim::c(13)];
    let x = g.input("x", Type::new(DType::F32, shape));
    let w = g.input("w", f32t(&[13]));
    let sq = g.mul(x, x).unwrap();
    let ms = g.reduce(ReduceKind::Mean, sq, -1, true).unwrap();
    let eps = g.scalar(1e-6).unwrap();
    let ms = g.add(ms, eps).unwrap();
    let r = g.unary(UnaryOp::Rsqrt, ms).unwrap();
    let y = g.mul(x, r).unwrap();
    let y = g.mul(y, w).unwrap();
    let s = g.unary(UnaryOp::Silu, y).unwrap();
    let total = g.reduce(ReduceKind::Sum, s, 1, false).unwrap();
    let top = g.reduce(ReduceKind::Max, s, 0, true).unwrap();
    let row_max = g.reduce(ReduceKind::Max, s, -1, false).unwrap();
    for (name, v) in [("y", y), ("s", s), ("total", total), ("top", top), ("r", r), ("row_max", row_max)] {
        g.output(name, v);
    }
    for (b, t) in [(1, 1), (2, 5), (3, 2000)] {
        let xv = values(b * t * 13, 3, -3.0, 3.0);
        let wv = values(13, 4, 0.5, 1.5);
        let worst = compare(&g, &[Tensor::f32(vec![b, t, 13], xv), Tensor::f32(vec![13], wv)], 1e-5, 1e-6);
        assert!(worst <= 1.0, "B={b} T={t}: error {worst:.2} of tolerance");
    }
}

/// A run of elementwise ops stays open across the steps that read none of its values: a scalar
/// computed (and reshaped) between two of its ops, as a decoding step's position mask is, goes
/// before the run's kernel instead of splitting it in two; a reduction of a run value, and a run
/// of another shape that reads one, still come after it. All match the interpreter.
#[test]
fn runs_stay_open_across_steps_that_do_not_read_them() {
    let mut g = Graph::new("open_runs");
    let x = g.input("x", f32t(&[3, 40]));
    let p = g.input("p", f32t(&[1]));
    let e = g.unary(UnaryOp::Exp, x).unwrap();
    let half = g.scalar(0.5).unwrap();
    let gate = g.binary(tttc_ir::BinaryOp::Ge, p, half).unwrap(); // [1], between two ops of the run
    let gate = g.reshape(gate, vec![Dim::c(1), Dim::c(1)]).unwrap();
    let y = g.mul(e, gate).unwrap();
    let y = g.add(y, x).unwrap();
    let total = g.reduce(ReduceKind::Sum, y, 1, true).unwrap(); // [3, 1]: reads the run
    let z = g.mul(y, total).unwrap();
    let row = g.reduce(ReduceKind::Max, y, 0, true).unwrap(); // [1, 40]
    let w = g.unary(UnaryOp::Tanh, row).unwrap(); // a run of another shape
    g.output("z", z);
    g.output("w", w);
    let stats = Program::compile(&g).unwrap().stats().plan;
    assert_eq!(stats.kernels, 4, "the gate, exp·gate + x, the product by the sums, tanh: {stats:?}");
    for p in [0.2, 0.9] {
        let args = [Tensor::f32(vec![3, 40], values(120, 5, -2.0, 2.0)), Tensor::f32(vec![1], vec![p])];
        assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0, "p = {p}");
    }
}

/// Matrix products: a weight shared over the batch, batches broadcast both ways, and sizes
/// large enough to run on several threads.
#[test]
fn matmuls_with_broadcast_batches() {
    for (a_shape, b_shape) in [
        (vec![2, 9, 5], vec![5, 3]),
        (vec![2, 3, 4, 6], vec![2, 3, 6, 5]),
        (vec![2, 1, 4, 6], vec![3, 6, 5]),
        (vec![4, 6], vec![7, 6, 2]),
        (vec![1, 300, 200], vec![200, 150]),
        (vec![64, 16, 64], vec![64, 64, 64]),
    ] {
        let mut g = Graph::new("matmul");
        let a = g.input("a", f32t(&a_shape));
        let b = g.input("b", f32t(&b_shape));
        let y = g.matmul(a, b).unwrap();
        g.output("y", y);
        let av = values(a_shape.iter().product(), 5, -1.0, 1.0);
        let bv = values(b_shape.iter().product(), 6, -1.0, 1.0);
        let worst = compare(&g, &[Tensor::f32(a_shape.clone(), av), Tensor::f32(b_shape.clone(), bv)], 1e-5, 1e-5);
        assert!(worst <= 1.0, "{a_shape:?} × {b_shape:?}: error {worst:.2} of tolerance");
    }
}

/// A single row times a weight (a decoding step's projections), stored or read transposed, small
/// and large enough to split over the threads; and a matrix times a single column (large enough
/// to split its rows).
#[test]
fn one_row_products_stream_the_weight() {
    for (m, k) in [(7, 3), (5000, 67)] {
        let mut g = Graph::new("column");
        let x = g.input("x", f32t(&[1, m, k]));
        let w = g.input("w", f32t(&[k, 1]));
        let y = g.matmul(x, w).unwrap();
        g.output("y", y);
        let args = [Tensor::f32(vec![1, m, k], values(m * k, 23, -1.0, 1.0)), Tensor::f32(vec![k, 1], values(k, 24, -1.0, 1.0))];
        let worst = compare(&g, &args, 1e-5, 1e-5);
        assert!(worst <= 1.0, "m={m} k={k}: error {worst:.2} of tolerance");
    }
    for (k, n) in [(5, 3), (37, 19), (700, 530)] {
        for transposed in [false, true] {
            let mut g = Graph::new("gemv");
            let x = g.input("x", f32t(&[1, 1, k]));
            let w = g.input("w", f32t(&if transposed { [n, k] } else { [k, n] }));
            let w = if transposed { g.transpose_last2(w).unwrap() } else { w };
            let y = g.matmul(x, w).unwrap();
            g.output("y", y);
            let args = [
                Tensor::f32(vec![1, 1, k], values(k, 21, -1.0, 1.0)),
                Tensor::f32(if transposed { vec![n, k] } else { vec![k, n] }, values(k * n, 22, -1.0, 1.0)),
            ];
            let worst = compare(&g, &args, 1e-5, 1e-5);
            assert!(worst <= 1.0, "k={k} n={n} transposed={transposed}: error {worst:.2} of tolerance");
        }
    }
}

/// Transposes that only matrix products read are folded into the products' strides (never
/// materialised); one that something else reads too is materialised.
#[test]
fn matmuls_of_transposed_operands() {
    let mut g = Graph::new("transposed");
    let a = g.input("a", f32t(&[2, 5, 4]));
    let w = g.input("w", f32t(&[3, 4]));
    let b = g.input("b", f32t(&[2, 5, 6]));
    let wt = g.transpose_last2(w).unwrap(); // [4, 3], read only by a product
    let y = g.matmul(a, wt).unwrap(); // [2, 5, 3]
    let at = g.transpose_last2(a).unwrap(); // [2, 4, 5], read by a product and an output
    let z = g.matmul(at, b).unwrap(); // [2, 4, 6]
    let yt = g.transpose_last2(y).unwrap(); // [2, 3, 5]
    let u = g.matmul(yt, b).unwrap(); // [2, 3, 6]
    for (name, v) in [("y", y), ("z", z), ("at", at), ("u", u)] {
        g.output(name, v);
    }
    let args = [
        Tensor::f32(vec![2, 5, 4], values(40, 7, -1.0, 1.0)),
        Tensor::f32(vec![3, 4], values(12, 8, -1.0, 1.0)),
        Tensor::f32(vec![2, 5, 6], values(60, 9, -1.0, 1.0)),
    ];
    assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0);
    let stats = Program::compile(&g).unwrap().stats().plan;
    assert_eq!((stats.matmuls, stats.other_nodes), (3, 1), "only the transpose an output reads is materialised");
}

/// A decoding step's attention over a position-major KV cache `[B, L, H, d]`: the products read
/// the cache head by head through a transpose of its first axes (never materialised), scores as
/// `K·qᵀ` and as `q·Kᵀ` (the form the simplify pass leaves: the cache's keys as columns) and the
/// values weighted as `p·V`, for one query per head or a group of them (grouped query
/// attention), small and large enough to split over the threads, with rows not a multiple of
/// eight.
#[test]
fn products_read_position_major_caches() {
    for (batch, len, heads, group, d) in [(1, 37, 3, 1, 5), (2, 9, 2, 3, 8), (1, 3000, 4, 1, 44), (1, 2000, 2, 4, 16)] {
        let mut g = Graph::new("cache");
        let keys = g.input("keys", f32t(&[batch, len, heads, d]));
        let values_in = g.input("values", f32t(&[batch, len, heads, d]));
        let q = g.input("q", f32t(&[batch, heads, group, d]));
        let p = g.input("p", f32t(&[batch, heads, group, len]));
        let k = g.transpose(keys, &[0, 2, 1, 3]).unwrap();
        let v = g.transpose(values_in, &[0, 2, 1, 3]).unwrap();
        let qt = g.transpose_last2(q).unwrap();
        let scores = g.matmul(k, qt).unwrap(); // [B, H, L, group]
        let kt = g.transpose(keys, &[0, 2, 3, 1]).unwrap();
        let rows = g.matmul(q, kt).unwrap(); // [B, H, group, L]
        let y = g.matmul(p, v).unwrap(); // [B, H, group, d]
        g.output("scores", scores);
        g.output("rows", rows);
        g.output("y", y);
        let cache = batch * len * heads * d;
        let args = [
            Tensor::f32(vec![batch, len, heads, d], values(cache, 31, -1.0, 1.0)),
            Tensor::f32(vec![batch, len, heads, d], values(cache, 32, -1.0, 1.0)),
            Tensor::f32(vec![batch, heads, group, d], values(batch * heads * group * d, 33, -1.0, 1.0)),
            Tensor::f32(vec![batch, heads, group, len], values(batch * heads * group * len, 34, 0.0, 1.0 / len as f32)),
        ];
        let worst = compare(&g, &args, 1e-5, 1e-6);
        assert!(worst <= 1.0, "B {batch}, L {len}, {heads} heads of {group} × {d}: error {worst:.2} of tolerance");
        let stats = Program::compile(&g).unwrap().stats().plan;
        assert_eq!((stats.matmuls, stats.other_nodes), (3, 0), "the transposes are read in place");
    }
}

/// An output that begins with a copy of an argument the caller gives up (a KV cache a step
/// appends to) takes over the argument's memory and is written only past it, where the argument
/// is the output's first piece of memory (one row); otherwise, or borrowed, it is copied. The
/// values are the interpreter's either way.
#[test]
fn outputs_take_over_appended_arguments() {
    use std::borrow::Cow;
    let mut g = Graph::new("append");
    let past = g.input("past", Type::new(DType::F32, vec![Dim::sym("B"), Dim::sym("L"), Dim::c(3), Dim::c(4)]));
    let x = g.input("x", Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(1), Dim::c(3), Dim::c(4)]));
    let new = g.unary(UnaryOp::Exp, x).unwrap();
    let cache = g.concat(&[past, new], 1).unwrap();
    let total = g.reduce(ReduceKind::Sum, cache, 1, false).unwrap();
    g.output("cache", cache);
    g.output("total", total);
    let program = Program::compile(&g).unwrap();
    for (batch, len, owned) in [(1, 5, true), (1, 5, false), (2, 5, true), (1, 700, true)] {
        let mut memory = values(batch * len * 12, 41, -1.0, 1.0);
        memory.reserve(12);
        let at = memory.as_ptr();
        let past = Tensor::f32(vec![batch, len, 3, 4], memory);
        let x = Tensor::f32(vec![batch, 1, 3, 4], values(batch * 12, 42, -1.0, 1.0));
        let want = tttc_ir::run(&g, &[&past, &x], tttc_ir::Precision::F32).unwrap();
        let past = if owned { Cow::Owned(past) } else { Cow::Borrowed(&past) };
        let got = program.run_taking(vec![past, Cow::Borrowed(&x)]).unwrap();
        for (w, o) in want.iter().zip(&got) {
            assert_eq!(w.shape, o.shape);
            for (&a, &b) in o.as_f32().unwrap().iter().zip(w.as_f32().unwrap()) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "B {batch}, L {len}: {a} vs {b}");
            }
        }
        let taken = got[0].as_f32().unwrap().as_ptr() == at;
        assert_eq!(taken, owned && batch == 1, "B {batch}, L {len}, owned {owned}: the output took the argument's memory");
    }
}

/// Transposes copied in blocks of columns, with partial blocks and a batch axis: one an output
/// reads, and a weight the compiled model packs for a product of many rows.
#[test]
fn transposes_with_partial_blocks() {
    let mut g = Graph::new("transposes");
    let x = g.input("x", f32t(&[3, 37, 45]));
    let a = g.input("a", f32t(&[300, 20]));
    let w = g.input("w", f32t(&[33, 20]));
    let xt = g.transpose_last2(x).unwrap(); // [3, 45, 37]
    let wt = g.transpose_last2(w).unwrap(); // [20, 33]
    let y = g.matmul(a, wt).unwrap(); // [300, 33]
    g.output("xt", xt);
    g.output("y", y);
    let args = [
        Tensor::f32(vec![3, 37, 45], values(3 * 37 * 45, 10, -1.0, 1.0)),
        Tensor::f32(vec![300, 20], values(6000, 11, -1.0, 1.0)),
        Tensor::f32(vec![33, 20], values(660, 12, -1.0, 1.0)),
    ];
    assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0);
}

/// Launches large enough to be split over threads: by rows, and a single long row by columns,
/// with a row-broadcast operand and an odd length.
#[test]
fn launches_split_over_threads() {
    for shape in [vec![1usize, 150_001], vec![3, 70_001], vec![40_000, 3]] {
        let mut g = Graph::new("split");
        let x = g.input("x", Type::f32(&shape));
        let col = g.input("col", Type::f32(&[shape[0], 1]));
        let e = g.unary(UnaryOp::Exp, x).unwrap();
        let y = g.mul(e, col).unwrap();
        g.output("y", y);
        let n: usize = shape.iter().product();
        let args = [Tensor::f32(shape.clone(), values(n, 11, -5.0, 5.0)), Tensor::f32(vec![shape[0], 1], values(shape[0], 12, -1.0, 1.0))];
        let worst = compare(&g, &args, 1e-6, 1e-7);
        assert!(worst <= 1.0, "{shape:?}: error {worst:.2} of tolerance");
    }
}

/// A triangular mask of a value read for the last time is applied in place; of one read again
/// later, on a copy. Rectangular matrices, both fills, with and without a window.
#[test]
fn tri_masks_in_place_and_copied() {
    for (fill, window) in [(0.0, None), (f64::NEG_INFINITY, None), (0.0, Some(2)), (f64::NEG_INFINITY, Some(1))] {
        let mut g = Graph::new("mask");
        let x = g.input("x", f32t(&[2, 3, 5, 4]));
        let y = g.unary(UnaryOp::Exp, x).unwrap(); // owned, read by the mask alone
        let masked = g.tri_mask_window(y, fill, window).unwrap();
        let z = g.unary(UnaryOp::Neg, x).unwrap(); // owned, read by the mask and later
        let masked_z = g.tri_mask_window(z, fill, window).unwrap();
        let again = g.add(z, masked_z).unwrap();
        for (name, v) in [("masked", masked), ("again", again)] {
            g.output(name, v);
        }
        let args = [Tensor::f32(vec![2, 3, 5, 4], values(120, 13, -2.0, 2.0))];
        assert!(compare(&g, &args, 1e-6, 1e-7) <= 1.0, "fill {fill}, window {window:?}");
    }
}

/// A scan over `[B, 4, T, 3]` whose body keeps its 4 lanes apart (elementwise, a product batched
/// over them, a reduction along another axis, a broadcast of a lane-free value) runs as narrower
/// scans in parallel, in the fewest parts that give each thread one (one per lane when there are
/// more threads than lanes); one whose body sums across the lanes stays whole. Both match the
/// interpreter, with a ragged last chunk.
#[test]
fn scans_split_into_independent_lanes() {
    let lanes_of = |mix: bool| {
        let b = Dim::sym("B");
        let n = Dim::sym("n");
        let mut body = Graph::new("step");
        let s = body.input("s", Type::new(DType::F32, vec![b.clone(), Dim::c(4), Dim::c(3), Dim::c(3)]));
        let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(4), n.clone(), Dim::c(3)]));
        let w = body.input("w", f32t(&[3]));
        let y = body.matmul(x, s).unwrap(); // [B,4,n,3]
        let y = body.mul(y, w).unwrap();
        let y = body.unary(UnaryOp::Tanh, y).unwrap();
        let yt = body.transpose_last2(x).unwrap(); // [B,4,3,n]
        let upd = body.matmul(yt, y).unwrap(); // [B,4,3,3]
        let upd = if mix {
            let total = body.reduce(ReduceKind::Sum, upd, 1, true).unwrap(); // across lanes
            body.broadcast(total, vec![b.clone(), Dim::c(4), Dim::c(3), Dim::c(3)]).unwrap()
        } else {
            body.reduce(ReduceKind::Mean, upd, 3, true).unwrap() // [B,4,3,1]
        };
        let scale = body.scalar(0.1).unwrap();
        let upd = body.mul(upd, scale).unwrap();
        let s2 = body.sub(s, upd).unwrap();
        body.output("s", s2);
        body.output("y", y);
        let mut g = Graph::new("lanes");
        let s0 = g.input("s0", Type::new(DType::F32, vec![b.clone(), Dim::c(4), Dim::c(3), Dim::c(3)]));
        let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(4), Dim::sym("T"), Dim::c(3)]));
        let w = g.input("w", f32t(&[3]));
        let outs = g.scan(Scan { axis: 2, chunk: 4, carries: 1, seqs: 1, body, reverse: false }, &[s0, xs, w]).unwrap();
        g.output("s", outs[0]);
        g.output("y", outs[1]);
        // A batch of two: each lane's slice is strided, so it is copied in and out; a batch of
        // one: each lane reads and writes its slice in place (a view).
        for batch in [2, 1] {
            let args = [
                Tensor::f32(vec![batch, 4, 3, 3], values(36 * batch, 14, -0.5, 0.5)),
                Tensor::f32(vec![batch, 4, 10, 3], values(120 * batch, 15, -1.0, 1.0)),
                Tensor::f32(vec![3], values(3, 16, 0.5, 1.5)),
            ];
            assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0, "mix = {mix}, B = {batch}");
        }
        // Planned for 1, 2, 3 and 16 threads: the fewest parts, one per thread at least.
        let parts = [1, 2, 3, 16].map(|threads| {
            let plan = tttc_lower::plan::plan(&g, threads, tttc_lower::plan::Native::NONE, &mut Vec::new(), &mut Default::default());
            plan.steps.iter().find_map(|s| match s {
                tttc_lower::plan::Step::Scan(_, tttc_lower::plan::ScanPlan::Lanes(l)) => Some(l.parts),
                _ => None,
            })
        });
        (Program::compile(&g).unwrap().stats().plan.lane_split_scans, parts)
    };
    let threads = tttc_codegen_cpu::threads();
    assert_eq!(lanes_of(false), (usize::from(threads > 1), [None, Some(2), Some(4), Some(4)]));
    assert_eq!(lanes_of(true), (0, [None; 4]), "a body summing across lanes must stay whole");
}

/// A carry without a lane that only accumulates sums across the lanes (a gradient shared by the
/// heads, scattered by position, as a TTT layer's reverse scan carries `learnable_token_idx`'s) does not keep the scan whole: each part sums its
/// own lanes' share, the first from the initial value and the others from zero, and the shares are
/// added afterwards. An accumulator read by anything but its own update, or a lane-free carry
/// replaced rather than accumulated, still keeps it whole. All match the interpreter.
#[test]
fn sums_across_lanes_accumulate_per_part() {
    #[derive(Clone, Copy, Debug)]
    enum Body {
        Accumulates,
        ReadsItsAccumulator,
        ReplacesItsCarry,
    }
    let split = |kind: Body| {
        let b = Dim::sym("B");
        let lane_shape = vec![b.clone(), Dim::c(4), Dim::c(3), Dim::c(3)];
        let mut body = Graph::new("step");
        let s = body.input("s", Type::new(DType::F32, lane_shape.clone()));
        let acc = body.input("acc", f32t(&[4, 1]));
        let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(4), Dim::sym("n"), Dim::c(3)]));
        let w = body.input("w", f32t(&[3]));
        let y = body.matmul(x, s).unwrap(); // [B,4,n,3]
        let y = body.mul(y, w).unwrap();
        let y = body.unary(UnaryOp::Tanh, y).unwrap();
        let xt = body.transpose_last2(x).unwrap();
        let upd = body.matmul(xt, y).unwrap(); // [B,4,3,3]
        let y = if matches!(kind, Body::ReadsItsAccumulator) {
            let first = body.slice(acc, 0, 0, Some(1)).unwrap(); // [1,1]
            body.mul(y, first).unwrap()
        } else {
            y
        };
        // Σ over the lanes (kept as an axis of 1), the batch and the rows, negated and scaled.
        let share = body.reduce(ReduceKind::Sum, upd, 1, true).unwrap(); // [B,1,3,3]
        let share = body.reduce(ReduceKind::Sum, share, 0, false).unwrap(); // [1,3,3]
        let share = body.reduce(ReduceKind::Sum, share, 1, false).unwrap(); // [1,3]
        let share = body.unary(UnaryOp::Neg, share).unwrap();
        // Into rows 0..3 of 4 by index, as a shared per-position gradient is gathered.
        let share = body.reshape(share, vec![Dim::c(3), Dim::c(1)]).unwrap();
        let rows = body.iota(Dim::c(3), DType::I64).unwrap();
        let share = body.scatter_add(share, rows, 4).unwrap(); // [4,1]
        let half = body.scalar(0.5).unwrap();
        let share = body.mul(half, share).unwrap();
        let acc2 = if matches!(kind, Body::ReplacesItsCarry) { share } else { body.add(acc, share).unwrap() };
        let scale = body.scalar(0.1).unwrap();
        let step = body.mul(upd, scale).unwrap();
        let s2 = body.sub(s, step).unwrap();
        body.output("s", s2);
        body.output("acc", acc2);
        body.output("y", y);
        let mut g = Graph::new("accumulators");
        let s0 = g.input("s0", Type::new(DType::F32, lane_shape));
        let a0 = g.input("a0", f32t(&[4, 1]));
        let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(4), Dim::sym("T"), Dim::c(3)]));
        let w = g.input("w", f32t(&[3]));
        let outs = g.scan(Scan { axis: 2, chunk: 4, carries: 2, seqs: 1, body, reverse: true }, &[s0, a0, xs, w]).unwrap();
        for (name, v) in ["s", "acc", "y"].iter().zip(outs) {
            g.output(name, v);
        }
        for batch in [2, 1] {
            let args = [
                Tensor::f32(vec![batch, 4, 3, 3], values(36 * batch, 24, -0.5, 0.5)),
                Tensor::f32(vec![4, 1], values(4, 25, -1.0, 1.0)),
                Tensor::f32(vec![batch, 4, 10, 3], values(120 * batch, 26, -1.0, 1.0)),
                Tensor::f32(vec![3], values(3, 27, 0.5, 1.5)),
            ];
            assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0, "{kind:?}, B = {batch}");
        }
        Program::compile(&g).unwrap().stats().plan.lane_split_scans
    };
    let threads = tttc_codegen_cpu::threads();
    assert_eq!(split(Body::Accumulates), usize::from(threads > 1));
    assert_eq!(split(Body::ReadsItsAccumulator), 0, "an accumulator read by the lanes must keep the scan whole");
    assert_eq!(split(Body::ReplacesItsCarry), 0, "a lane-free carry replaced each step must keep the scan whole");
}

/// Values computed only to be placed in a concat's or a pad's result are written in place
/// (a view of it) when each piece is contiguous: with a batch of one, the pad and the concat copy
/// nothing they computed (the results being outputs); with a batch of two, everything is copied.
/// Both match the interpreter, with pieces read again after their joins, a piece joined twice,
/// an argument joined and a pad with no margin before.
/// How attention's operands reach the chain: kᵀ as a transpose of k (read through strides) or
/// stored, q and v stored or as transposes.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Rows,
    Transposed,
}

/// An attention graph's shapes: `q` of `batch × tq × d`, `k` of `batch × tk × d`, `v` of
/// `v_batch × tk × dv` (broadcast to `batch`).
struct Attention {
    batch: &'static [usize],
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    v_batch: &'static [usize],
    scale: Option<(tttc_ir::BinaryOp, f64)>,
    causal: bool,
    /// With `causal`, a sliding window: keys this many or more before their query masked out.
    window: Option<usize>,
    layout: Layout,
}

impl Attention {
    /// The arguments' shapes, as the layout stores them.
    fn shapes(&self) -> [Vec<usize>; 3] {
        let dims = |b: &[usize], r: usize, c: usize| [b, &[r, c]].concat();
        match self.layout {
            Layout::Rows => [dims(self.batch, self.tq, self.d), dims(self.batch, self.tk, self.d), dims(self.v_batch, self.tk, self.dv)],
            Layout::Transposed => [dims(self.batch, self.d, self.tq), dims(self.batch, self.d, self.tk), dims(self.v_batch, self.dv, self.tk)],
        }
    }

    /// `softmax(scale(q·kᵀ), masked) · v` built from general ops as the frontends build it.
    fn graph(&self) -> Graph {
        let mut g = Graph::new("attention");
        let [qs, ks, vs] = self.shapes();
        let (q, k, v) = (g.input("q", f32t(&qs)), g.input("k", f32t(&ks)), g.input("v", f32t(&vs)));
        let (q, kt, v) = match self.layout {
            Layout::Rows => (q, g.transpose_last2(k).unwrap(), v),
            Layout::Transposed => (g.transpose_last2(q).unwrap(), k, g.transpose_last2(v).unwrap()),
        };
        let mut s = g.matmul(q, kt).unwrap();
        if let Some((op, c)) = self.scale {
            let c = g.scalar(c).unwrap();
            s = g.binary(op, s, c).unwrap();
        }
        if self.causal {
            s = g.tri_mask_window(s, f64::NEG_INFINITY, self.window).unwrap();
        }
        let m = g.reduce(ReduceKind::Max, s, -1, true).unwrap();
        let shifted = g.binary(tttc_ir::BinaryOp::Sub, s, m).unwrap();
        let e = g.unary(UnaryOp::Exp, shifted).unwrap();
        let l = g.reduce(ReduceKind::Sum, e, -1, true).unwrap();
        let p = g.binary(tttc_ir::BinaryOp::Div, e, l).unwrap();
        let y = g.matmul(p, v).unwrap();
        g.output("y", y);
        g
    }
}

/// Attention's chain runs on the CPU as one tiled step with a running softmax, and matches the
/// interpreter (and the other backends, which run its ops): causal and not, scaled by division
/// (by a power of two, taken as a product, and not) or product or not at all, with rows, keys
/// and value widths that fill no tile exactly (several blocks of rows and of keys, one query
/// row as in decoding), operands read through transposes, and values shared across a batch axis.
#[test]
fn attention_runs_as_one_tiled_step() {
    use tttc_ir::BinaryOp::{Div, Mul};
    use Layout::{Rows, Transposed};
    let case = |batch, tq, tk, d, dv, v_batch, scale, causal, layout| Attention { batch, tq, tk, d, dv, v_batch, scale, causal, window: None, layout };
    let cases = [
        case(&[2, 3], 37, 37, 20, 24, &[2, 3], Some((Div, 4.0)), true, Rows),
        case(&[1, 2], 600, 600, 8, 16, &[1, 2], Some((Div, 3.0)), true, Rows),
        case(&[2], 5, 300, 16, 16, &[2], Some((Mul, 0.3)), false, Rows),
        case(&[3], 1, 50, 12, 7, &[3], Some((Div, 2.0)), false, Rows),
        case(&[2, 3], 37, 37, 20, 24, &[3], None, true, Rows),
        case(&[2], 100, 100, 33, 17, &[2], Some((Div, 5.5)), true, Transposed),
        case(&[], 97, 97, 64, 64, &[], Some((Div, 8.0)), true, Rows),
        case(&[2], 130, 40, 9, 5, &[2], None, true, Rows),
        // Sliding windows: narrower than a panel of keys, starting inside a block, wider than
        // a block, and of one key.
        Attention { window: Some(7), ..case(&[2], 600, 600, 8, 16, &[2], Some((Div, 3.0)), true, Rows) },
        Attention { window: Some(300), ..case(&[1, 2], 600, 600, 24, 20, &[1, 2], Some((Div, 3.0)), true, Rows) },
        Attention { window: Some(1), ..case(&[2], 40, 40, 9, 5, &[2], None, true, Transposed) },
        // Fewer queries than keys: row i still sees keys i − W + 1 ..= i.
        Attention { window: Some(9), ..case(&[2], 40, 70, 9, 5, &[2], Some((Div, 2.0)), true, Rows) },
    ];
    for (seed, a) in (21..).step_by(3).zip(&cases) {
        let g = a.graph();
        let what = format!("{:?} {}×{}, d {}, dv {}", a.batch, a.tq, a.tk, a.d, a.dv);
        assert_eq!(Program::compile(&g).unwrap().stats().plan.attention, 1, "{what}: planned as one step");
        let args: Vec<Tensor> =
            a.shapes().into_iter().zip(seed..).map(|(s, seed)| Tensor::f32(s.clone(), values(s.iter().product(), seed, -1.0, 1.0))).collect();
        let worst = compare(&g, &args, 1e-5, 1e-6);
        assert!(worst <= 1.0, "{what}: error {worst:.2} of tolerance");
    }
    // A chain whose weights are also a result keeps its ops.
    let mut g = case(&[2], 9, 9, 4, 4, &[2], None, true, Rows).graph();
    let p = g.nodes.iter().rev().find(|n| matches!(n.op, Op::MatMul)).unwrap().inputs[0];
    g.output("p", p);
    assert_eq!(Program::compile(&g).unwrap().stats().plan.attention, 0, "the weights are needed whole");
    // Two chains that share a node (one's result the other's scores, read unscaled and
    // unmasked) run as their ops, and still match.
    let mut g = case(&[2], 9, 9, 4, 9, &[2], None, false, Rows).graph();
    let (_, y) = g.outputs.pop().unwrap();
    let m = g.reduce(ReduceKind::Max, y, -1, true).unwrap();
    let shifted = g.binary(tttc_ir::BinaryOp::Sub, y, m).unwrap();
    let e = g.unary(UnaryOp::Exp, shifted).unwrap();
    let l = g.reduce(ReduceKind::Sum, e, -1, true).unwrap();
    let p = g.binary(tttc_ir::BinaryOp::Div, e, l).unwrap();
    let w = g.input("w", f32t(&[2, 9, 3]));
    let z = g.matmul(p, w).unwrap();
    g.output("z", z);
    assert_eq!(Program::compile(&g).unwrap().stats().plan.attention, 0, "overlapping chains");
    let args: Vec<Tensor> = [vec![2, 9, 4], vec![2, 9, 4], vec![2, 9, 9], vec![2, 9, 3]]
        .into_iter()
        .zip(41..)
        .map(|(s, seed)| Tensor::f32(s.clone(), values(s.iter().product(), seed, -1.0, 1.0)))
        .collect();
    assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0, "overlapping chains");
}

/// How a selective scan's body is written: operands of the commuting ops in the frontend's order
/// or swapped, `c` made a column by a reshape or a transpose, and the update's sum (or, not a
/// recurrence, a difference).
#[derive(Clone, Copy)]
struct ScanBody {
    swapped: bool,
    transposed_c: bool,
    update: tttc_ir::BinaryOp,
}

/// Mamba's selective scan over `[batch, T]` with `width` channels of `states` states (the
/// frontend's `selective_scan_step`, written as `body` says).
fn selective_scan(batch: usize, width: usize, states: usize, body: ScanBody) -> Graph {
    let f = |shape: Vec<Dim>| Type::new(DType::F32, shape);
    let (b, one, d, n) = (Dim::c(batch), Dim::c(1), Dim::c(width), Dim::c(states));
    let mut g = Graph::new("step");
    let h = g.input("state", f(vec![b.clone(), d.clone(), n.clone()]));
    let dt = g.input("dt", f(vec![b.clone(), one.clone(), d.clone()]));
    let du = g.input("du", f(vec![b.clone(), one.clone(), d.clone()]));
    let bm = g.input("b", f(vec![b.clone(), one.clone(), n.clone()]));
    let cm = g.input("c", f(vec![b.clone(), one.clone(), n.clone()]));
    let a = g.input("a", f(vec![d.clone(), n.clone()]));
    let ordered = |x, y| if body.swapped { (y, x) } else { (x, y) };
    let column = vec![b.clone(), d.clone(), one.clone()];
    let dt = g.reshape(dt, column.clone()).unwrap();
    let (x, y) = ordered(dt, a);
    let rate = g.mul(x, y).unwrap();
    let decay = g.unary(UnaryOp::Exp, rate).unwrap();
    let du = g.reshape(du, column).unwrap();
    let (x, y) = ordered(du, bm);
    let input = g.mul(x, y).unwrap();
    let (x, y) = ordered(decay, h);
    let kept = g.mul(x, y).unwrap();
    let (x, y) = ordered(kept, input);
    let h = g.binary(body.update, x, y).unwrap();
    let c = if body.transposed_c { g.transpose_last2(cm).unwrap() } else { g.reshape(cm, vec![b.clone(), n.clone(), one.clone()]).unwrap() };
    let y = g.matmul(h, c).unwrap();
    let y = g.reshape(y, vec![b.clone(), one, d.clone()]).unwrap();
    g.output("state", h);
    g.output("y", y);
    let mut outer = Graph::new("selective_scan");
    let t = Dim::sym("T");
    let h0 = outer.input("h0", f(vec![b.clone(), d.clone(), n.clone()]));
    let seqs: Vec<_> = [("dt", &d), ("du", &d), ("b", &n), ("c", &n)].map(|(name, last)| outer.input(name, f(vec![b.clone(), t.clone(), last.clone()]))).into();
    let a = outer.input("a", f(vec![d, n]));
    let outs = outer.scan(Scan { axis: 1, chunk: 1, carries: 1, seqs: 4, body: g, reverse: false }, &[h0, seqs[0], seqs[1], seqs[2], seqs[3], a]).unwrap();
    outer.output("state", outs[0]);
    outer.output("y", outs[1]);
    outer
}

/// Mamba's selective scan runs on the CPU as one step (a block of channels' state held over the
/// sequence) and matches the interpreter and the other backends' ops: channels not a multiple of
/// the block, a single state, one position, a batch of two, decays above 1 (A > 0) as well as
/// below, exponents past exp's range (the general exp, not the one for exponents ≤ 0), the
/// body's operands in either order; a body that is not the recurrence keeps its ops.
#[test]
fn selective_scans_run_as_one_step() {
    use tttc_ir::BinaryOp::{Add, Sub};
    let frontend = ScanBody { swapped: false, transposed_c: false, update: Add };
    let cases = [
        (2, 13, 37, 5, frontend, -2.0f32),
        (1, 24, 1, 16, frontend, -1.0),
        (1, 8, 50, 1, ScanBody { swapped: true, transposed_c: true, update: Add }, -1.0),
        (2, 3, 9, 4, ScanBody { swapped: true, transposed_c: false, update: Add }, -0.5),
        // Exponents past exp's range: infinite states, and NaN where their products cancel.
        (1, 10, 6, 3, frontend, 400.0),
    ];
    for (seed, &(batch, width, len, states, body, a_bound)) in (61..).step_by(7).zip(&cases) {
        let g = selective_scan(batch, width, states, body);
        let what = format!("B {batch}, D {width}, T {len}, N {states}");
        assert_eq!(Program::compile(&g).unwrap().stats().plan.recurrences, 1, "{what}: planned as one step");
        let args = [
            Tensor::f32(vec![batch, width, states], values(batch * width * states, seed, -1.0, 1.0)),
            Tensor::f32(vec![batch, len, width], values(batch * len * width, seed + 1, 0.0, 0.5)),
            Tensor::f32(vec![batch, len, width], values(batch * len * width, seed + 2, -1.0, 1.0)),
            Tensor::f32(vec![batch, len, states], values(batch * len * states, seed + 3, -1.0, 1.0)),
            Tensor::f32(vec![batch, len, states], values(batch * len * states, seed + 4, -1.0, 1.0)),
            Tensor::f32(vec![width, states], values(width * states, seed + 5, a_bound.min(-1.0), a_bound.max(0.1))),
        ];
        let worst = compare(&g, &args, 1e-5, 1e-6);
        assert!(worst <= 1.0, "{what}: error {worst:.2} of tolerance");
    }
    let g = selective_scan(2, 5, 3, ScanBody { update: Sub, ..frontend });
    assert_eq!(Program::compile(&g).unwrap().stats().plan.recurrences, 0, "not a recurrence");
    // The Mamba frontend's scans, as the pass pipeline leaves them: one per layer.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mamba-tiny.toml");
    let g = tttc_passes::compile(&tttc_frontends::load_structure(&example).unwrap().g).unwrap();
    assert_eq!(Program::compile(&g).unwrap().stats().plan.recurrences, 2, "mamba-tiny's two layers");
}

/// Attention's gradient (the autodiff's backward: weights recomputed from each row's
/// log-sum-exp) runs on the CPU as one tiled step beside the forward's, which keeps the
/// log-sum-exp for it, and matches the interpreter and the other backends' ops: causal and not,
/// scaled or not, several blocks of keys and rows, one query row, operands read through
/// transposes, values shared across a batch axis (their gradient summed over it).
#[test]
fn attention_backward_runs_as_one_tiled_step() {
    use tttc_ir::BinaryOp::{Div, Mul};
    use Layout::{Rows, Transposed};
    let case = |batch, tq, tk, d, dv, v_batch, scale, causal, layout| Attention { batch, tq, tk, d, dv, v_batch, scale, causal, window: None, layout };
    let cases = [
        case(&[2, 3], 37, 37, 20, 24, &[2, 3], Some((Div, 4.0)), true, Rows),
        case(&[1, 2], 300, 300, 8, 16, &[1, 2], Some((Div, 3.0)), true, Rows),
        case(&[2], 5, 150, 16, 16, &[2], Some((Mul, 0.3)), false, Rows),
        case(&[3], 1, 50, 12, 7, &[3], Some((Div, 2.0)), false, Rows),
        case(&[2, 3], 37, 37, 20, 24, &[3], None, true, Rows),
        case(&[2], 100, 100, 33, 17, &[2], Some((Div, 5.5)), true, Transposed),
        case(&[2], 130, 70, 9, 5, &[2], None, true, Rows),
        Attention { window: Some(7), ..case(&[2], 300, 300, 8, 16, &[2], Some((Div, 3.0)), true, Rows) },
        Attention { window: Some(130), ..case(&[1, 2], 300, 300, 24, 20, &[1, 2], Some((Div, 3.0)), true, Transposed) },
        Attention { window: Some(9), ..case(&[2], 40, 70, 9, 5, &[2], Some((Div, 2.0)), true, Rows) },
    ];
    for (seed, a) in (61..).step_by(4).zip(&cases) {
        let g = tttc_passes::compile(&tttc_passes::vector_jacobian_product(&a.graph(), &[]).unwrap()).unwrap();
        let what = format!("{:?} {}×{}, d {}, dv {}", a.batch, a.tq, a.tk, a.d, a.dv);
        let plan = Program::compile(&g).unwrap().stats().plan;
        assert_eq!((plan.attention, plan.attention_backward), (1, 1), "{what}: planned as one step each way");
        let [qs, ks, vs] = a.shapes();
        let mut out = a.batch.to_vec();
        out.extend([a.tq, a.dv]);
        let args: Vec<Tensor> =
            [qs, ks, vs, out].into_iter().zip(seed..).map(|(s, seed)| Tensor::f32(s.clone(), values(s.iter().product(), seed, -1.0, 1.0))).collect();
        let worst = compare(&g, &args, 1e-5, 1e-6);
        assert!(worst <= 1.0, "{what}: error {worst:.2} of tolerance");
    }
}

#[test]
fn concat_and_pad_pieces_are_written_in_place() {
    let mut g = Graph::new("joins");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(7), Dim::c(5)]));
    let e = g.unary(UnaryOp::Exp, x).unwrap();
    let padded = g.pad(e, 1, 2, 1).unwrap();
    let t = g.unary(UnaryOp::Tanh, x).unwrap();
    let n = g.unary(UnaryOp::Neg, x).unwrap();
    let joined = g.concat(&[n, t, x, t], 1).unwrap(); // `t` twice: copied, not placed
    let again = g.add(e, n).unwrap(); // placed pieces read after their joins
    let padded_start = g.pad(again, 1, 0, 3).unwrap();
    for (name, v) in [("padded", padded), ("joined", joined), ("again", again), ("padded_start", padded_start)] {
        g.output(name, v);
    }
    for batch in [1usize, 2] {
        let args = [Tensor::f32(vec![batch, 7, 5], values(35 * batch, 17, -2.0, 2.0))];
        assert!(compare(&g, &args, 1e-6, 1e-7) <= 1.0, "B = {batch}");
        let mut env = tttc_ir::DimEnv::new();
        env.insert("B".to_string(), batch);
        let (s, _) = tttc_lower::schedule::model(&g, &env, tttc_lower::schedule::Lengths::Fixed, tttc_lower::schedule::Products::GPU, 1).unwrap();
        let model = s.functions.last().unwrap();
        let copies = model.instrs.iter().filter(|i| matches!(i, tttc_lower::schedule::Instr::Copy { .. })).count();
        // B = 1: `x` (an argument) and `t` (twice) into the concat, `again` (an output of its
        // own) into its pad: 4 copies; `e` and `n` none. B = 2: every piece, 1 + 4 + 1.
        assert_eq!(copies, if batch == 1 { 4 } else { 6 }, "B = {batch}");
    }
}

/// A kernel that follows a product, reads it and walks its elements in order becomes the
/// product's epilogue (on the GPU applied in registers before the store): with a broadcast bias
/// (outer axes when B = 2) and a constant whose fill comes in between, over a batch of products,
/// with the product also an output (kept) or not; a kernel that does not read the product stays a
/// kernel. Tensor-core tiles and one-thread
/// products (T = 3) both match the interpreter.
#[test]
fn products_apply_their_epilogues_before_the_store() {
    let bsym = Dim::sym("B");
    let mut g = Graph::new("epilogues");
    let x = g.input("x", Type::new(DType::F32, vec![bsym.clone(), Dim::sym("T"), Dim::c(33)]));
    let w = g.input("w", f32t(&[33, 40]));
    let bias = g.input("bias", f32t(&[40]));
    let p = g.input("p", Type::new(DType::F32, vec![bsym.clone(), Dim::c(2), Dim::sym("T"), Dim::c(9)]));
    let q = g.input("q", Type::new(DType::F32, vec![bsym, Dim::c(2), Dim::c(9), Dim::c(12)]));
    let y = g.matmul(x, w).unwrap();
    let half = g.scalar(0.5).unwrap(); // its fill comes between the product and its epilogue
    let y = g.add(y, bias).unwrap();
    let y = g.mul(y, half).unwrap();
    let z = g.unary(UnaryOp::Tanh, y).unwrap(); // epilogue: tanh((x·w + bias) / 2), the product not kept
    let pq = g.matmul(p, q).unwrap();
    let e = g.unary(UnaryOp::Exp, pq).unwrap(); // epilogue of a batch of products, the product kept
    let pq2 = g.matmul(p, q).unwrap();
    let unrelated = g.unary(UnaryOp::Neg, x).unwrap(); // follows a product without reading it
    for (name, v) in [("z", z), ("e", e), ("pq", pq), ("pq2", pq2), ("unrelated", unrelated)] {
        g.output(name, v);
    }
    for (batch, t) in [(1usize, 70usize), (2, 70), (2, 3)] {
        let args = [
            Tensor::f32(vec![batch, t, 33], values(batch * t * 33, 61, -1.0, 1.0)),
            Tensor::f32(vec![33, 40], values(33 * 40, 62, -0.3, 0.3)),
            Tensor::f32(vec![40], values(40, 63, -1.0, 1.0)),
            Tensor::f32(vec![batch, 2, t, 9], values(batch * 2 * t * 9, 64, -1.0, 1.0)),
            Tensor::f32(vec![batch, 2, 9, 12], values(batch * 2 * 9 * 12, 65, -0.5, 0.5)),
        ];
        assert!(compare(&g, &args, 1e-5, 1e-5) <= 1.0, "B = {batch}, T = {t}");
        let mut env = tttc_ir::DimEnv::new();
        env.insert("B".to_string(), batch);
        env.insert("T".to_string(), t);
        let (s, _) = tttc_lower::schedule::model(&g, &env, tttc_lower::schedule::Lengths::Fixed, tttc_lower::schedule::Products::GPU, 1).unwrap();
        let model = s.functions.last().unwrap();
        let epilogues: Vec<bool> = model
            .instrs
            .iter()
            .filter_map(|i| match i {
                tttc_lower::schedule::Instr::MatMul { epilogue: Some(e), .. } => Some(e.keep_product),
                _ => None,
            })
            .collect();
        assert_eq!(epilogues, [false, true], "B = {batch}, T = {t}: which products took an epilogue, and whether each keeps its product");
    }
}

/// A product whose epilogue only adds it to another value (`x − a·b`, `x + a·b`, `a·b + x`, the
/// product read as it is or through a reshape) is added where it is computed, on every path a product takes: a batch of small ones in registers
/// and of larger ones through `gemm` (each member on its own thread), products of a few rows down
/// the right operand's rows, a product by a vector split along its long side, and a lone large
/// one split inside `gemm`. `a·b − x` stays an epilogue run after the product. All match the
/// interpreter.
#[test]
fn products_added_to_a_value_where_they_are_computed() {
    // (batch, m, k, n, b read transposed)
    for (batch, m, k, n, transposed) in [(6, 64, 16, 200, false), (3, 80, 16, 24, false), (4, 5, 7, 9, false), (1, 1, 700, 600, true), (1, 300, 64, 200, false)]
    {
        for form in ["x - ab", "x + ab", "ab + x", "ab - x", "x + rows(ab)"] {
            // The last reads the product through a reshape (a gradient's `[1, V, D]` product
            // added to a `[V, D]` sum): an alias of the product's memory.
            let x_shape = if form == "x + rows(ab)" { vec![batch * m, n] } else { vec![batch, m, n] };
            let mut g = Graph::new("sum");
            let x = g.input("x", f32t(&x_shape));
            let a = g.input("a", f32t(&[batch, m, k]));
            let b_shape = if transposed { vec![batch, n, k] } else { vec![batch, k, n] };
            let b = g.input("b", f32t(&b_shape));
            let b = if transposed { g.transpose_last2(b).unwrap() } else { b };
            let p = g.matmul(a, b).unwrap();
            let out = match form {
                "x - ab" => g.sub(x, p),
                "x + ab" => g.add(x, p),
                "ab + x" => g.add(p, x),
                "ab - x" => g.sub(p, x),
                _ => {
                    let rows = g.reshape(p, vec![Dim::c(batch * m), Dim::c(n)]).unwrap();
                    g.add(x, rows)
                }
            };
            g.output("out", out.unwrap());
            let args = [
                Tensor::f32(x_shape.clone(), values(batch * m * n, 71, -2.0, 2.0)),
                Tensor::f32(vec![batch, m, k], values(batch * m * k, 72, -1.0, 1.0)),
                Tensor::f32(b_shape.clone(), values(batch * k * n, 73, -0.5, 0.5)),
            ];
            let case = format!("{form}: {batch} × {m}×{k}·{k}×{n}, b transposed {transposed}");
            assert!(compare(&g, &args, 1e-5, 1e-5) <= 1.0, "{case}");
            // The CPU's schedule makes the sum the product's epilogue, the product not kept.
            let (s, _) =
                tttc_lower::schedule::model(&g, &Default::default(), tttc_lower::schedule::Lengths::Fixed, tttc_lower::schedule::Products::CPU, 1).unwrap();
            let epilogues: Vec<bool> = s
                .functions
                .last()
                .unwrap()
                .instrs
                .iter()
                .filter_map(|i| match i {
                    tttc_lower::schedule::Instr::MatMul { epilogue, .. } => Some(epilogue.as_ref().is_some_and(|e| !e.keep_product)),
                    _ => None,
                })
                .collect();
            assert_eq!(epilogues, [true], "{case}");
        }
    }
}

/// A scan's carry updated as `W − a·b` after the step's last read of `W` is written where it is
/// read, one buffer for every iteration (its value at each chunk's start, an output, copied out
/// first); one read again after its update (by a product that follows one reading the new value)
/// keeps the two buffers in turn. Both match the interpreter, so an update in place where a later
/// read needs the old value fails.
#[test]
fn carries_update_in_place_after_their_last_read() {
    for read_after in [false, true] {
        let b = Dim::sym("B");
        let n = Dim::sym("n");
        let mut body = Graph::new("step");
        let w = body.input("w", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(24), Dim::c(8)]));
        let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(2), n.clone(), Dim::c(24)]));
        let q = body.input("q", Type::new(DType::F32, vec![b.clone(), Dim::c(2), n, Dim::c(24)]));
        let y = body.matmul(x, w).unwrap(); // [B,2,n,8]
        let scale = body.scalar(0.05).unwrap();
        let xs = body.mul(x, scale).unwrap();
        let xt = body.transpose_last2(xs).unwrap();
        let update = body.matmul(xt, y).unwrap(); // [B,2,24,8]
        let w2 = body.sub(w, update).unwrap(); // the product's epilogue, subtracted where it is computed
        let out = if read_after {
            // The new weight read by a product first (its update emitted there), the old after.
            let new = body.matmul(q, w2).unwrap();
            let old = body.matmul(q, w).unwrap();
            body.add(new, old).unwrap()
        } else {
            body.matmul(q, w2).unwrap()
        };
        // The weight at each chunk's start, kept (as a training step's forward scan keeps it for
        // the backward pass): copied out before its update.
        let kept = body.reshape(w, vec![b.clone(), Dim::c(2), Dim::c(1), Dim::c(192)]).unwrap();
        body.output("w", w2);
        body.output("y", out);
        body.output("kept", kept);
        let mut g = Graph::new("in_place");
        let w0 = g.input("w0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(24), Dim::c(8)]));
        let xs = g.input("xs", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::sym("T"), Dim::c(24)]));
        let qs = g.input("qs", Type::new(DType::F32, vec![b, Dim::c(2), Dim::sym("T"), Dim::c(24)]));
        let outs = g.scan(Scan { axis: 2, chunk: 4, carries: 1, seqs: 2, body, reverse: false }, &[w0, xs, qs]).unwrap();
        g.output("w", outs[0]);
        g.output("y", outs[1]);
        g.output("kept", outs[2]);
        let t = 10;
        let args = [
            Tensor::f32(vec![1, 2, 24, 8], values(2 * 24 * 8, 81, -0.5, 0.5)),
            Tensor::f32(vec![1, 2, t, 24], values(2 * t * 24, 82, -1.0, 1.0)),
            Tensor::f32(vec![1, 2, t, 24], values(2 * t * 24, 83, -1.0, 1.0)),
        ];
        assert!(compare(&g, &args, 1e-5, 1e-5) <= 1.0, "read after its update: {read_after}");
        let mut env = tttc_ir::DimEnv::new();
        env.insert("B".to_string(), 1);
        env.insert("T".to_string(), t);
        let (s, _) = tttc_lower::schedule::model(&g, &env, tttc_lower::schedule::Lengths::Fixed, tttc_lower::schedule::Products::CPU, 1).unwrap();
        let in_place: Vec<Vec<bool>> = s
            .functions
            .iter()
            .flat_map(|f| &f.instrs)
            .filter_map(|i| match i {
                tttc_lower::schedule::Instr::Scan(sc) => Some(sc.in_place.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(in_place, [vec![!read_after]], "read after its update: {read_after}");
    }
}

/// Steps of a scan's body that read only its invariants (angles from the chunk's positions, a
/// product of a weight with itself, a mask over a value the caller computed and reads again
/// afterwards) run once before the scan on the CPU backends, for the whole chunks; the shorter
/// last chunk computes them at its own length. Against the interpreter on every backend, and
/// the CPU's schedule holds those steps outside the whole chunks' body and inside the last's.
#[test]
fn scan_steps_that_read_only_invariants_run_once_before_the_scan() {
    let b = Dim::sym("B");
    let n = Dim::sym("n");
    let mut body = Graph::new("step");
    let s = body.input("s", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8)]));
    let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(2), n.clone(), Dim::c(8)]));
    let w = body.input("w", f32t(&[2, 8, 8]));
    let m = body.input("m", f32t(&[8, 8]));
    let pos = body.iota(n.clone(), DType::F32).unwrap();
    let rate = body.scalar(0.3).unwrap();
    let angle = body.mul(pos, rate).unwrap();
    let cos = body.unary(UnaryOp::Cos, angle).unwrap();
    let cos = body.reshape(cos, vec![n.clone(), Dim::c(1)]).unwrap();
    let wt = body.transpose_last2(w).unwrap();
    let wsq = body.matmul(w, wt).unwrap(); // [2, 8, 8]
    let lower = body.tri_mask(m, 0.0).unwrap(); // the caller's m, masked in a buffer of its own
    let scaled = body.mul(x, cos).unwrap();
    let y = body.matmul(scaled, wsq).unwrap(); // [B, 2, n, 8]
    let y = body.matmul(y, lower).unwrap();
    let total = body.reduce(ReduceKind::Sum, y, 2, false).unwrap();
    let s2 = body.add(s, total).unwrap();
    body.output("s", s2);
    body.output("y", y);
    let mut g = Graph::new("hoisted");
    let s0 = g.input("s0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8)]));
    let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(2), Dim::sym("T"), Dim::c(8)]));
    let w = g.input("w", f32t(&[2, 8, 8]));
    let m = g.input("m", f32t(&[8, 8]));
    let two = g.scalar(2.0).unwrap();
    let m2 = g.mul(m, two).unwrap();
    let outs = g.scan(Scan { axis: 2, chunk: 4, carries: 1, seqs: 1, body, reverse: false }, &[s0, xs, w, m2]).unwrap();
    let after = g.add(m2, two).unwrap(); // reads m2 after the scan: the mask must not be applied to it
    g.output("s", outs[0]);
    g.output("y", outs[1]);
    g.output("after", after);
    let t = 10; // two whole chunks and one of 2
    let args = [
        Tensor::f32(vec![1, 2, 8], values(16, 91, -1.0, 1.0)),
        Tensor::f32(vec![1, 2, t, 8], values(2 * t * 8, 92, -1.0, 1.0)),
        Tensor::f32(vec![2, 8, 8], values(128, 93, -0.5, 0.5)),
        Tensor::f32(vec![8, 8], values(64, 94, -1.0, 1.0)),
    ];
    assert!(compare(&g, &args, 1e-5, 1e-5) <= 1.0);
    let mut env = tttc_ir::DimEnv::new();
    env.insert("B".to_string(), 1);
    env.insert("T".to_string(), t);
    let (sched, _) = tttc_lower::schedule::model(&g, &env, tttc_lower::schedule::Lengths::Fixed, tttc_lower::schedule::Products::CPU, 1).unwrap();
    use tttc_lower::schedule::Instr;
    let names = |f: usize| -> Vec<&str> { sched.functions[f].instrs.iter().map(Instr::name).collect() };
    let top = sched.functions.len() - 1;
    let scan = sched.functions[top]
        .instrs
        .iter()
        .find_map(|i| match i {
            Instr::Scan(sc) => Some(sc),
            _ => None,
        })
        .unwrap();
    let tail = scan.tail.expect("a shorter last chunk").0;
    for hoisted in ["iota", "tri_mask"] {
        assert!(names(top).contains(&hoisted), "{hoisted} before the scan: {:?}", names(top));
        assert!(!names(scan.body).contains(&hoisted), "{hoisted} in the whole chunks' body: {:?}", names(scan.body));
        assert!(names(tail).contains(&hoisted), "{hoisted} in the last chunk's body: {:?}", names(tail));
    }
    let products = |f: usize| names(f).iter().filter(|&&n| n == "matmul").count();
    assert_eq!((products(scan.body), products(tail)), (2, 3), "w·wᵀ once before the scan, and in the last chunk");
}

/// A softmax cross-entropy as the language models' head writes it (the log-sum-exp shifted by
/// a stopped maximum, the target's logit through a one-hot), weighted and summed.
fn cross_entropy_loss(g: &mut Graph, x: tttc_ir::ValueId, t: tttc_ir::ValueId, w: tttc_ir::ValueId) -> tttc_ir::ValueId {
    let depth = g.ty(x).shape[2].as_const().unwrap();
    let m = g.reduce(ReduceKind::Max, x, -1, true).unwrap();
    let m = g.stop_gradient(m).unwrap();
    let shifted = g.sub(x, m).unwrap();
    let e = g.unary(UnaryOp::Exp, shifted).unwrap();
    let s = g.reduce(ReduceKind::Sum, e, -1, false).unwrap();
    let l = g.unary(UnaryOp::Log, s).unwrap();
    let m = g.reduce(ReduceKind::Sum, m, -1, false).unwrap();
    let lse = g.add(l, m).unwrap();
    let oh = g.one_hot(t, depth).unwrap();
    let picked = g.mul(oh, x).unwrap();
    let picked = g.reduce(ReduceKind::Sum, picked, -1, false).unwrap();
    let nll = g.sub(lse, picked).unwrap();
    let nll = g.mul(nll, w).unwrap();
    let loss = g.reduce(ReduceKind::Sum, nll, 1, false).unwrap();
    g.reduce(ReduceKind::Sum, loss, 0, false).unwrap()
}

/// The cross-entropy's loss and its gradient (the backward the autodiff gives it), rows of odd
/// length: the CPU runs the rows' statistics and the backward as one step each (its schedule
/// holds them, and no one-hot), every backend matches the interpreter, and a target out of range
/// is an error.
#[test]
fn cross_entropy_rows_and_their_backward() {
    let (rows, depth) = (6usize, 37usize);
    let types = [f32t(&[2, rows / 2, depth]), Type::new(DType::I64, vec![Dim::c(2), Dim::c(rows / 2)]), f32t(&[2, rows / 2])];
    let mut body = Graph::new("loss");
    let [x, t, w] = [0, 1, 2].map(|i| body.input(["x", "t", "w"][i], types[i].clone()));
    let loss = cross_entropy_loss(&mut body, x, t, w);
    body.output("loss", loss);
    let mut g = Graph::new("cross_entropy");
    let [x, t, w] = [0, 1, 2].map(|i| g.input(["x", "t", "w"][i], types[i].clone()));
    let loss = cross_entropy_loss(&mut g, x, t, w);
    let grads = g.push(Op::Grad(Box::new(tttc_ir::Grad { wrt: vec![0], body })), &[x, t, w]).unwrap();
    g.output("loss", loss);
    g.output("dx", grads[0]);
    let g = tttc_passes::dead_code_elimination(&tttc_passes::simplify(&tttc_passes::expand_grads(&g).unwrap()).unwrap());
    let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 11 + 3) % depth as i64).collect();
    let args = |targets: Vec<i64>| {
        [
            Tensor::f32(vec![2, rows / 2, depth], values(rows * depth, 95, -4.0, 4.0)),
            Tensor::i64(vec![2, rows / 2], targets),
            Tensor::f32(vec![2, rows / 2], values(rows, 96, 0.5, 1.5)),
        ]
    };
    assert!(compare(&g, &args(targets.clone()), 1e-5, 1e-6) <= 1.0);
    let (sched, _) =
        tttc_lower::schedule::model(&g, &Default::default(), tttc_lower::schedule::Lengths::Fixed, tttc_lower::schedule::Products::CPU, 1).unwrap();
    let names: Vec<&str> = sched.functions.iter().flat_map(|f| &f.instrs).map(tttc_lower::schedule::Instr::name).collect();
    for (name, count) in [("cross_entropy", 1), ("cross_entropy_backward", 1), ("one_hot", 0)] {
        assert_eq!(names.iter().filter(|&&n| n == name).count(), count, "{name} in {names:?}");
    }
    let mut bad = targets;
    bad[4] = depth as i64;
    let refs = args(bad);
    let err = Program::compile(&g).unwrap().run(&refs.iter().collect::<Vec<_>>()).unwrap_err();
    assert!(format!("{err:#}").contains(&format!("index {depth} out of range for depth {depth}")), "{err:#}");
}

/// A carry whose new value is a product stored in its place, with an epilogue that reads the
/// carry's old value (`S' = xᵀ·x`, `Y' = S' + S`): the product would overwrite `S` before the
/// epilogue reads it, so `S` keeps two buffers in turn, and both match the interpreter.
#[test]
fn a_product_stored_into_its_carry_keeps_two_buffers_when_its_epilogue_reads_the_carry() {
    let b = Dim::sym("B");
    let mut body = Graph::new("step");
    let s = body.input("s", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8), Dim::c(8)]));
    let y = body.input("y", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8), Dim::c(8)]));
    let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::sym("n"), Dim::c(8)]));
    let xt = body.transpose_last2(x).unwrap();
    let p = body.matmul(xt, x).unwrap(); // the new S, stored in its place
    let y2 = body.add(p, s).unwrap(); // the epilogue, reading the old S
    let y2 = body.add(y2, y).unwrap();
    body.output("s", p);
    body.output("y", y2);
    let mut g = Graph::new("stored");
    let s0 = g.input("s0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8), Dim::c(8)]));
    let y0 = g.input("y0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8), Dim::c(8)]));
    let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(2), Dim::sym("T"), Dim::c(8)]));
    let outs = g.scan(Scan { axis: 2, chunk: 4, carries: 2, seqs: 1, body, reverse: false }, &[s0, y0, xs]).unwrap();
    g.output("s", outs[0]);
    g.output("y", outs[1]);
    let args = [
        Tensor::f32(vec![1, 2, 8, 8], values(128, 91, -0.5, 0.5)),
        Tensor::f32(vec![1, 2, 8, 8], values(128, 92, -0.5, 0.5)),
        Tensor::f32(vec![1, 2, 12, 8], values(192, 93, -1.0, 1.0)),
    ];
    assert!(compare(&g, &args, 1e-5, 1e-5) <= 1.0);
}

/// Fused regions are no walls for the planner: a transpose computed at the end of one region (a
/// weight gradient's `xᵀ`) and read only by a product in the next is read as strides, and
/// elementwise ops on either side of the boundary share a kernel.
#[test]
fn products_read_transposes_made_in_another_region() {
    let mut body = Graph::new("region0");
    let x = body.input("x", f32t(&[40, 24]));
    let e = body.unary(UnaryOp::Exp, x).unwrap();
    let t = body.transpose_last2(e).unwrap();
    body.output("t", t);
    body.output("e", e);
    let mut g = Graph::new("regions");
    let x = g.input("x", f32t(&[40, 24]));
    let y = g.input("y", f32t(&[40, 16]));
    let made = g.push(Op::Fused(Box::new(tttc_ir::Fused { body })), &[x]).unwrap();
    let n = g.unary(UnaryOp::Neg, made[1]).unwrap();
    let dw = g.matmul(made[0], y).unwrap(); // [24, 16]
    g.output("dw", dw);
    g.output("n", n);
    let args = [Tensor::f32(vec![40, 24], values(960, 71, -1.0, 1.0)), Tensor::f32(vec![40, 16], values(640, 72, -1.0, 1.0))];
    assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0);
    let stats = Program::compile(&g).unwrap().stats().plan;
    assert_eq!((stats.other_nodes, stats.kernels, stats.matmuls), (0, 1, 1), "no transpose materialised; exp and neg in one kernel");
}

/// Workspace memory is reused once a value is dead, never while a later step reads it (`n` is
/// read by a reduction and then a kernel, `a` is an output); a matrix product reads a weight
/// through a reshape that only adds a leading axis of length 1 without materialising it, but not
/// when its other operand is a reshape too (whose rank may shrink the same way).
#[test]
fn dead_buffers_reused_and_unit_reshapes_read_in_place() {
    for both_reshaped in [false, true] {
        let mut g = Graph::new("lend");
        let x = g.input("x", f32t(&[1, 3, 70]));
        let w = g.input("w", f32t(&[70, 5]));
        let a = g.unary(UnaryOp::Exp, x).unwrap();
        let n = g.unary(UnaryOp::Neg, a).unwrap();
        let r = g.reduce(ReduceKind::Sum, n, -1, true).unwrap(); // a run boundary: `n` is materialised
        let b = g.mul(n, n).unwrap(); // `n` read for the last time
        let c = g.add(b, r).unwrap(); // [1, 3, 70]
        let c = if both_reshaped { g.reshape(c, vec![Dim::c(1), Dim::c(1), Dim::c(3), Dim::c(70)]).unwrap() } else { c };
        let w3 = g.reshape(w, vec![Dim::c(1), Dim::c(70), Dim::c(5)]).unwrap();
        let y = g.matmul(c, w3).unwrap();
        for (name, v) in [("c", c), ("y", y), ("a", a)] {
            g.output(name, v);
        }
        let args = [Tensor::f32(vec![1, 3, 70], values(210, 17, -1.0, 1.0)), Tensor::f32(vec![70, 5], values(350, 18, -1.0, 1.0))];
        assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0, "both reshaped: {both_reshaped}");
        let stats = Program::compile(&g).unwrap().stats().plan;
        // `c`'s reshape is a graph output, so it always runs; `w3` is folded unless `c` is a reshape.
        assert_eq!(stats.other_nodes, if both_reshaped { 2 } else { 0 }, "both reshaped: {both_reshaped}");
    }
}

/// A vector given a row axis (`[n]` → `[1, n]`) and read by a matrix product is a matrix of
/// one row, not the vector itself: the product of the reverse sweep through `τ[i]·A` in a
/// resumed TTT run.
#[test]
fn vectors_reshaped_into_rows_are_matrices() {
    let mut g = Graph::new("row");
    let v = g.input("v", f32t(&[5]));
    let m = g.input("m", f32t(&[2, 3, 5, 4]));
    let row = g.reshape(v, vec![Dim::c(1), Dim::c(5)]).unwrap();
    let y = g.matmul(row, m).unwrap(); // [2, 3, 1, 4]
    g.output("y", y);
    let args = [Tensor::f32(vec![5], values(5, 21, -1.0, 1.0)), Tensor::f32(vec![2, 3, 5, 4], values(120, 22, -1.0, 1.0))];
    assert!(compare(&g, &args, 1e-5, 1e-6) <= 1.0);
}

/// Products on tensor cores: tiles that the sizes do not fill (rows, columns and K not multiples
/// of the 64×64×16 tile), a transposed left operand and broadcast batches. Three tf32 products
/// per step keep f32 accuracy: one tf32 product alone misses this tolerance by orders of magnitude.
#[test]
fn tensor_core_products_keep_f32_accuracy() {
    for (a_shape, transposed, b_shape) in
        [(vec![2, 40, 33], true, vec![2, 40, 20]), (vec![3, 70, 129], false, vec![129, 65]), (vec![1, 16, 8], false, vec![2, 8, 8])]
    {
        let mut g = Graph::new("mma");
        let a = g.input("a", f32t(&a_shape));
        let b = g.input("b", f32t(&b_shape));
        let a_read = if transposed { g.transpose_last2(a).unwrap() } else { a };
        let y = g.matmul(a_read, b).unwrap();
        g.output("y", y);
        let args = [
            Tensor::f32(a_shape.clone(), values(a_shape.iter().product(), 31, -1.0, 1.0)),
            Tensor::f32(b_shape.clone(), values(b_shape.iter().product(), 32, -1.0, 1.0)),
        ];
        let worst = compare(&g, &args, 1e-5, 1e-5);
        assert!(worst <= 1.0, "{a_shape:?}{} × {b_shape:?}: error {worst:.2} of tolerance", if transposed { "ᵀ" } else { "" });
        let refs: Vec<&Tensor> = args.iter().collect();
        let mut env = tttc_ir::DimEnv::new();
        tttc_ir::interp::bind_args(&g, &refs, &mut env).unwrap();
        let gpu = GpuModel::compile(&g, &env).unwrap();
        let mut device = SimDevice::load(&gpu.module("sm_90").to_text()).unwrap();
        gpu.run(&mut device, &refs).unwrap();
        assert!(device.counts.mma > 0, "{a_shape:?} × {b_shape:?} did not run on tensor cores");
    }
}

/// Reductions over long contiguous rows (a softmax over the vocabulary): on the GPU one block per
/// row, warps combined by shuffles; lengths that are not multiples of the block.
#[test]
fn long_row_reductions() {
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        for len in [512, 1000, 3001] {
            let mut g = Graph::new("rows");
            let x = g.input("x", f32t(&[3, len]));
            let y = g.reduce(kind, x, 1, false).unwrap();
            g.output("y", y);
            let worst = compare(&g, &[Tensor::f32(vec![3, len], values(3 * len, 41, -2.0, 2.0))], 1e-5, 1e-5);
            assert!(worst <= 1.0, "{kind:?} over {len}: error {worst:.2} of tolerance");
        }
    }
}

/// Reductions large enough to be split over threads: by rows, by lanes (a lane count that is not
/// a multiple of the vectors), and one long row that is not split.
#[test]
fn reductions_split_over_threads() {
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        for (shape, axis) in [(vec![600, 1001], 1), (vec![3, 700, 333], 1), (vec![2000, 301], 0), (vec![1, 600_001], 1)] {
            let mut g = Graph::new("split");
            let x = g.input("x", f32t(&shape));
            let y = g.reduce(kind, x, axis, false).unwrap();
            g.output("y", y);
            let n = shape.iter().product();
            let worst = compare(&g, &[Tensor::f32(shape.clone(), values(n, 43, 0.0, 1.0))], 1e-5, 1e-5);
            assert!(worst <= 1.0, "{kind:?} of {shape:?} along {axis}: error {worst:.2} of tolerance");
        }
    }
}

/// A small inner learner's step, for the scan bodies of the persistent-kernel tests: the output
/// `y = tanh(x·s)` and the state's update `s − 0.01·xᵀy`. Returns `(s', y)`.
fn inner_step(body: &mut Graph, s: ValueId, x: ValueId) -> (ValueId, ValueId) {
    let y = body.matmul(x, s).unwrap();
    let y = body.unary(UnaryOp::Tanh, y).unwrap();
    let xt = body.transpose_last2(x).unwrap();
    let upd = body.matmul(xt, y).unwrap();
    let scale = body.scalar(0.01).unwrap();
    let upd = body.mul(upd, scale).unwrap();
    (body.sub(s, upd).unwrap(), y)
}

/// A graph holding one scan, checked against the interpreter on every backend, and its GPU
/// model with the one kernel that runs the whole scan (it takes a carry's two buffers).
fn one_persistent_kernel(g: &Graph, args: &[Tensor], case: &str) -> (GpuModel, usize) {
    assert!(compare(g, args, 1e-5, 1e-5) <= 1.0, "{case}");
    let refs: Vec<&Tensor> = args.iter().collect();
    let mut env = tttc_ir::DimEnv::new();
    tttc_ir::interp::bind_args(g, &refs, &mut env).unwrap();
    let gpu = GpuModel::compile(g, &env).unwrap();
    let persistent: Vec<usize> = (0..gpu.kernels.len()).filter(|&k| gpu.kernels[k].params.iter().any(|p| p.name == "carry0_even")).collect();
    assert_eq!(persistent.len(), 1, "{case}: one persistent kernel");
    (gpu, persistent[0])
}

/// Scans whose lanes separate become one persistent GPU kernel, one block per lane: with a small
/// carried state it stays in shared memory between iterations, with a large one (two copies of
/// 72×72 floats exceed what is left beside the product tiles) in the lane's global buffers.
/// A ragged last chunk, products on tensor cores inside the loop.
#[test]
fn persistent_scan_kernels_keep_small_state_on_chip() {
    for (d, on_chip) in [(8, true), (72, false)] {
        let b = Dim::sym("B");
        let n = Dim::sym("n");
        let mut body = Graph::new("step");
        let s = body.input("s", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(d), Dim::c(d)]));
        let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(2), n.clone(), Dim::c(d)]));
        let (s2, y) = inner_step(&mut body, s, x);
        body.output("s", s2);
        body.output("y", y);
        let mut g = Graph::new("persistent");
        let s0 = g.input("s0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(d), Dim::c(d)]));
        let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(2), Dim::sym("T"), Dim::c(d)]));
        let outs = g.scan(Scan { axis: 2, chunk: 16, carries: 1, seqs: 1, body, reverse: false }, &[s0, xs]).unwrap();
        g.output("s", outs[0]);
        g.output("y", outs[1]);
        let args = [Tensor::f32(vec![2, 2, d, d], values(4 * d * d, 51, -0.3, 0.3)), Tensor::f32(vec![2, 2, 37, d], values(4 * 37 * d, 52, -1.0, 1.0))];
        let (gpu, persistent) = one_persistent_kernel(&g, &args, &format!("d = {d}"));
        let kernel = &gpu.kernels[persistent];
        assert!(kernel.uses_tensor_cores(), "d = {d}");
        assert_eq!(kernel.shared.iter().any(|s| s.name == "carries"), on_chip, "d = {d}");
    }
}

/// A carry that sums across the lanes (a gradient shared by the heads, as the reverse scan of a
/// TTT layer's backward pass carries) keeps a persistent kernel: each block sums its own lanes'
/// share from zero (the first from the initial value) and a kernel after it adds the shares.
/// Lanes split by heads and by the batch, the carries on chip and off, forward and reverse, a
/// ragged last chunk; against the interpreter.
#[test]
fn persistent_scan_kernels_sum_accumulators_over_their_lanes() {
    for (d, reverse) in [(8, false), (72, true)] {
        let b = Dim::sym("B");
        let mut body = Graph::new("step");
        let s = body.input("s", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(d), Dim::c(d)]));
        let acc = body.input("acc", f32t(&[d]));
        let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::sym("n"), Dim::c(d)]));
        let (s2, y) = inner_step(&mut body, s, x);
        let rows = body.reduce(ReduceKind::Sum, y, 2, false).unwrap();
        let heads = body.reduce(ReduceKind::Sum, rows, 1, false).unwrap();
        let batch = body.reduce(ReduceKind::Sum, heads, 0, false).unwrap();
        let acc2 = body.add(acc, batch).unwrap();
        body.output("s", s2);
        body.output("acc", acc2);
        body.output("y", y);
        let mut g = Graph::new("accumulate");
        let s0 = g.input("s0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(d), Dim::c(d)]));
        let acc0 = g.input("acc0", f32t(&[d]));
        let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(2), Dim::sym("T"), Dim::c(d)]));
        let outs = g.scan(Scan { axis: 2, chunk: 16, carries: 2, seqs: 1, body, reverse }, &[s0, acc0, xs]).unwrap();
        for (name, v) in ["s", "acc", "y"].iter().zip(&outs) {
            g.output(name, *v);
        }
        let args = [
            Tensor::f32(vec![2, 2, d, d], values(4 * d * d, 55, -0.3, 0.3)),
            Tensor::f32(vec![d], values(d, 56, -1.0, 1.0)),
            Tensor::f32(vec![2, 2, 37, d], values(4 * 37 * d, 57, -1.0, 1.0)),
        ];
        let (gpu, persistent) = one_persistent_kernel(&g, &args, &format!("d = {d}"));
        assert_eq!(gpu.launch_dims()[persistent].unwrap().0, [4, 1, 1], "d = {d}: a block per batch entry and head");
        let sums = gpu.kernels.iter().filter(|k| k.params.iter().take(2).map(|p| p.name.as_str()).eq(["dst", "scratch"])).count();
        assert_eq!(sums, 1, "d = {d}: one kernel sums the accumulator's shares");
    }
}

/// A persistent kernel's barriers order only instructions that share data: a chain that reads
/// none of the carried state (a row sum of each chunk, as TTT's RoPE and learning rates are)
/// runs in the phases of the chain that updates it and adds none to the kernel's serial steps.
/// Both kernels against the interpreter.
#[test]
fn persistent_scan_kernels_run_independent_chains_side_by_side() {
    let kernel_steps = |side_chain: bool| -> u64 {
        let b = Dim::sym("B");
        let mut body = Graph::new("step");
        let s = body.input("s", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8), Dim::c(8)]));
        let x = body.input("x", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::sym("n"), Dim::c(8)]));
        let (s2, y) = inner_step(&mut body, s, x);
        body.output("s", s2);
        body.output("y", y);
        if side_chain {
            let sq = body.mul(x, x).unwrap();
            let r = body.reduce(ReduceKind::Sum, sq, 3, true).unwrap();
            body.output("r", r);
        }
        let mut g = Graph::new("side_by_side");
        let s0 = g.input("s0", Type::new(DType::F32, vec![b.clone(), Dim::c(2), Dim::c(8), Dim::c(8)]));
        let xs = g.input("xs", Type::new(DType::F32, vec![b, Dim::c(2), Dim::sym("T"), Dim::c(8)]));
        let outs = g.scan(Scan { axis: 2, chunk: 16, carries: 1, seqs: 1, body, reverse: false }, &[s0, xs]).unwrap();
        for (name, v) in ["s", "y", "r"].iter().zip(&outs) {
            g.output(name, *v);
        }
        let args = [Tensor::f32(vec![2, 2, 8, 8], values(256, 53, -0.3, 0.3)), Tensor::f32(vec![2, 2, 37, 8], values(4 * 37 * 8, 54, -1.0, 1.0))];
        let (gpu, persistent) = one_persistent_kernel(&g, &args, &format!("side chain {side_chain}"));
        gpu.work()[persistent].serial_steps
    };
    let alone = kernel_steps(false);
    assert!(alone > 0);
    assert_eq!(kernel_steps(true), alone, "the side chain shares the update's phases");
}

/// The compiled model's work split over threads, against the interpreter: a product large
/// enough to be cut into shares of rows, elementwise kernels large enough to be split (one long
/// row by columns, rows with a broadcast bias by rows), and
/// transposed right operands read both ways (gathered by a product of few rows, packed for one
/// of many, where the CPU has AVX-512). Scans split into lanes are run on threads by every
/// reference case (tests/compiled_model.rs).
#[test]
fn the_compiled_model_splits_large_work_over_threads() {
    let mut g = Graph::new("threads");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::sym("T"), Dim::c(256)]));
    let w = g.input("w", f32t(&[256, 300]));
    let p = g.input("p", f32t(&[100, 64]));
    let q = g.input("q", f32t(&[80, 64]));
    let r = g.input("r", f32t(&[50, 256]));
    let u = g.input("u", Type::new(DType::F32, vec![Dim::sym("T"), Dim::c(320)]));
    let bias = g.input("bias", f32t(&[320]));
    let xw = g.matmul(x, w).unwrap(); // 300 × 256 × 300: above the threads' threshold
    let y = g.unary(UnaryOp::Tanh, xw).unwrap(); // one row of T · 300
    let ub = g.add(u, bias).unwrap();
    let z = g.unary(UnaryOp::Tanh, ub).unwrap(); // T rows of 320
    let qt = g.transpose_last2(q).unwrap();
    let pq = g.matmul(p, qt).unwrap(); // 100 rows: `qᵀ` gathered
    let rt = g.transpose_last2(r).unwrap();
    let xr = g.matmul(x, rt).unwrap(); // 300 rows: `rᵀ` packed
    for (name, v) in [("y", y), ("pq", pq), ("xr", xr), ("z", z)] {
        g.output(name, v);
    }
    let t = 300;
    let args = [
        Tensor::f32(vec![t, 256], values(t * 256, 71, -1.0, 1.0)),
        Tensor::f32(vec![256, 300], values(256 * 300, 72, -0.1, 0.1)),
        Tensor::f32(vec![100, 64], values(100 * 64, 73, -1.0, 1.0)),
        Tensor::f32(vec![80, 64], values(80 * 64, 74, -1.0, 1.0)),
        Tensor::f32(vec![50, 256], values(50 * 256, 75, -1.0, 1.0)),
        Tensor::f32(vec![t, 320], values(t * 320, 76, -1.0, 1.0)),
        Tensor::f32(vec![320], values(320, 77, -1.0, 1.0)),
    ];
    let refs: Vec<&Tensor> = args.iter().collect();
    let want = tttc_ir::run(&g, &refs, tttc_ir::Precision::F32).unwrap();
    let mut env = tttc_ir::DimEnv::new();
    env.insert("T".to_string(), 512);
    let got = CompiledModel::compile(&g, &env).unwrap().run(&refs).unwrap();
    for ((w, o), name) in want.iter().zip(&got).zip(["y", "pq", "xr", "z"]) {
        assert_eq!(w.shape, o.shape, "{name}");
        for (i, (&a, &b)) in o.as_f32().unwrap().iter().zip(w.as_f32().unwrap()).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name}[{i}]: compiled {a}, interpreter {b}");
        }
    }
}
