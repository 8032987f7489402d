//! A transpose of a product moves onto the product's operands (`(a·b)ᵀ = bᵀ·aᵀ`), through a
//! leading-axis reduction, a reshape dropping a leading unit axis and elementwise ops whose
//! operands transpose for free, when nothing else reads the values on the way: the same values
//! (interpreter, f64), and no transpose of a product's result left. A product read elsewhere too
//! keeps its transpose. The default pipeline leaves no transpose in the mini-batch step that
//! costs a copy.

mod common;

use tttc_ir::{run, BinaryOp, DType, Dim, Graph, Op, Precision, ReduceKind, Tensor, Type, UnaryOp};

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

/// `exp(b − (x·w)ᵀ · 0.5)ᵀ` with `b` a column `[v, 1]`, and `(x·w + c)ᵀ` with `c` a vector `[v]`
/// (broadcast along the last axis): the same values, with no transpose left but those the second
/// product reads as strides.
#[test]
fn elementwise_ops_take_the_transpose_onto_their_operands() {
    let (p, d, v) = (5, 3, 4);
    let mut g = Graph::new("ew");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::c(1), Dim::c(p), Dim::c(d)]));
    let w = g.input("w", Type::new(DType::F32, vec![Dim::c(d), Dim::c(v)]));
    let b = g.input("b", Type::new(DType::F32, vec![Dim::c(v), Dim::c(1)]));
    let c = g.input("c", Type::new(DType::F32, vec![Dim::c(v)]));
    let product = g.matmul(x, w).unwrap();
    let pt = g.transpose_last2(product).unwrap();
    let half = g.scalar(0.5).unwrap();
    let scaled = g.binary(BinaryOp::Mul, pt, half).unwrap();
    let diff = g.binary(BinaryOp::Sub, b, scaled).unwrap();
    let e = g.unary(UnaryOp::Exp, diff).unwrap();
    let out = g.transpose_last2(e).unwrap();
    g.output("out", out);
    let product2 = g.matmul(x, w).unwrap();
    let shifted = g.binary(BinaryOp::Add, product2, c).unwrap();
    let st = g.transpose_last2(shifted).unwrap();
    g.output("shifted", st);
    let sunk = tttc_passes::dead_code_elimination(&tttc_passes::simplify(&tttc_passes::sink_transposes(&g).unwrap()).unwrap());
    tttc_ir::verify(&sunk).unwrap();
    let transposes = |g: &Graph| g.nodes.iter().filter(|n| matches!(n.op, Op::Transpose { .. })).map(|n| n.outputs[0]).collect::<Vec<_>>();
    assert_eq!(transposes(&g).len(), 3);
    let read_by_products = |v| sunk.nodes.iter().filter(|n| n.inputs.contains(&v)).all(|n| matches!(n.op, Op::MatMul));
    assert!(transposes(&sunk).into_iter().all(read_by_products), "{}", tttc_ir::text::print(&sunk));
    let noise = |n: usize, seed: f64| Tensor::f64(vec![n], (0..n).map(|i| ((i as f64 + seed) * 0.9).cos()).collect());
    let reshaped = |t: Tensor, shape: Vec<usize>| Tensor::f64(shape, t.to_f64().unwrap());
    let args = [reshaped(noise(p * d, 1.0), vec![1, p, d]), reshaped(noise(d * v, 2.0), vec![d, v]), reshaped(noise(v, 3.0), vec![v, 1]), noise(v, 4.0)];
    let args: Vec<&Tensor> = args.iter().collect();
    let (want, got) = (run(&g, &args, Precision::F64).unwrap(), run(&sunk, &args, Precision::F64).unwrap());
    for (w, h) in want.iter().zip(&got) {
        assert_eq!(w.shape, h.shape);
        let (w, h) = (w.to_f64().unwrap(), h.to_f64().unwrap());
        assert!(w.iter().zip(&h).all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(1.0)), "{w:?} vs {h:?}");
    }
}

