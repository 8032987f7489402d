//! The `fuse` pass: fused graphs compute what the unfused ones do, on every tiny example; the
//! regions follow the rules (scans alone, one anchor per region, matmuls fused with their
//! epilogues); fusion lowers the materialised bytes; the fused IR round-trips through the text
//! format; the cost model, dead-code elimination and autodiff handle `fused` nodes.

mod common;
use common::*;

use tttc_ir::{DType, Dim, DimEnv, Graph, Op, Precision, ReduceKind, Tensor, Type, UnaryOp};
use tttc_passes::cost::{graph_cost, intermediate_bytes, node_cost, Cost};

/// The graph after `dce` (what `fuse` receives) and after `fuse` (the end of the pipeline).
fn unfused_and_fused(g: &Graph) -> (Graph, Graph) {
    let results = tttc_passes::run_pipeline(g, None).unwrap();
    let at = |name: &str| results.iter().position(|r| r.name == name).unwrap_or_else(|| panic!("no {name} pass"));
    let (dce, fuse) = (at("dce"), at("fuse"));
    assert_eq!(fuse, results.len() - 1, "fuse is the last pass");
    assert_eq!(dce + 1, fuse, "fuse comes right after dce");
    (results[dce].graph.clone(), results[fuse].graph.clone())
}

fn execute(g: &Graph, model: &tttc_frontends::Model, ids: &Tensor) -> Vec<Tensor> {
    let args: Vec<&Tensor> = g.args.iter().map(|a| if a.name == "input_ids" { ids } else { &model.weights[&a.name] }).collect();
    tttc_ir::run(g, &args, Precision::F32).unwrap()
}

/// max |a − b| ≤ 1e-6 · max |a| per output; returns the largest relative difference.
fn assert_close(what: &str, want: &[Tensor], got: &[Tensor]) -> f32 {
    assert_eq!(want.len(), got.len(), "{what}: number of outputs");
    let mut worst = 0f32;
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        assert_eq!(a.shape, b.shape, "{what}: output {i} shape");
        let (a, b) = (a.to_f32().unwrap(), b.to_f32().unwrap());
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-6 * scale, "{what}: output {i} differs by {err} (scale {scale})");
        worst = worst.max(err / scale);
    }
    worst
}

fn ids(b: usize, t: usize, vocab: i64) -> Tensor {
    Tensor::i64(vec![b, t], (0..(b * t) as i64).map(|i| (i * 37 + 11) % vocab).collect())
}

/// Every tiny example computes the same logits and loss after `fuse` as after `dce` (T = 21 leaves
/// a shorter last TTT mini-batch), and the same logits with the loss pruned for T = 1 (the
/// runtime's `keep_outputs` on the fused graph).
#[test]
fn fused_graphs_compute_what_the_unfused_ones_do() {
    for path in tiny_examples() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let model = tttc_frontends::load(&path, None).unwrap();
        let vocab = model.config.vocab_size() as i64;
        let (unfused, fused) = unfused_and_fused(&model.builder.g);
        assert!(fused.nodes.iter().any(|n| matches!(n.op, Op::Fused(_))), "{name}: nothing fused");

        let x = ids(2, 21, vocab);
        let (want, got) = (execute(&unfused, &model, &x), execute(&fused, &model, &x));
        assert_eq!(want.len(), 2, "{name}: logits and loss");
        let worst = assert_close(&format!("{name}, B=2 T=21"), &want, &got);
        eprintln!("{name}: fused vs unfused, largest relative difference {worst:e}");

        let x = ids(1, 1, vocab);
        let (u1, f1) = (tttc_passes::keep_outputs(&unfused, &["logits"]), tttc_passes::keep_outputs(&fused, &["logits"]));
        tttc_ir::verify(&f1).unwrap();
        assert_close(&format!("{name}, B=1 T=1, logits only"), &execute(&u1, &model, &x), &execute(&f1, &model, &x));
    }
}

fn anchors(g: &Graph) -> usize {
    g.nodes.iter().filter(|n| matches!(n.op, Op::MatMul | Op::Gather { .. })).count()
}

