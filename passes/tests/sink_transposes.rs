//! A transpose of a product moves onto the product's operands (`(a·b)ᵀ = bᵀ·aᵀ`), through a
//! leading-axis reduction and a reshape dropping a leading unit axis, when nothing else reads the
//! values on the way: the same values (interpreter, f64), and no transpose of a product's result
//! left. A product read elsewhere too keeps its transpose.

mod common;

use tttc_ir::{run, DType, Dim, Graph, Op, Precision, ReduceKind, Tensor, Type};

/// `(Σ_batch xᵀ · dy)ᵀ` with `x` `[1, p, d]` and `dy` `[1, p, v]`, as a gradient's `dWᵀ`; with
/// `shared`, the product is an output too.
fn graph(shared: bool) -> Graph {
    let (p, d, v) = (Dim::c(5), 3, 4);
    let mut g = Graph::new("dw");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::c(1), p.clone(), Dim::c(d)]));
    let dy = g.input("dy", Type::new(DType::F32, vec![Dim::c(1), p, Dim::c(v)]));
    let xt = g.transpose(x, &[0, 2, 1]).unwrap();
    let prod = g.matmul(xt, dy).unwrap();
    let summed = g.reduce(ReduceKind::Sum, prod, 0, true).unwrap();
    let flat = g.reshape(summed, vec![Dim::c(d), Dim::c(v)]).unwrap();
    let dw = g.transpose_last2(flat).unwrap();
    g.output("dw", dw);
    if shared {
        g.output("prod", prod);
    }
    g
}

fn values(g: &Graph) -> Vec<Tensor> {
    let noise = |n: usize, seed: f64| (0..n).map(|i| ((i as f64 + seed) * 0.9).cos()).collect::<Vec<f64>>();
    let x = Tensor::f64(vec![1, 5, 3], noise(15, 1.0));
    let dy = Tensor::f64(vec![1, 5, 4], noise(20, 2.0));
    run(g, &[&x, &dy], Precision::F64).unwrap()
}

/// Whether some transpose reads a product's result.
fn transposes_a_product(g: &Graph) -> bool {
    g.nodes.iter().any(|n| matches!(n.op, Op::Transpose { .. }) && g.nodes.iter().any(|m| matches!(m.op, Op::MatMul) && m.outputs.contains(&n.inputs[0])))
}

#[test]
fn a_transposed_product_is_the_product_of_the_transposes() {
    let g = graph(false);
    let sunk = tttc_passes::dead_code_elimination(&tttc_passes::sink_transposes(&g).unwrap());
    tttc_ir::verify(&sunk).unwrap();
    let layout_of = |g: &Graph| g.nodes.iter().filter(|n| matches!(n.op, Op::MatMul)).map(|n| g.ty(n.outputs[0]).to_string()).collect::<Vec<_>>();
    assert_eq!(layout_of(&g), ["f32[1,3,4]"]);
    assert_eq!(layout_of(&sunk), ["f32[1,4,3]"], "the product computed in the layout of the result");
    let (want, got) = (values(&g), values(&sunk));
    let (w, h) = (want[0].to_f64().unwrap(), got[0].to_f64().unwrap());
    assert_eq!(got[0].shape, want[0].shape);
    assert!(w.iter().zip(&h).all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(1.0)), "{w:?} vs {h:?}");
    assert!(transposes_a_product(&g) || g.nodes.iter().any(|n| matches!(n.op, Op::Transpose { .. })));
    assert!(!transposes_a_product(&sunk));
}

#[test]
fn a_product_read_elsewhere_keeps_its_transpose() {
    let g = graph(true);
    let sunk = tttc_passes::sink_transposes(&g).unwrap();
    assert_eq!(sunk.nodes.len(), g.nodes.len());
    assert_eq!(values(&sunk), values(&g));
}

/// Transposes of the last two axes that read a product's result and are its only reader, in `g`
/// and its bodies.
fn sole_transposes_of_products(g: &Graph) -> usize {
    let readers = |v| g.nodes.iter().filter(|n| n.inputs.contains(&v)).count() + g.outputs.iter().filter(|(_, o)| *o == v).count();
    let here = g
        .nodes
        .iter()
        .filter(|n| matches!(&n.op, Op::Transpose { perm } if tttc_ir::swaps_last_two(perm)) && readers(n.inputs[0]) == 1)
        .filter(|n| g.nodes.iter().any(|m| matches!(m.op, Op::MatMul) && m.outputs.contains(&n.inputs[0])))
        .count();
    here + g.nodes.iter().filter_map(|n| n.op.body()).map(sole_transposes_of_products).sum::<usize>()
}

/// The default pipeline sinks the transposes the dual form leaves: the mini-batch step's state
/// update `W − (Xᵀ·G)ᵀ` is computed as `W − Gᵀ·X`, in the state's layout.
#[test]
fn the_pipeline_computes_the_dual_forms_products_in_the_layout_wanted() {
    for example in ["ttt-linear-tiny", "ttt-mlp-tiny"] {
        let g = tttc_frontends::load_structure(&common::examples().join(format!("{example}.toml"))).unwrap().g;
        let dual = tttc_passes::run_pipeline(&g, Some("dual-form")).unwrap().pop().unwrap().graph;
        assert!(sole_transposes_of_products(&dual) > 0, "{example}: the dual form transposes products");
        let done = tttc_passes::run_pipeline(&g, Some("dce")).unwrap().pop().unwrap().graph;
        assert_eq!(sole_transposes_of_products(&done), 0, "{example}: a product computed and then transposed");
    }
}