/// Transposes of the last two axes that cost a copy in the mini-batch steps (the `mini_batch`
/// bodies in `g`): those read by anything but a product (which reads a transposed operand as
/// strides), and those that are the only reader of a product's result.
fn copied_transposes(g: &Graph) -> usize {
    let copied = |body: &Graph| {
        let readers = |v| body.nodes.iter().filter(|n| n.inputs.contains(&v)).collect::<Vec<_>>();
        let made_by_product = |v| body.nodes.iter().any(|m| matches!(m.op, Op::MatMul) && m.outputs.contains(&v));
        let transposes = body.nodes.iter().filter(|n| matches!(&n.op, Op::Transpose { perm } if tttc_ir::swaps_last_two(perm)));
        transposes
            .filter(|n| {
                let read_by = readers(n.outputs[0]);
                let sole_reader = readers(n.inputs[0]).len() == 1 && !body.outputs.iter().any(|(_, o)| *o == n.inputs[0]);
                read_by.iter().any(|m| !matches!(m.op, Op::MatMul)) || (sole_reader && made_by_product(n.inputs[0]))
            })
            .count()
    };
    let bodies = g.nodes.iter().filter_map(|n| n.op.body());
    bodies.map(|b| if b.name == "mini_batch" { copied(b) } else { 0 } + copied_transposes(b)).sum()
}

/// The default pipeline sinks the transposes the dual form leaves: the mini-batch step's state
/// update `W − (Xᵀ·G)ᵀ` is computed as `W − Gᵀ·X`, in the state's layout, and the bias's
/// `(b₁ᵀ − (η·Z)ᵀ)ᵀ` as `b₁ − η·Z`: no transpose in the step costs a copy.
#[test]
fn the_pipeline_computes_the_dual_forms_products_in_the_layout_wanted() {
    for example in ["ttt-linear-tiny", "ttt-mlp-tiny"] {
        let g = tttc_frontends::load_structure(&common::examples().join(format!("{example}.toml"))).unwrap().g;
        let dual = tttc_passes::run_pipeline(&g, Some("dual-form")).unwrap().pop().unwrap().graph;
        assert!(copied_transposes(&dual) > 0, "{example}: the dual form transposes products and their sums");
        let done = tttc_passes::run_pipeline(&g, Some("dce")).unwrap().pop().unwrap().graph;
        assert_eq!(copied_transposes(&done), 0, "{example}: a transpose in the mini-batch step costs a copy");
    }
}

/// `(u ⊙ w ⊙ aᵀ + bᵀ)²` and `exp` of it, with `u` a column and `w` a row, read only through
/// transposes (one of them an output, one read by a product): reverse mode's shape of the
/// GELU adjoints. With `also_read`, the sum is an output as well, in its own layout.
fn outer_product_chain(also_read: bool) -> Graph {
    let (m, n) = (4, 3);
    let mut g = Graph::new("chain");
    let f32s = |dims: &[usize]| Type::new(DType::F32, dims.iter().map(|&d| Dim::c(d)).collect());
    let u = g.input("u", f32s(&[m, 1]));
    let w = g.input("w", f32s(&[1, n]));
    let a = g.input("a", f32s(&[n, m]));
    let b = g.input("b", f32s(&[n, m]));
    let outer = g.binary(BinaryOp::Mul, u, w).unwrap();
    let at = g.transpose_last2(a).unwrap();
    let scaled = g.binary(BinaryOp::Mul, outer, at).unwrap();
    let bt = g.transpose_last2(b).unwrap();
    let sum = g.binary(BinaryOp::Add, scaled, bt).unwrap();
    let square = g.binary(BinaryOp::Mul, sum, sum).unwrap();
    let e = g.unary(UnaryOp::Exp, square).unwrap();
    let st = g.transpose_last2(square).unwrap();
    g.output("square", st);
    let et = g.transpose_last2(e).unwrap();
    let product = g.matmul(et, u).unwrap();
    g.output("product", product);
    if also_read {
        g.output("sum", sum);
    }
    g
}

fn chain_values(g: &Graph) -> Vec<Vec<f64>> {
    let noise = |dims: Vec<usize>, seed: f64| Tensor::f64(dims.clone(), (0..dims.iter().product()).map(|i| ((i as f64 + seed) * 0.9).cos()).collect());
    let args = [noise(vec![4, 1], 1.0), noise(vec![1, 3], 2.0), noise(vec![3, 4], 3.0), noise(vec![3, 4], 4.0)];
    run(g, &args.iter().collect::<Vec<_>>(), Precision::F64).unwrap().iter().map(|t| t.to_f64().unwrap()).collect()
}

