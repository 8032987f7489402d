//! The reference interpreter against independent hand computations, in f32 and in f64.

mod common;

use common::*;
use tttc_ir::{run, BinaryOp, DType, Data, Dim, Graph, Op, Precision, ReduceKind, Tensor, Type, UnaryOp, ValueId};

const BOTH: [Precision; 2] = [Precision::F32, Precision::F64];

/// Small deterministic values, exact in f32.
fn vals(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25).collect()
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn tf(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::f32(shape.to_vec(), v)
}

fn ti(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::i64(shape.to_vec(), v)
}

fn assert_close(got: &Tensor, shape: &[usize], want: &[f64], prec: Precision, what: &str) {
    assert_eq!(got.shape, shape, "{what} [{prec:?}]: shape");
    match prec {
        Precision::F32 => assert!(matches!(got.data, Data::F32(_)), "{what}: f32 run gives {got}"),
        Precision::F64 => assert!(matches!(got.data, Data::F64(_)), "{what}: f64 run gives {got}"),
    }
    let tol = match prec {
        Precision::F32 => 1e-5,
        Precision::F64 => 1e-12,
    };
    let g = got.to_f64().unwrap();
    assert_eq!(g.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in g.iter().zip(want).enumerate() {
        let ok = if b.is_finite() { (a - b).abs() <= tol * (1.0 + b.abs()) } else { a == b || (a.is_nan() && b.is_nan()) };
        assert!(ok, "{what} [{prec:?}] element {i}: got {a}, want {b}");
    }
}

/// What one output should be.
enum Want {
    F(Vec<usize>, Vec<f64>),
    I(Vec<usize>, Vec<i64>),
}

/// Runs `g` in both precisions and compares every output; also checks that `g` verifies and that
/// its text round-trips.
fn check(g: &Graph, args: &[Tensor], want: &[Want]) {
    tttc_ir::verify(g).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(&tttc_ir::text::parse(&tttc_ir::text::print(g)).unwrap(), g);
    let refs: Vec<&Tensor> = args.iter().collect();
    for prec in BOTH {
        let outs = run(g, &refs, prec).unwrap_or_else(|e| panic!("{} [{prec:?}]: {e:#}", g.name));
        assert_eq!(outs.len(), want.len());
        for (k, (got, w)) in outs.iter().zip(want).enumerate() {
            let what = format!("{} output {} ({k})", g.name, g.outputs[k].0);
            match w {
                Want::F(shape, v) => assert_close(got, shape, v, prec, &what),
                Want::I(shape, v) => {
                    assert_eq!(&got.shape, shape, "{what}");
                    assert_eq!(got.as_i64(), Some(v.as_slice()), "{what} [{prec:?}]");
                }
            }
        }
    }
}

fn run_err(g: &Graph, args: &[Tensor]) -> String {
    let refs: Vec<&Tensor> = args.iter().collect();
    let mut msgs = Vec::new();
    for prec in BOTH {
        match run(g, &refs, prec) {
            Ok(outs) => panic!("{} ran [{prec:?}], expected an error: {outs:?}", g.name),
            Err(e) => msgs.push(format!("{e:#}")),
        }
    }
    assert_eq!(msgs[0], msgs[1], "both precisions fail alike");
    msgs.pop().unwrap()
}

/// Row-major index of `idx` in `shape`.
fn at(shape: &[usize], idx: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |o, (&i, &n)| o * n + i)
}

/// Every index of `shape` in row-major order.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &n in shape {
        out = out.into_iter().flat_map(|p| (0..n).map(move |i| [p.clone(), vec![i]].concat())).collect();
    }
    out
}

#[test]
fn unary_ops() {
    let xs: Vec<f32> = vec![-25.0, -3.0, -0.5, 0.0, 0.5, 2.0, 19.9, 20.0, 20.5, 30.0];
    let pos: Vec<f32> = vec![0.25, 0.5, 1.0, 2.0, 9.0, 100.0];
    let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
    let softplus = |x: f64| if x > 20.0 { x } else { (1.0 + x.exp()).ln() };
    for u in Op::UNARY {
        let f: Box<dyn Fn(f64) -> f64> = match u {
            UnaryOp::Neg => Box::new(|x| -x),
            UnaryOp::Exp => Box::new(f64::exp),
            UnaryOp::Log => Box::new(f64::ln),
            UnaryOp::Sqrt => Box::new(f64::sqrt),
            UnaryOp::Rsqrt => Box::new(|x| 1.0 / x.sqrt()),
            UnaryOp::Tanh => Box::new(f64::tanh),
            UnaryOp::Sigmoid => Box::new(|x| 1.0 / (1.0 + (-x).exp())),
            UnaryOp::Silu => Box::new(|x| x / (1.0 + (-x).exp())),
            UnaryOp::GeluTanh => Box::new(gelu),
            UnaryOp::Softplus => Box::new(softplus),
            UnaryOp::Sin => Box::new(f64::sin),
            UnaryOp::Cos => Box::new(f64::cos),
        };
        let input = if matches!(u, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt) { &pos } else { &xs };
        let mut g = Graph::new(Op::Unary(u).name());
        let x = g.input("x", f32t(vec![c(2), c(input.len() / 2)]));
        let y = g.unary(u, x).unwrap();
        g.output("y", y);
        let want: Vec<f64> = wide(input).into_iter().map(&f).collect();
        check(&g, &[tf(&[2, input.len() / 2], input.clone())], &[Want::F(vec![2, input.len() / 2], want)]);
    }
}

