//! The code of each scheduled instruction: as a kernel of its own, one thread per output element
//! over a 1-D grid, or inside a persistent kernel's block ([`Spread`]). Its pointers come in
//! [`params_of`]'s order. A size that is a constant is an immediate (`ptxas` sees constant trip
//! counts and divisors); one that depends on the lengths is computed once at the kernel's start
//! from the lengths the launch passes ([`Builder::size`]), and a grid that depends on them is
//! evaluated by the host at each launch.

use tttc_ir::Size;
use tttc_ir::{DType, ReduceKind};
use tttc_lower::elementwise::{Expr, KernelSpec};
use tttc_lower::math;
use tttc_lower::schedule::{BufId, Function, Instr, Launch, Operand, Strided};

use crate::build::{Builder, LENGTHS_PARAM};
use crate::isa::*;
use crate::math::PtxMath;

/// Threads per block of the elementwise-style kernels.
pub const BLOCK: u32 = 256;

/// Blocks of the largest grid a kernel of its own is launched with; beyond, threads take
/// several elements each.
const MAX_GRID: usize = 1 << 20;

/// Blocks per grid axis (at the lengths of a launch) and threads per block.
pub type Dims = ([Size; 3], [u32; 3]);

/// A grid of one block.
const ONE_BLOCK: [Size; 3] = [Size::ONE, Size::ONE, Size::ONE];

/// What a kernel's pointer parameter points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRef {
    Buf(BufId),
    /// The model's status word: kernels that check indices write 1 there on a bad one.
    Status,
    /// The calling function's workspace after its own buffers (a persistent scan's lanes).
    Scratch,
    /// The lengths of the call, as `int64`s in the order of the signature's lengths.
    Lengths,
}

/// A kernel as generated, before deduplication, with the launch that runs it.
pub struct Generated {
    pub kernel: Kernel,
    /// Blocks per grid axis, at the lengths of a launch.
    pub grid: [Size; 3],
    pub block: [u32; 3],
    pub params: Vec<ParamRef>,
}

impl Generated {
    /// `b`'s kernel, launched over `dims` with the pointers `params`, then the lengths where the
    /// kernel reads them (its last parameter: it is declared when first read, after the others).
    pub fn new(b: Builder, (grid, block): Dims, mut params: Vec<ParamRef>) -> Generated {
        let kernel = b.finish();
        if let Some(j) = kernel.params.iter().position(|p| p.name == LENGTHS_PARAM) {
            assert_eq!(j, kernel.params.len() - 1, "the lengths are read after every pointer is declared");
            params.push(ParamRef::Lengths);
        }
        Generated { kernel, grid, block, params }
    }
}

/// The status a kernel writes when a token id or target is out of range.
pub const INDEX_OUT_OF_RANGE: u32 = 1;

/// How an instruction's elements are spread over threads: a kernel of its own with one thread
/// per element (`Grid`), or one block of a persistent kernel whose threads stride over them
/// (`Block`; the caller puts barriers between instructions that touch the same memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    Grid,
    Block,
}

/// Threads per block of a persistent kernel: four warps, as the tensor-core tiles need.
pub const PERSISTENT_THREADS: u32 = 128;

/// The pointers `instr` reads and writes, in the order its code takes them, with their names:
/// its buffers, then the status word where it checks indices (none for a scan: see
/// [`crate::model`]).
pub fn params_of(instr: &Instr) -> Vec<(ParamRef, String)> {
    if matches!(instr, Instr::Scan(_) | Instr::Parallel { .. }) {
        return Vec::new();
    }
    let status = instr.checks_indices().then(|| (ParamRef::Status, "status".to_string()));
    instr.uses().into_iter().map(|u| (ParamRef::Buf(u.buf), u.name)).chain(status).collect()
}

/// The kernel that carries out `instr` of `f` on its own (none for a scan: see [`crate::model`]),
/// its sizes depending on `lengths` (each with its bound).
pub fn for_instr(f: &Function, instr: &Instr, specs: &[KernelSpec], lengths: &[(String, usize)]) -> Option<Generated> {
    if matches!(instr, Instr::Scan(_) | Instr::Parallel { .. }) {
        return None;
    }
    let params = params_of(instr);
    let mut b = Builder::new("tttc_kernel", lengths);
    let ptrs: Vec<Reg> = params.iter().map(|(_, name)| b.ptr_param(name)).collect();
    let dims = emit(&mut b, Spread::Grid, f, instr, specs, &ptrs);
    Some(Generated::new(b, dims, params.into_iter().map(|p| p.0).collect()))
}