/// Elementwise ops read only through transposes are computed in the transposed layout: the same
/// values (interpreter, f64) with no transpose left; one whose result is read elsewhere too
/// keeps every op in its layout.
#[test]
fn elementwise_ops_read_through_transposes_are_computed_transposed() {
    for also_read in [false, true] {
        let g = outer_product_chain(also_read);
        let done = tttc_passes::dead_code_elimination(&tttc_passes::simplify(&tttc_passes::sink_transposes(&g).unwrap()).unwrap());
        tttc_ir::verify(&done).unwrap();
        let transposes = |g: &Graph| g.nodes.iter().filter(|n| matches!(n.op, Op::Transpose { .. })).count();
        assert_eq!(transposes(&g), 4);
        assert_eq!(transposes(&done), if also_read { 4 } else { 0 }, "{}", tttc_ir::text::print(&done));
        let (want, got) = (chain_values(&g), chain_values(&done));
        for (w, h) in want.iter().zip(&got) {
            assert!(w.len() == h.len() && w.iter().zip(h).all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(1.0)), "{w:?} vs {h:?}");
        }
    }
}

/// A transpose between two ops that could each be computed transposed, `z = f(f(aᵀ)ᵀ)` with `a`
/// read in both layouts: `z` cannot read its operand's transpose once that operand is flipped.
/// The rewrite keeps the values (interpreter, f64).
#[test]
fn a_transpose_between_flipped_ops_keeps_the_values() {
    let mut g = Graph::new("between");
    let p = g.input("p", Type::new(DType::F32, vec![Dim::c(3), Dim::c(4)]));
    let pt = g.transpose_last2(p).unwrap();
    let a = g.unary(UnaryOp::Exp, pt).unwrap();
    let at = g.transpose_last2(a).unwrap();
    g.output("a", at);
    let y = g.unary(UnaryOp::Tanh, a).unwrap();
    let x = g.transpose_last2(y).unwrap();
    let z = g.unary(UnaryOp::Sigmoid, x).unwrap();
    let zt = g.transpose_last2(z).unwrap();
    g.output("z", zt);
    let e = g.unary(UnaryOp::Exp, z).unwrap();
    let et = g.transpose_last2(e).unwrap();
    g.output("e", et);
    let done = tttc_passes::dead_code_elimination(&tttc_passes::simplify(&tttc_passes::sink_transposes(&g).unwrap()).unwrap());
    tttc_ir::verify(&done).unwrap();
    let arg = Tensor::f64(vec![3, 4], (0..12).map(|i| (i as f64 * 0.7).cos()).collect());
    let (want, got) = (run(&g, &[&arg], Precision::F64).unwrap(), run(&done, &[&arg], Precision::F64).unwrap());
    for (w, h) in want.iter().zip(&got) {
        assert_eq!(w.shape, h.shape);
        let (w, h) = (w.to_f64().unwrap(), h.to_f64().unwrap());
        assert!(w.iter().zip(&h).all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(1.0)), "{w:?} vs {h:?}");
    }
}

/// Transposes of the last two axes read by anything but a product, in the bodies named `name`.
fn transposes_read_as_values(g: &Graph, name: &str) -> usize {
    let mut count = 0;
    for body in g.nodes.iter().filter_map(|n| n.op.body()) {
        if body.name == name {
            let read_as_value = |v| body.nodes.iter().any(|r| r.inputs.contains(&v) && !matches!(r.op, Op::MatMul));
            count +=
                body.nodes.iter().filter(|m| matches!(&m.op, Op::Transpose { perm } if tttc_ir::swaps_last_two(perm)) && read_as_value(m.outputs[0])).count();
        }
        count += transposes_read_as_values(body, name);
    }
    count
}

/// The gradient's reverse mini-batch step (after the default pipeline) copies no transpose:
/// TTT-MLP's GELU adjoints are computed in the layout of the values they combine with.
#[test]
fn the_gradients_reverse_step_copies_no_transpose() {
    for example in ["ttt-linear-tiny", "ttt-mlp-tiny"] {
        let g = tttc_frontends::load_structure(&common::examples().join(format!("{example}.toml"))).unwrap().g;
        let vjp = tttc_passes::gradient_graph(&tttc_passes::differentiable(&g).unwrap(), "loss", 1).unwrap();
        let compiled = tttc_passes::compile(&vjp).unwrap();
        assert_eq!(transposes_read_as_values(&compiled, "mini_batch_reverse"), 0, "{example}");
    }
}
