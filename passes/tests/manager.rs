//! The pass manager: order, stopping after a pass, verification after each pass, node counts.

use anyhow::{bail, Result};
use tttc_ir::{DType, Dim, Graph, Scan, Type, UnaryOp};
use tttc_passes::{count_nodes, pass_names, pipeline, run_passes, run_pipeline, Pass};

/// `x` `[N]` → exp, and a tanh nobody uses; plus a scan over `x` whose body has two nodes.
fn sample() -> Graph {
    let mut body = Graph::new("step");
    let c = body.input("c", Type::new(DType::F32, vec![]));
    let xs = body.input("x", Type::new(DType::F32, vec![Dim::sym("n")]));
    let s = body.reduce(tttc_ir::ReduceKind::Sum, xs, 0, false).unwrap();
    let c2 = body.add(c, s).unwrap();
    body.output("c", c2);
    body.output("y", xs);

    let mut g = Graph::new("sample");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::sym("N")]));
    let e = g.unary(UnaryOp::Exp, x).unwrap();
    let _dead = g.unary(UnaryOp::Tanh, x).unwrap();
    let zero = g.scalar(0.0).unwrap();
    let outs = g.scan(Scan { axis: 0, chunk: 2, carries: 1, seqs: 1, body, reverse: false }, &[zero, e]).unwrap();
    g.output("e", e);
    g.output("total", outs[0]);
    tttc_ir::verify(&g).unwrap();
    g
}

#[test]
fn the_default_pipeline_is_autodiff_then_dce() {
    assert_eq!(pass_names(), ["inner-autodiff", "dual-form", "simplify", "dce", "fuse"]);
    for p in pipeline() {
        assert!(!p.about.is_empty() && !p.about.contains('\n'), "{}: about must be one line", p.name);
        assert!(p.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{}", p.name);
    }
}

#[test]
fn runs_every_pass_in_order_and_counts_body_nodes() {
    let g = sample();
    // exp, tanh, const, scan + the body's reduce_sum and add.
    assert_eq!(count_nodes(&g), 6);
    let results = run_pipeline(&g, None).unwrap();
    let names: Vec<&str> = results.iter().map(|r| r.name).collect();
    assert_eq!(names, pass_names());
    let mut before = count_nodes(&g);
    for r in &results {
        assert_eq!(r.nodes_before, before, "{}", r.name);
        assert_eq!(r.nodes_after, count_nodes(&r.graph), "{}", r.name);
        before = r.nodes_after;
    }
    // Nothing to differentiate; dce drops the tanh.
    let by_name = |n: &str| results.iter().find(|r| r.name == n).unwrap();
    assert_eq!((by_name("inner-autodiff").nodes_before, by_name("inner-autodiff").nodes_after), (6, 6));
    assert_eq!((by_name("dce").nodes_before, by_name("dce").nodes_after), (6, 5));
    // fuse wraps exp and the constant the scan reads into one region: one node more.
    assert_eq!((by_name("fuse").nodes_before, by_name("fuse").nodes_after), (5, 6));
    assert!(tttc_passes::compile(&g).unwrap() == results.last().unwrap().graph);
}

#[test]
fn stops_after_the_named_pass() {
    let g = sample();
    let results = run_pipeline(&g, Some("inner-autodiff")).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].name, "inner-autodiff");
    assert_eq!(run_pipeline(&g, Some("dual-form")).unwrap().len(), 2);
    assert_eq!(run_pipeline(&g, Some("dce")).unwrap().len(), 4);
    assert_eq!(run_pipeline(&g, Some("fuse")).unwrap().len(), 5);
}

#[test]
fn an_unknown_pass_name_lists_the_valid_ones() {
    let err = run_pipeline(&sample(), Some("nonsense")).unwrap_err().to_string();
    assert!(err.contains("nonsense"), "{err}");
    assert!(err.contains("inner-autodiff, dual-form, simplify, dce, fuse"), "{err}");
}

fn breaks_types(g: &Graph) -> Result<tttc_passes::Rewrite> {
    let mut out = g.clone();
    let v = out.nodes[0].outputs[0];
    out.types[v.index()] = Type::f32(&[7]);
    Ok(out.into())
}

fn dangles(g: &Graph) -> Result<tttc_passes::Rewrite> {
    let mut out = g.clone();
    out.outputs.push(("ghost".into(), tttc_ir::ValueId(999)));
    Ok(out.into())
}

fn fails(_: &Graph) -> Result<tttc_passes::Rewrite> {
    bail!("cannot do this")
}

fn identity(g: &Graph) -> Result<tttc_passes::Rewrite> {
    Ok(g.clone().into())
}

#[test]
fn a_pass_that_breaks_the_graph_or_fails_is_named() {
    let g = sample();
    let first = Pass { name: "first", about: "does nothing", run: identity };
    let broken = Pass { name: "breaker", about: "mistypes a value", run: breaks_types };
    let err = run_passes(&[first, broken], &g, None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("pass breaker produced an invalid graph"), "{msg}");

    let failing = Pass { name: "failing", about: "fails", run: fails };
    let msg = format!("{:#}", run_passes(&[failing], &g, None).unwrap_err());
    assert_eq!(msg, "pass failing: cannot do this");

    let dangling = Pass { name: "dangler", about: "returns an undefined value", run: dangles };
    let msg = format!("{:#}", run_passes(&[dangling], &g, None).unwrap_err());
    assert!(msg.starts_with("pass dangler produced an invalid graph") && msg.contains("ghost"), "{msg}");

    // Stopping before the broken pass never runs it.
    assert_eq!(run_passes(&[first, broken], &g, Some("first")).unwrap().len(), 1);
}

#[test]
fn an_invalid_input_graph_is_rejected_before_any_pass() {
    let bad = breaks_types(&sample()).unwrap().graph;
    let msg = format!("{:#}", run_pipeline(&bad, None).unwrap_err());
    assert!(msg.starts_with("the input graph, before any pass"), "{msg}");
}
