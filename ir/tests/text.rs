//! The text format: every op round-trips exactly, printing is stable, and bad text gives one-line
//! errors (never a panic).

mod common;

use common::*;
use tttc_ir::text::{parse, print};
use tttc_ir::{ArgKind, BinaryOp, DType, Dim, Graph, Node, Op, ReduceKind, Scan, Type, UnaryOp, ValueId};

/// `parse(print(g)) == g`, and printing the parsed graph gives the same text.
fn roundtrip(g: &Graph) -> String {
    tttc_ir::verify(g).unwrap_or_else(|e| panic!("test graph does not verify: {e:#}"));
    let text = print(g);
    let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n--- text ---\n{text}"));
    assert_eq!(&back, g, "parse(print(g)) differs from g\n{text}");
    assert_eq!(print(&back), text);
    assert_eq!(g.to_string(), text, "Display uses print");
    text
}

fn elementwise() -> Graph {
    let mut g = Graph::new("elementwise");
    let x = g.input("x", f32t(vec![d("B"), d("T"), c(4)]));
    let y = g.input("y", f32t(vec![d("T"), c(1)]));
    let i = g.input("i", i64t(vec![c(3)]));
    let mut n = 0;
    for u in Op::UNARY {
        let v = g.unary(u, x).unwrap();
        g.output(&format!("u{n}"), v);
        n += 1;
    }
    for b in Op::BINARY {
        let v = g.binary(b, x, y).unwrap();
        g.output(&format!("b{n}"), v);
        let v = g.binary(b, i, i).unwrap();
        g.output(&format!("i{n}"), v);
        n += 1;
    }
    let neg = g.unary(UnaryOp::Neg, i).unwrap();
    g.output("neg_i", neg);
    g
}

#[test]
fn unary_and_binary_ops_round_trip() {
    let text = roundtrip(&elementwise());
    for u in Op::UNARY {
        assert!(text.contains(&format!(" = {}(%0)", Op::Unary(u).name())), "{text}");
    }
}

#[test]
fn constants_round_trip_exactly() {
    let values = [
        1e-6,
        -0.0,
        0.0,
        0.1,
        1.0 / 3.0,
        -2.5,
        1e300,
        -1e-300,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
        123456789.0,
        (0.1f32) as f64,
    ];
    let mut g = Graph::new("consts");
    for (k, &v) in values.iter().enumerate() {
        let x = g.push1(Op::Const { value: v, dtype: DType::F32 }, &[]).unwrap();
        g.output(&format!("c{k}"), x);
    }
    let x = g.push1(Op::Const { value: 7.0, dtype: DType::I64 }, &[]).unwrap();
    g.output("int", x);
    let text = roundtrip(&g);
    // -0.0 == 0.0, so check the sign bit survives separately.
    let back = parse(&text).unwrap();
    for (node, &v) in back.nodes.iter().zip(&values) {
        match node.op {
            Op::Const { value, .. } => assert_eq!(value.to_bits(), v.to_bits(), "{v:?}"),
            _ => unreachable!(),
        }
    }
    assert!(text.contains("value=1e-6"), "{text}");
    assert!(text.contains("value=-inf"), "{text}");
}

#[test]
fn nan_constant_round_trips() {
    // NaN != NaN, so graph equality cannot hold: check the printed text and the value instead.
    let mut g = Graph::new("nan");
    let x = g.scalar(f64::NAN).unwrap();
    g.output("x", x);
    let text = print(&g);
    assert!(text.contains("value=NaN"), "{text}");
    let back = parse(&text).unwrap();
    assert!(matches!(back.nodes[0].op, Op::Const { value, .. } if value.is_nan()));
    assert_eq!(print(&back), text);
}