/// Emits `instr` reading its pointers from `ptrs` (in [`params_of`]'s order); returns the grid
/// and block a `Grid` kernel is launched with.
pub fn emit(b: &mut Builder, spread: Spread, f: &Function, instr: &Instr, specs: &[KernelSpec], ptrs: &[Reg]) -> Dims {
    let elem = |x: BufId| elem_bytes(f.bufs[x].dtype);
    let word = |bytes: usize| if bytes == 4 { Ty::B32 } else { Ty::B64 };
    match instr {
        Instr::Kernel(l) => {
            let code = Elementwise::new(l, &specs[l.kernel], ptrs[..l.ins.len()].iter().map(|&p| Some(p)).collect(), ptrs[l.ins.len()..].to_vec());
            elements(b, spread, l.elements(), |b, idx, _| code.apply(b, idx, None))
        }
        Instr::Copy { dst, copy, .. } => copy_elements(b, spread, copy, elem(*dst), ptrs[0], ptrs[1]),
        Instr::Fill { dst, bits } => {
            let bytes = elem(*dst);
            let bits = if bytes == 4 { *bits as u32 as i32 as i64 } else { *bits as i64 };
            elements(b, spread, f.bufs[*dst].len(), |b, idx, _| {
                let at = b.element(ptrs[0], idx, bytes);
                b.st(b.memory(), word(bytes), at, 0, Val::Int(bits));
            })
        }
        Instr::MatMul { c, a, b: bm, batch, m, n, k, epilogue } => {
            // After `c`, `a` and `b`: the epilogue's inputs other than the product, then its
            // outputs (`Instr::uses`' order).
            let epilogue = epilogue.as_ref().map(|e| {
                let mut rest = ptrs[3..].iter().copied();
                let ins = e.launch.ins.iter().map(|x| if x.buf == *c { None } else { rest.next() }).collect();
                (Elementwise::new(&e.launch, &specs[e.launch.kernel], ins, rest.collect()), e.keep_product)
            });
            let store = Store { c: ptrs[0], epilogue: epilogue.as_ref().map(|(code, keep)| (code, *keep)) };
            let product = Product { a: a.clone(), b: bm.clone(), batch: batch.clone(), m: *m, n: *n, k: *k };
            if crate::gemm::applies(b, &product) {
                crate::gemm::emit(b, spread, store, [ptrs[1], ptrs[2]], &product)
            } else {
                matmul(b, spread, store, [ptrs[1], ptrs[2]], &product)
            }
        }
        Instr::Reduce { kind, outer, len, inner, .. } if spread == Spread::Grid && inner.is_one() && b.most(*len) >= LONG_ROW => {
            row_reduce(b, ptrs[0], ptrs[1], *kind, *outer, *len)
        }
        Instr::Reduce { kind, outer, len, inner, .. } => reduce(b, spread, ptrs[0], ptrs[1], *kind, *outer, *len, *inner),
        Instr::Gather { dst, index, outer, len, row, .. } => {
            let (outer, len, row) = (*outer, *len, *row);
            let count = f.bufs[*index].len();
            let bytes = elem(*dst);
            let (d, t, x, status) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3]);
            elements(b, spread, outer * count * row, |b, idx, skip| {
                let ix = unravel(b, idx, &[outer, count, row]);
                let k = load_index(b, x, ix[1], len, status, skip);
                // table[(o·len + k)·row + r]
                let from = dot(b, &[ix[0], k.into(), ix[2]], &[len * row, row, Size::ONE], Size::ZERO);
                let src = b.element(t, from, bytes);
                let v = b.ld(b.memory(), word(bytes), src, 0);
                let to = b.element(d, idx, bytes);
                b.st(b.memory(), word(bytes), to, 0, v);
            })
        }
        Instr::OneHot { index, depth, .. } => {
            let (count, depth) = (f.bufs[*index].len(), Size::of(*depth));
            let (d, x, status) = (ptrs[0], ptrs[1], ptrs[2]);
            elements(b, spread, count * depth, |b, idx, skip| {
                let ix = unravel(b, idx, &[count, depth]);
                let k = load_index(b, x, ix[0], depth, status, skip);
                let hit = b.setp(Cmp::Eq, Ty::U64, k, ix[1]);
                let v = b.selp(Ty::F32, hit, Val::F32(1.0), Val::F32(0.0));
                let to = b.element(d, idx, 4);
                b.st(b.memory(), Ty::F32, to, 0, v);
            })
        }
        Instr::ScatterAdd { index, depth, row, .. } => {
            // A thread per column: it clears the column, then adds the updates' rows in order
            // (no atomics, the interpreter's order of additions).
            let (count, row, depth) = (f.bufs[*index].len(), *row, Size::of(*depth));
            let (d, u, x, status) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3]);
            elements(b, spread, row, |b, col, skip| {
                let k = b.mov(Ty::U64, Val::Int(0));
                let clear = b.label();
                b.place(clear);
                let at = dot(b, &[k.into(), col.into()], &[row, Size::ONE], Size::ZERO);
                let to = b.element(d, at, 4);
                b.st(b.memory(), Ty::F32, to, 0, Val::F32(0.0));
                b.bin_to(k, BinOp::Add, Ty::U64, k, Val::Int(1));
                let end = b.size(depth);
                let more = b.setp(Cmp::Lt, Ty::U64, k, end);
                b.bra_if(more, false, clear);
                let i = b.mov(Ty::U64, Val::Int(0));
                let add = b.label();
                b.place(add);
                let k = load_index(b, x, i.into(), depth, status, skip);
                let at = dot(b, &[k.into(), col.into()], &[row, Size::ONE], Size::ZERO);
                let to = b.element(d, at, 4);
                let from = dot(b, &[i.into(), col.into()], &[row, Size::ONE], Size::ZERO);
                let from = b.element(u, from, 4);
                let (sum, x) = (b.ld(b.memory(), Ty::F32, to, 0), b.ld(b.memory(), Ty::F32, from, 0));
                let sum = b.bin(BinOp::Add, Ty::F32, sum, x);
                b.st(b.memory(), Ty::F32, to, 0, sum);
                b.bin_to(i, BinOp::Add, Ty::U64, i, Val::Int(1));
                let count = b.size(count);
                let more = b.setp(Cmp::Lt, Ty::U64, i, count);
                b.bra_if(more, false, add);
            })
        }
        Instr::Iota { dst } => {
            let dtype = f.bufs[*dst].dtype;
            elements(b, spread, f.bufs[*dst].len(), |b, idx, _| {
                let to = b.element(ptrs[0], idx, elem_bytes(dtype));
                match dtype {
                    DType::F32 => {
                        let v = b.cvt(Some(Round::Rn), Ty::F32, Ty::U64, idx);
                        b.st(b.memory(), Ty::F32, to, 0, v);
                    }
                    DType::I64 => b.st(b.memory(), Ty::S64, to, 0, idx),
                }
            })
        }
        Instr::Cast { dst, src } => {
            let (to_ty, from_ty) = (f.bufs[*dst].dtype, f.bufs[*src].dtype);
            elements(b, spread, f.bufs[*dst].len(), |b, idx, _| {
                let from = b.element(ptrs[1], idx, elem_bytes(from_ty));
                let to = b.element(ptrs[0], idx, elem_bytes(to_ty));
                match (from_ty, to_ty) {
                    (DType::I64, DType::F32) => {
                        let v = b.ld(b.memory(), Ty::S64, from, 0);
                        let v = b.cvt(Some(Round::Rn), Ty::F32, Ty::S64, v);
                        b.st(b.memory(), Ty::F32, to, 0, v);
                    }
                    (DType::F32, DType::I64) => {
                        // Toward zero, saturating, NaN to 0: the CPU backends' conversion.
                        let v = b.ld(b.memory(), Ty::F32, from, 0);
                        let v = b.cvt(Some(Round::Rzi), Ty::S64, Ty::F32, v);
                        b.st(b.memory(), Ty::S64, to, 0, v);
                    }
                    (t, _) => {
                        let v = b.ld(b.memory(), word(elem_bytes(t)), from, 0);
                        b.st(b.memory(), word(elem_bytes(t)), to, 0, v);
                    }
                }
            })
        }
        Instr::TriMask { dst, rows, cols, fill, window } => {
            let (len, rows, cols) = (f.bufs[*dst].len(), *rows, *cols);
            elements(b, spread, len, |b, idx, _| {
                // The number of matrices does not matter: only the last two indices are used.
                let ix = unravel(b, idx, &[len, rows, cols]);
                let to = b.element(ptrs[0], idx, 4);
                let store =
                    |b: &mut Builder| Inst::St { space: b.memory(), ty: Ty::F32, addr: Addr { base: Base::Reg(to), offset: 0 }, src: vec![Val::F32(*fill)] };
                let above = b.setp(Cmp::Gt, Ty::U64, ix[2], ix[1]);
                let st = store(b);
                b.guarded(above, false, st);
                if let Some(w) = window {
                    let reach = b.bin(BinOp::Add, Ty::U64, ix[2], Val::Int(*w as i64));
                    let far = b.setp(Cmp::Ge, Ty::U64, ix[1], reach);
                    let st = store(b);
                    b.guarded(far, false, st);
                }
            })
        }
        Instr::Scan(_) | Instr::Parallel { .. } => {
            unreachable!("scans are driven by the model, not emitted as one instruction; a GPU model is planned for one thread")
        }
        Instr::Attention(_) | Instr::AttentionBackward(_) | Instr::Recurrence(_) | Instr::CrossEntropy(_) | Instr::CrossEntropyBackward(_) => {
            unreachable!("the GPU's schedule runs attention, selective scans and cross-entropies as their ops (`Products::GPU`)")
        }
    }
}

