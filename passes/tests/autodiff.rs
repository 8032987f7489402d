//! The reverse-mode autodiff against central finite differences, in f64, for every
//! differentiable op (broadcasting, reductions, symbolic lengths included) and for the TTT inner
//! loss's shape of problem.

use anyhow::Result;
use tttc_ir::{run, BinaryOp, DType, Dim, Grad, Graph, Op, Precision, ReduceKind, Tensor, Type, UnaryOp, ValueId};

/// Deterministic values in [lo, hi).
fn values(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn sum_all(g: &mut Graph, mut v: ValueId) -> Result<ValueId> {
    while g.ty(v).rank() > 0 {
        v = g.reduce(ReduceKind::Sum, v, 0, false)?;
    }
    Ok(v)
}

/// Checks d/dx_i Σ(f(x) ⊙ w) from the expanded `grad` op against central differences.
/// `types` are the input types (one symbol at most each), `data` their values; `w` is fixed noise.
fn check(name: &str, types: &[Type], data: &[Vec<f64>], f: impl Fn(&mut Graph, &[ValueId]) -> Result<ValueId>) {
    let concrete: Vec<Vec<usize>> = data.iter().zip(types).map(|(d, t)| shape_of(t, d.len())).collect();
    let inputs: Vec<Tensor> = data.iter().zip(&concrete).map(|(d, s)| Tensor::f64(s.clone(), d.clone())).collect();
    // f alone, run once, gives the concrete shape of w.
    let mut only_f = Graph::new("f");
    let fx: Vec<ValueId> = types.iter().enumerate().map(|(i, t)| only_f.input(&format!("x{i}"), t.clone())).collect();
    let fy = f(&mut only_f, &fx).unwrap();
    only_f.output("y", fy);
    let wshape = run(&only_f, &inputs.iter().collect::<Vec<_>>(), Precision::F64).unwrap()[0].shape.clone();
    let wt = Tensor::f64(wshape.clone(), values(wshape.iter().product(), 99, -1.0, 1.0));

    // The body: Σ f(x) ⊙ w.
    let mut body = Graph::new("loss");
    let xs: Vec<ValueId> = types.iter().enumerate().map(|(i, t)| body.input(&format!("x{i}"), t.clone())).collect();
    let y = f(&mut body, &xs).unwrap();
    let yt = body.ty(y).clone();
    let w = body.input("w", yt.clone());
    let prod = body.mul(y, w).unwrap();
    let loss = sum_all(&mut body, prod).unwrap();
    body.output("loss", loss);

    // The graph under test: grad of the body w.r.t. every x.
    let mut outer = Graph::new("outer");
    let mut operands: Vec<ValueId> = types.iter().enumerate().map(|(i, t)| outer.input(&format!("x{i}"), t.clone())).collect();
    operands.push(outer.input("w", yt));
    let wrt: Vec<usize> = (0..types.len()).collect();
    let grads = outer.push(Op::Grad(Box::new(Grad { wrt, body: body.clone() })), &operands).unwrap();
    for (i, gv) in grads.iter().enumerate() {
        outer.output(&format!("d{i}"), *gv);
    }
    tttc_ir::verify(&outer).unwrap();
    let expanded = tttc_passes::expand_grads(&outer).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    tttc_ir::verify(&expanded).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(!expanded.nodes.iter().any(|n| matches!(n.op, Op::Grad(_))), "{name}: grad left");

    let mut args: Vec<Tensor> = inputs.clone();
    args.push(wt.clone());
    let arg_refs: Vec<&Tensor> = args.iter().collect();
    let got = run(&expanded, &arg_refs, Precision::F64).unwrap_or_else(|e| panic!("{name}: {e:#}"));

    let loss_at = |args: &[Tensor]| -> f64 {
        let refs: Vec<&Tensor> = args.iter().collect();
        run(&body, &refs, Precision::F64).unwrap()[0].to_f64().unwrap()[0]
    };
    let eps = 1e-6;
    for i in 0..types.len() {
        let analytic = got[i].to_f64().unwrap();
        assert_eq!(got[i].shape, concrete[i], "{name}: gradient {i} shape");
        for k in 0..data[i].len() {
            let mut plus = args.clone();
            let mut minus = args.clone();
            let bump = |t: &mut Tensor, delta: f64| {
                let mut v = t.to_f64().unwrap();
                v[k] += delta;
                *t = Tensor::f64(t.shape.clone(), v);
            };
            bump(&mut plus[i], eps);
            bump(&mut minus[i], -eps);
            let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * eps);
            let err = (analytic[k] - numeric).abs();
            assert!(err <= 1e-6 * (1.0 + numeric.abs()), "{name}: d/dx{i}[{k}] autodiff {} vs numeric {numeric}", analytic[k]);
        }
    }
}