fn shape_ops() -> Graph {
    let mut g = Graph::new("shapes");
    let x = g.input("x", f32t(vec![d("B"), d("T"), c(4)]));
    let k = g.input("k", i64t(vec![d("B"), d("T")]));
    let small = g.input("small", f32t(vec![c(1), c(4)]));
    let outs = [
        g.iota(Dim::sym("T").plus(-1).unwrap(), DType::I64).unwrap(),
        g.iota(c(5), DType::F32).unwrap(),
        g.iota(Dim::sym("T").plus(3).unwrap(), DType::F32).unwrap(),
        g.cast(x, DType::I64).unwrap(),
        g.cast(k, DType::F32).unwrap(),
        g.reduce(ReduceKind::Sum, x, 2, true).unwrap(),
        g.reduce(ReduceKind::Sum, x, 2, false).unwrap(),
        g.reduce(ReduceKind::Mean, x, 1, true).unwrap(),
        g.reduce(ReduceKind::Mean, x, -1, false).unwrap(),
        g.reduce(ReduceKind::Max, x, 0, true).unwrap(),
        g.reduce(ReduceKind::Max, x, 0, false).unwrap(),
        g.reshape(x, vec![d("B"), d("T"), c(2), c(2)]).unwrap(),
        g.transpose(x, &[2, 0, 1]).unwrap(),
        g.transpose_last2(x).unwrap(),
        g.broadcast(small, vec![d("B"), d("T"), c(4)]).unwrap(),
        g.slice(x, 1, -3, None).unwrap(),
        g.slice(x, 1, 1, Some(-1)).unwrap(),
        g.slice(x, 1, -5, Some(-2)).unwrap(),
        g.slice(x, 1, 0, Some(2)).unwrap(),
        g.slice(x, -1, -2, None).unwrap(),
        g.slice(x, 2, 1, Some(3)).unwrap(),
        g.pad(x, 1, 2, 1).unwrap(),
        g.pad(x, 2, 0, 3).unwrap(),
        g.gather(x, k, 2).unwrap(),
        g.one_hot(k, 7).unwrap(),
        g.scatter_add(x, k, 5).unwrap(),
        g.tri_mask(x, f64::NEG_INFINITY).unwrap(),
        g.tri_mask(x, 0.0).unwrap(),
        g.tri_mask_window(x, f64::NEG_INFINITY, Some(3)).unwrap(),
        g.stop_gradient(x).unwrap(),
    ];
    let first = g.slice(x, 1, 0, Some(2)).unwrap();
    let cat = g.concat(&[x, first], 1).unwrap();
    assert_eq!(g.ty(cat).shape[1], Dim::sym("T").plus(2).unwrap());
    let mm = g.matmul(x, small).unwrap_err();
    assert!(format!("{mm:#}").contains("contracted dimensions differ"));
    for (n, v) in outs.into_iter().enumerate() {
        g.output(&format!("o{n}"), v);
    }
    g.output("cat", cat);
    g
}

