//! Cost estimates against hand computations on small graphs.

use tttc_ir::{DType, Dim, DimEnv, Grad, Graph, Op, ReduceKind, Scan, Type, UnaryOp};
use tttc_passes::cost::{graph_cost, live_peak, node_cost, scan_iterations, Cost};

fn env(pairs: &[(&str, usize)]) -> DimEnv {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn bt(last: &[usize]) -> Vec<Dim> {
    let mut s = vec![Dim::sym("B"), Dim::sym("T")];
    s.extend(last.iter().map(|&n| Dim::c(n)));
    s
}

/// Per-node costs of the graph's top-level nodes, in order.
fn per_node(g: &Graph, e: &DimEnv) -> Vec<Cost> {
    g.nodes.iter().map(|n| node_cost(g, n, e).unwrap()).collect()
}

fn c(flops: u64, bytes: u64, intermediate_bytes: u64) -> Cost {
    Cost { flops, bytes, intermediate_bytes, unestimated: 0 }
}

#[test]
fn matmul_elementwise_reduction_and_const() {
    let mut g = Graph::new("arith");
    let x = g.input("x", Type::new(DType::F32, bt(&[4])));
    let w = g.param("w", &[4, 3]);
    let y = g.matmul(x, w).unwrap(); // [B,T,3]
    let e = g.unary(UnaryOp::Exp, y).unwrap();
    let s = g.reduce(ReduceKind::Sum, e, -1, false).unwrap(); // [B,T]
    let k = g.scalar(2.0).unwrap();
    let m = g.mul(s, k).unwrap();
    g.output("m", m);
    tttc_ir::verify(&g).unwrap();

    // B = 2, T = 5: x has 40 elements (160 bytes), y and e 30 (120 bytes), s and m 10 (40 bytes).
    let e = env(&[("B", 2), ("T", 5)]);
    let want = [
        c(2 * 2 * 5 * 3 * 4, 160 + 48 + 120, 120), // matmul: 2·M·N·K·batch; reads x and w, writes y
        c(30, 120 + 120, 120),                     // exp: one FLOP per element, transcendental or not
        c(30, 120 + 40, 40),                       // reduce_sum: one per input element
        c(0, 4, 4),                                // const: writes one f32
        c(10, 40 + 4 + 40, 40),                    // mul, the scalar broadcast
    ];
    assert_eq!(per_node(&g, &e), want);
    assert_eq!(graph_cost(&g, &e).unwrap(), c(240 + 30 + 30 + 10, 328 + 240 + 160 + 4 + 84, 120 + 120 + 40 + 4 + 40));
}

#[test]
fn batched_matmul_counts_the_broadcast_batch() {
    let mut g = Graph::new("bmm");
    let a = g.input("a", Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(3), Dim::c(2), Dim::c(5)]));
    let b = g.param("b", &[5, 7]);
    let y = g.matmul(a, b).unwrap(); // [B,3,2,7]
    g.output("y", y);
    let e = env(&[("B", 4)]);
    // batch 4·3, M 2, N 7, K 5.
    let flops = 2 * 2 * 7 * 5 * (4 * 3);
    assert_eq!(graph_cost(&g, &e).unwrap(), c(flops, 4 * (4 * 3 * 2 * 5 + 35 + 4 * 3 * 2 * 7), 4 * 4 * 3 * 2 * 7));
}