/// The concrete shape of a type given its element count (one symbol at most, bound to fit).
fn shape_of(t: &Type, n: usize) -> Vec<usize> {
    let known: usize = t.shape.iter().filter_map(|d| d.as_const()).product();
    t.shape.iter().map(|d| d.as_const().unwrap_or(n / known.max(1))).collect()
}

fn f32t(shape: &[usize]) -> Type {
    Type::f32(shape)
}

fn data(shapes: &[&[usize]], lo: f64, hi: f64) -> Vec<Vec<f64>> {
    shapes.iter().enumerate().map(|(i, s)| values(s.iter().product(), i as u64 + 1, lo, hi)).collect()
}

#[test]
fn unary_ops() {
    for u in Op::UNARY {
        let (lo, hi) = match u {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => (0.5, 2.0),
            _ => (-2.0, 2.0),
        };
        check(Op::Unary(u).name(), &[f32t(&[2, 3])], &data(&[&[2, 3]], lo, hi), |g, x| g.unary(u, x[0]));
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    for b in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max] {
        for (sa, sb) in [(&[2usize, 3][..], &[2usize, 3][..]), (&[2, 3], &[3]), (&[2, 1], &[1, 3]), (&[2, 3], &[])] {
            let (lo, hi) = if b == BinaryOp::Div { (0.5, 2.0) } else { (-2.0, 2.0) };
            let d = data(&[sa, sb], lo, hi);
            check(Op::Binary(b).name(), &[f32t(sa), f32t(sb)], &d, |g, x| g.binary(b, x[0], x[1]));
        }
    }
}

#[test]
fn reductions() {
    for kind in Op::REDUCE {
        for axis in [0i64, 1, -1] {
            for keepdim in [false, true] {
                let d = data(&[&[3, 4]], -2.0, 2.0);
                check("reduce", &[f32t(&[3, 4])], &d, |g, x| g.reduce(kind, x[0], axis, keepdim));
            }
        }
    }
}

#[test]
fn mean_over_a_symbolic_length() {
    let t = Type::new(DType::F32, vec![Dim::c(2), Dim::sym("T")]);
    let d = vec![values(10, 3, -1.0, 1.0)];
    check("mean over T", &[t], &d, |g, x| g.reduce(ReduceKind::Mean, x[0], 1, true));
}

#[test]
fn matmul_with_batch_broadcast() {
    let d = data(&[&[2, 3, 4], &[4, 5]], -1.0, 1.0);
    check("matmul", &[f32t(&[2, 3, 4]), f32t(&[4, 5])], &d, |g, x| g.matmul(x[0], x[1]));
    let d = data(&[&[1, 3, 2], &[2, 2, 3]], -1.0, 1.0);
    check("matmul batch", &[f32t(&[1, 3, 2]), f32t(&[2, 2, 3])], &d, |g, x| g.matmul(x[0], x[1]));
}