/// `words` 4-byte words from `src` to `dst`, by a persistent kernel's block.
pub fn block_copy_words(b: &mut Builder, dst: Reg, src: Reg, words: Size) {
    elements(b, Spread::Block, words, |b, idx, _| {
        let from = b.element(src, idx, 4);
        let v = b.ld(b.memory(), Ty::B32, from, 0);
        let to = b.element(dst, idx, 4);
        b.st(b.memory(), Ty::B32, to, 0, v);
    });
}

/// Zeroes `words` 4-byte words at `dst` with the threads of a persistent kernel's block.
pub fn block_zero_words(b: &mut Builder, dst: Reg, words: Size) {
    elements(b, Spread::Block, words, |b, idx, _| {
        let to = b.element(dst, idx, 4);
        b.st(b.memory(), Ty::B32, to, 0, Val::Int(0));
    });
}

/// A kernel of its own that sums a persistent scan's accumulator over its lanes into `dst`:
/// `words` floats at byte `at` of each of `lanes` slices of `lane_bytes` from the scratch, added
/// in lane order (the same sum every run). Parameters: `dst`, the scratch.
pub fn lane_sums_kernel(dst: BufId, (lanes, lane_bytes, at): (Size, usize, usize), words: Size, lengths: &[(String, usize)]) -> Generated {
    let mut b = Builder::new("tttc_kernel", lengths);
    let (d, scratch) = (b.ptr_param("dst"), b.ptr_param("scratch"));
    let dims = elements(&mut b, Spread::Grid, words, |b, idx, _| {
        let first = b.element(scratch, idx, 4);
        let p = b.bin(BinOp::Add, Ty::U64, first, Val::Int(at as i64));
        let sum = b.mov(Ty::F32, Val::F32(0.0));
        let lane = b.mov(Ty::U32, Val::Int(0));
        let lanes = b.size32(lanes);
        let top = b.label();
        b.place(top);
        let x = b.ld(b.memory(), Ty::F32, p, 0);
        b.bin_to(sum, BinOp::Add, Ty::F32, sum, x);
        b.bin_to(p, BinOp::Add, Ty::U64, p, Val::Int(lane_bytes as i64));
        b.bin_to(lane, BinOp::Add, Ty::U32, lane, Val::Int(1));
        let more = b.setp(Cmp::Lt, Ty::U32, lane, lanes);
        b.bra_if(more, false, top);
        let to = b.element(d, idx, 4);
        b.st(b.memory(), Ty::F32, to, 0, sum);
    });
    Generated::new(b, dims, vec![ParamRef::Buf(dst), ParamRef::Scratch])
}