fn has_nested(g: &Graph, pred: &dyn Fn(&Op) -> bool) -> bool {
    g.nodes.iter().any(|n| pred(&n.op) || n.op.body().is_some_and(|b| has_nested(b, pred)))
}

/// Checks the region rules on a fused graph and returns (fused regions, scans, plain nodes).
fn check_regions(name: &str, unfused: &Graph, fused: &Graph) -> (usize, usize, usize) {
    let (mut regions, mut scans, mut plain) = (0, 0, 0);
    let mut fused_anchors = 0;
    for (i, n) in fused.nodes.iter().enumerate() {
        match &n.op {
            Op::Fused(f) => {
                regions += 1;
                assert!(f.body.nodes.len() >= 2, "{name}: a one-node fused region");
                // No scan (or other nested body) inside a region; at most one anchor, which the
                // region's prologue (argument-only nodes) alone may precede.
                assert!(f.body.nodes.iter().all(|m| m.op.body().is_none()), "{name}: {} holds a body", f.body.name);
                let k = anchors(&f.body);
                assert!(k <= 1, "{name}: {} holds {k} anchors", f.body.name);
                fused_anchors += k;
                // Every result is used after the region (or is a graph output).
                for v in &n.outputs {
                    let used = fused.nodes[i + 1..].iter().any(|m| m.inputs.contains(v)) || fused.outputs.iter().any(|(_, o)| o == v);
                    assert!(used, "{name}: {} returns a value nobody uses", f.body.name);
                }
            }
            Op::Scan(_) => scans += 1,
            op => {
                plain += 1;
                // A matmul outside a region is alone: what follows it is no epilogue it could take.
                if matches!(op, Op::MatMul | Op::Gather { .. }) {
                    if let Some(next) = fused.nodes.get(i + 1) {
                        let joins = next.op.body().is_none() && !matches!(next.op, Op::MatMul | Op::Gather { .. });
                        assert!(!joins, "{name}: {} at {i} left out of a region", op.name());
                    }
                }
            }
        }
    }
    // Scans stay top-level nodes, each as the frontend built it (one per layer).
    let scans_before = unfused.nodes.iter().filter(|n| matches!(n.op, Op::Scan(_))).count();
    assert_eq!(scans, scans_before, "{name}: scans");
    // Every matmul and gather is still there, in a region or alone.
    assert_eq!(fused_anchors + anchors(fused), anchors(unfused), "{name}: anchors");
    (regions, scans, plain)
}

/// The fused TTT-Linear tiny graph: every scan a top-level node, every matmul in a fused region,
/// fewer top-level nodes and fewer materialised bytes than before fusion.
#[test]
fn ttt_linear_tiny_is_fused_by_the_rules() {
    let g = tttc_frontends::load_structure(&examples().join("ttt-linear-tiny.toml")).unwrap().g;
    let (unfused, fused) = unfused_and_fused(&g);
    let (regions, scans, plain) = check_regions("ttt-linear-tiny", &unfused, &fused);
    assert_eq!(scans, 3, "one mini-batch scan per layer and the head-and-loss scan");
    for n in &fused.nodes {
        if let Op::Fused(f) = &n.op {
            assert!(!has_nested(&f.body, &|op| matches!(op, Op::Scan(_))), "a scan inside {}", f.body.name);
        }
    }
    // No matmul outside a region: each of this model's matmuls has an epilogue.
    assert_eq!(anchors(&fused), 0, "a matmul or gather left outside a region");
    assert_eq!(plain, 0);
    assert!(regions + scans < unfused.nodes.len() / 5, "{regions} regions + {scans} scans from {} nodes", unfused.nodes.len());
    for (b, t) in [(2, 21), (1, 2048)] {
        let env: DimEnv = [("B".to_string(), b), ("T".to_string(), t)].into_iter().collect();
        let (before, after) = (intermediate_bytes(&unfused, &env).unwrap(), intermediate_bytes(&fused, &env).unwrap());
        assert!(after < before, "B={b} T={t}: intermediate bytes {before} -> {after}");
        // FLOPs are untouched: fusion moves ops, it does not add or remove any.
        assert_eq!(graph_cost(&unfused, &env).unwrap().flops, graph_cost(&fused, &env).unwrap().flops);
    }
}