#[test]
fn data_movement() {
    let d = data(&[&[2, 3, 4]], -1.0, 1.0);
    let t = [f32t(&[2, 3, 4])];
    check("reshape", &t, &d, |g, x| g.reshape(x[0], vec![Dim::c(6), Dim::c(4)]));
    check("transpose", &t, &d, |g, x| g.transpose(x[0], &[2, 0, 1]));
    check("broadcast", &[f32t(&[3, 1])], &data(&[&[3, 1]], -1.0, 1.0), |g, x| g.broadcast(x[0], vec![Dim::c(2), Dim::c(3), Dim::c(4)]));
    check("slice", &t, &d, |g, x| g.slice(x[0], 1, 1, Some(-1)));
    check("slice tail", &t, &d, |g, x| g.slice(x[0], 2, -2, None));
    check("pad", &t, &d, |g, x| g.pad(x[0], 1, 2, 1));
    check("tri_mask", &t, &d, |g, x| g.tri_mask(x[0], 0.0));
    check("tri_mask window", &t, &d, |g, x| g.tri_mask_window(x[0], 0.0, Some(2)));
    let d2 = data(&[&[2, 3, 4], &[2, 2, 4]], -1.0, 1.0);
    check("concat", &[f32t(&[2, 3, 4]), f32t(&[2, 2, 4])], &d2, |g, x| g.concat(&[x[0], x[1]], 1));
}

/// A log-sum-exp shifted by its row maximum with no gradient through the shift (as the language
/// models' loss computes it): the function does not depend on the shift, so its finite
/// differences are the softmax the autodiff gives, with no term at the maximum.
#[test]
fn log_sum_exp_shifted_by_its_stopped_maximum() {
    let d = data(&[&[3, 5]], -3.0, 3.0);
    check("log-sum-exp", &[f32t(&[3, 5])], &d, |g, x| {
        let m = g.reduce(ReduceKind::Max, x[0], -1, true)?;
        let m = g.stop_gradient(m)?;
        let shifted = g.sub(x[0], m)?;
        let e = g.unary(UnaryOp::Exp, shifted)?;
        let s = g.reduce(ReduceKind::Sum, e, -1, true)?;
        let l = g.unary(UnaryOp::Log, s)?;
        g.add(l, m)
    });
}

/// No gradient flows through `stop_gradient`: d/dx Σ x·stop_gradient(x) is x, not 2x.
#[test]
fn stop_gradient_passes_nothing_back() {
    let mut body = Graph::new("loss");
    let x = body.input("x", f32t(&[4]));
    let held = body.stop_gradient(x).unwrap();
    let y = body.mul(x, held).unwrap();
    let loss = sum_all(&mut body, y).unwrap();
    body.output("loss", loss);
    let mut outer = Graph::new("outer");
    let xo = outer.input("x", f32t(&[4]));
    let grads = outer.push(Op::Grad(Box::new(Grad { wrt: vec![0], body })), &[xo]).unwrap();
    outer.output("dx", grads[0]);
    let expanded = tttc_passes::expand_grads(&outer).unwrap();
    let xs = vec![0.5, -1.5, 2.0, 3.25];
    let got = run(&expanded, &[&Tensor::f64(vec![4], xs.clone())], Precision::F64).unwrap();
    assert_eq!(got[0].to_f64().unwrap(), xs);
}

/// The TTT inner loss at one step: per-token weights W [n, d, d] (every token its own copy),
/// Z = k W + b, loss Σ ½‖LN(Z) − (v − k)‖². Its gradient w.r.t. W is each token's outer product.
#[test]
fn ttt_inner_loss_per_token() {
    let (n, d) = (3usize, 4usize);
    let types = [f32t(&[n, d, d]), f32t(&[n, 1, d]), f32t(&[n, 1, d]), f32t(&[n, 1, d])];
    let vals = data(&[&[n, d, d], &[n, 1, d], &[n, 1, d], &[n, 1, d]], -1.0, 1.0);
    check("ttt inner loss", &types, &vals, |g, x| {
        let (w, b, k, v) = (x[0], x[1], x[2], x[3]);
        let z = g.matmul(k, w)?;
        let z = g.add(z, b)?;
        let mu = g.reduce(ReduceKind::Mean, z, -1, true)?;
        let c = g.sub(z, mu)?;
        let c2 = g.mul(c, c)?;
        let var = g.reduce(ReduceKind::Mean, c2, -1, true)?;
        let eps = g.scalar(1e-6)?;
        let var = g.add(var, eps)?;
        let sd = g.unary(UnaryOp::Sqrt, var)?;
        let ln = g.div(c, sd)?;
        let target = g.sub(v, k)?;
        let diff = g.sub(ln, target)?;
        let sq = g.mul(diff, diff)?;
        let half = g.scalar(0.5)?;
        g.mul(half, sq)
    });
}