/// Runs `body(b, idx, skip)` for every element `idx` (a `u64`) of `0..total`, spread as asked;
/// `skip` is a label that ends this element's work. Returns the launch dimensions for `Grid`.
fn elements(b: &mut Builder, spread: Spread, total: Size, body: impl FnOnce(&mut Builder, Reg, u32)) -> Dims {
    // Where a thread starts and how far it strides: a kernel of its own takes one element per
    // thread unless its grid could exceed the limit; a persistent kernel's block strides.
    let tid = b.special(Special::Tid(0));
    let tid = b.cvt(None, Ty::U64, Ty::U32, tid);
    let (idx, stride, dims) = match spread {
        Spread::Grid => {
            let block = b.most(total).clamp(1, BLOCK as usize);
            let (grid, stride) =
                if b.most(total).div_ceil(block) > MAX_GRID { (Size::of(MAX_GRID), Some(MAX_GRID * block)) } else { (total.div_ceil(block), None) };
            let ctaid = b.special(Special::Ctaid(0));
            let base = b.bin(BinOp::MulWide, Ty::U32, ctaid, Val::Int(block as i64));
            let idx = b.bin(BinOp::Add, Ty::U64, base, tid);
            (idx, stride, ([grid, Size::ONE, Size::ONE], [block as u32, 1, 1]))
        }
        Spread::Block => (tid, Some(PERSISTENT_THREADS as usize), (ONE_BLOCK, [PERSISTENT_THREADS, 1, 1])),
    };
    let (top, next, done) = (b.label(), b.label(), b.label());
    let total = b.size(total);
    b.place(top);
    if spread == Spread::Block {
        // Unrolled, a persistent kernel's many loops would run out of registers.
        b.emit(Inst::NoUnroll);
    }
    let past = b.setp(Cmp::Ge, Ty::U64, idx, total);
    b.bra_if(past, false, done);
    body(b, idx, next);
    b.place(next);
    if let Some(stride) = stride {
        b.bin_to(idx, BinOp::Add, Ty::U64, idx, Val::Int(stride as i64));
        b.bra(top);
    }
    b.place(done);
    dims
}

