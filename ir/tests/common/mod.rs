//! Graphs shared by the test files.
#![allow(dead_code)]

use tttc_ir::{DType, Dim, Graph, Scan, Type, ValueId};

pub fn d(s: &str) -> Dim {
    Dim::sym(s)
}

pub fn c(n: usize) -> Dim {
    Dim::c(n)
}

pub fn f32t(shape: Vec<Dim>) -> Type {
    Type::new(DType::F32, shape)
}

pub fn i64t(shape: Vec<Dim>) -> Type {
    Type::new(DType::I64, shape)
}

/// A running sum over axis 1 of `x f32[B,T]`, `chunk` at a time, scaled by an invariant `w f32[]`:
/// returns the final carry `f32[B,1]` (the total) and the prefix sums `f32[B,T]` times `w`.
/// A second sequence `z f32[B,T]` is passed through doubled.
pub fn running_sum_scan(chunk: usize) -> Graph {
    let mut body = Graph::new("step");
    let carry = body.input("sum", f32t(vec![d("B"), c(1)]));
    let x = body.input("x", f32t(vec![d("B"), d("n")]));
    let z = body.input("z", f32t(vec![d("B"), d("n")]));
    let w = body.input("w", f32t(vec![]));
    // cumsum within the chunk: x @ Lᵀ with L lower-triangular ones.
    let one = body.scalar(1.0).unwrap();
    let ones = body.broadcast(one, vec![d("n"), d("n")]).unwrap();
    let lower = body.tri_mask(ones, 0.0).unwrap();
    let upper = body.transpose_last2(lower).unwrap();
    let cum = body.matmul(x, upper).unwrap();
    let y = body.add(cum, carry).unwrap();
    let y = body.mul(y, w).unwrap();
    let total = body.reduce(tttc_ir::ReduceKind::Sum, x, 1, true).unwrap();
    let new_carry = body.add(carry, total).unwrap();
    let two = body.scalar(2.0).unwrap();
    let z2 = body.mul(z, two).unwrap();
    body.output("sum", new_carry);
    body.output("y", y);
    body.output("z2", z2);

    let mut g = Graph::new("running_sum");
    let x = g.input("x", f32t(vec![d("B"), d("T")]));
    let z = g.input("z", f32t(vec![d("B"), d("T")]));
    let w = g.input("w", f32t(vec![]));
    let zero = g.scalar(0.0).unwrap();
    let init = g.broadcast(zero, vec![d("B"), c(1)]).unwrap();
    let outs = g.scan(Scan { axis: 1, chunk, carries: 1, seqs: 2, body, reverse: false }, &[init, x, z, w]).unwrap();
    g.output("total", outs[0]);
    g.output("prefix", outs[1]);
    g.output("z2", outs[2]);
    g
}

/// A linear recurrence with chunk 1, whose body sees each step as `f32[B,1]`:
/// `h_t = a·h_{t-1} + x_t`, returning the final `h` and every `h_t`.
pub fn recurrence_scan() -> Graph {
    let mut body = Graph::new("step");
    let h = body.input("h", f32t(vec![d("B"), c(1)]));
    let x = body.input("x", f32t(vec![d("B"), c(1)]));
    let a = body.input("a", f32t(vec![]));
    let ha = body.mul(h, a).unwrap();
    let h2 = body.add(ha, x).unwrap();
    body.output("h", h2);
    body.output("hs", h2);

    let mut g = Graph::new("recurrence");
    let h0 = g.input("h0", f32t(vec![d("B"), c(1)]));
    let x = g.input("x", f32t(vec![d("B"), d("T")]));
    let a = g.input("a", f32t(vec![]));
    let outs = g.scan(Scan { axis: 1, chunk: 1, carries: 1, seqs: 1, body, reverse: false }, &[h0, x, a]).unwrap();
    g.output("h", outs[0]);
    g.output("hs", outs[1]);
    g
}

/// A scan whose body holds another scan: the outer scan walks `x f32[B,T]` in chunks of 3; each
/// step sums its chunk into the carry, and an inner scan (chunk 2, chunk symbol `n` again, which the
/// outer body binds too) walks the invariant `v f32[B,5]`, summing it into an inner carry.
/// Outputs: outer carry = Σx + (number of chunks)·Σv, and the per-chunk inner totals.
pub fn nested_scan() -> Graph {
    let mut inner = Graph::new("inner");
    let acc = inner.input("acc", f32t(vec![d("B"), c(1)]));
    let piece = inner.input("piece", f32t(vec![d("B"), d("n")]));
    let s = inner.reduce(tttc_ir::ReduceKind::Sum, piece, 1, true).unwrap();
    let acc2 = inner.add(acc, s).unwrap();
    inner.output("acc", acc2);

    let mut outer = Graph::new("outer");
    let carry = outer.input("carry", f32t(vec![d("B"), c(1)]));
    let x = outer.input("x", f32t(vec![d("B"), d("n")]));
    let v = outer.input("v", f32t(vec![d("B"), c(5)]));
    let sx = outer.reduce(tttc_ir::ReduceKind::Sum, x, 1, true).unwrap();
    let zero = outer.scalar(0.0).unwrap();
    let acc0 = outer.broadcast(zero, vec![d("B"), c(1)]).unwrap();
    let inner_out = outer.scan(Scan { axis: 1, chunk: 2, carries: 1, seqs: 1, body: inner, reverse: false }, &[acc0, v]).unwrap();
    let sv = inner_out[0];
    let c1 = outer.add(carry, sx).unwrap();
    let c2 = outer.add(c1, sv).unwrap();
    // One value per chunk along the scan axis: broadcast sv to [B,n] and keep the first column.
    let wide = outer.broadcast(sv, vec![d("B"), d("n")]).unwrap();
    outer.output("carry", c2);
    outer.output("sv", wide);

    let mut g = Graph::new("nested");
    let x = g.input("x", f32t(vec![d("B"), d("T")]));
    let v = g.input("v", f32t(vec![d("B"), c(5)]));
    let zero = g.scalar(0.0).unwrap();
    let c0 = g.broadcast(zero, vec![d("B"), c(1)]).unwrap();
    let outs = g.scan(Scan { axis: 1, chunk: 3, carries: 1, seqs: 1, body: outer, reverse: false }, &[c0, x, v]).unwrap();
    g.output("carry", outs[0]);
    g.output("sv", outs[1]);
    g
}