/// The rules hold on every tiny example, and fusing a fused graph again changes nothing.
#[test]
fn every_tiny_example_is_fused_by_the_rules_and_fusion_is_idempotent() {
    for path in tiny_examples() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let g = tttc_frontends::load_structure(&path).unwrap().g;
        let (unfused, fused) = unfused_and_fused(&g);
        let (regions, ..) = check_regions(&name, &unfused, &fused);
        assert!(regions > 0, "{name}");
        let again = tttc_passes::fuse(&fused).unwrap().canonical();
        assert!(again == fused, "{name}: fusing twice differs from fusing once");
    }
}

/// The fused graph prints, parses back to the same graph and prints the same again.
#[test]
fn fused_graphs_round_trip_through_the_text_format() {
    for path in tiny_examples() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let g = tttc_frontends::load_structure(&path).unwrap().g;
        let (_, fused) = unfused_and_fused(&g);
        let text = tttc_ir::text::print(&fused);
        assert!(text.contains(" = fused(") && text.contains(" body region0("), "{name}");
        let parsed = tttc_ir::text::parse(&text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(parsed == fused, "{name}: the parsed graph differs");
        assert_eq!(tttc_ir::text::print(&parsed), text, "{name}: printing is not stable");
    }
}

fn bt(last: &[usize]) -> Vec<Dim> {
    let mut s = vec![Dim::sym("B"), Dim::sym("T")];
    s.extend(last.iter().map(|&n| Dim::c(n)));
    s
}

/// `x [B,T,4] · wᵀ` (w `[3,4]`), + bias, exp and a sum: one region (the weight's transpose is its
/// prologue) with the cost of one kernel; and what a region reads of a sliced argument.
#[test]
fn a_fused_region_costs_one_kernel() {
    let mut g = Graph::new("arith");
    let x = g.input("x", Type::new(DType::F32, bt(&[4])));
    let w = g.param("w", &[3, 4]);
    let b = g.param("b", &[3]);
    let wt = g.transpose(w, &[1, 0]).unwrap(); // [4,3]
    let y = g.matmul(x, wt).unwrap(); // [B,T,3]
    let z = g.add(y, b).unwrap();
    let e = g.unary(UnaryOp::Exp, z).unwrap();
    let s = g.reduce(ReduceKind::Sum, e, -1, false).unwrap(); // [B,T]
    g.output("s", s);
    g.output("z", z);
    tttc_ir::verify(&g).unwrap();
    let env: DimEnv = [("B".to_string(), 2), ("T".to_string(), 5)].into_iter().collect();
    let unfused = graph_cost(&g, &env).unwrap();

    let (f, report) = tttc_passes::fuse_with_report(&g).unwrap();
    tttc_ir::verify(&f).unwrap();
    assert_eq!((report.nodes_before, report.fused, report.fused_nodes, report.scans, report.plain), (5, 1, 5, 0, 0));
    assert_eq!(report.regions(), 1);
    assert_eq!(f.nodes.len(), 1);
    let Op::Fused(region) = &f.nodes[0].op else { panic!("not fused") };
    let names: Vec<&str> = region.body.args.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["w", "x", "b"], "arguments in order of first use, graph arguments by name");
    let outs: Vec<&str> = region.body.outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(outs, ["z", "s"], "results in definition order, graph outputs by name");

    // x: 40 elements (160 bytes), w 12 (48), b 3 (12); z 30 (120), s 10 (40).
    let c = node_cost(&f, &f.nodes[0], &env).unwrap();
    assert_eq!(c, Cost { flops: unfused.flops, bytes: 160 + 48 + 12 + 120 + 40, intermediate_bytes: 160, unestimated: 0 });
    assert_eq!(graph_cost(&f, &env).unwrap(), c);
    assert!(unfused.intermediate_bytes > c.intermediate_bytes && unfused.bytes > c.bytes);

    // Slices and gathers read only what they copy: a region reading x[:, :-1] alone reads 4/5 of x.
    let mut g = Graph::new("sliced");
    let x = g.input("x", Type::new(DType::F32, bt(&[4])));
    let w = g.param("w", &[4, 3]);
    let head = g.slice(x, 1, 0, Some(-1)).unwrap(); // [B,T-1,4]
    let y = g.matmul(head, w).unwrap(); // [B,T-1,3]
    let e = g.unary(UnaryOp::Exp, y).unwrap();
    g.output("e", e);
    let f = tttc_passes::fuse(&g).unwrap();
    assert_eq!(f.nodes.len(), 1, "the slice of an argument is the matmul's prologue");
    // x[:, :-1]: 2·4·4 elements, 128 bytes; w 48; e: 2·4·3 elements, 96 bytes.
    assert_eq!(node_cost(&f, &f.nodes[0], &env).unwrap().bytes, 128 + 48 + 96);
    let mut g = Graph::new("sliced_inside");
    let x = g.input("x", Type::new(DType::F32, bt(&[4])));
    let w = g.param("w", &[4, 3]);
    let y = g.matmul(x, w).unwrap(); // [B,T,3]
    let head = g.slice(y, 1, 0, Some(-1)).unwrap();
    let tail = g.slice(x, 1, 1, None).unwrap(); // [B,T-1,4]: x read again, in part
    let t = g.reduce(ReduceKind::Sum, tail, -1, true).unwrap(); // [B,T-1,1]
    let s = g.add(head, t).unwrap();
    g.output("s", s);
    let f = tttc_passes::fuse(&g).unwrap();
    assert_eq!(f.nodes.len(), 1);
    // x is read in full by the matmul: once, 160 bytes; w 48; s: 2·4·3 = 24 elements, 96 bytes.
    assert_eq!(node_cost(&f, &f.nodes[0], &env).unwrap().bytes, 160 + 48 + 96);
}