#[test]
fn softplus_threshold_is_exact_above_20() {
    let mut g = Graph::new("softplus");
    let x = g.input("x", f32t(vec![c(3)]));
    let y = g.unary(UnaryOp::Softplus, x).unwrap();
    g.output("y", y);
    let out = run(&g, &[&tf(&[3], vec![20.0, 20.5, 88.0])], Precision::F64).unwrap();
    let v = out[0].to_f64().unwrap();
    assert!(v[0] > 20.0 && v[0] - 20.0 < 3e-9, "at 20 softplus is log1p(e^20): {}", v[0]);
    assert_eq!(&v[1..], &[20.5, 88.0], "above 20 softplus is x itself");
    let out = run(&g, &[&tf(&[3], vec![20.0, 20.5, 88.0])], Precision::F32).unwrap();
    assert_eq!(out[0].to_f32().unwrap(), vec![20.0, 20.5, 88.0]);
}

#[test]
fn binary_ops_broadcast() {
    let xv = vals(6);
    let yv: Vec<f32> = vec![0.5, -2.0, 4.0];
    let zv: Vec<f32> = vec![1.5, -0.25];
    for b in Op::BINARY {
        let f = |p: f64, q: f64| match b {
            BinaryOp::Add => p + q,
            BinaryOp::Sub => p - q,
            BinaryOp::Mul => p * q,
            BinaryOp::Div => p / q,
            BinaryOp::Max => p.max(q),
            BinaryOp::Ge => (p >= q) as u8 as f64,
        };
        let mut g = Graph::new(Op::Binary(b).name());
        let x = g.input("x", f32t(vec![c(2), c(3)]));
        let y = g.input("y", f32t(vec![c(3)]));
        let z = g.input("z", f32t(vec![c(2), c(1)]));
        let xy = g.binary(b, x, y).unwrap();
        let yx = g.binary(b, y, x).unwrap();
        let zy = g.binary(b, z, y).unwrap();
        g.output("xy", xy);
        g.output("yx", yx);
        g.output("zy", zy);
        let (mut w_xy, mut w_yx, mut w_zy) = (vec![], vec![], vec![]);
        for i in 0..2 {
            for j in 0..3 {
                let (p, q, r) = (xv[i * 3 + j] as f64, yv[j] as f64, zv[i] as f64);
                w_xy.push(f(p, q));
                w_yx.push(f(q, p));
                w_zy.push(f(r, q));
            }
        }
        check(
            &g,
            &[tf(&[2, 3], xv.clone()), tf(&[3], yv.clone()), tf(&[2, 1], zv.clone())],
            &[Want::F(vec![2, 3], w_xy), Want::F(vec![2, 3], w_yx), Want::F(vec![2, 3], w_zy)],
        );
    }
}

#[test]
fn integer_ops() {
    let mut g = Graph::new("ints");
    let x = g.input("x", i64t(vec![c(4)]));
    let y = g.input("y", i64t(vec![c(1)]));
    let outs: Vec<ValueId> = Op::BINARY.iter().map(|&b| g.binary(b, x, y).unwrap()).collect();
    for (k, v) in outs.into_iter().enumerate() {
        g.output(&format!("o{k}"), v);
    }
    let n = g.unary(UnaryOp::Neg, x).unwrap();
    g.output("neg", n);
    let xs = vec![-7, 7, 0, i64::MAX];
    check(
        &g,
        &[ti(&[4], xs.clone()), ti(&[1], vec![2])],
        &[
            Want::I(vec![4], vec![-5, 9, 2, i64::MIN + 1]), // wraps, as on every backend
            Want::I(vec![4], vec![-9, 5, -2, i64::MAX - 2]),
            Want::I(vec![4], vec![-14, 14, 0, -2]),
            Want::I(vec![4], vec![-3, 3, 0, i64::MAX / 2]), // truncating division
            Want::I(vec![4], vec![2, 7, 2, i64::MAX]),
            Want::I(vec![4], vec![0, 1, 0, 1]), // ge
            Want::I(vec![4], vec![7, -7, 0, -i64::MAX]),
        ],
    );
    let mut g = Graph::new("div0");
    let x = g.input("x", i64t(vec![c(2)]));
    let y = g.input("y", i64t(vec![c(2)]));
    let q = g.div(x, y).unwrap();
    g.output("q", q);
    let msg = run_err(&g, &[ti(&[2], vec![1, 2]), ti(&[2], vec![1, 0])]);
    assert!(msg.contains("integer division by zero"), "{msg}");
}