pub fn elem_bytes(d: DType) -> usize {
    match d {
        DType::F32 => 4,
        DType::I64 => 8,
    }
}

/// A strided copy of `bytes`-sized elements as a kernel of its own, with parameters `(dst, src)`
/// (the pointers a launch passes may already be offset by the host), then the lengths where its
/// sizes depend on them.
pub fn copy_kernel(copy: &Strided, bytes: usize, lengths: &[(String, usize)]) -> Generated {
    let mut b = Builder::new("tttc_kernel", lengths);
    let (d, s) = (b.ptr_param("dst"), b.ptr_param("src"));
    let dims = copy_elements(&mut b, Spread::Grid, copy, bytes, d, s);
    Generated::new(b, dims, Vec::new())
}

fn copy_elements(b: &mut Builder, spread: Spread, copy: &Strided, bytes: usize, d: Reg, s: Reg) -> Dims {
    let ty = if bytes == 4 { Ty::B32 } else { Ty::B64 };
    elements(b, spread, copy.shape.iter().product(), |b, idx, _| {
        let ix = unravel(b, idx, &copy.shape);
        let from = dot(b, &ix, &copy.src_strides, copy.src_at);
        let to = dot(b, &ix, &copy.dst_strides, copy.dst_at);
        let src = b.element(s, from, bytes);
        let v = b.ld(b.memory(), ty, src, 0);
        let dst = b.element(d, to, bytes);
        b.st(b.memory(), ty, dst, 0, v);
    })
}

/// A kernel launch's work on one element: its inputs read along the launch's walk (`None`: the
/// product an epilogue is given), its outputs stored contiguously.
pub(crate) struct Elementwise<'a> {
    spec: &'a KernelSpec,
    /// The walk: outer axes, rows, row length.
    shape: Vec<Size>,
    /// Per input, its stride along each axis of the walk.
    strides: Vec<Vec<Size>>,
    ins: Vec<Option<Reg>>,
    outs: Vec<Reg>,
}

impl<'a> Elementwise<'a> {
    fn new(l: &Launch, spec: &'a KernelSpec, ins: Vec<Option<Reg>>, outs: Vec<Reg>) -> Self {
        let mut shape = l.outer.clone();
        shape.extend([l.rows, l.n]);
        let strides = l
            .ins
            .iter()
            .zip(&spec.splat)
            .map(|(i, &splat)| {
                let mut strides = i.strides.clone();
                strides.extend([i.row_stride, Size::of(usize::from(!splat))]);
                strides
            })
            .collect();
        Elementwise { spec, shape, strides, ins, outs }
    }

    /// The element at `idx` (a `u64`) of the walk; `product` is the value of the inputs
    /// without a pointer.
    pub(crate) fn apply(&self, b: &mut Builder, idx: Reg, product: Option<Reg>) {
        let ix = unravel(b, idx, &self.shape);
        let mut vals: Vec<Val> = Vec::with_capacity(self.spec.exprs.len());
        for e in &self.spec.exprs {
            let v = match *e {
                Expr::Input(k) => match self.ins[k] {
                    Some(p) => {
                        let off = dot(b, &ix, &self.strides[k], Size::ZERO);
                        let at = b.element(p, off, 4);
                        b.ld(b.memory(), Ty::F32, at, 0).into()
                    }
                    None => product.expect("an epilogue is given its product").into(),
                },
                Expr::Const(c) => Val::F32(c),
                Expr::Unary(u, x) => math::unary(&mut PtxMath { b: &mut *b }, u, vals[x]),
                Expr::Binary(op, x, y) => math::binary(&mut PtxMath { b: &mut *b }, op, vals[x], vals[y]),
            };
            vals.push(v);
        }
        for (&o, &p) in self.spec.outputs.iter().zip(&self.outs) {
            let at = b.element(p, idx, 4);
            b.st(b.memory(), Ty::F32, at, 0, vals[o]);
        }
    }
}

