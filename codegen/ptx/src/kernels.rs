//! One PTX kernel per scheduled instruction, every size baked in as an immediate (the model is
//! compiled at fixed sizes, so `ptxas` sees constant trip counts and divisors). Each kernel runs
//! one thread per output element over a 1-D grid; its parameters are pointers, in the order
//! its [`Launch`] lists them.

use tttc_ir::{DType, ReduceKind};
use tttc_lower::elementwise::{Expr, KernelSpec};
use tttc_lower::math;
use tttc_lower::schedule::{BufId, Function, Instr, Operand, Strided};

use crate::build::Builder;
use crate::isa::*;
use crate::math::PtxMath;

/// Threads per block of the elementwise-style kernels.
pub const BLOCK: u32 = 256;

/// What a kernel's pointer parameter points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRef {
    Buf(BufId),
    /// The model's status word: kernels that check indices write 1 there on a bad one.
    Status,
}

/// A kernel as generated, before deduplication, with the launch that runs it.
pub struct Generated {
    pub kernel: Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: Vec<ParamRef>,
}

/// The status a kernel writes when a token id or target is out of range.
pub const INDEX_OUT_OF_RANGE: u32 = 1;

/// The kernels that carry out `instr` of `f` (none for a scan: the host drives it).
pub fn for_instr(f: &Function, instr: &Instr, specs: &[KernelSpec]) -> Vec<Generated> {
    let elem = |b: BufId| elem_bytes(f.bufs[b].dtype);
    match instr {
        Instr::Kernel { kernel, outer, rows, n, ins, outs } => {
            let mut shape = outer.clone();
            shape.extend([*rows, *n]);
            let inputs: Vec<Reading> = ins
                .iter()
                .zip(&specs[*kernel].splat)
                .map(|(i, &splat)| {
                    let mut strides = i.strides.clone();
                    strides.extend([i.row_stride, usize::from(!splat)]);
                    Reading { strides }
                })
                .collect();
            let params = ins.iter().map(|i| ParamRef::Buf(i.buf)).chain(outs.iter().map(|&o| ParamRef::Buf(o))).collect();
            vec![elementwise(&specs[*kernel], &shape, &inputs, params)]
        }
        Instr::Copy { dst, src, copy } => vec![copy_kernel(copy, elem(*dst), vec![ParamRef::Buf(*dst), ParamRef::Buf(*src)])],
        Instr::Fill { dst, bits } => {
            let (bytes, len) = (elem(*dst), f.bufs[*dst].len());
            let (mut b, idx) = per_element(len);
            let d = b.ptr_param("dst");
            let at = b.element(d, idx, bytes);
            let ty = if bytes == 4 { Ty::B32 } else { Ty::B64 };
            let bits = if bytes == 4 { *bits as u32 as i32 as i64 } else { *bits as i64 };
            b.st(Space::Global, ty, at, 0, Val::Int(bits));
            vec![launch(b, len, vec![ParamRef::Buf(*dst)])]
        }
        Instr::MatMul { c, a, b, batch, m, n, k } if crate::gemm::applies(batch, *m, *n, *k) => vec![crate::gemm::matmul(*c, a, b, batch, *m, *n, *k)],
        Instr::MatMul { c, a, b, batch, m, n, k } => vec![matmul(*c, a, b, batch, *m, *n, *k)],
        Instr::Reduce { dst, src, kind, outer, len, inner } => vec![reduce(*dst, *src, *kind, *outer, *len, *inner)],
        Instr::Gather { dst, table, index, outer, len, row } => {
            let count = f.bufs[*index].len();
            let bytes = elem(*dst);
            let params = vec![ParamRef::Buf(*dst), ParamRef::Buf(*table), ParamRef::Buf(*index), ParamRef::Status];
            let total = outer * count * row;
            let (mut b, idx) = per_element(total);
            let (d, t, x, status) = (b.ptr_param("dst"), b.ptr_param("table"), b.ptr_param("index"), b.ptr_param("status"));
            let ix = unravel(&mut b, idx, &[*outer, count, *row]);
            let k = load_index(&mut b, x, ix[1], *len, status);
            // table[(o·len + k)·row + r]
            let from = dot(&mut b, &[ix[0], k.into(), ix[2]], &[len * row, *row, 1], 0);
            let ty = if bytes == 4 { Ty::B32 } else { Ty::B64 };
            let src = b.element(t, from, bytes);
            let v = b.ld(Space::Global, ty, src, 0);
            let to = b.element(d, idx, bytes);
            b.st(Space::Global, ty, to, 0, v);
            vec![launch(b, total, params)]
        }
        Instr::OneHot { dst, index, depth } => {
            let count = f.bufs[*index].len();
            let params = vec![ParamRef::Buf(*dst), ParamRef::Buf(*index), ParamRef::Status];
            let total = count * depth;
            let (mut b, idx) = per_element(total);
            let (d, x, status) = (b.ptr_param("dst"), b.ptr_param("index"), b.ptr_param("status"));
            let ix = unravel(&mut b, idx, &[count, *depth]);
            let k = load_index(&mut b, x, ix[0], *depth, status);
            let hit = b.setp(Cmp::Eq, Ty::U64, k, ix[1]);
            let v = b.selp(Ty::F32, hit, Val::F32(1.0), Val::F32(0.0));
            let to = b.element(d, idx, 4);
            b.st(Space::Global, Ty::F32, to, 0, v);
            vec![launch(b, total, params)]
        }
        Instr::Iota { dst } => {
            let (dtype, len) = (f.bufs[*dst].dtype, f.bufs[*dst].len());
            let params = vec![ParamRef::Buf(*dst)];
            let (mut b, idx) = per_element(len);
            let d = b.ptr_param("dst");
            let to = b.element(d, idx, elem_bytes(dtype));
            match dtype {
                DType::F32 => {
                    let v = b.cvt(Some(Round::Rn), Ty::F32, Ty::U64, idx);
                    b.st(Space::Global, Ty::F32, to, 0, v);
                }
                DType::I64 => b.st(Space::Global, Ty::S64, to, 0, idx),
            }
            vec![launch(b, len, params)]
        }
        Instr::Cast { dst, src } => {
            let (to_ty, from_ty, len) = (f.bufs[*dst].dtype, f.bufs[*src].dtype, f.bufs[*dst].len());
            let params = vec![ParamRef::Buf(*dst), ParamRef::Buf(*src)];
            let (mut b, idx) = per_element(len);
            let (d, s) = (b.ptr_param("dst"), b.ptr_param("src"));
            let from = b.element(s, idx, elem_bytes(from_ty));
            let to = b.element(d, idx, elem_bytes(to_ty));
            match (from_ty, to_ty) {
                (DType::I64, DType::F32) => {
                    let v = b.ld(Space::Global, Ty::S64, from, 0);
                    let v = b.cvt(Some(Round::Rn), Ty::F32, Ty::S64, v);
                    b.st(Space::Global, Ty::F32, to, 0, v);
                }
                (DType::F32, DType::I64) => {
                    // Toward zero, saturating, NaN to 0: the CPU backends' conversion.
                    let v = b.ld(Space::Global, Ty::F32, from, 0);
                    let v = b.cvt(Some(Round::Rzi), Ty::S64, Ty::F32, v);
                    b.st(Space::Global, Ty::S64, to, 0, v);
                }
                (t, _) => {
                    let ty = if t == DType::F32 { Ty::B32 } else { Ty::B64 };
                    let v = b.ld(Space::Global, ty, from, 0);
                    b.st(Space::Global, ty, to, 0, v);
                }
            }
            vec![launch(b, len, params)]
        }
        Instr::TriMask { dst, rows, cols, fill } => {
            let len = f.bufs[*dst].len();
            let params = vec![ParamRef::Buf(*dst)];
            let (mut b, idx) = per_element(len);
            let d = b.ptr_param("dst");
            let ix = unravel(&mut b, idx, &[len / (rows * cols).max(1), *rows, *cols]);
            let above = b.setp(Cmp::Gt, Ty::U64, ix[2], ix[1]);
            let to = b.element(d, idx, 4);
            b.guarded(above, false, Inst::St { space: Space::Global, ty: Ty::F32, addr: Addr { base: Base::Reg(to), offset: 0 }, src: vec![Val::F32(*fill)] });
            vec![launch(b, len, params)]
        }
        Instr::Scan(_) => Vec::new(),
    }
}