#[test]
fn const_iota_cast() {
    let mut g = Graph::new("cic");
    let x = g.input("x", f32t(vec![d("T")]));
    let half = g.scalar(2.5).unwrap();
    let k = g.push1(Op::Const { value: 3.0, dtype: DType::I64 }, &[]).unwrap();
    let it = g.iota(d("T"), DType::I64).unwrap();
    let itf = g.iota(Dim::sym("T").plus(-1).unwrap(), DType::F32).unwrap();
    let xi = g.cast(x, DType::I64).unwrap();
    let back = g.cast(xi, DType::F32).unwrap();
    let same = g.cast(x, DType::F32).unwrap();
    let sum = g.add(it, k).unwrap();
    let scaled = g.mul(x, half).unwrap();
    for (n, v) in [("half", half), ("k", k), ("iota", it), ("iota_f", itf), ("xi", xi), ("back", back), ("same", same), ("sum", sum), ("scaled", scaled)] {
        g.output(n, v);
    }
    let xs = vec![-1.75f32, 2.9, 0.5, -0.25];
    check(
        &g,
        &[tf(&[4], xs.clone())],
        &[
            Want::F(vec![], vec![2.5]),
            Want::I(vec![], vec![3]),
            Want::I(vec![4], vec![0, 1, 2, 3]),
            Want::F(vec![3], vec![0.0, 1.0, 2.0]),
            Want::I(vec![4], vec![-1, 2, 0, 0]),
            Want::F(vec![4], vec![-1.0, 2.0, 0.0, 0.0]),
            Want::F(vec![4], wide(&xs)),
            Want::I(vec![4], vec![3, 4, 5, 6]),
            Want::F(vec![4], wide(&xs).iter().map(|v| v * 2.5).collect()),
        ],
    );
}

#[test]
fn reductions() {
    let shape = [2usize, 3, 4];
    let xv = vals(24);
    for kind in Op::REDUCE {
        for axis in 0..3 {
            for keepdim in [false, true] {
                let mut g = Graph::new("reduce");
                let x = g.input("x", f32t(shape.iter().map(|&n| c(n)).collect()));
                let y = g.reduce(kind, x, axis as i64, keepdim).unwrap();
                g.output("y", y);
                let mut out_shape = shape.to_vec();
                out_shape[axis] = 1;
                let mut want = Vec::new();
                for idx in indices(&out_shape) {
                    let items: Vec<f64> = (0..shape[axis])
                        .map(|k| {
                            let mut i = idx.clone();
                            i[axis] = k;
                            xv[at(&shape, &i)] as f64
                        })
                        .collect();
                    want.push(match kind {
                        ReduceKind::Sum => items.iter().sum(),
                        ReduceKind::Mean => items.iter().sum::<f64>() / items.len() as f64,
                        ReduceKind::Max => items.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    });
                }
                if !keepdim {
                    out_shape.remove(axis);
                }
                check(&g, &[tf(&shape, xv.clone())], &[Want::F(out_shape, want)]);
            }
        }
    }
}

#[test]
fn matmul_against_loops() {
    // [2,1,2,3] × [3,3,2]: batch [2,1] against [3] broadcasts to [2,3].
    let (sa, sb) = ([2usize, 1, 2, 3], [3usize, 3, 2]);
    let av = vals(12);
    let bv: Vec<f32> = vals(18).iter().map(|v| v * 0.5 + 0.125).collect();
    let mut g = Graph::new("matmul");
    let a = g.input("a", f32t(sa.iter().map(|&n| c(n)).collect()));
    let b = g.input("b", f32t(sb.iter().map(|&n| c(n)).collect()));
    let m = g.matmul(a, b).unwrap();
    g.output("m", m);
    // A plain 2-D product and a rank-2 × rank-3 one.
    let a2 = g.reshape(a, vec![c(4), c(3)]).unwrap();
    let b2 = g.slice(b, 0, 1, Some(2)).unwrap();
    let b2 = g.reshape(b2, vec![c(3), c(2)]).unwrap();
    let m2 = g.matmul(a2, b2).unwrap();
    let m3 = g.matmul(a2, b).unwrap();
    g.output("m2", m2);
    g.output("m3", m3);
    let out = [2usize, 3, 2, 2];
    let mut want = Vec::new();
    for idx in indices(&out) {
        let (i, j, r, col) = (idx[0], idx[1], idx[2], idx[3]);
        let s: f64 = (0..3).map(|k| av[at(&sa, &[i, 0, r, k])] as f64 * bv[at(&sb, &[j, k, col])] as f64).sum();
        want.push(s);
    }
    let mut want2 = Vec::new();
    for r in 0..4 {
        for col in 0..2 {
            want2.push((0..3).map(|k| av[r * 3 + k] as f64 * bv[at(&sb, &[1, k, col])] as f64).sum());
        }
    }
    let mut want3 = Vec::new();
    for j in 0..3 {
        for r in 0..4 {
            for col in 0..2 {
                want3.push((0..3).map(|k| av[r * 3 + k] as f64 * bv[at(&sb, &[j, k, col])] as f64).sum());
            }
        }
    }
    check(&g, &[tf(&sa, av.clone()), tf(&sb, bv.clone())], &[Want::F(out.to_vec(), want), Want::F(vec![4, 2], want2), Want::F(vec![3, 4, 2], want3)]);
}