/// A product's operands and sizes, as scheduled: `c = a · b` over `batch`, `c` `[batch…, m, n]`.
pub(crate) struct Product {
    pub a: Operand,
    pub b: Operand,
    pub batch: Vec<Size>,
    pub m: Size,
    pub n: Size,
    pub k: Size,
}

/// Where a product's elements go: into `c`, and through its epilogue (with whether `c` must
/// hold the product too).
#[derive(Clone, Copy)]
pub(crate) struct Store<'a> {
    pub c: Reg,
    pub epilogue: Option<(&'a Elementwise<'a>, bool)>,
}

impl Store<'_> {
    /// Stores `value`, element `idx` (a `u64`) of the contiguous product.
    pub(crate) fn element(&self, b: &mut Builder, idx: Reg, value: Reg) {
        if self.epilogue.is_none_or(|(_, keep)| keep) {
            let at = b.element(self.c, idx, 4);
            b.st(b.memory(), Ty::F32, at, 0, value);
        }
        if let Some((code, _)) = self.epilogue {
            code.apply(b, idx, Some(value));
        }
    }
}

/// A loop of `body` for `j` (a `u64`) in `0..len` (none when `len` is 0 at the launch).
fn count_up(b: &mut Builder, len: Size, body: impl FnOnce(&mut Builder, Reg)) {
    if len.is_zero() {
        return;
    }
    let end = b.size(len);
    let (top, done) = (b.label(), b.label());
    if len.constant().is_none() {
        let empty = b.setp(Cmp::Eq, Ty::U64, end, Val::Int(0));
        b.bra_if(empty, false, done);
    }
    let j = b.mov(Ty::U64, Val::Int(0));
    b.place(top);
    body(b, j);
    b.bin_to(j, BinOp::Add, Ty::U64, j, Val::Int(1));
    let more = b.setp(Cmp::Lt, Ty::U64, j, end);
    b.bra_if(more, false, top);
    b.place(done);
}

/// `c = a · b` with one thread per element of `c` (`[batch…, m, n]`, contiguous), a sum over
/// `k` in order with one rounding per step (`fma`): products too small for a tensor-core tile
/// (decoding's one-row products).
fn matmul(b: &mut Builder, spread: Spread, store: Store, [pa, pb]: [Reg; 2], p: &Product) -> Dims {
    let Product { ref a, b: ref bm, ref batch, m, n, k } = *p;
    let mut shape = batch.to_vec();
    shape.extend([m, n]);
    let r = batch.len();
    let mut a_strides = a.batch_strides.clone();
    a_strides.extend([a.row_stride, Size::ZERO]);
    let mut b_strides = bm.batch_strides.clone();
    b_strides.extend([Size::ZERO, bm.col_stride]);
    elements(b, spread, shape.iter().product(), |b, idx, _| {
        let ix = unravel(b, idx, &shape);
        let a0 = dot(b, &ix[..r + 2], &a_strides, Size::ZERO);
        let b0 = dot(b, &ix[..r + 2], &b_strides, Size::ZERO);
        let pa = b.element(pa, a0, 4);
        let pb = b.element(pb, b0, 4);
        let acc = b.mov(Ty::F32, Val::F32(0.0));
        let (a_step, b_step) = (b.size(a.col_stride * 4), b.size(bm.row_stride * 4));
        count_up(b, k, |b, kk| {
            let ao = b.bin(BinOp::Mul, Ty::U64, kk, a_step);
            let ap = b.bin(BinOp::Add, Ty::U64, pa, ao);
            let bo = b.bin(BinOp::Mul, Ty::U64, kk, b_step);
            let bp = b.bin(BinOp::Add, Ty::U64, pb, bo);
            let x = b.ld(b.memory(), Ty::F32, ap, 0);
            let y = b.ld(b.memory(), Ty::F32, bp, 0);
            b.emit(Inst::Fma { ty: Ty::F32, dst: acc, a: x.into(), b: y.into(), c: acc.into() });
        });
        store.element(b, idx, acc);
    })
}

/// Rows at least this long are reduced by a whole block each ([`row_reduce`]).
const LONG_ROW: usize = 512;

/// `s` as an f32 operand.
fn as_f32(b: &mut Builder, s: Size) -> Val {
    match s.constant() {
        Some(c) => Val::F32(c as f32),
        None => {
            let v = b.size(s);
            b.cvt(Some(Round::Rn), Ty::F32, Ty::U64, v).into()
        }
    }
}