/// Embedding-style gathers, with repeated indices (their adjoints add up) and a rank-2 index.
#[test]
fn gather_rows() {
    let d = data(&[&[4, 3]], -1.0, 1.0);
    let index = |g: &mut Graph| -> Result<ValueId> {
        // [0, 1, 2, 3] → max(·, 2) = [2, 2, 2, 3]
        let i = g.iota(Dim::c(4), DType::I64)?;
        let two = g.push1(Op::Const { value: 2.0, dtype: DType::I64 }, &[])?;
        g.binary(BinaryOp::Max, i, two)
    };
    check("gather", &[f32t(&[4, 3])], &d, |g, x| {
        let i = index(g)?;
        g.gather(x[0], i, 0)
    });
    check("gather rank-2 index", &[f32t(&[4, 3])], &d, |g, x| {
        let i = index(g)?;
        let i = g.reshape(i, vec![Dim::c(2), Dim::c(2)])?;
        g.gather(x[0], i, 0)
    });
    let d = data(&[&[5]], -1.0, 1.0);
    check("gather vector", &[f32t(&[5])], &d, |g, x| {
        let i = index(g)?;
        g.gather(x[0], i, 0)
    });
    let d = data(&[&[4, 3]], -1.0, 1.0);
    check("scatter_add", &[f32t(&[4, 3])], &d, |g, x| {
        let i = index(g)?;
        g.scatter_add(x[0], i, 5)
    });
}

/// The last rows of a symbolic-length axis (the adjoint pads with a symbolic block of zeros).
#[test]
fn slice_of_a_symbolic_length() {
    let t = Type::new(DType::F32, vec![Dim::sym("T"), Dim::c(3)]);
    let d = vec![values(15, 5, -1.0, 1.0)];
    check("last row", std::slice::from_ref(&t), &d, |g, x| g.slice(x[0], 0, -1, None));
    check("all but the first two", &[t], &d, |g, x| g.slice(x[0], 0, 2, None));
}

/// Through a scan: a carried state updated non-linearly per chunk (ragged last chunk), a
/// per-chunk output, and an invariant, all differentiated by the reverse scan.
#[test]
fn through_a_scan() {
    use tttc_ir::Scan;
    for chunk in [1usize, 3] {
        let n = if chunk == 1 { Dim::c(1) } else { Dim::sym("n") };
        let mut body = Graph::new("step");
        let s = body.input("s", f32t(&[2]));
        let x = body.input("x", Type::new(DType::F32, vec![n.clone(), Dim::c(2)]));
        let w = body.input("w", f32t(&[2, 2]));
        let xw = body.matmul(x, w).unwrap(); // [n, 2]
        let t = body.unary(UnaryOp::Tanh, xw).unwrap();
        let y = body.mul(t, s).unwrap(); // per-chunk output, reads the carry
        let sum = body.reduce(ReduceKind::Sum, t, 0, false).unwrap();
        let ns = body.add(s, sum).unwrap();
        let ns = body.unary(UnaryOp::Sin, ns).unwrap();
        body.output("s", ns);
        body.output("y", y);
        let f = move |g: &mut Graph, v: &[ValueId]| -> Result<ValueId> {
            let scan = Scan { axis: 0, chunk, carries: 1, seqs: 1, body: body.clone(), reverse: false };
            let outs = g.scan(scan, &[v[0], v[1], v[2]])?;
            let last = g.reshape(outs[0], vec![Dim::c(1), Dim::c(2)])?;
            g.concat(&[outs[1], last], 0)
        };
        let types = [f32t(&[2]), Type::new(DType::F32, vec![Dim::sym("T"), Dim::c(2)]), f32t(&[2, 2])];
        let d = vec![values(2, 1, -1.0, 1.0), values(14, 2, -1.0, 1.0), values(4, 3, -1.0, 1.0)];
        check(&format!("scan chunk {chunk}"), &types, &d, f);
    }
}