#[test]
fn reshape_transpose_broadcast() {
    let shape = [2usize, 3, 4];
    let xv = vals(24);
    let mut g = Graph::new("layout");
    let x = g.input("x", f32t(shape.iter().map(|&n| c(n)).collect()));
    let s = g.input("s", f32t(vec![c(3), c(1)]));
    let r = g.reshape(x, vec![c(6), c(4)]).unwrap();
    let t = g.transpose(x, &[2, 0, 1]).unwrap();
    let t2 = g.transpose_last2(x).unwrap();
    let b = g.broadcast(s, vec![c(2), c(3), c(4)]).unwrap();
    for (n, v) in [("r", r), ("t", t), ("t2", t2), ("b", b)] {
        g.output(n, v);
    }
    let sv = vec![1.0f32, -2.0, 0.5];
    let x_at = |i: usize, j: usize, k: usize| xv[at(&shape, &[i, j, k])] as f64;
    let want_t: Vec<f64> = indices(&[4, 2, 3]).iter().map(|i| x_at(i[1], i[2], i[0])).collect();
    let want_t2: Vec<f64> = indices(&[2, 4, 3]).iter().map(|i| x_at(i[0], i[2], i[1])).collect();
    let want_b: Vec<f64> = indices(&[2, 3, 4]).iter().map(|i| sv[i[1]] as f64).collect();
    check(
        &g,
        &[tf(&shape, xv.clone()), tf(&[3, 1], sv.clone())],
        &[Want::F(vec![6, 4], wide(&xv)), Want::F(vec![4, 2, 3], want_t), Want::F(vec![2, 4, 3], want_t2), Want::F(vec![2, 3, 4], want_b)],
    );
}

#[test]
fn slices_with_negative_and_open_bounds() {
    let xv = vals(10);
    let mut g = Graph::new("slices");
    let x = g.input("x", f32t(vec![c(2), c(5)]));
    let cases: Vec<(i64, i64, Option<i64>)> = vec![(1, -3, Some(-1)), (1, -2, None), (1, 1, Some(4)), (0, -1, None), (1, 0, Some(0))];
    for (k, &(axis, start, end)) in cases.iter().enumerate() {
        let v = g.slice(x, axis, start, end).unwrap();
        g.output(&format!("s{k}"), v);
    }
    let cols = |cs: std::ops::Range<usize>| -> Vec<f64> { (0..2).flat_map(|r| cs.clone().map(move |c| (r, c))).map(|(r, c)| xv[r * 5 + c] as f64).collect() };
    check(
        &g,
        &[tf(&[2, 5], xv.clone())],
        &[
            Want::F(vec![2, 2], cols(2..4)),
            Want::F(vec![2, 2], cols(3..5)),
            Want::F(vec![2, 3], cols(1..4)),
            Want::F(vec![1, 5], wide(&xv[5..])),
            Want::F(vec![2, 0], vec![]),
        ],
    );
    // On a symbolic length: [1:-1] of T, and [-2:] of T.
    let mut g = Graph::new("sym_slices");
    let x = g.input("x", f32t(vec![d("T")]));
    let inner = g.slice(x, 0, 1, Some(-1)).unwrap();
    let tail = g.slice(x, 0, -2, None).unwrap();
    assert_eq!(g.ty(inner), &f32t(vec![Dim::sym("T").plus(-2).unwrap()]));
    assert_eq!(g.ty(tail), &f32t(vec![c(2)]));
    g.output("inner", inner);
    g.output("tail", tail);
    check(&g, &[tf(&[5], xv[..5].to_vec())], &[Want::F(vec![3], wide(&xv[1..4])), Want::F(vec![2], wide(&xv[3..5]))]);
    check(&g, &[tf(&[2], xv[..2].to_vec())], &[Want::F(vec![0], vec![]), Want::F(vec![2], wide(&xv[..2]))]);
    let msg = run_err(&g, &[tf(&[1], vec![1.0])]);
    assert!(msg.contains("out of range"), "{msg}");
}