/// The body of [`chunk_start_scan`]: sums each chunk into the carry and emits the carry it
/// started from, one entry per iteration (`f32[B,1]` with chunk > 1).
fn chunk_start_body() -> Graph {
    let mut body = Graph::new("fwd");
    let carry = body.input("sum", f32t(vec![d("B"), c(1)]));
    let x = body.input("x", f32t(vec![d("B"), d("n")]));
    let s = body.reduce(tttc_ir::ReduceKind::Sum, x, 1, true).unwrap();
    let next = body.add(carry, s).unwrap();
    body.output("sum", next);
    body.output("start", carry);
    body
}

/// One chunk `x f32[B,n]` of a reverse running sum carrying `acc f32[B,1]` (the sum of everything
/// after the chunk): the suffix sums within the chunk plus `acc` (`x @ L`, L lower-triangular
/// ones), and the carry for the chunk before (`acc + Σ x`).
pub fn suffix_step(body: &mut Graph, acc: ValueId, x: ValueId) -> (ValueId, ValueId) {
    let one = body.scalar(1.0).unwrap();
    let ones = body.broadcast(one, vec![d("n"), d("n")]).unwrap();
    let lower = body.tri_mask(ones, 0.0).unwrap();
    let within = body.matmul(x, lower).unwrap();
    let suffix = body.add(within, acc).unwrap();
    let s = body.reduce(tttc_ir::ReduceKind::Sum, x, 1, true).unwrap();
    (suffix, body.add(acc, s).unwrap())
}

/// The body of the reverse scan in [`chunk_carries_scans`]: carries `acc`, the sum of everything
/// after the chunk; reads the chunk's start carry (an iteration sequence) and the chunk itself.
/// Outputs the suffix sums of the chunk and, per iteration, `start + acc + Σchunk` (the total).
fn suffix_body() -> Graph {
    let mut body = Graph::new("bwd");
    let acc = body.input("acc", f32t(vec![d("B"), c(1)]));
    let start = body.input("start", f32t(vec![d("B"), c(1)]));
    let x = body.input("x", f32t(vec![d("B"), d("n")]));
    let (suffix, next) = suffix_step(&mut body, acc, x);
    let total = body.add(start, next).unwrap();
    body.output("acc", next);
    body.output("suffix", suffix);
    body.output("total", total);
    body
}

/// Forward then reverse over `x f32[B,T]`, chunk 3: the forward scan saves each chunk's start
/// carry (`f32[B,T/3]`); the reverse scan reads it back as an iteration sequence beside `x`.
/// Outputs: `total f32[B,1]`, `starts f32[B,T/3]`, `suffix f32[B,T]` (Σ_{i≥t} x_i), `again f32[B,1]`
/// (the reverse scan's total) and `check f32[B,T/3]` (the total, once per chunk).
pub fn chunk_carries_scans() -> Graph {
    let mut g = Graph::new("chunk_carries");
    let x = g.input("x", f32t(vec![d("B"), d("T")]));
    let zero = g.scalar(0.0).unwrap();
    let init = g.broadcast(zero, vec![d("B"), c(1)]).unwrap();
    let fwd = Scan { axis: 1, chunk: 3, carries: 1, seqs: 1, body: chunk_start_body(), reverse: false };
    let f = g.scan(fwd, &[init, x]).unwrap();
    let bwd = Scan { axis: 1, chunk: 3, carries: 1, seqs: 2, body: suffix_body(), reverse: true };
    let r = g.scan(bwd, &[init, f[1], x]).unwrap();
    g.output("total", f[0]);
    g.output("starts", f[1]);
    g.output("again", r[0]);
    g.output("suffix", r[1]);
    g.output("check", r[2]);
    g
}

/// The reverse scan of [`chunk_carries_scans`] on its own, its start carries an argument
/// `starts f32[B,T/3]` given before `x f32[B,T]` (so binding must take `T` from `x`).
pub fn suffix_scan() -> Graph {
    let mut g = Graph::new("suffix");
    let starts = g.input("starts", f32t(vec![d("B"), d("T").chunks(3).unwrap()]));
    let x = g.input("x", f32t(vec![d("B"), d("T")]));
    let zero = g.scalar(0.0).unwrap();
    let init = g.broadcast(zero, vec![d("B"), c(1)]).unwrap();
    let bwd = Scan { axis: 1, chunk: 3, carries: 1, seqs: 2, body: suffix_body(), reverse: true };
    let r = g.scan(bwd, &[init, starts, x]).unwrap();
    g.output("acc", r[0]);
    g.output("suffix", r[1]);
    g.output("check", r[2]);
    g
}