pub fn elem_bytes(d: DType) -> usize {
    match d {
        DType::F32 => 4,
        DType::I64 => 8,
    }
}

/// A strided copy of `bytes`-sized elements, with parameters `(dst, src)` (the pointers a
/// launch passes may already be offset by the host).
pub fn copy_kernel(copy: &Strided, bytes: usize, params: Vec<ParamRef>) -> Generated {
    let total: usize = copy.shape.iter().product();
    let (mut b, idx) = per_element(total);
    let (d, s) = (b.ptr_param("dst"), b.ptr_param("src"));
    let ix = unravel(&mut b, idx, &copy.shape);
    let from = dot(&mut b, &ix, &copy.src_strides, copy.src_at);
    let to = dot(&mut b, &ix, &copy.dst_strides, copy.dst_at);
    let ty = if bytes == 4 { Ty::B32 } else { Ty::B64 };
    let src = b.element(s, from, bytes);
    let v = b.ld(Space::Global, ty, src, 0);
    let dst = b.element(d, to, bytes);
    b.st(Space::Global, ty, dst, 0, v);
    launch(b, total, params)
}

/// How an elementwise kernel reads an input: its stride along each axis of the launch's shape.
struct Reading {
    strides: Vec<usize>,
}

fn elementwise(spec: &KernelSpec, shape: &[usize], inputs: &[Reading], params: Vec<ParamRef>) -> Generated {
    let total: usize = shape.iter().product();
    let (mut b, idx) = per_element(total);
    let ins: Vec<Reg> = (0..inputs.len()).map(|i| b.ptr_param(&format!("in{i}"))).collect();
    let outs: Vec<Reg> = (0..spec.outputs.len()).map(|i| b.ptr_param(&format!("out{i}"))).collect();
    let ix = unravel(&mut b, idx, shape);
    let mut vals: Vec<Val> = Vec::with_capacity(spec.exprs.len());
    for e in &spec.exprs {
        let v = match *e {
            Expr::Input(k) => {
                let off = dot(&mut b, &ix, &inputs[k].strides, 0);
                let at = b.element(ins[k], off, 4);
                b.ld(Space::Global, Ty::F32, at, 0).into()
            }
            Expr::Const(c) => Val::F32(c),
            Expr::Unary(u, x) => math::unary(&mut PtxMath { b: &mut b }, u, vals[x]),
            Expr::Binary(op, x, y) => math::binary(&mut PtxMath { b: &mut b }, op, vals[x], vals[y]),
        };
        vals.push(v);
    }
    for (&o, &p) in spec.outputs.iter().zip(&outs) {
        let at = b.element(p, idx, 4);
        b.st(Space::Global, Ty::F32, at, 0, vals[o]);
    }
    launch(b, total, params)
}