#[test]
fn data_movement_is_free_of_flops_and_i64_is_8_bytes() {
    let mut g = Graph::new("moves");
    let ids = g.input("ids", Type::new(DType::I64, bt(&[])));
    let table = g.param("table", &[10, 4]);
    let emb = g.gather(table, ids, 0).unwrap(); // [B,T,4]
    let tail = g.slice(emb, 1, 1, None).unwrap(); // [B,T-1,4]
    let tr = g.transpose(emb, &[1, 0, 2]).unwrap(); // [T,B,4]
    let hot = g.one_hot(ids, 10).unwrap(); // f32 [B,T,10]
    let f = g.cast(ids, DType::F32).unwrap(); // f32 [B,T]
    let padded = g.pad(f, 1, 2, 0).unwrap(); // [B,T+2]
    let both = g.concat(&[emb, emb], 2).unwrap(); // [B,T,8]
    let r = g.reshape(emb, vec![Dim::sym("B"), Dim::sym("T"), Dim::c(2), Dim::c(2)]).unwrap();
    let bc = g.broadcast(f, vec![Dim::c(3), Dim::sym("B"), Dim::sym("T")]).unwrap();
    let it = g.iota(Dim::sym("T"), DType::I64).unwrap();
    let masked = g.tri_mask(hot, 0.0).unwrap();
    for (i, v) in [tail, tr, padded, both, r, bc, it, masked].into_iter().enumerate() {
        g.output(&format!("o{i}"), v);
    }
    tttc_ir::verify(&g).unwrap();

    // B = 2, T = 5: ids 10 × 8 = 80 bytes; emb 40 f32 = 160 bytes.
    let e = env(&[("B", 2), ("T", 5)]);
    let costs = per_node(&g, &e);
    let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    let want: Vec<(&str, Cost)> = vec![
        ("gather", c(0, 80 + 160 + 160, 160)), // reads the index and the 10 gathered rows only
        ("slice", c(0, 128 + 128, 128)),       // [2,4,4]: reads only what it copies
        ("transpose", c(0, 160 + 160, 160)),
        ("one_hot", c(100, 80 + 400, 400)),     // one per output element
        ("cast", c(10, 80 + 40, 40)),           // i64 in, f32 out
        ("pad", c(0, 40 + 56, 56)),             // [2,7]
        ("concat", c(0, 160 + 160 + 320, 320)), // [2,5,8]
        ("reshape", c(0, 160 + 160, 160)),
        ("broadcast", c(0, 40 + 120, 120)), // [3,2,5]
        ("iota", c(0, 40, 40)),             // i64 [5]
        ("tri_mask", c(100, 400 + 400, 400)),
    ];
    assert_eq!(names, want.iter().map(|w| w.0).collect::<Vec<_>>());
    for ((name, want), got) in want.iter().zip(&costs) {
        assert_eq!(got, want, "{name}");
    }
}

/// A scan over `x` `[B, T, 2]` in chunks of `chunk` along T: carry `[B, 2]` += Σ over the chunk,
/// and `exp` of each chunk as the per-chunk output.
fn scan_graph(chunk: usize) -> Graph {
    let n = if chunk == 1 { Dim::c(1) } else { Dim::sym("n") };
    let mut body = Graph::new("step");
    let carry = body.input("c", Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(2)]));
    let xs = body.input("x", Type::new(DType::F32, vec![Dim::sym("B"), n, Dim::c(2)]));
    let s = body.reduce(ReduceKind::Sum, xs, 1, false).unwrap();
    let c2 = body.add(carry, s).unwrap();
    let y = body.unary(UnaryOp::Exp, xs).unwrap();
    body.output("c", c2);
    body.output("y", y);

    let mut g = Graph::new("scanned");
    let c0 = g.input("c0", Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(2)]));
    let x = g.input("x", Type::new(DType::F32, bt(&[2])));
    g.scan(Scan { axis: 1, chunk, carries: 1, seqs: 1, body, reverse: false }, &[c0, x]).unwrap();
    let last = g.nodes[0].outputs.clone();
    g.output("c", last[0]);
    g.output("y", last[1]);
    tttc_ir::verify(&g).unwrap();
    g
}

#[test]
fn scan_costs_its_body_per_chunk_with_the_shorter_last_chunk() {
    let g = scan_graph(4);
    // B = 1. The body with chunk length n: reduce_sum 2n FLOPs, 8n + 8 bytes, 8 intermediate;
    // add 2 FLOPs, 24 bytes, 8; exp 2n FLOPs, 16n bytes, 8n. In all: 4n + 2, 24n + 32, 8n + 16.
    let body = |n: u64| c(4 * n + 2, 24 * n + 32, 8 * n + 16);
    let e = env(&[("B", 1), ("T", 10)]);
    // T = 10 in chunks of 4: two chunks of 4, one of 2. The scan's results ([1,2] and [1,10,2],
    // 8 + 80 bytes) add to the intermediates.
    let mut want = body(4).times(2).unwrap().plus(body(2)).unwrap();
    want.intermediate_bytes += 8 + 80;
    assert_eq!(graph_cost(&g, &e).unwrap(), want);
    assert_eq!(want, c(46, 336, 216));
    assert_eq!(scan_iterations(&g, &g.nodes[0], &e).unwrap(), 3);

    // When the chunk divides T: ⌈T/chunk⌉ = T/chunk chunks of the body at n = chunk.
    let e = env(&[("B", 1), ("T", 16)]);
    let mut want = body(4).times(4).unwrap();
    want.intermediate_bytes += 8 + 128;
    assert_eq!(graph_cost(&g, &e).unwrap(), want);
    assert_eq!(scan_iterations(&g, &g.nodes[0], &e).unwrap(), 4);

    // The batch scales everything.
    let e = env(&[("B", 3), ("T", 16)]);
    let cost = graph_cost(&g, &e).unwrap();
    assert_eq!(cost, c(3 * 4 * 18, 3 * 4 * 128, 3 * (4 * 48 + 8 + 128)));
}