/// Dead-code elimination drops a fused node's unused results, the body nodes only they needed,
/// and the operands the body no longer reads (the runtime prunes the loss this way for T = 1).
#[test]
fn dead_code_elimination_prunes_inside_fused_regions() {
    let mut g = Graph::new("two_outputs");
    let x = g.input("x", Type::new(DType::F32, bt(&[4])));
    let w = g.param("w", &[4, 3]);
    let k = g.input("k", Type::new(DType::F32, bt(&[3])));
    let y = g.matmul(x, w).unwrap();
    let e = g.unary(UnaryOp::Exp, y).unwrap();
    let m = g.mul(e, k).unwrap();
    let loss = g.reduce(ReduceKind::Mean, m, 2, false).unwrap();
    g.output("y", y);
    g.output("loss", loss);
    let f = tttc_passes::fuse(&g).unwrap();
    assert_eq!((f.nodes.len(), f.nodes[0].inputs.len(), f.nodes[0].outputs.len()), (1, 3, 2));

    let pruned = tttc_passes::keep_outputs(&f, &["y"]);
    tttc_ir::verify(&pruned).unwrap();
    let node = &pruned.nodes[0];
    let Op::Fused(region) = &node.op else { panic!("not fused") };
    assert_eq!(node.outputs.len(), 1);
    assert_eq!(node.inputs.len(), 2, "k is no longer read");
    assert_eq!(region.body.nodes.len(), 1, "only the matmul is left");
    assert_eq!(region.body.outputs[0].0, "y");
}

/// Reverse-mode autodiff refuses a fused region with a clear error: differentiate first.
#[test]
fn autodiff_rejects_fused_regions() {
    let mut inner = Graph::new("region0");
    let a = inner.input("a", Type::new(DType::F32, vec![Dim::c(3)]));
    let sq = inner.mul(a, a).unwrap();
    inner.output("sq", sq);
    let mut body = Graph::new("loss");
    let x = body.input("x", Type::new(DType::F32, vec![Dim::c(3)]));
    let sq = body.fused(inner, &[x]).unwrap()[0];
    let s = body.reduce(ReduceKind::Sum, sq, 0, false).unwrap();
    body.output("loss", s);
    let mut g = Graph::new("with_grad");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::c(3)]));
    let dx = g.push1(Op::Grad(Box::new(tttc_ir::Grad { wrt: vec![0], body })), &[x]).unwrap();
    g.output("dx", dx);
    let err = format!("{:#}", tttc_passes::expand_grads(&g).unwrap_err());
    assert!(err.contains("fused regions are not differentiable"), "{err}");
}