/// `c = a · b` with one thread per element of `c` (products too small for a tensor-core tile:
/// decoding's one-row products) (`[batch…, m, n]`, contiguous), a sum over
/// `k` in order with one rounding per step (`fma`).
fn matmul(c: BufId, a: &Operand, bm: &Operand, batch: &[usize], m: usize, n: usize, k: usize) -> Generated {
    let params = vec![ParamRef::Buf(c), ParamRef::Buf(a.buf), ParamRef::Buf(bm.buf)];
    let mut shape = batch.to_vec();
    shape.extend([m, n]);
    let total: usize = shape.iter().product();
    let (mut b, idx) = per_element(total);
    let (pc, pa, pb) = (b.ptr_param("c"), b.ptr_param("a"), b.ptr_param("b"));
    let ix = unravel(&mut b, idx, &shape);
    let r = batch.len();
    let mut a_strides = a.batch_strides.clone();
    a_strides.extend([a.row_stride, 0]);
    let mut b_strides = bm.batch_strides.clone();
    b_strides.extend([0, bm.col_stride]);
    let a0 = dot(&mut b, &ix[..r + 2], &a_strides, 0);
    let b0 = dot(&mut b, &ix[..r + 2], &b_strides, 0);
    let pa = b.element(pa, a0, 4);
    let pb = b.element(pb, b0, 4);
    let acc = b.mov(Ty::F32, Val::F32(0.0));
    let kk = b.mov(Ty::U64, Val::Int(0));
    let (top, done) = (b.label(), b.label());
    let empty = b.setp(Cmp::Eq, Ty::U64, Val::Int(k as i64), Val::Int(0));
    b.bra_if(empty, false, done);
    b.place(top);
    let ao = b.bin(BinOp::Mul, Ty::U64, kk, Val::Int((a.col_stride * 4) as i64));
    let ap = b.bin(BinOp::Add, Ty::U64, pa, ao);
    let bo = b.bin(BinOp::Mul, Ty::U64, kk, Val::Int((bm.row_stride * 4) as i64));
    let bp = b.bin(BinOp::Add, Ty::U64, pb, bo);
    let x = b.ld(Space::Global, Ty::F32, ap, 0);
    let y = b.ld(Space::Global, Ty::F32, bp, 0);
    b.emit(Inst::Fma { ty: Ty::F32, dst: acc, a: x.into(), b: y.into(), c: acc.into() });
    b.bin_to(kk, BinOp::Add, Ty::U64, kk, Val::Int(1));
    let more = b.setp(Cmp::Lt, Ty::U64, kk, Val::Int(k as i64));
    b.bra_if(more, false, top);
    b.place(done);
    let at = b.element(pc, idx, 4);
    b.st(Space::Global, Ty::F32, at, 0, acc);
    launch(b, total, params)
}

