//! The verifier rejects malformed graphs with a message that names the problem.

mod common;

use common::*;
use tttc_ir::{verify, Arg, ArgKind, BinaryOp, Graph, Node, Op, Scan, UnaryOp, ValueId};

fn verify_err(g: &Graph) -> String {
    match verify(g) {
        Ok(()) => panic!("graph verified, expected an error:\n{g}"),
        Err(e) => format!("{e:#}"),
    }
}

fn small() -> Graph {
    let mut g = Graph::new("small");
    let x = g.input("x", f32t(vec![d("B"), c(3)]));
    let y = g.unary(UnaryOp::Exp, x).unwrap();
    let z = g.add(y, x).unwrap();
    g.output("z", z);
    g
}

#[test]
fn built_graphs_verify() {
    verify(&small()).unwrap();
    verify(&running_sum_scan(3)).unwrap();
    verify(&recurrence_scan()).unwrap();
    verify(&nested_scan()).unwrap();
}

#[test]
fn wrong_recorded_type() {
    let mut g = small();
    g.types[2] = f32t(vec![d("B"), c(4)]);
    let msg = verify_err(&g);
    assert!(msg.contains("graph small does not verify"), "{msg}");
    assert!(msg.contains("%2 is typed f32[B,4], op gives f32[B,3]"), "{msg}");

    let mut g = small();
    g.types[1] = i64t(vec![d("B"), c(3)]);
    let msg = verify_err(&g);
    assert!(msg.contains("exp defining %1"), "{msg}");
}

#[test]
fn value_used_before_definition() {
    let mut g = small();
    g.nodes.swap(0, 1);
    let msg = verify_err(&g);
    assert!(msg.contains("add uses %1 before it is defined"), "{msg}");
}

#[test]
fn value_never_defined_or_missing() {
    let mut g = small();
    g.outputs.push(("ghost".into(), ValueId(40)));
    let msg = verify_err(&g);
    assert!(msg.contains("output ghost (%40) is never defined"), "{msg}");

    let mut g = small();
    g.nodes[1].inputs[0] = ValueId(17);
    let msg = verify_err(&g);
    assert!(msg.contains("operand %17 does not exist"), "{msg}");
}

#[test]
fn value_assigned_twice() {
    let mut g = small();
    g.nodes[1].outputs[0] = ValueId(1);
    g.outputs[0].1 = ValueId(1);
    let msg = verify_err(&g);
    assert!(msg.contains("%1 is assigned twice"), "{msg}");

    // An argument redefined by a node.
    let mut g = small();
    g.nodes[0].outputs[0] = ValueId(0);
    let msg = verify_err(&g);
    assert!(msg.contains("%0 is assigned twice"), "{msg}");

    // Two arguments with one name.
    let mut g = small();
    g.types.push(f32t(vec![c(1)]));
    g.args.push(Arg { name: "x".into(), kind: ArgKind::Param, value: ValueId(3) });
    let msg = verify_err(&g);
    assert!(msg.contains("argument name x is used twice"), "{msg}");
}

#[test]
fn wrong_operand_count() {
    let mut g = small();
    g.nodes[1].inputs.push(ValueId(0));
    let msg = verify_err(&g);
    assert!(msg.contains("expects 2 operands, got 3"), "{msg}");
    let mut g = small();
    g.nodes[0].outputs.push(ValueId(2));
    g.nodes[1].outputs[0] = ValueId(3);
    g.types.push(g.types[2].clone());
    g.outputs[0].1 = ValueId(3);
    let msg = verify_err(&g);
    assert!(msg.contains("returns 2 values, op gives 1"), "{msg}");
}

fn replace_scan(g: &mut Graph, f: impl FnOnce(&mut Scan)) {
    let node = g.nodes.iter_mut().find(|n| matches!(n.op, Op::Scan(_))).unwrap();
    let Op::Scan(scan) = &mut node.op else { unreachable!() };
    f(scan);
}

#[test]
fn bad_scan_body_arity() {
    // The body takes one argument fewer than the scan passes.
    let mut g = running_sum_scan(3);
    replace_scan(&mut g, |s| {
        let w = s.body.args.pop().unwrap();
        // Keep the body well formed on its own: its uses of w now read a new constant.
        let k = ValueId(s.body.types.len() as u32);
        s.body.types.push(s.body.ty(w.value).clone());
        s.body.nodes.insert(0, Node { op: Op::Const { value: 1.0, dtype: tttc_ir::DType::F32 }, inputs: vec![], outputs: vec![k] });
        for n in &mut s.body.nodes {
            for v in &mut n.inputs {
                if *v == w.value {
                    *v = k;
                }
            }
        }
        // The old value of w is now defined by nothing; give its id to nobody.
    });
    let msg = verify_err(&g);
    assert!(msg.contains("body takes 3 arguments, scan has 4 operands"), "{msg}");

    // The body returns fewer values than the scan carries.
    let mut g = running_sum_scan(3);
    replace_scan(&mut g, |s| s.carries = 3);
    let msg = verify_err(&g);
    assert!(msg.contains("scan defining %") && msg.contains("expects at least 3 + 2 operands"), "{msg}");

    let mut g = recurrence_scan();
    replace_scan(&mut g, |s| s.body.outputs.clear());
    let msg = verify_err(&g);
    assert!(msg.contains("body returns fewer values than carries"), "{msg}");

    // The scan records a different number of results than the body gives.
    let mut g = recurrence_scan();
    replace_scan(&mut g, |s| {
        let v = s.body.outputs[1].1;
        s.body.outputs.push(("extra".into(), v));
    });
    let msg = verify_err(&g);
    assert!(msg.contains("returns 2 values, op gives 3"), "{msg}");
}