#[test]
fn concat_and_pad() {
    let (av, bv) = (vals(4), vals(6).iter().map(|v| v + 10.0).collect::<Vec<f32>>());
    let mut g = Graph::new("concat_pad");
    let a = g.input("a", f32t(vec![c(2), c(2)]));
    let b = g.input("b", f32t(vec![c(2), c(3)]));
    let i = g.input("i", i64t(vec![c(2)]));
    let ab = g.concat(&[a, b, a], 1).unwrap();
    let bt = g.transpose_last2(b).unwrap();
    let at2 = g.transpose_last2(a).unwrap();
    let rows = g.concat(&[bt, at2], 0).unwrap();
    let ii = g.concat(&[i, i], 0).unwrap();
    let pa = g.pad(a, 1, 1, 2).unwrap();
    let pb = g.pad(b, 0, 2, 0).unwrap();
    let pi = g.pad(i, 0, 1, 1).unwrap();
    for (n, v) in [("ab", ab), ("rows", rows), ("ii", ii), ("pa", pa), ("pb", pb), ("pi", pi)] {
        g.output(n, v);
    }
    let (a64, b64) = (wide(&av), wide(&bv));
    let mut want_ab = Vec::new();
    for r in 0..2 {
        want_ab.extend(&a64[r * 2..r * 2 + 2]);
        want_ab.extend(&b64[r * 3..r * 3 + 3]);
        want_ab.extend(&a64[r * 2..r * 2 + 2]);
    }
    let mut want_rows = Vec::new();
    for cidx in 0..3 {
        want_rows.extend([b64[cidx], b64[3 + cidx]]);
    }
    for cidx in 0..2 {
        want_rows.extend([a64[cidx], a64[2 + cidx]]);
    }
    let mut want_pa = Vec::new();
    for r in 0..2 {
        want_pa.extend([0.0, a64[r * 2], a64[r * 2 + 1], 0.0, 0.0]);
    }
    let mut want_pb = vec![0.0; 6];
    want_pb.extend(&b64);
    check(
        &g,
        &[tf(&[2, 2], av.clone()), tf(&[2, 3], bv.clone()), ti(&[2], vec![4, -5])],
        &[
            Want::F(vec![2, 7], want_ab),
            Want::F(vec![5, 2], want_rows),
            Want::I(vec![4], vec![4, -5, 4, -5]),
            Want::F(vec![2, 5], want_pa),
            Want::F(vec![4, 3], want_pb),
            Want::I(vec![4], vec![0, 4, -5, 0]),
        ],
    );
}

/// Rows added into the rows their index names; repeated indices add up, other rows stay zero.
#[test]
fn scatter_add_sums_repeated_rows() {
    let mut g = Graph::new("scatter");
    let up = g.input("up", f32t(vec![c(2), c(2), c(3)]));
    let idx = g.input("idx", i64t(vec![c(2), c(2)]));
    let out = g.scatter_add(up, idx, 4).unwrap();
    g.output("out", out);
    let uv = vals(12);
    let u = wide(&uv);
    let iv = vec![3i64, 0, 3, 1];
    let mut want = vec![0.0f64; 12];
    for (s, &k) in iv.iter().enumerate() {
        for r in 0..3 {
            want[k as usize * 3 + r] += u[s * 3 + r];
        }
    }
    check(&g, &[tf(&[2, 2, 3], uv.clone()), ti(&[2, 2], iv)], &[Want::F(vec![4, 3], want)]);
    let msg = run_err(&g, &[tf(&[2, 2, 3], uv), ti(&[2, 2], vec![0, 4, 1, 1])]);
    assert!(msg.contains("scatter_add") && msg.contains("index 4 out of range for depth 4"), "{msg}");
}

#[test]
fn gather_and_one_hot() {
    let tv = vals(12);
    let mut g = Graph::new("gather");
    let table = g.input("table", f32t(vec![c(4), c(3)]));
    let idx = g.input("idx", i64t(vec![c(2), c(2)]));
    let cols = g.input("cols", i64t(vec![c(2)]));
    let itab = g.input("itab", i64t(vec![c(3)]));
    let rows = g.gather(table, idx, 0).unwrap();
    let picked = g.gather(table, cols, 1).unwrap();
    let ints = g.gather(itab, cols, 0).unwrap();
    let oh = g.one_hot(cols, 3).unwrap();
    let oh2 = g.one_hot(idx, 4).unwrap();
    for (n, v) in [("rows", rows), ("picked", picked), ("ints", ints), ("oh", oh), ("oh2", oh2)] {
        g.output(n, v);
    }
    let iv = vec![3i64, 0, 1, 3];
    let cv = vec![2i64, 0];
    let t64 = wide(&tv);
    let want_rows: Vec<f64> = iv.iter().flat_map(|&r| t64[r as usize * 3..r as usize * 3 + 3].to_vec()).collect();
    let want_picked: Vec<f64> = (0..4).flat_map(|r| cv.iter().map(move |&k| (r, k))).map(|(r, k)| t64[r * 3 + k as usize]).collect();
    let hot = |ks: &[i64], depth: usize| -> Vec<f64> { ks.iter().flat_map(|&k| (0..depth).map(move |j| if j as i64 == k { 1.0 } else { 0.0 })).collect() };
    let args = |iv: Vec<i64>, cv: Vec<i64>| vec![tf(&[4, 3], tv.clone()), ti(&[2, 2], iv), ti(&[2], cv), ti(&[3], vec![10, 20, 30])];
    check(
        &g,
        &args(iv.clone(), cv.clone()),
        &[
            Want::F(vec![2, 2, 3], want_rows),
            Want::F(vec![4, 2], want_picked),
            Want::I(vec![2], vec![30, 10]),
            Want::F(vec![2, 3], hot(&cv, 3)),
            Want::F(vec![2, 2, 4], hot(&iv, 4)),
        ],
    );
    let msg = run_err(&g, &args(vec![0, 4, 1, 1], cv.clone()));
    assert!(msg.contains("gather") && msg.contains("index 4 out of range for an axis of length 4"), "{msg}");
    let msg = run_err(&g, &args(vec![0, -1, 1, 1], cv.clone()));
    assert!(msg.contains("index -1 out of range"), "{msg}");
    let msg = run_err(&g, &args(iv.clone(), vec![0, 3]));
    assert!(msg.contains("index 3 out of range"), "{msg}");
    // one_hot alone, past its depth.
    let mut g = Graph::new("one_hot");
    let k = g.input("k", i64t(vec![c(2)]));
    let oh = g.one_hot(k, 3).unwrap();
    g.output("oh", oh);
    let msg = run_err(&g, &[ti(&[2], vec![1, 3])]);
    assert!(msg.contains("one_hot") && msg.contains("index 3 out of range for depth 3"), "{msg}");
}