#[test]
fn shape_ops_round_trip() {
    let text = roundtrip(&shape_ops());
    for needle in [
        "iota() {len=T-1, dtype=i64} : i64[T-1]",
        "iota() {len=T+3, dtype=f32}",
        "slice(%0) {axis=1, start=-3, end=none} : f32[B,3,4]",
        "slice(%0) {axis=1, start=1, end=-1} : f32[B,T-2,4]",
        "pad(%0) {axis=1, before=2, after=1} : f32[B,T+3,4]",
        "tri_mask(%0) {fill=-inf}",
        "tri_mask(%0) {fill=-inf, window=3}",
        "reduce_mean(%0) {axis=1, keepdim=true} : f32[B,1,4]",
        "transpose(%0) {perm=[2,0,1]} : f32[4,B,T]",
        "reshape(%0) {shape=[B,T,2,2]}",
        "one_hot(%1) {depth=7} : f32[B,T,7]",
        "stop_gradient(%0) : f32[B,T,4]",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

fn matmul_graph() -> Graph {
    let mut g = Graph::new("mm");
    let a = g.input("a", f32t(vec![d("B"), c(1), c(3), c(4)]));
    let b = g.input("b", f32t(vec![c(5), c(4), c(2)]));
    let m = g.matmul(a, b).unwrap();
    assert_eq!(g.ty(m), &f32t(vec![d("B"), c(5), c(3), c(2)]));
    g.output("m", m);
    g
}

#[test]
fn matmul_with_batch_broadcast_round_trips() {
    let text = roundtrip(&matmul_graph());
    assert!(text.contains("%2 = matmul(%0, %1) : f32[B,5,3,2]"), "{text}");
}

#[test]
fn concat_of_symbolic_and_constant_lengths() {
    let mut g = Graph::new("cat");
    let x = g.input("x", f32t(vec![d("B"), d("T"), c(4)]));
    let y = g.input("y", f32t(vec![d("B"), c(2), c(4)]));
    let z = g.concat(&[y, x, y], 1).unwrap();
    assert_eq!(g.ty(z).shape[1], Dim::sym("T").plus(4).unwrap());
    g.output("z", z);
    roundtrip(&g);
}

/// A scan with a carry, two sequences, an invariant and a body that holds another scan.
fn scan_example() -> Graph {
    let mut inner = Graph::new("inner");
    let acc = inner.input("acc", f32t(vec![d("B"), c(4)]));
    let piece = inner.input("piece", f32t(vec![d("B"), c(1), c(4)]));
    let p = inner.reshape(piece, vec![d("B"), c(4)]).unwrap();
    let acc2 = inner.add(acc, p).unwrap();
    inner.output("acc", acc2);
    inner.output("seen", piece);

    let mut body = Graph::new("chunk");
    let state = body.input("state", f32t(vec![d("B"), c(4)]));
    let x = body.input("x", f32t(vec![d("B"), d("n"), c(4)]));
    let ids = body.input("ids", i64t(vec![d("B"), d("n")]));
    let w = body.input("w", f32t(vec![c(4), c(4)]));
    let xw = body.matmul(x, w).unwrap();
    let ids_f = body.cast(ids, DType::F32).unwrap();
    let ids_f = body.reshape(ids_f, vec![d("B"), d("n"), c(1)]).unwrap();
    let y = body.add(xw, ids_f).unwrap();
    let inner_outs = body.scan(Scan { axis: 1, chunk: 1, carries: 1, seqs: 1, body: inner, reverse: false }, &[state, y]).unwrap();
    body.output("state", inner_outs[0]);
    body.output("y", inner_outs[1]);

    let mut g = Graph::new("scan_example");
    let x = g.input("x", f32t(vec![d("B"), d("T"), c(4)]));
    let ids = g.input("input_ids", i64t(vec![d("B"), d("T")]));
    let w = g.param("layers.0.w", &[4, 4]);
    let zero = g.scalar(0.0).unwrap();
    let s0 = g.broadcast(zero, vec![d("B"), c(4)]).unwrap();
    let outs = g.scan(Scan { axis: 1, chunk: 16, carries: 1, seqs: 2, body, reverse: false }, &[s0, x, ids, w]).unwrap();
    g.output("state", outs[0]);
    g.output("y", outs[1]);
    g
}

#[test]
fn scan_round_trips() {
    let text = roundtrip(&scan_example());
    insta::assert_snapshot!("scan_example", text);
    roundtrip(&running_sum_scan(3));
    roundtrip(&recurrence_scan());
    roundtrip(&nested_scan());
}

#[test]
fn every_op_is_covered() {
    // The round-trip tests above between them use every op (a new op must join them).
    let graphs = [elementwise(), shape_ops(), matmul_graph(), scan_example(), running_sum_scan(2)];
    let mut names: Vec<&str> = Vec::new();
    for g in &graphs {
        collect_names(g, &mut names);
    }
    let mut all: Vec<&str> = Op::UNARY.iter().map(|&u| Op::Unary(u).name()).collect();
    all.extend(Op::BINARY.iter().map(|&b| Op::Binary(b).name()));
    all.extend(Op::REDUCE.iter().map(|&k| Op::Reduce { kind: k, axis: 0, keepdim: false }.name()));
    all.extend([
        "const",
        "iota",
        "cast",
        "matmul",
        "reshape",
        "transpose",
        "broadcast",
        "slice",
        "concat",
        "pad",
        "gather",
        "one_hot",
        "tri_mask",
        "stop_gradient",
        "scan",
    ]);
    for n in all {
        assert!(names.contains(&n), "no test graph uses {n}");
    }
}

fn collect_names<'a>(g: &'a Graph, out: &mut Vec<&'a str>) {
    for n in &g.nodes {
        out.push(n.op.name());
        if let Op::Scan(s) = &n.op {
            collect_names(&s.body, out);
        }
    }
}

#[test]
fn odd_names_round_trip() {
    let mut g = Graph::new("my graph \"v2\"");
    let x = g.input("model.layers.0.weight", f32t(vec![Dim::sym("my dim"), Dim::sym("b.c").plus(-2).unwrap()]));
    let y = g.input("quote\" back\\slash\nnewline\ttab\u{1}ctl é", f32t(vec![c(1)]));
    let p = g.arg("", ArgKind::Param, f32t(vec![]));
    let s = g.add(x, y).unwrap();
    let s = g.add(s, p).unwrap();
    g.output("logits.main", s);
    g.output("", x);
    g.output("return", y);
    let text = roundtrip(&g);
    assert!(text.starts_with("graph \"my graph \\\"v2\\\"\"("), "{text}");
    assert!(text.contains("f32[\"my dim\",\"b.c\"-2]"), "{text}");
    assert!(text.contains("\"quote\\\" back\\\\slash\\nnewline\\ttab\\u{1}ctl é\""), "{text}");
}

#[test]
fn long_argument_lists_go_one_per_line() {
    let mut g = Graph::new("many");
    let mut acc = g.param("model.embed_tokens.weight", &[4]);
    let ps: Vec<ValueId> = (0..6).map(|k| g.param(&format!("model.layers.{k}.mlp.down_proj.weight"), &[4])).collect();
    for p in ps {
        acc = g.add(acc, p).unwrap();
    }
    g.output("out", acc);
    let text = roundtrip(&g);
    assert!(text.starts_with("graph many(\n  %0: f32[4] param \"model.embed_tokens.weight\",\n"), "{text}");
}

#[test]
fn values_are_renumbered_in_definition_order() {
    // Hand-built with ids out of definition order: the text is canonical and stable anyway.
    let t = f32t(vec![c(2)]);
    let g = Graph {
        name: "shuffled".into(),
        types: vec![t.clone(), t.clone(), t.clone(), t.clone()],
        args: vec![tttc_ir::Arg { name: "x".into(), kind: ArgKind::Input, value: ValueId(3) }],
        nodes: vec![
            Node { op: Op::Unary(UnaryOp::Exp), inputs: vec![ValueId(3)], outputs: vec![ValueId(1)] },
            Node { op: Op::Binary(BinaryOp::Add), inputs: vec![ValueId(1), ValueId(3)], outputs: vec![ValueId(0)] },
        ],
        outputs: vec![("y".into(), ValueId(0))],
    };
    tttc_ir::verify(&g).unwrap();
    let text = print(&g);
    assert!(text.contains("%1 = exp(%0)") && text.contains("%2 = add(%1, %0)") && text.contains("return y=%2"), "{text}");
    let back = parse(&text).unwrap();
    assert_eq!(print(&back), text);
    assert_eq!(back.types.len(), 3, "the unused type is dropped");
}

#[test]
fn hand_written_text_parses() {
    let text = r#"
        // Comments and any value names are fine; ids follow definition order.
        graph hand(%x: f32[B,T] input "x", %w: f32[T,3] param "w",) {
          %y = matmul(%x, %w) : f32[B,3]
          %m = reduce_max(%y) {keepdim=false, axis=1} : f32[B]   // attributes in any order
          %k = const() {value=-inf, dtype=f32} : f32[]
          %r = max(%m, %k) : f32[B]
          return "out"=%r, y=%y
        }
    "#;
    let g = parse(text).unwrap();
    assert_eq!(g.nodes.len(), 4);
    assert_eq!(g.outputs[0].0, "out");
    assert_eq!(g.outputs[0].1, ValueId(5));
    assert_eq!(g.ty(ValueId(5)), &f32t(vec![d("B")]));
    roundtrip(&g);
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(g) => panic!("parsed, expected an error:\n{text}\n{g:?}"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(!msg.contains('\n'), "error spans lines: {msg}");
            msg
        }
    }
}