/// Sum, mean or max along the middle axis of `[outer, len, inner]`, one thread per result, in
/// the CPU backends' order (a NaN is passed over by max, as there).
fn reduce(dst: BufId, src: BufId, kind: ReduceKind, outer: usize, len: usize, inner: usize) -> Generated {
    let params = vec![ParamRef::Buf(dst), ParamRef::Buf(src)];
    let total = outer * inner;
    let (mut b, idx) = per_element(total);
    let (d, s) = (b.ptr_param("dst"), b.ptr_param("src"));
    let ix = unravel(&mut b, idx, &[outer, inner]);
    let from = dot(&mut b, &ix, &[len * inner, 1], 0);
    let p = b.element(s, from, 4);
    let acc = b.mov(Ty::F32, Val::F32(if kind == ReduceKind::Max { f32::NEG_INFINITY } else { 0.0 }));
    let j = b.mov(Ty::U64, Val::Int(0));
    let top = b.label();
    b.place(top);
    let x = b.ld(Space::Global, Ty::F32, p, 0);
    match kind {
        ReduceKind::Max => {
            let greater = b.setp(Cmp::Gt, Ty::F32, x, acc);
            b.emit(Inst::Selp { ty: Ty::F32, dst: acc, a: x.into(), b: acc.into(), p: greater });
        }
        _ => b.bin_to(acc, BinOp::Add, Ty::F32, acc, x),
    }
    b.bin_to(p, BinOp::Add, Ty::U64, p, Val::Int((inner * 4) as i64));
    b.bin_to(j, BinOp::Add, Ty::U64, j, Val::Int(1));
    let more = b.setp(Cmp::Lt, Ty::U64, j, Val::Int(len as i64));
    b.bra_if(more, false, top);
    let result = if kind == ReduceKind::Mean { b.bin(BinOp::Div, Ty::F32, acc, Val::F32(len as f32)) } else { acc };
    let at = b.element(d, idx, 4);
    b.st(Space::Global, Ty::F32, at, 0, result);
    launch(b, total, params)
}