#[test]
fn tri_mask() {
    let mut g = Graph::new("tri");
    let x = g.input("x", f32t(vec![c(2), c(3), c(3)]));
    let y = g.input("y", f32t(vec![c(2), c(3)]));
    let mx = g.tri_mask(x, f64::NEG_INFINITY).unwrap();
    let my = g.tri_mask(y, 0.0).unwrap();
    g.output("mx", mx);
    g.output("my", my);
    let (xv, yv) = (vals(18), vals(6));
    let want_x: Vec<f64> = indices(&[2, 3, 3]).iter().map(|i| if i[2] > i[1] { f64::NEG_INFINITY } else { xv[at(&[2, 3, 3], i)] as f64 }).collect();
    let want_y: Vec<f64> = indices(&[2, 3]).iter().map(|i| if i[1] > i[0] { 0.0 } else { yv[at(&[2, 3], i)] as f64 }).collect();
    check(&g, &[tf(&[2, 3, 3], xv), tf(&[2, 3], yv)], &[Want::F(vec![2, 3, 3], want_x), Want::F(vec![2, 3], want_y)]);
}

/// With a window of 2, a `[4, 3]` matrix keeps the diagonal and the entries just below it.
#[test]
fn tri_mask_with_a_window() {
    let mut g = Graph::new("band");
    let x = g.input("x", f32t(vec![c(4), c(3)]));
    let m = g.tri_mask_window(x, -1.0, Some(2)).unwrap();
    g.output("m", m);
    let kept = [[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]];
    let xv = vals(12);
    let want: Vec<f64> = (0..12).map(|i| if kept[i / 3][i % 3] == 1 { xv[i] as f64 } else { -1.0 }).collect();
    check(&g, &[tf(&[4, 3], xv)], &[Want::F(vec![4, 3], want)]);
}

/// `stop_gradient` is the identity when run (it only stops the autodiff).
#[test]
fn stop_gradient_is_the_identity() {
    let mut g = Graph::new("held");
    let x = g.input("x", f32t(vec![c(2), c(3)]));
    let y = g.stop_gradient(x).unwrap();
    g.output("y", y);
    let xv = vals(6);
    check(&g, &[tf(&[2, 3], xv.clone())], &[Want::F(vec![2, 3], xv.iter().map(|&v| v as f64).collect())]);
}

#[test]
fn scan_running_sum_with_ragged_last_chunk() {
    let (b, t) = (2usize, 7usize);
    let xv = vals(b * t);
    let zv: Vec<f32> = vals(b * t).iter().map(|v| v - 1.0).collect();
    let w = 1.5f32;
    let mut prefix = Vec::new();
    let mut total = Vec::new();
    for r in 0..b {
        let mut s = 0.0;
        for k in 0..t {
            s += xv[r * t + k] as f64;
            prefix.push(s * w as f64);
        }
        total.push(s);
    }
    let z2: Vec<f64> = zv.iter().map(|&v| v as f64 * 2.0).collect();
    // Chunk 3 over length 7 leaves a last chunk of 1; the others cover one chunk, exact fits and
    // a chunk longer than the sequence.
    for chunk in [3, 1, 2, 7, 10] {
        let g = running_sum_scan(chunk);
        check(
            &g,
            &[tf(&[b, t], xv.clone()), tf(&[b, t], zv.clone()), tf(&[], vec![w])],
            &[Want::F(vec![b, 1], total.clone()), Want::F(vec![b, t], prefix.clone()), Want::F(vec![b, t], z2.clone())],
        );
    }
}