#[test]
fn errors_name_the_line_and_what_was_expected() {
    let head = "graph g(%0: f32[2] input \"x\") {\n";
    let cases: &[(&str, &str)] = &[
        ("  %1 = exp(%0 {\n  return y=%1\n}\n", "line 2: expected ',' or ')' after an operand, found '{'"),
        ("  %1 = exp(%0) : f32[3]\n  return y=%1\n}\n", "line 2: %1 is typed f32[3], but exp gives f32[2]"),
        ("  %1 = exp(%7) : f32[2]\n  return y=%1\n}\n", "line 2: %7 is not defined"),
        ("  %0 = exp(%0) : f32[2]\n  return y=%0\n}\n", "line 2: %0 is defined twice"),
        ("  %1 = frobnicate(%0) : f32[2]\n  return y=%1\n}\n", "line 2: unknown op 'frobnicate'"),
        ("  %1 = slice(%0) {axis=0, start=0} : f32[2]\n  return y=%1\n}\n", "line 2: slice needs attribute 'end'"),
        ("  %1 = slice(%0) {axis=0,\n start=0, end=none, step=2} : f32[2]\n  return y=%1\n}\n", "line 3: slice has no attribute 'step'"),
        ("  %1 = pad(%0) {axis=0, before=-1, after=0} : f32[2]\n  return y=%1\n}\n", "before' of pad must be a non-negative integer"),
        ("  %1 = exp(%0)\n  return y=%1\n}\n", "line 2: exp has 1 results but 0 result types"),
        ("  %1 = exp(%0) : f32[2]\n  return y=%1\n", "line 3: expected '}' to close the graph body, found end of input"),
        ("  %1 = exp(%0) : f32[2]\n}\n", "line 3: expected a node ('%v = op(...)') or 'return', found '}'"),
        ("  %1 = exp(%0) : f32[2]\n  return y=%1\n}\n}\n", "line 5: expected end of input after the graph, found '}'"),
        ("  %1 = exp(%0) : f32[2]\n  return y=%1\n}\n\"open\n", "line 5: unterminated string"),
        ("  %1 = matmul(%0, %0) : f32[2]\n  return y=%1\n}\n", "line 2: matmul: needs rank ≥ 2 operands"),
        ("  %1 = exp(%0) : f32[2]\n  return y=%1 z=%1\n}\n", "line 3: expected '}' to close the graph body, found 'z'"),
        ("  %1 = cast(%0) {to=f16} : f32[2]\n  return y=%1\n}\n", "line 2: attribute 'to' of cast must be f32 or i64, found 'f16'"),
        ("  %1 = exp(%0) : f32[2]\n  return y=%1\n} @\n", "line 4: unexpected character '@'"),
    ];
    for (body, want) in cases {
        let msg = err(&format!("{head}{body}"));
        assert!(msg.contains(want), "expected {want:?} in {msg:?}");
    }
    assert!(err("").contains("line 1: expected 'graph' at the start, found end of input"));
    assert!(err("graph g(%0: f32[2] input \"x\", %1: f32[2] input \"x\") {\n return\n}").contains("argument name x is used twice"));
}