/// A kernel builder whose threads each take one element `idx` (a `u64`) of `0..total`, threads
/// past the end returning at once; the parameters are declared by the caller after this.
fn per_element(total: usize) -> (Builder, Reg) {
    let mut b = Builder::new("tttc_kernel");
    let ctaid = b.special(Special::Ctaid(0));
    let ntid = b.special(Special::Ntid(0));
    let tid = b.special(Special::Tid(0));
    let base = b.bin(BinOp::MulWide, Ty::U32, ctaid, ntid);
    let tid = b.cvt(None, Ty::U64, Ty::U32, tid);
    let idx = b.bin(BinOp::Add, Ty::U64, base, tid);
    let past = b.setp(Cmp::Ge, Ty::U64, idx, Val::Int(total as i64));
    b.guarded(past, false, Inst::Ret);
    (b, idx)
}

fn launch(b: Builder, total: usize, params: Vec<ParamRef>) -> Generated {
    let block = (total.max(1) as u32).min(BLOCK);
    Generated { kernel: b.finish(), grid: [total.div_ceil(block as usize).max(1) as u32, 1, 1], block: [block, 1, 1], params }
}

/// `idx` as indices into `shape` (row-major); axes of length 1 are the constant 0.
pub(crate) fn unravel(b: &mut Builder, idx: Reg, shape: &[usize]) -> Vec<Val> {
    let mut out = vec![Val::Int(0); shape.len()];
    let mut rest: Val = idx.into();
    for (d, &n) in shape.iter().enumerate().rev() {
        if n == 1 {
            continue;
        }
        let outer: usize = shape[..d].iter().product();
        if outer == 1 {
            out[d] = rest;
            break;
        }
        out[d] = b.bin(BinOp::Rem, Ty::U64, rest, Val::Int(n as i64)).into();
        rest = b.bin(BinOp::Div, Ty::U64, rest, Val::Int(n as i64)).into();
    }
    out
}

/// `at + Σ index·stride` as a `u64` register.
pub(crate) fn dot(b: &mut Builder, index: &[Val], strides: &[usize], at: usize) -> Reg {
    let acc = b.mov(Ty::U64, Val::Int(at as i64));
    for (i, &s) in index.iter().zip(strides) {
        match (i, s) {
            (_, 0) | (Val::Int(0), _) => {}
            _ => b.emit(Inst::Fma { ty: Ty::U64, dst: acc, a: *i, b: Val::Int(s as i64), c: acc.into() }),
        }
    }
    acc
}

/// The index at `x[i]`; when it is not in `0..len`, the status word is set and the thread returns.
fn load_index(b: &mut Builder, x: Reg, i: Val, len: usize, status: Reg) -> Reg {
    let i = match i {
        Val::Reg(r) => r,
        v => b.mov(Ty::U64, v),
    };
    let at = b.element(x, i, 8);
    let k = b.ld(Space::Global, Ty::U64, at, 0);
    // Unsigned: a negative index is huge.
    let bad = b.setp(Cmp::Ge, Ty::U64, k, Val::Int(len as i64));
    b.guarded(bad, false, Inst::St { space: Space::Global, ty: Ty::U32, addr: Addr { base: Base::Reg(status), offset: 0 }, src: vec![Val::Int(INDEX_OUT_OF_RANGE as i64)] });
    b.guarded(bad, false, Inst::Ret);
    k
}