#[test]
fn scan_with_chunk_1_and_a_unit_chunk_dim() {
    let g = recurrence_scan();
    let (b, t) = (2usize, 5usize);
    let xv = vals(b * t);
    let h0 = vec![0.5f32, -1.0];
    let a = 0.75f32;
    let mut hs = vec![0.0; b * t];
    let mut h_end = vec![];
    for r in 0..b {
        let mut h = h0[r] as f64;
        for k in 0..t {
            h = a as f64 * h + xv[r * t + k] as f64;
            hs[r * t + k] = h;
        }
        h_end.push(h);
    }
    check(&g, &[tf(&[b, 1], h0), tf(&[b, t], xv), tf(&[], vec![a])], &[Want::F(vec![b, 1], h_end), Want::F(vec![b, t], hs)]);
}

#[test]
fn nested_scan_rebinds_the_chunk_symbol() {
    // The inner scan's chunk symbol `n` is also the outer body's chunk symbol, bound to 3 (then 1)
    // there, while the inner chunks are 2, 2 and 1 long.
    let g = nested_scan();
    let (b, t) = (2usize, 7usize);
    let xv = vals(b * t);
    let vv: Vec<f32> = vals(b * 5).iter().map(|v| v * 2.0).collect();
    let mut carry = vec![];
    let mut sv = vec![];
    for r in 0..b {
        let sx: f64 = xv[r * t..(r + 1) * t].iter().map(|&v| v as f64).sum();
        let s: f64 = vv[r * 5..(r + 1) * 5].iter().map(|&v| v as f64).sum();
        carry.push(sx + 3.0 * s); // three outer chunks: 3, 3, 1
        sv.extend(std::iter::repeat_n(s, t));
    }
    check(&g, &[tf(&[b, t], xv), tf(&[b, 5], vv)], &[Want::F(vec![b, 1], carry), Want::F(vec![b, t], sv)]);
}

#[test]
fn scan_iteration_outputs_and_a_reverse_scan_over_them() {
    // Chunk 3 over length 7: chunks [0,3), [3,6), [6,7), so three start carries.
    let g = chunk_carries_scans();
    assert_eq!(g.ty(g.outputs[1].1).to_string(), "f32[B,T/3]");
    assert_eq!(g.ty(g.outputs[3].1).to_string(), "f32[B,T]");
    let (b, t) = (2usize, 7usize);
    let xv = vals(b * t);
    let (mut total, mut starts, mut suffix, mut check_v) = (vec![], vec![], vec![], vec![]);
    for r in 0..b {
        let row: Vec<f64> = xv[r * t..(r + 1) * t].iter().map(|&v| v as f64).collect();
        let sum: f64 = row.iter().sum();
        total.push(sum);
        for k in [0, 3, 6] {
            starts.push(row[..k].iter().sum::<f64>());
            check_v.push(sum);
        }
        for i in 0..t {
            suffix.push(row[i..].iter().sum::<f64>());
        }
    }
    check(
        &g,
        &[tf(&[b, t], xv.clone())],
        &[
            Want::F(vec![b, 1], total.clone()),
            Want::F(vec![b, 3], starts.clone()),
            Want::F(vec![b, 1], total.clone()),
            Want::F(vec![b, t], suffix.clone()),
            Want::F(vec![b, 3], check_v.clone()),
        ],
    );
    // The reverse scan alone, its iteration sequence an argument declared before `x`.
    let g = suffix_scan();
    check(
        &g,
        &[tf(&[b, 3], starts.iter().map(|&v| v as f32).collect()), tf(&[b, t], xv.clone())],
        &[Want::F(vec![b, 1], total), Want::F(vec![b, t], suffix), Want::F(vec![b, 3], check_v)],
    );
    // An iteration sequence of the wrong length.
    let msg = run_err(&g, &[tf(&[b, 7], vec![0.0; b * 7]), tf(&[b, t], xv)]);
    assert!(msg.contains("argument starts") && msg.contains("T/3 = 3"), "{msg}");
}