#[test]
fn scan_with_chunk_one_runs_its_body_once_per_element() {
    let g = scan_graph(1);
    let e = env(&[("B", 1), ("T", 3)]);
    // The body at n = 1: 6 FLOPs, 56 bytes, 24 intermediate bytes; three times; results 8 + 24.
    assert_eq!(graph_cost(&g, &e).unwrap(), c(18, 168, 72 + 32));
    assert_eq!(scan_iterations(&g, &g.nodes[0], &e).unwrap(), 3);
}

#[test]
fn an_unbound_symbol_is_an_error_naming_it_and_the_node() {
    let g = scan_graph(4);
    let err = graph_cost(&g, &env(&[("B", 1)])).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("symbol T is not bound"), "{msg}");
    assert!(msg.contains("scan"), "{msg}");
}

#[test]
fn a_grad_costs_what_it_expands_to() {
    // ∂/∂x Σ x² for x f32[N].
    let mut body = Graph::new("loss");
    let x = body.input("x", Type::new(DType::F32, vec![Dim::sym("N")]));
    let sq = body.mul(x, x).unwrap();
    let s = body.reduce(ReduceKind::Sum, sq, 0, false).unwrap();
    body.output("loss", s);
    let mut g = Graph::new("with_grad");
    let x = g.input("x", Type::new(DType::F32, vec![Dim::sym("N")]));
    let dx = g.push1(Op::Grad(Box::new(Grad { wrt: vec![0], body })), &[x]).unwrap();
    g.output("dx", dx);
    tttc_ir::verify(&g).unwrap();

    let e = env(&[("N", 100)]);
    let before = graph_cost(&g, &e).unwrap();
    // The pipeline up to dce: the fuse pass after it changes what is materialised, not the ops.
    let unfused = tttc_passes::run_pipeline(&g, Some("dce")).unwrap().pop().unwrap().graph;
    let after = graph_cost(&unfused, &e).unwrap();
    assert_eq!(before.unestimated, 0, "the grad has no estimate");
    // The reverse sweep of x·x alone is at least 2 FLOPs per element (x·ḡ + ḡ·x).
    assert!(before.flops >= 200, "{before:?}");
    assert_eq!(before, after, "a grad costs what the pipeline turns it into");
}

/// exp → matmul → reduce → mul at B = 2, T = 3: each value freed after its last use, the peak is
/// while the matmul runs (its result, the weight and its operand live). Wrapped in a fused region
/// the peak adds the region's internals to the arguments, counted once.
#[test]
fn live_peak_follows_last_uses() {
    let build = |g: &mut Graph, x, w| {
        let a = g.unary(UnaryOp::Exp, x).unwrap(); // 96 B
        let b = g.matmul(a, w).unwrap(); // [2,3,8]: 192 B
        let c = g.reduce(ReduceKind::Sum, b, -1, false).unwrap(); // 24 B
        (b, g.mul(c, c).unwrap())
    };
    let mut g = Graph::new("chain");
    let x = g.input("x", Type::new(DType::F32, bt(&[4]))); // 96 B
    let w = g.param("w", &[4, 8]); // 128 B
    let (b, d) = build(&mut g, x, w);
    g.output("d", d);
    let e = env(&[("B", 2), ("T", 3)]);
    let p = live_peak(&g, &e).unwrap();
    // x is freed after exp: w 128 + a 96 + b 192.
    assert_eq!((p.bytes, p.node), (416, 1));
    assert_eq!(p.largest, vec![(b, 192), (w, 128), (g.nodes[0].outputs[0], 96)]);

    let mut outer = Graph::new("outer");
    let ox = outer.input("x", Type::new(DType::F32, bt(&[4])));
    let ow = outer.param("w", &[4, 8]);
    let r = outer.fused(g.clone(), &[ox, ow]).unwrap();
    outer.output("d", r[0]);
    // x and w (224 B) + the region's result d (24 B) + its internals: 416 − 224.
    assert_eq!(live_peak(&outer, &e).unwrap().bytes, 224 + 24 + 192);
}
