//! A reverse scan whose carries are order-free runs inside the forward scan over the same chunks:
//! the merged graph computes the same values (interpreter, f64), its shared work once after
//! `simplify`; a reverse scan that carries state in order, or reads the forward scan's results,
//! stays as it is.

use tttc_ir::{run, DType, Dim, Graph, Op, Precision, ReduceKind, Scan, Tensor, Type, ValueId};

fn f32_type(shape: &[Dim]) -> Type {
    Type::new(DType::F32, shape.to_vec())
}

/// Body of the forward scan: `total += Σ (x · w)` over the chunk, per row.
fn forward_body(d: usize, v: usize) -> Graph {
    let (b, p) = (Dim::sym("B"), Dim::sym("p"));
    let mut g = Graph::new("forward");
    let total = g.input("total", f32_type(std::slice::from_ref(&b)));
    let x = g.input("x", f32_type(&[b.clone(), p.clone(), Dim::c(d)]));
    let w = g.input("w", f32_type(&[Dim::c(d), Dim::c(v)]));
    let y = g.matmul(x, w).unwrap();
    let s = g.reduce(ReduceKind::Sum, y, 2, false).unwrap();
    let s = g.reduce(ReduceKind::Sum, s, 1, false).unwrap();
    let total = g.add(total, s).unwrap();
    g.output("total", total);
    g
}

/// Body of the reverse scan: `c` passed through, `acc += Σ_batch xᵀ · (c · x · w)` (or, when
/// `in_order`, `acc · 0.5 + …`, which depends on the order of the chunks), and the chunk's
/// `(c · x · w) · wᵀ`.
fn reverse_body(d: usize, v: usize, in_order: bool) -> Graph {
    let (b, p) = (Dim::sym("B"), Dim::sym("p"));
    let mut g = Graph::new("reverse");
    let c = g.input("c", f32_type(std::slice::from_ref(&b)));
    let acc = g.input("acc", f32_type(&[Dim::c(d), Dim::c(v)]));
    let x = g.input("x", f32_type(&[b.clone(), p.clone(), Dim::c(d)]));
    let w = g.input("w", f32_type(&[Dim::c(d), Dim::c(v)]));
    let y = g.matmul(x, w).unwrap();
    let c3 = g.reshape(c, vec![b.clone(), Dim::c(1), Dim::c(1)]).unwrap();
    let dy = g.mul(y, c3).unwrap();
    let xt = g.transpose(x, &[0, 2, 1]).unwrap();
    let dw = g.matmul(xt, dy).unwrap();
    let dw = g.reduce(ReduceKind::Sum, dw, 0, false).unwrap();
    let acc = if in_order {
        let half = g.scalar(0.5).unwrap();
        let decayed = g.mul(acc, half).unwrap();
        g.add(decayed, dw).unwrap()
    } else {
        g.add(acc, dw).unwrap()
    };
    let wt = g.transpose_last2(w).unwrap();
    let dx = g.matmul(dy, wt).unwrap();
    g.output("c", c);
    g.output("acc", acc);
    g.output("dx", dx);
    g
}

/// A graph with a forward scan over `x` and then a reverse one over `x` too; `reads_forward`
/// feeds the forward scan's total (instead of `c`) into the reverse scan.
fn graph(in_order: bool, reads_forward: bool) -> Graph {
    let (d, v, chunk) = (3, 5, 4);
    let (b, t) = (Dim::sym("B"), Dim::sym("T"));
    let mut g = Graph::new("pair");
    let x = g.input("x", f32_type(&[b.clone(), t.clone(), Dim::c(d)]));
    let w = g.input("w", f32_type(&[Dim::c(d), Dim::c(v)]));
    let c = g.input("c", f32_type(std::slice::from_ref(&b)));
    let zero = g.scalar(0.0).unwrap();
    let start = g.broadcast(zero, vec![b.clone()]).unwrap();
    let acc = g.broadcast(zero, vec![Dim::c(d), Dim::c(v)]).unwrap();
    let forward = Scan { axis: 1, chunk, carries: 1, seqs: 1, body: forward_body(d, v), reverse: false };
    let total = g.scan(forward, &[start, x, w]).unwrap()[0];
    let c = if reads_forward { total } else { c };
    let reverse = Scan { axis: 1, chunk, carries: 2, seqs: 1, body: reverse_body(d, v, in_order), reverse: true };
    let outs = g.scan(reverse, &[c, acc, x, w]).unwrap();
    g.output("total", total);
    g.output("acc", outs[1]);
    g.output("dx", outs[2]);
    g
}

fn scans(g: &Graph) -> usize {
    g.nodes.iter().filter(|n| matches!(n.op, Op::Scan(_))).count()
}

fn matmuls_in_scans(g: &Graph) -> usize {
    g.nodes
        .iter()
        .filter_map(|n| if let Op::Scan(s) = &n.op { Some(&s.body) } else { None })
        .flat_map(|b| &b.nodes)
        .filter(|n| matches!(n.op, Op::MatMul))
        .count()
}

fn values(g: &Graph) -> Vec<Tensor> {
    // T = 10: two whole chunks of 4 and a shorter one of 2.
    let noise = |n: usize, seed: f64| (0..n).map(|i| ((i as f64 + seed) * 0.7).sin()).collect::<Vec<f64>>();
    let x = Tensor::f64(vec![2, 10, 3], noise(60, 1.0));
    let w = Tensor::f64(vec![3, 5], noise(15, 2.0));
    let c = Tensor::f64(vec![2], vec![0.3, -1.2]);
    run(g, &[&x, &w, &c], Precision::F64).unwrap()
}

fn assert_close(a: &[Tensor], b: &[Tensor]) {
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.to_f64().unwrap(), y.to_f64().unwrap());
        let scale = y.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-12 * scale, "differs by {worst:e} (scale {scale:e})");
    }
}

#[test]
fn an_order_free_reverse_scan_runs_inside_the_forward_scan() {
    let g = graph(false, false);
    let merged = tttc_passes::merge_reverse_scans(&g).unwrap();
    assert_eq!((scans(&g), scans(&merged)), (2, 1));
    let merged_scan = merged.nodes.iter().find_map(|n| if let Op::Scan(s) = &n.op { Some(s) } else { None }).unwrap();
    assert!(!merged_scan.reverse);
    assert_close(&values(&merged), &values(&g));
    // The shared product x · w is computed once per chunk after simplify's CSE.
    let simplified = tttc_passes::simplify(&merged).unwrap();
    assert_eq!((matmuls_in_scans(&g), matmuls_in_scans(&simplified)), (4, 3));
    assert_close(&values(&simplified), &values(&g));
}

#[test]
fn a_reverse_scan_that_depends_on_the_order_or_on_the_forward_results_stays() {
    for (in_order, reads_forward) in [(true, false), (false, true)] {
        let g = graph(in_order, reads_forward);
        let merged = tttc_passes::merge_reverse_scans(&g).unwrap();
        assert_eq!(scans(&merged), 2, "in order {in_order}, reads the forward scan {reads_forward}");
        let unchanged: Vec<ValueId> = merged.outputs.iter().map(|o| o.1).collect();
        assert_eq!(unchanged, g.outputs.iter().map(|o| o.1).collect::<Vec<_>>());
    }
}