#[test]
fn bad_scan_bodies() {
    // A carry that changes type in the body.
    let mut g = recurrence_scan();
    replace_scan(&mut g, |s| {
        let x = s.body.args[1].value;
        s.body.outputs[0].1 = x;
    });
    verify(&g).unwrap(); // [B,1] carried as [B,1] with chunk 1: legal
    let mut g = running_sum_scan(3);
    replace_scan(&mut g, |s| {
        let x = s.body.args[1].value; // f32[B,n]
        s.body.outputs[0].1 = x;
    });
    let msg = verify_err(&g);
    assert!(msg.contains("body returns carry 0 as f32[B,n], carried in as f32[B,1]"), "{msg}");

    // A per-chunk output that is not chunked along the axis (a [B,1] one would be an iteration
    // output; a scalar has no axis 1).
    let mut g = running_sum_scan(3);
    replace_scan(&mut g, |s| {
        let w = s.body.args[3].value; // f32[]
        s.body.outputs[1].1 = w;
    });
    let msg = verify_err(&g);
    assert!(msg.contains("is not chunked along axis 1"), "{msg}");

    // A body that does not verify on its own.
    let mut g = running_sum_scan(3);
    replace_scan(&mut g, |s| s.body.nodes.swap(0, 1));
    let msg = verify_err(&g);
    assert!(msg.contains("body") && msg.contains("before it is defined"), "{msg}");

    // A unit chunk dimension with chunk 2 makes every sequence an iteration sequence: no chunked one.
    let mut g = recurrence_scan();
    replace_scan(&mut g, |s| s.chunk = 2);
    let msg = verify_err(&g);
    assert!(msg.contains("needs a chunked sequence"), "{msg}");
}

#[test]
fn iteration_sequences_need_one_element_per_chunk() {
    let g = chunk_carries_scans();
    verify(&g).unwrap();
    // The reverse scan reads `x f32[B,T]` where the start carries `f32[B,T/3]` belong.
    let mut bad = g.clone();
    let x = bad.args[0].value;
    let node = bad.nodes.iter_mut().filter(|n| matches!(n.op, Op::Scan(_))).nth(1).unwrap();
    node.inputs[1] = x;
    let msg = verify_err(&bad);
    assert!(msg.contains("body argument 1") && msg.contains("one element per chunk (T/3)"), "{msg}");

    // An iteration sequence alone: no chunked sequence defines the length.
    let mut bad = g.clone();
    let node = bad.nodes.iter_mut().filter(|n| matches!(n.op, Op::Scan(_))).nth(1).unwrap();
    let Op::Scan(s) = &mut node.op else { unreachable!() };
    s.seqs = 1; // x becomes an invariant; only the start carries are a sequence
    let msg = verify_err(&bad);
    assert!(msg.contains("needs a chunked sequence"), "{msg}");
}

#[test]
fn negative_dimensions_are_rejected() {
    let mut g = Graph::new("neg");
    let x = g.input("x", f32t(vec![tttc_ir::Dim { sym: None, offset: -2, per: 1 }]));
    g.output("x", x);
    let msg = verify_err(&g);
    assert!(msg.contains("%0 has a negative dimension"), "{msg}");
}

#[test]
fn builder_rejects_bad_ops_with_the_op_named() {
    let mut g = Graph::new("b");
    let x = g.input("x", f32t(vec![c(2), c(3)]));
    let y = g.input("y", f32t(vec![c(4)]));
    let e = g.binary(BinaryOp::Mul, x, y).unwrap_err();
    assert!(format!("{e:#}").contains("mul on (f32[2,3], f32[4]): cannot broadcast dimensions 3 and 4"), "{e:#}");
    let e = g.reshape(x, vec![c(5)]).unwrap_err();
    assert!(format!("{e:#}").contains("cannot reshape f32[2,3] to f32[5]"), "{e:#}");
    let e = g.transpose(x, &[0, 0]).unwrap_err();
    assert!(format!("{e:#}").contains("is not a permutation"), "{e:#}");
    let e = g.slice(x, 1, 2, Some(1)).unwrap_err();
    assert!(format!("{e:#}").contains("out of range"), "{e:#}");
    let t = g.input("t", f32t(vec![d("T")]));
    let e = g.slice(t, 0, 3, Some(1)).unwrap_err();
    assert!(format!("{e:#}").contains("wrong way round"), "{e:#}");
    let e = g.slice(t, 0, -1, Some(-3)).unwrap_err();
    assert!(format!("{e:#}").contains("wrong way round"), "{e:#}");
    let i = g.input("i", i64t(vec![c(2), c(2)]));
    let e = g.tri_mask(i, 0.0).unwrap_err();
    assert!(format!("{e:#}").contains("tri_mask on (i64[2,2]): needs f32"), "{e:#}");
    let x = g.input("x", f32t(vec![c(2), c(2)]));
    let e = g.tri_mask_window(x, 0.0, Some(0)).unwrap_err();
    assert!(format!("{e:#}").contains("a window of 0 masks every entry"), "{e:#}");
    let e = g.tri_mask_window(x, 0.0, Some(1 << 40)).unwrap_err();
    assert!(format!("{e:#}").contains("a window above 2^32"), "{e:#}");
}