/// Sum, mean or max of each contiguous row of `len` (a softmax over the vocabulary): one block
/// of 256 threads per row, each thread folding a strided part of it, then the warps' partial
/// results combined with butterfly shuffles and, across warps, through shared memory.
fn row_reduce(b: &mut Builder, d: Reg, s: Reg, kind: ReduceKind, rows: Size, len: Size) -> Dims {
    const THREADS: usize = 256;
    let combine = |b: &mut Builder, acc: Reg, x: Reg| match kind {
        ReduceKind::Max => {
            let greater = b.setp(Cmp::Gt, Ty::F32, x, acc);
            b.emit(Inst::Selp { ty: Ty::F32, dst: acc, a: x.into(), b: acc.into(), p: greater });
        }
        _ => b.bin_to(acc, BinOp::Add, Ty::F32, acc, x),
    };
    let row = b.special(Special::Ctaid(0));
    let tid = b.special(Special::Tid(0));
    let len32 = b.size32(len);
    let start = b.bin(BinOp::MulWide, Ty::U32, row, len32);
    let t64 = b.cvt(None, Ty::U64, Ty::U32, tid);
    let at = b.bin(BinOp::Add, Ty::U64, start, t64);
    let p = b.element(s, at, 4);
    let acc = b.mov(Ty::F32, Val::F32(if kind == ReduceKind::Max { f32::NEG_INFINITY } else { 0.0 }));
    let j = b.mov(Ty::U32, tid);
    let (top, done) = (b.label(), b.label());
    b.place(top);
    let past = b.setp(Cmp::Ge, Ty::U32, j, len32);
    b.bra_if(past, false, done);
    let x = b.ld(b.memory(), Ty::F32, p, 0);
    combine(b, acc, x);
    b.bin_to(p, BinOp::Add, Ty::U64, p, Val::Int((THREADS * 4) as i64));
    b.bin_to(j, BinOp::Add, Ty::U32, j, Val::Int(THREADS as i64));
    b.bra(top);
    b.place(done);
    let warp_reduce = |b: &mut Builder, acc: Reg| {
        for shift in [16, 8, 4, 2, 1] {
            let other = b.reg(Class::F32);
            b.emit(Inst::Shfl { mode: ShflMode::Bfly, dst: other, src: acc.into(), lane: Val::Int(shift), clamp: Val::Int(31), mask: u32::MAX });
            combine(b, acc, other);
        }
    };
    warp_reduce(b, acc);
    // Lane 0 of each warp leaves its warp's result in shared memory; warp 0 combines them.
    let partials = b.shared("row_partials", 4 * THREADS / 32, 4);
    let lane = b.bin(BinOp::And, Ty::B32, tid, Val::Int(31));
    let warp = b.bin(BinOp::Shr, Ty::U32, tid, Val::Int(5));
    let slot = b.bin(BinOp::Shl, Ty::B32, warp, Val::Int(2));
    let slot = b.bin(BinOp::Add, Ty::U32, partials, slot);
    let first_lane = b.setp(Cmp::Eq, Ty::U32, lane, Val::Int(0));
    b.guarded(first_lane, false, Inst::St { space: Space::Shared, ty: Ty::F32, addr: Addr { base: Base::Reg(slot), offset: 0 }, src: vec![acc.into()] });
    b.emit(Inst::BarSync);
    let end = b.label();
    let not_first_warp = b.setp(Cmp::Ne, Ty::U32, warp, Val::Int(0));
    b.bra_if(not_first_warp, false, end);
    let lane_slot = b.bin(BinOp::Shl, Ty::B32, lane, Val::Int(2));
    let lane_slot = b.bin(BinOp::Add, Ty::U32, partials, lane_slot);
    let total = b.mov(Ty::F32, Val::F32(if kind == ReduceKind::Max { f32::NEG_INFINITY } else { 0.0 }));
    let has_partial = b.setp(Cmp::Lt, Ty::U32, lane, Val::Int((THREADS / 32) as i64));
    b.guarded(has_partial, false, Inst::Ld { space: Space::Shared, ty: Ty::F32, dst: vec![total], addr: Addr { base: Base::Reg(lane_slot), offset: 0 } });
    warp_reduce(b, total);
    let result = if kind == ReduceKind::Mean {
        let len = as_f32(b, len);
        b.bin(BinOp::Div, Ty::F32, total, len)
    } else {
        total
    };
    let row64 = b.cvt(None, Ty::U64, Ty::U32, row);
    let out = b.element(d, row64, 4);
    b.guarded(first_lane, false, Inst::St { space: b.memory(), ty: Ty::F32, addr: Addr { base: Base::Reg(out), offset: 0 }, src: vec![result.into()] });
    b.place(end);
    ([rows, Size::ONE, Size::ONE], [THREADS as u32, 1, 1])
}

