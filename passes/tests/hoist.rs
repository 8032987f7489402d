//! Hoisting weight-only work: the parameters' part and the rest, run one after the other, give
//! what the whole graph gives; views of parameters stay put; a graph with nothing to hoist is
//! left alone.

use tttc_ir::{DType, Dim, Graph, Precision, Tensor, Type, UnaryOp};

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
}

#[test]
fn weight_only_work_moves_to_a_prep_graph() {
    let mut g = Graph::new("step");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(4)]));
    let a_log = g.param("a_log", &[4]);
    let w = g.param("w", &[3, 4]);
    let a = g.unary(UnaryOp::Exp, a_log).unwrap();
    let a = g.unary(UnaryOp::Neg, a).unwrap(); // weight-only: hoisted
    let freq = g.iota(Dim::c(4), DType::F32).unwrap();
    let freq = g.unary(UnaryOp::Exp, freq).unwrap(); // constant-only: hoisted
    let wt = g.transpose_last2(w).unwrap(); // a view of a weight: stays
    let y = g.mul(x, a).unwrap();
    let y = g.add(y, freq).unwrap();
    let z = g.matmul(y, wt).unwrap();
    g.output("z", z);
    g.output("a", a);

    let h = tttc_passes::hoist_invariants(&g).unwrap().expect("something to hoist");
    tttc_ir::verify(&h.prep).unwrap();
    tttc_ir::verify(&h.main).unwrap();
    assert_eq!(h.prep.outputs.len(), 2, "a and the frequencies: {}", tttc_ir::text::print(&h.prep));
    assert!(h.main.nodes.iter().all(|n| n.op.name() != "exp"), "no exp left: {}", tttc_ir::text::print(&h.main));
    assert!(h.main.nodes.iter().any(|n| n.op.name() == "transpose"), "the weight's view stays");

    let (xs, al, ws) = (Tensor::f32(vec![2, 4], values(8, 0.1)), Tensor::f32(vec![4], values(4, 0.2)), Tensor::f32(vec![3, 4], values(12, 0.3)));
    let want = tttc_ir::run(&g, &[&xs, &al, &ws], Precision::F32).unwrap();
    let prep_args: Vec<&Tensor> = h.prep.args.iter().map(|arg| if arg.name == "a_log" { &al } else { &ws }).collect();
    let hoisted = tttc_ir::run(&h.prep, &prep_args, Precision::F32).unwrap();
    let main_args: Vec<&Tensor> = h
        .main
        .args
        .iter()
        .map(|arg| match arg.name.as_str() {
            "x" => &xs,
            "a_log" => &al,
            "w" => &ws,
            name => {
                let k = h.prep.outputs.iter().position(|(n, _)| n == name).expect("a hoisted input");
                &hoisted[k]
            }
        })
        .collect();
    let got = tttc_ir::run(&h.main, &main_args, Precision::F32).unwrap();
    assert_eq!(got, want);
}

#[test]
fn graphs_without_weight_only_work_are_left_alone() {
    let mut g = Graph::new("plain");
    let x = g.input("x", Type::f32(&[2, 3]));
    let w = g.param("w", &[3, 3]);
    let wt = g.transpose_last2(w).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    assert!(tttc_passes::hoist_invariants(&g).unwrap().is_none());
}