#[test]
fn reverse_scan_visits_ragged_chunks_last_to_first() {
    // A reverse running sum with chunk 2..=8 over length 7: every boundary layout, ragged last chunk
    // and a chunk longer than the sequence included, gives the suffix sums; the iteration output
    // records the carry each chunk received.
    let (b, t) = (2usize, 7usize);
    let xv = vals(b * t);
    for chunk in 2..=8usize {
        let mut body = Graph::new("step");
        let acc = body.input("acc", f32t(vec![d("B"), c(1)]));
        let x = body.input("x", f32t(vec![d("B"), d("n")]));
        let (suffix, next) = suffix_step(&mut body, acc, x);
        body.output("acc", next);
        body.output("suffix", suffix);
        body.output("seen", acc);
        let mut g = Graph::new("rev");
        let x = g.input("x", f32t(vec![d("B"), d("T")]));
        let zero = g.scalar(0.0).unwrap();
        let init = g.broadcast(zero, vec![d("B"), c(1)]).unwrap();
        let scan = tttc_ir::Scan { axis: 1, chunk, carries: 1, seqs: 1, body, reverse: true };
        let outs = g.scan(scan, &[init, x]).unwrap();
        g.output("acc", outs[0]);
        g.output("suffix", outs[1]);
        g.output("seen", outs[2]);
        let n_chunks = t.div_ceil(chunk);
        let (mut total, mut suffix, mut seen) = (vec![], vec![], vec![]);
        for r in 0..b {
            let row: Vec<f64> = xv[r * t..(r + 1) * t].iter().map(|&v| v as f64).collect();
            total.push(row.iter().sum::<f64>());
            suffix.extend((0..t).map(|i| row[i..].iter().sum::<f64>()));
            seen.extend((0..n_chunks).map(|k| row[((k + 1) * chunk).min(t)..].iter().sum::<f64>()));
        }
        check(&g, &[tf(&[b, t], xv.clone())], &[Want::F(vec![b, 1], total), Want::F(vec![b, t], suffix), Want::F(vec![b, n_chunks], seen)]);
    }
}

#[test]
fn symbolic_dims_bind_from_arguments() {
    let mut g = Graph::new("sym");
    let x = g.input("x", f32t(vec![d("B"), d("T")]));
    let y = g.input("y", f32t(vec![d("T")]));
    let s = g.add(x, y).unwrap();
    let pos = g.iota(d("T"), DType::F32).unwrap();
    let s = g.add(s, pos).unwrap();
    let r = g.reshape(s, vec![d("B"), d("T"), c(1)]).unwrap();
    let bc = g.broadcast(y, vec![d("B"), c(2), d("T")]).unwrap();
    let p = g.pad(y, 0, 0, 1).unwrap();
    g.output("r", r);
    g.output("bc", bc);
    g.output("p", p);
    g.output("x", x);
    for (b, t) in [(2usize, 3usize), (1, 5), (3, 1)] {
        let xv = vals(b * t);
        let yv: Vec<f32> = (0..t).map(|k| k as f32 * 0.5).collect();
        let want_r: Vec<f64> = (0..b * t).map(|i| xv[i] as f64 + yv[i % t] as f64 + (i % t) as f64).collect();
        let want_bc: Vec<f64> = (0..b * 2 * t).map(|i| yv[i % t] as f64).collect();
        let mut want_p = wide(&yv);
        want_p.push(0.0);
        check(
            &g,
            &[tf(&[b, t], xv.clone()), tf(&[t], yv)],
            &[Want::F(vec![b, t, 1], want_r), Want::F(vec![b, 2, t], want_bc), Want::F(vec![t + 1], want_p), Want::F(vec![b, t], wide(&xv))],
        );
    }
    // Arguments that disagree on T, or on rank, dtype or count, are errors naming the argument.
    let msg = run_err(&g, &[tf(&[2, 3], vals(6)), tf(&[4], vals(4))]);
    assert!(msg.contains("argument y") && msg.contains("T = 3"), "{msg}");
    let msg = run_err(&g, &[tf(&[6], vals(6)), tf(&[3], vals(3))]);
    assert!(msg.contains("argument x") && msg.contains("expected rank 2"), "{msg}");
    let msg = run_err(&g, &[tf(&[2, 3], vals(6)), ti(&[3], vec![1, 2, 3])]);
    assert!(msg.contains("argument y: expected f32[T]"), "{msg}");
    let msg = run_err(&g, &[tf(&[2, 3], vals(6))]);
    assert!(msg.contains("takes 2 arguments, got 1"), "{msg}");
}

#[test]
fn f64_inputs_run_in_f32_and_back() {
    let mut g = Graph::new("prec");
    let x = g.input("x", Type::f32(&[3]));
    let y = g.unary(UnaryOp::Exp, x).unwrap();
    g.output("y", y);
    let x64 = Tensor::f64(vec![3], vec![0.1, 0.2, 0.3]);
    let out32 = run(&g, &[&x64], Precision::F32).unwrap();
    assert!(matches!(out32[0].data, Data::F32(_)));
    let out64 = run(&g, &[&x64], Precision::F64).unwrap();
    assert_eq!(out64[0].to_f64().unwrap(), vec![0.1f64.exp(), 0.2f64.exp(), 0.3f64.exp()]);
}

#[test]
fn unverified_graphs_give_errors_not_panics() {
    let mut g = Graph::new("broken");
    let x = g.input("x", Type::f32(&[2]));
    let y = g.unary(UnaryOp::Exp, x).unwrap();
    let z = g.unary(UnaryOp::Exp, y).unwrap();
    g.output("z", z);
    g.nodes.swap(0, 1); // z's operand is not yet defined
    let msg = run_err(&g, &[tf(&[2], vec![1.0, 2.0])]);
    assert!(msg.contains("not defined"), "{msg}");
}