/// Sum, mean or max along the middle axis of `[outer, len, inner]`, one thread per result, in
/// the CPU backends' order (a NaN is passed over by max, as there).
#[allow(clippy::too_many_arguments)]
fn reduce(b: &mut Builder, spread: Spread, d: Reg, s: Reg, kind: ReduceKind, outer: Size, len: Size, inner: Size) -> Dims {
    elements(b, spread, outer * inner, |b, idx, _| {
        let ix = unravel(b, idx, &[outer, inner]);
        let from = dot(b, &ix, &[len * inner, Size::ONE], Size::ZERO);
        let p = b.element(s, from, 4);
        let acc = b.mov(Ty::F32, Val::F32(if kind == ReduceKind::Max { f32::NEG_INFINITY } else { 0.0 }));
        let step = b.size(inner * 4);
        count_up(b, len, |b, _| {
            let x = b.ld(b.memory(), Ty::F32, p, 0);
            match kind {
                ReduceKind::Max => {
                    let greater = b.setp(Cmp::Gt, Ty::F32, x, acc);
                    b.emit(Inst::Selp { ty: Ty::F32, dst: acc, a: x.into(), b: acc.into(), p: greater });
                }
                _ => b.bin_to(acc, BinOp::Add, Ty::F32, acc, x),
            }
            b.bin_to(p, BinOp::Add, Ty::U64, p, step);
        });
        let result = if kind == ReduceKind::Mean {
            let len = as_f32(b, len);
            b.bin(BinOp::Div, Ty::F32, acc, len)
        } else {
            acc
        };
        let at = b.element(d, idx, 4);
        b.st(b.memory(), Ty::F32, at, 0, result);
    })
}

/// `idx` as indices into `shape` (row-major); axes of length 1 are the constant 0. Divisions by
/// a length read at launch are in 32 bits where the indices fit (a 64-bit division by a register
/// is several times the cost; by a constant, `ptxas` multiplies instead).
pub(crate) fn unravel(b: &mut Builder, idx: Reg, shape: &[Size]) -> Vec<Val> {
    let divides = |d: usize| !shape[d].is_one() && !shape[..d].iter().product::<Size>().is_one();
    let open = (0..shape.len()).any(|d| divides(d) && shape[d].constant().is_none());
    let narrow = open && b.most(shape.iter().product()) <= u32::MAX as usize;
    let ty = if narrow { Ty::U32 } else { Ty::U64 };
    let mut out = vec![Val::Int(0); shape.len()];
    let mut rest: Val = if narrow { b.cvt(None, Ty::U32, Ty::U64, idx).into() } else { idx.into() };
    for (d, &n) in shape.iter().enumerate().rev() {
        if n.is_one() {
            continue;
        }
        if !divides(d) {
            out[d] = rest;
            break;
        }
        let n = if narrow { b.size32(n) } else { b.size(n) };
        out[d] = b.bin(BinOp::Rem, ty, rest, n).into();
        rest = b.bin(BinOp::Div, ty, rest, n).into();
    }
    if narrow {
        for v in out.iter_mut() {
            if let Val::Reg(r) = *v {
                *v = b.cvt(None, Ty::U64, Ty::U32, r).into();
            }
        }
    }
    out
}

/// `at + Σ index·stride` as a `u64` register.
pub(crate) fn dot(b: &mut Builder, index: &[Val], strides: &[Size], at: Size) -> Reg {
    let at = b.size(at);
    let acc = b.mov(Ty::U64, at);
    for (i, &s) in index.iter().zip(strides) {
        if s.is_zero() || *i == Val::Int(0) {
            continue;
        }
        let s = b.size(s);
        b.emit(Inst::Fma { ty: Ty::U64, dst: acc, a: *i, b: s, c: acc.into() });
    }
    acc
}

/// The index at `x[i]`; when it is not in `0..len`, the status word is set and the element is
/// skipped (a branch to `skip`).
fn load_index(b: &mut Builder, x: Reg, i: Val, len: Size, status: Reg, skip: u32) -> Reg {
    let i = match i {
        Val::Reg(r) => r,
        v => b.mov(Ty::U64, v),
    };
    let at = b.element(x, i, 8);
    let k = b.ld(b.memory(), Ty::U64, at, 0);
    // Unsigned: a negative index is huge.
    let len = b.size(len);
    let bad = b.setp(Cmp::Ge, Ty::U64, k, len);
    b.guarded(
        bad,
        false,
        Inst::St { space: b.memory(), ty: Ty::U32, addr: Addr { base: Base::Reg(status), offset: 0 }, src: vec![Val::Int(INDEX_OUT_OF_RANGE as i64)] },
    );
    b.bra_if(bad, false, skip);
    k
}
