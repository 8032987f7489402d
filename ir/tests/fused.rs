//! The `fused` op: typing, the interpreter (a call of its body) against a hand computation, the
//! verifier and the text format.

use tttc_ir::{run, DType, Dim, Graph, Op, Precision, Tensor, Type, UnaryOp};

fn f32t(shape: Vec<Dim>) -> Type {
    Type::new(DType::F32, shape)
}

/// `x f32[B,3]`, `b f32[3]`: a fused region computing `y = exp(x) + b` and `s = Σ_axis1 y · 2`,
/// returning both; then `z = y − s` outside it.
fn sample() -> Graph {
    let mut body = Graph::new("region0");
    let x = body.input("x", f32t(vec![Dim::sym("B"), Dim::c(3)]));
    let b = body.input("b", f32t(vec![Dim::c(3)]));
    let e = body.unary(UnaryOp::Exp, x).unwrap();
    let y = body.add(e, b).unwrap();
    let two = body.scalar(2.0).unwrap();
    let y2 = body.mul(y, two).unwrap();
    let s = body.reduce(tttc_ir::ReduceKind::Sum, y2, 1, true).unwrap();
    body.output("y", y);
    body.output("s", s);

    let mut g = Graph::new("sample");
    let x = g.input("x", f32t(vec![Dim::sym("B"), Dim::c(3)]));
    let b = g.param("b", &[3]);
    let outs = g.fused(body, &[x, b]).unwrap();
    let z = g.sub(outs[0], outs[1]).unwrap();
    g.output("z", z);
    g.output("s", outs[1]);
    tttc_ir::verify(&g).unwrap();
    g
}

#[test]
fn a_fused_node_types_as_its_body() {
    let g = sample();
    let node = &g.nodes[0];
    assert_eq!(node.op.name(), "fused");
    assert!(node.op.body().is_some_and(|b| b.name == "region0"));
    let types: Vec<String> = node.outputs.iter().map(|v| g.ty(*v).to_string()).collect();
    assert_eq!(types, ["f32[B,3]", "f32[B,1]"]);

    // Operands must match the body's arguments in number and type.
    let body = node.op.body().unwrap().clone();
    let (x, b) = (g.args[0].value, g.args[1].value);
    let mut h = g.clone();
    let err = h.fused(body.clone(), &[x]).unwrap_err();
    assert!(format!("{err:#}").contains("body takes 2 arguments, fused has 1 operands"), "{err:#}");
    let err = h.fused(body, &[b, x]).unwrap_err();
    assert!(format!("{err:#}").contains("body argument 0 is f32[B,3], operand is f32[3]"), "{err:#}");
}

#[test]
fn the_interpreter_runs_the_body() {
    let g = sample();
    let xs = [0.0f32, 1.0, -1.0, 0.5, 2.0, -0.25];
    let bs = [1.0f32, -2.0, 0.5];
    for prec in [Precision::F32, Precision::F64] {
        let out = run(&g, &[&Tensor::f32(vec![2, 3], xs.to_vec()), &Tensor::f32(vec![3], bs.to_vec())], prec).unwrap();
        // By hand: y = eˣ + b per row, s = 2 Σ y, z = y − s.
        for r in 0..2 {
            let y: Vec<f64> = (0..3).map(|j| (xs[r * 3 + j] as f64).exp() + bs[j] as f64).collect();
            let s = 2.0 * y.iter().sum::<f64>();
            let z = out[0].to_f64().unwrap();
            let got_s = out[1].to_f64().unwrap();
            assert!((got_s[r] - s).abs() <= 1e-5 * s.abs(), "{prec:?}: s[{r}] = {} vs {s}", got_s[r]);
            for j in 0..3 {
                let want = y[j] - s;
                assert!((z[r * 3 + j] - want).abs() <= 1e-5 * want.abs().max(1.0), "{prec:?}: z[{r},{j}]");
            }
        }
        assert_eq!(out[0].shape, [2, 3]);
        assert_eq!(out[1].shape, [2, 1]);
    }
}

#[test]
fn the_verifier_checks_the_body() {
    let mut g = sample();
    let Op::Fused(f) = &mut g.nodes[0].op else { unreachable!() };
    // Mistype a value inside the body.
    let v = f.body.nodes[0].outputs[0];
    f.body.types[v.index()] = f32t(vec![Dim::c(7)]);
    let err = format!("{:#}", tttc_ir::verify(&g).unwrap_err());
    assert!(err.contains("body") && err.contains("region0"), "{err}");

    // A body output whose type no longer matches the node's result.
    let mut g = sample();
    let Op::Fused(f) = &mut g.nodes[0].op else { unreachable!() };
    f.body.outputs.swap(0, 1);
    let err = format!("{:#}", tttc_ir::verify(&g).unwrap_err());
    assert!(err.contains("fused") && err.contains("op gives"), "{err}");
}

const TEXT: &str = r#"graph sample(%0: f32[B,3] input "x", %1: f32[3] param "b") {
  %2, %3 = fused(%0, %1) : f32[B,3], f32[B,1] body region0(
    %0: f32[B,3] input "x",
    %1: f32[3] input "b"
  ) {
    %2 = exp(%0) : f32[B,3]
    %3 = add(%2, %1) : f32[B,3]
    %4 = const() {value=2.0, dtype=f32} : f32[]
    %5 = mul(%3, %4) : f32[B,3]
    %6 = reduce_sum(%5) {axis=1, keepdim=true} : f32[B,1]
    return y=%3, s=%6
  }
  %4 = sub(%2, %3) : f32[B,3]
  return z=%4, s=%3
}
"#;

#[test]
fn the_text_format_spells_a_fused_node_with_its_body() {
    let g = sample();
    assert_eq!(tttc_ir::text::print(&g), TEXT);
    let parsed = tttc_ir::text::parse(TEXT).unwrap();
    assert!(parsed == g, "parsed graph differs");

    // A result type that is not the body's output type is a line error.
    let bad = TEXT.replace(": f32[B,3], f32[B,1] body", ": f32[B,3], f32[B,3] body");
    let err = format!("{:#}", tttc_ir::text::parse(&bad).unwrap_err());
    assert!(err.starts_with("line 2: %3 is typed f32[B,3], but fused gives f32[B,1]"), "{err}");
    // `fused` takes no attributes.
    let bad = TEXT.replace("fused(%0, %1) :", "fused(%0, %1) {chunk=2} :");
    let err = format!("{:#}", tttc_ir::text::parse(&bad).unwrap_err());
    assert!(err.contains("fused has no attribute 'chunk'"), "{err}");
    // And needs its body.
    let bad = TEXT.replace(" body region0(", " region0(");
    assert!(tttc_ir::text::parse(&bad).is_err());
}
