//! Dead-code elimination keeps exactly what the remaining outputs need, and their values.

use tttc_ir::{run, Dim, Graph, Precision, Tensor, Type, UnaryOp};

#[test]
fn dropping_an_output_removes_its_nodes_and_keeps_the_others_values() {
    let mut g = Graph::new("two_outputs");
    let x = g.input("x", Type::new(tttc_ir::DType::F32, vec![Dim::sym("N")]));
    let e = g.unary(UnaryOp::Exp, x).unwrap();
    let t = g.unary(UnaryOp::Tanh, x).unwrap();
    let s = g.add(t, e).unwrap();
    g.output("e", e);
    g.output("s", s);

    let only_e = tttc_passes::keep_outputs(&g, &["e"]);
    tttc_ir::verify(&only_e).unwrap();
    assert_eq!(only_e.nodes.len(), 1);
    assert_eq!(only_e.outputs.len(), 1);

    let input = Tensor::f32(vec![3], vec![-1.0, 0.5, 2.0]);
    let full = run(&g, &[&input], Precision::F32).unwrap();
    let pruned = run(&only_e, &[&input], Precision::F32).unwrap();
    assert_eq!(pruned[0], full[0]);
    let want: Vec<f32> = [-1.0f32, 0.5, 2.0].iter().map(|v| v.exp()).collect();
    assert_eq!(pruned[0].to_f32().unwrap(), want);
}