#[test]
fn verifier_errors_surface_from_parse() {
    // A scan whose body returns fewer values than it carries.
    let text = "graph g(%0: f32[2] input \"c\", %1: f32[2,T] input \"x\") {
  %2 = scan(%0, %1) {axis=1, chunk=1, carries=1, seqs=1} : f32[2] body b(%0: f32[2] input \"c\", %1: f32[2,1] input \"x\") {
    return
  }
  return c=%2
}
";
    let msg = err(text);
    assert!(msg.contains("line 2: scan: body returns fewer values than carries"), "{msg}");
    // A chunk symbol that also names an outer dimension.
    let text = "graph g(%0: f32[2,T] input \"x\") {
  %1 = scan(%0) {axis=1, chunk=4, carries=0, seqs=1} : f32[2,T] body b(%0: f32[2,T] input \"x\") {
    return y=%0
  }
  return y=%1
}
";
    let msg = err(text);
    assert!(msg.contains("chunk symbol T also names a dimension of operand 0"), "{msg}");
}

/// Every prefix of a valid text fails (until the closing brace), and thousands of mutated texts
/// give errors or graphs, never a panic.
#[test]
fn garbled_text_never_panics() {
    let mut g = scan_example();
    // Widen coverage of the printed forms.
    let extra = running_sum_scan(3);
    let text = print(&g);
    let full = [text.clone(), print(&extra), print(&elementwise()), print(&nested_scan())];
    let close = text.rfind('}').unwrap();
    for (i, _) in text.char_indices() {
        if i <= close {
            assert!(parse(&text[..i]).is_err(), "prefix of {i} chars parsed");
        }
    }
    let pieces = [
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "=",
        "+",
        "-",
        "%",
        "\"",
        "\\",
        "0",
        "1",
        "-1",
        "x",
        " ",
        "\n",
        "99999999999999999999",
        "-9223372036854775808",
        "9223372036854775807",
        "18446744073709551615",
        "1e400",
        "inf",
        "-inf",
        "NaN",
        "body",
        "graph",
        "return",
        "scan",
        "f32",
        "i64",
        "none",
        "//",
        "%0",
        "%99",
        "T",
        "T-1",
        "é",
    ];
    let mut seed: u64 = std::env::var("TTTC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let mut rand = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    // TTTC_FUZZ_ROUNDS raises the count for a longer local run.
    let rounds: usize = std::env::var("TTTC_FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6000);
    let mut parsed = 0;
    for round in 0..rounds {
        let base = &full[round % full.len()];
        let chars: Vec<char> = base.chars().collect();
        let mut s: Vec<char> = chars.clone();
        for _ in 0..1 + rand(3) {
            let at = rand(s.len() + 1);
            match rand(5) {
                // Retouch a number: the text stays well formed, the graph often stays valid.
                4 => {
                    let digits: Vec<usize> = (0..s.len()).filter(|&k| s[k].is_ascii_digit()).collect();
                    if !digits.is_empty() {
                        let k = digits[rand(digits.len())];
                        s[k] = char::from(b'0' + rand(5) as u8);
                    }
                }
                0 if at < s.len() => {
                    s.remove(at);
                }
                1 if at < s.len() => {
                    let len = 1 + rand(8).min(s.len() - at - 1);
                    s.drain(at..at + len.min(s.len() - at));
                }
                _ => {
                    let p: Vec<char> = pieces[rand(pieces.len())].chars().collect();
                    if at < s.len() && rand(2) == 0 {
                        s.remove(at);
                    }
                    for (k, ch) in p.into_iter().enumerate() {
                        s.insert((at + k).min(s.len()), ch);
                    }
                }
            }
        }
        let s: String = s.into_iter().collect();
        match parse(&s) {
            Ok(back) => {
                parsed += 1;
                // Whatever parses is a verified graph that prints stably.
                let again = print(&back);
                assert_eq!(print(&parse(&again).unwrap()), again);
                run_small(&back, &again);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.starts_with("line ") || msg.contains("does not verify"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
        }
    }
    eprintln!("{parsed} of {rounds} mutated texts parsed");
    assert!(parsed < rounds);
    // Big numbers in attributes and dimensions are errors, not overflows.
    for bad in [
        "graph g(%0: f32[T] input \"x\") {\n  %1 = slice(%0) {axis=0, start=-9223372036854775808, end=none} : f32[1]\n  return y=%1\n}",
        "graph g(%0: f32[T] input \"x\") {\n  %1 = slice(%0) {axis=0, start=1, end=-9223372036854775808} : f32[1]\n  return y=%1\n}",
        "graph g(%0: f32[T-9223372036854775808] input \"x\") {\n  %1 = pad(%0) {axis=0, before=1, after=0} : f32[1]\n  return y=%1\n}",
        "graph g(%0: f32[T] input \"x\") {\n  %1 = pad(%0) {axis=0, before=18446744073709551615, after=1} : f32[1]\n  return y=%1\n}",
        "graph g(%0: f32[4294967296,4294967296,4294967296] input \"x\") {\n  %1 = reshape(%0) {shape=[4294967296,4294967296,4294967296]} : f32[1]\n  return y=%1\n}",
        "graph g(%0: f32[9223372036854775807] input \"x\", %1: f32[9223372036854775807] input \"y\") {\n  %2 = concat(%0, %1) {axis=0} : f32[1]\n  return y=%2\n}",
        "graph g(%0: f32[T+9223372036854775807] input \"x\", %1: f32[1] input \"y\") {\n  %2 = concat(%0, %1) {axis=0} : f32[1]\n  return y=%2\n}",
        "graph g(%0: f32[-5] input \"x\") {\n  %1 = slice(%0) {axis=0, start=-1, end=none} : f32[1]\n  return y=%1\n}",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    g.name = "unchanged".into();
    roundtrip(&g);
}

/// Runs a verified graph on small arguments (every symbol 3): the interpreter may refuse, but must
/// not panic, and checks its results against the recorded types as it goes.
fn run_small(g: &Graph, text: &str) {
    let big = text.split(|c: char| !c.is_ascii_digit()).any(|n| n.len() > 2);
    if big {
        return;
    }
    let mut env = tttc_ir::DimEnv::new();
    let mut args = Vec::new();
    for a in &g.args {
        let t = g.ty(a.value);
        for dim in &t.shape {
            if let Some(s) = &dim.sym {
                env.insert(s.clone(), 3);
            }
        }
        let Ok(shape) = t.resolve(&env) else { return };
        let n: usize = shape.iter().product();
        args.push(match t.dtype {
            DType::F32 => tttc_ir::Tensor::f32(shape, (0..n).map(|i| i as f32 * 0.25 - 1.0).collect()),
            DType::I64 => tttc_ir::Tensor::i64(shape, vec![0; n]),
        });
    }
    let refs: Vec<&tttc_ir::Tensor> = args.iter().collect();
    if let Err(e) = tttc_ir::run(g, &refs, tttc_ir::Precision::F32) {
        // The interpreter may refuse a graph (an index out of range, a bound too short), but never
        // disagree with type inference.
        let msg = format!("{e:#}");
        assert!(!msg.contains("computed"), "{msg}\n{text}");
    }
}

#[test]
fn deep_nesting_is_an_error() {
    let mut text = String::from("graph g(%0: f32[2,T] input \"x\") {\n");
    for _ in 0..200 {
        text.push_str("%1 = scan(%0) {axis=1, chunk=1, carries=0, seqs=1} : f32[2,T] body b(%0: f32[2,1] input \"x\") {\n");
    }
    let msg = err(&text);
    assert!(msg.contains("nest more than"), "{msg}");
}

#[test]
fn types_print_like_type_display() {
    let t = Type::new(DType::F32, vec![d("B"), Dim::sym("T").plus(-1).unwrap(), c(64)]);
    assert_eq!(t.to_string(), "f32[B,T-1,64]");
    let mut g = Graph::new("t");
    let x = g.input("x", t.clone());
    g.output("x", x);
    assert_eq!(print(&g), "graph t(%0: f32[B,T-1,64] input \"x\") {\n  return x=%0\n}\n");
}

#[test]
fn chunk_count_dims() {
    let t = Dim::sym("T");
    assert_eq!(t.chunks(3).unwrap(), Dim { sym: Some("T".into()), offset: 0, per: 3 });
    assert_eq!(t.chunks(1).unwrap(), t);
    assert_eq!(c(7).chunks(3).unwrap(), c(3));
    assert_eq!(c(6).chunks(3).unwrap(), c(2));
    assert_eq!(t.chunks(16).unwrap().to_string(), "T/16");
    assert_eq!(t.plus(-1).unwrap().chunks(16).unwrap().to_string(), "(T-1)/16");
    assert_eq!(t.plus(2).unwrap().chunks(16).unwrap().to_string(), "(T+2)/16");
    let t3 = t.chunks(3).unwrap();
    assert!(t3.chunks(2).unwrap_err().to_string().contains("already counts chunks"));
    assert!(t3.plus(1).is_err() && t3.add(&c(2)).is_err());
    assert_eq!(t3.plus(0).unwrap(), t3);
    let env: tttc_ir::DimEnv = [("T".to_string(), 7)].into();
    assert_eq!(t3.resolve(&env).unwrap(), 3);
    assert_eq!(t.plus(-1).unwrap().chunks(3).unwrap().resolve(&env).unwrap(), 2);
}

#[test]
fn chunk_count_types_round_trip() {
    let g = chunk_carries_scans();
    let text = roundtrip(&g);
    assert!(text.contains("f32[B,T/3]"), "{text}");
    assert!(text.contains("reverse=true"), "{text}");
    // A forward scan prints no reverse attribute.
    assert_eq!(text.matches("reverse").count(), 1, "{text}");
    roundtrip(&suffix_scan());

    let text = r#"graph g(%0: f32[B,T] input "x", %1: f32[(T-1)/16,"a b"/4] input "y") {
  %2 = iota() {len=T/16, dtype=i64} : i64[T/16]
  %3 = iota() {len=(T-1)/16, dtype=i64} : i64[(T-1)/16]
  %4 = reshape(%1) {shape=[(T-1)/16,"a b"/4]} : f32[(T-1)/16,"a b"/4]
  return a=%2, b=%3, c=%4
}
"#;
    let g = parse(text).unwrap();
    assert_eq!(g.ty(ValueId(1)).shape[0], Dim::sym("T").plus(-1).unwrap().chunks(16).unwrap());
    assert_eq!(g.ty(ValueId(1)).shape[1], Dim::sym("a b").chunks(4).unwrap());
    assert_eq!(print(&g), text);

    // An offset must be parenthesised; a chunk length is a positive integer.
    let msg = err("graph g(%0: f32[T-1/16] input \"x\") {\n  return x=%0\n}\n");
    assert!(msg.contains("line 1") && msg.contains("(T-1)/N"), "{msg}");
    let msg = err("graph g(%0: f32[T/0] input \"x\") {\n  return x=%0\n}\n");
    assert!(msg.contains("chunk length 0 is not a positive integer"), "{msg}");
    let msg = err("graph g(%0: f32[(T-1)] input \"x\") {\n  return x=%0\n}\n");
    assert!(msg.contains("expected '/' after a parenthesised dimension"), "{msg}");
}

#[test]
fn chunk_counts_check_but_do_not_bind() {
    let t3 = f32t(vec![d("B"), d("T").chunks(3).unwrap()]);
    // Unbound T: an error naming the chunk count.
    let mut env = tttc_ir::DimEnv::new();
    let msg = t3.bind(&[2, 3], &mut env).unwrap_err().to_string();
    assert!(msg.contains("T/3") && msg.contains("not bound"), "{msg}");
    // Bound T: the length is checked.
    env.insert("T".into(), 7);
    t3.bind(&[2, 3], &mut env).unwrap();
    assert_eq!(env["B"], 2);
    let msg = t3.bind(&[2, 4], &mut env).unwrap_err().to_string();
    assert!(msg.contains("T/3 = 3"), "{msg}");
    // Within one type, the ordinary dimension binds first.
    let both = f32t(vec![d("T").chunks(3).unwrap(), d("T")]);
    let mut env = tttc_ir::DimEnv::new();
    both.bind(&[3, 7], &mut env).unwrap();
    assert_eq!(env["T"], 7);
    // A graph whose only argument is a chunk count cannot run.
    let mut g = Graph::new("unbound");
    let x = g.input("x", t3.clone());
    g.output("x", x);
    let arg = tttc_ir::Tensor::f32(vec![2, 3], vec![0.0; 6]);
    let msg = format!("{:#}", tttc_ir::run(&g, &[&arg], tttc_ir::Precision::F32).unwrap_err());
    assert!(msg.contains("argument x") && msg.contains("T/3") && msg.contains("not bound"), "{msg}");
}

#[test]
fn module_doc_example_parses() {
    let text = r#"graph tiny(%0: i64[B,T] input "input_ids", %1: f32[97,64] param "embed.weight") {
  %2 = gather(%1, %0) {axis=0} : f32[B,T,64]
  %3 = const() {value=1e-6, dtype=f32} : f32[]
  %4 = add(%2, %3) : f32[B,T,64]
  %5, %6 = scan(%3, %4) {axis=1, chunk=16, carries=1, seqs=1} : f32[], f32[B,T,64] body step(%0: f32[] input "c", %1: f32[B,n,64] input "x") {
    %2 = add(%1, %0) : f32[B,n,64]
    return c=%0, y=%2
  }
  return logits=%6
}
"#;
    let g = parse(text).unwrap();
    assert_eq!(g.nodes.len(), 4);
    roundtrip(&g);
    // Long headers are split on printing, so compare through a second parse.
    assert_eq!(parse(&print(&g)).unwrap(), g);
}