/// `softmax(scale(q·kᵀ), masked) · v` as the frontends build it (the mask causal or not, with a
/// window or not); `weights_too` also returns the weights (so the chain is not differentiated as
/// one).
fn attention(
    g: &mut Graph,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    scale: Option<(BinaryOp, f64)>,
    (causal, window): (bool, Option<usize>),
    weights_too: bool,
) -> Result<ValueId> {
    let kt = g.transpose_last2(k)?;
    let mut s = g.matmul(q, kt)?;
    if let Some((op, c)) = scale {
        let c = g.scalar(c)?;
        s = g.binary(op, s, c)?;
    }
    if causal {
        s = g.tri_mask_window(s, f64::NEG_INFINITY, window)?;
    }
    let m = g.reduce(ReduceKind::Max, s, -1, true)?;
    let x = g.sub(s, m)?;
    let e = g.unary(UnaryOp::Exp, x)?;
    let l = g.reduce(ReduceKind::Sum, e, -1, true)?;
    let p = g.div(e, l)?;
    let o = g.matmul(p, v)?;
    if !weights_too {
        return Ok(o);
    }
    let (ps, os) = (sum_all(g, p)?, sum_all(g, o)?);
    g.add(ps, os)
}

/// Attention's chain gets one backward (the weights recomputed from the row log-sum-exp, the
/// scores from barriers): against finite differences, causal or not, with a sliding window,
/// scaled by division, product or not at all, values broadcast over the batch, and with the
/// weights also read elsewhere (then differentiated op by op).
#[test]
fn attention_chain() {
    let (full, shared): (&[usize], &[usize]) = (&[2, 5, 3], &[1, 5, 3]);
    let cases = [
        ("causal ÷√d", Some((BinaryOp::Div, 3f64.sqrt())), (true, None), full, false),
        ("a window of 2", Some((BinaryOp::Div, 3f64.sqrt())), (true, Some(2)), full, false),
        ("×0.7", Some((BinaryOp::Mul, 0.7)), (false, None), full, false),
        ("unscaled, causal", None, (true, None), full, false),
        ("values broadcast", Some((BinaryOp::Div, 2.0)), (true, None), shared, false),
        ("weights read too", Some((BinaryOp::Div, 2.0)), (true, Some(3)), full, true),
    ];
    for (name, scale, mask, vshape, weights_too) in cases {
        let shapes: [&[usize]; 3] = [full, full, vshape];
        let d = data(&shapes, -1.5, 1.5);
        let types: Vec<Type> = shapes.iter().map(|s| f32t(s)).collect();
        check(name, &types, &d, |g, x| attention(g, x[0], x[1], x[2], scale, mask, weights_too));
        // One backward per chain: its scores recomputed from barriers on q and kᵀ.
        let mut g = Graph::new("a");
        let x: Vec<ValueId> = types.iter().enumerate().map(|(i, t)| g.input(&format!("x{i}"), t.clone())).collect();
        let y = attention(&mut g, x[0], x[1], x[2], scale, mask, weights_too).unwrap();
        g.output("y", y);
        let grads = tttc_passes::vector_jacobian_product(&g, &[]).unwrap();
        let barriers = grads.nodes.iter().filter(|n| matches!(n.op, Op::Barrier)).count();
        assert_eq!(barriers, if weights_too { 0 } else { 2 }, "{name}: barriers in the gradient");
    }
}
