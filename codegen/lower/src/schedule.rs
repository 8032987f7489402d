//! A plan with every shape a [`Size`] (known, or a polynomial in the lengths a program is
//! launched with: [`Lengths`]), as straight-line instructions over buffers: one function for the
//! model and one per scan body (and one for a shorter last chunk).
//! Reshapes are free (every buffer is contiguous), and every buffer that is
//! neither an argument nor an output gets an offset in the function's workspace, reused once
//! the buffer is dead.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::layout::{broadcast_shape, broadcast_strides, broadcast_strides_of, contiguous_strides, reduction};
use tttc_ir::{DType, Data, DimEnv, Graph, Op, ReduceKind, Size, SizeEnv, Tensor, TensorView, ValueId};

use crate::elementwise::{row_layout, Expr, KernelSpec, RowLayout};
use crate::plan::{Body, LaneScan, Native, Read, ScanPlan, Step};

pub type BufId = usize;

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Home {
    /// The function's argument `j`.
    Arg(usize),
    /// The function's output `j`.
    Out(usize),
    /// The workspace, at an offset the layout chooses.
    Work,
    /// Another buffer's memory (a reshape).
    Alias(BufId),
    /// A contiguous piece of another buffer's memory, `at` bytes in (one lane's slice of a scan's
    /// operand or result).
    View { of: BufId, at: Size },
}

pub struct Buf {
    pub dtype: DType,
    pub shape: Vec<Size>,
    pub home: Home,
    /// Bytes from the workspace's start, for `Home::Work` (room for the buffer at its largest).
    pub offset: usize,
}

impl Buf {
    /// The number of elements (a buffer is never empty: every shape has positive sizes).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Size {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> Size {
        self.len() * elem_bytes(self.dtype)
    }
}

pub fn elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::I64 => 8,
    }
}

/// One instruction; sizes are in elements, offsets and strides in elements of the buffer's type.
pub enum Instr {
    Kernel(Launch),
    /// `c = a · b` for each index of `batch` (the operands' offsets advance by their batch
    /// strides, `c` is contiguous); `a` read with (row, column) strides, `b`'s rows contiguous;
    /// then its `epilogue`, if any.
    MatMul {
        c: BufId,
        a: Operand,
        b: Operand,
        batch: Vec<Size>,
        m: Size,
        n: Size,
        k: Size,
        epilogue: Option<Box<Epilogue>>,
    },
    Reduce {
        dst: BufId,
        src: BufId,
        kind: ReduceKind,
        outer: Size,
        len: Size,
        inner: Size,
    },
    /// `dst[dst_at + Σ i·dst_strides] = src[src_at + Σ i·src_strides]` over `shape`.
    Copy {
        dst: BufId,
        src: BufId,
        copy: Strided,
    },
    /// Every element of `dst` set to a constant (its bits, as stored).
    Fill {
        dst: BufId,
        bits: u64,
    },
    /// Rows of `row` elements: `dst[o, i, :] = table[o, index[i], :]` (`len` rows per `o`).
    Gather {
        dst: BufId,
        table: BufId,
        index: BufId,
        outer: Size,
        len: Size,
        row: Size,
    },
    OneHot {
        dst: BufId,
        index: BufId,
        depth: usize,
    },
    /// `dst[k, :] = Σ_{i : index[i] = k} updates[i, :]` over rows of `row` elements, `k` in
    /// `0..depth`, the rows added in the order of `index` (a gather's gradient).
    ScatterAdd {
        dst: BufId,
        updates: BufId,
        index: BufId,
        depth: usize,
        row: Size,
    },
    Iota {
        dst: BufId,
    },
    Cast {
        dst: BufId,
        src: BufId,
    },
    /// In place, over matrices of `rows × cols`: entries above the diagonal become `fill`, and
    /// with a window W those W or more below it.
    TriMask {
        dst: BufId,
        rows: Size,
        cols: Size,
        fill: f32,
        window: Option<usize>,
    },
    Scan(Box<ScanInstr>),
    /// Attention in one pass over blocks of keys (see `attention.rs`; the CPU's only).
    Attention(Box<AttentionInstr>),
    /// Its backward in one pass over blocks of keys and queries.
    AttentionBackward(Box<AttentionBackwardInstr>),
    /// Mamba's selective scan in one pass over the sequence (see `recurrence.rs`; the CPU's
    /// only).
    Recurrence(Box<RecurrenceInstr>),
    /// A softmax cross-entropy's row statistics (see `cross_entropy.rs`; the CPU's only).
    CrossEntropy(Box<CrossEntropyInstr>),
    /// Its backward, row by row.
    CrossEntropyBackward(Box<CrossEntropyBackwardInstr>),
    /// Instruction lists that touch disjoint memory and may run at once (a scan split over its
    /// lanes: each part stages its slice of the operands, runs the narrower scan and puts its
    /// results in place). Only a plan for several threads has them.
    Parallel {
        parts: Vec<Vec<Instr>>,
    },
}

/// How an instruction uses a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Read and written in place.
    Update,
}

/// A buffer an instruction uses, with the name its code gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Use {
    pub buf: BufId,
    pub name: String,
    pub access: Access,
}

impl Instr {
    /// The buffers the instruction uses: for a leaf instruction in the order its code takes
    /// them; for a scan, what it reads and writes around the calls of its body (the initial
    /// carries, the carry buffers, the sequences, the invariants, the stacked outputs and their
    /// staging); for a parallel instruction, its parts'.
    pub fn uses(&self) -> Vec<Use> {
        let (read, write, update) = (Access::Read, Access::Write, Access::Update);
        let at = |buf: &BufId, name: &str, access: Access| Use { buf: *buf, name: name.to_string(), access };
        match self {
            Instr::Kernel(l) => l.uses(),
            Instr::Copy { dst, src, .. } | Instr::Cast { dst, src } | Instr::Reduce { dst, src, .. } => vec![at(dst, "dst", write), at(src, "src", read)],
            Instr::Fill { dst, .. } | Instr::Iota { dst } => vec![at(dst, "dst", write)],
            Instr::TriMask { dst, .. } => vec![at(dst, "dst", update)],
            Instr::MatMul { c, a, b, epilogue, .. } => {
                let product = [at(c, "c", write), at(&a.buf, "a", read), at(&b.buf, "b", read)];
                // The epilogue's reads of `c` are the product's own values.
                let rest = epilogue.iter().flat_map(|e| e.launch.uses()).filter(|u| !(u.buf == *c && u.access == read));
                product.into_iter().chain(rest).collect()
            }
            Instr::Gather { dst, table, index, .. } => vec![at(dst, "dst", write), at(table, "table", read), at(index, "index", read)],
            Instr::OneHot { dst, index, .. } => vec![at(dst, "dst", write), at(index, "index", read)],
            Instr::ScatterAdd { dst, updates, index, .. } => vec![at(dst, "dst", write), at(updates, "updates", read), at(index, "index", read)],
            Instr::Scan(s) => {
                let carries = s.carries.iter().flat_map(|(init, pair)| [at(init, "init", read), at(&pair[0], "carry", update), at(&pair[1], "carry", update)]);
                let staged = |sl: &Slicing, access| std::iter::once(at(&sl.buf, "slice", access)).chain(sl.staging.map(|b| at(&b, "staging", update)));
                let seqs = s.seqs.iter().flat_map(|sl| staged(sl, read));
                let outputs = s.outputs.iter().flat_map(|sl| staged(sl, write));
                carries.chain(seqs).chain(s.invariants.iter().map(|b| at(b, "invariant", read))).chain(outputs).collect()
            }
            Instr::Attention(a) => {
                let lse = a.lse.iter().map(|b| at(b, "lse", write));
                [at(&a.out, "out", write), at(&a.q.buf, "q", read), at(&a.k.buf, "k", read), at(&a.v.buf, "v", read)].into_iter().chain(lse).collect()
            }
            Instr::AttentionBackward(a) => {
                let reads = [(&a.q.buf, "q"), (&a.k.buf, "k"), (&a.v.buf, "v"), (&a.d_out.buf, "d_out"), (&a.lse, "lse"), (&a.row, "row")];
                let writes = [(&a.dq, "dq"), (&a.dk, "dk"), (&a.dv, "dv")].map(|(b, name)| at(b, name, write));
                writes.into_iter().chain(reads.map(|(b, name)| at(b, name, read))).collect()
            }
            Instr::Recurrence(r) => {
                let reads = [(&r.state, "state"), (&r.dt, "dt"), (&r.du, "du"), (&r.b, "b"), (&r.c, "c"), (&r.a, "a")].map(|(b, name)| at(b, name, read));
                [at(&r.final_state, "final_state", write), at(&r.y, "y", write)].into_iter().chain(reads).collect()
            }
            Instr::CrossEntropy(c) => {
                let reads = [at(&c.x, "x", read), at(&c.target, "target", read)];
                [at(&c.max, "max", write), at(&c.sum, "sum", write), at(&c.picked, "picked", write)].into_iter().chain(reads).collect()
            }
            Instr::CrossEntropyBackward(c) => {
                let reads = [(&c.x, "x"), (&c.target, "target"), (&c.shift, "shift"), (&c.a, "a"), (&c.c, "c")].map(|(b, name)| at(b, name, read));
                std::iter::once(at(&c.d, "d", write)).chain(reads).collect()
            }
            Instr::Parallel { parts } => parts.iter().flatten().flat_map(Instr::uses).collect(),
        }
    }

    /// The instruction's name, for profiles.
    pub fn name(&self) -> &'static str {
        match self {
            Instr::Kernel(_) => "kernel",
            Instr::MatMul { epilogue: None, .. } => "matmul",
            Instr::MatMul { epilogue: Some(_), .. } => "matmul+epilogue",
            Instr::Reduce { .. } => "reduce",
            Instr::Copy { .. } => "copy",
            Instr::Fill { .. } => "fill",
            Instr::Gather { .. } => "gather",
            Instr::OneHot { .. } => "one_hot",
            Instr::ScatterAdd { .. } => "scatter_add",
            Instr::Iota { .. } => "iota",
            Instr::Cast { .. } => "cast",
            Instr::TriMask { .. } => "tri_mask",
            Instr::Scan(_) => "scan",
            Instr::Attention(_) => "attention",
            Instr::AttentionBackward(_) => "attention_backward",
            Instr::Recurrence(_) => "recurrence",
            Instr::CrossEntropy(_) => "cross_entropy",
            Instr::CrossEntropyBackward(_) => "cross_entropy_backward",
            Instr::Parallel { .. } => "parallel",
        }
    }

    /// The buffers the instruction writes (wholly or in place).
    pub fn writes(&self) -> Vec<BufId> {
        self.uses().into_iter().filter(|u| u.access != Access::Read).map(|u| u.buf).collect()
    }

    /// Whether it reads token ids or targets that may be out of range (its code reports them).
    pub fn checks_indices(&self) -> bool {
        matches!(self, Instr::Gather { .. } | Instr::OneHot { .. } | Instr::ScatterAdd { .. } | Instr::CrossEntropy(_) | Instr::CrossEntropyBackward(_))
    }

    /// Floating-point operations of one run (a transcendental counts as one; a scan's and a
    /// parallel instruction's are their bodies'), with sizes valued by `at`.
    pub fn flops(&self, specs: &[KernelSpec], at: &dyn Fn(Size) -> u64) -> u64 {
        match self {
            Instr::Kernel(l) => l.flops(specs, at),
            Instr::MatMul { batch, m, n, k, epilogue, .. } => {
                2 * at(batch.iter().product::<Size>() * *m * *n * *k) + epilogue.as_ref().map_or(0, |e| e.launch.flops(specs, at))
            }
            Instr::Reduce { outer, len, inner, .. } => at(*outer * *len * *inner),
            Instr::Attention(a) => a.flops(at),
            Instr::AttentionBackward(a) => a.flops(at),
            Instr::Recurrence(r) => r.flops(at),
            // Per logit: the maximum, the exponential and its sum; the backward's exponential
            // and multiply-add.
            Instr::CrossEntropy(c) => 4 * at(c.rows * c.depth),
            Instr::CrossEntropyBackward(c) => 4 * at(c.rows * c.depth),
            _ => 0,
        }
    }

    /// Bytes of memory one run reads and writes (what it touches of each buffer; 0 for a scan or
    /// a parallel instruction, whose bodies are counted on their own), with sizes valued by `at`.
    pub fn bytes(&self, f: &Function, at: &dyn Fn(Size) -> u64) -> u64 {
        let size = |b: &BufId| at(f.bufs[*b].bytes());
        match self {
            Instr::Kernel(l) => l.bytes(f, None, at),
            Instr::Copy { dst, copy, .. } => 2 * at(copy.shape.iter().product::<Size>() * elem_bytes(f.bufs[*dst].dtype)),
            Instr::MatMul { c, a, b, epilogue: None, .. } => size(c) + size(&a.buf) + size(&b.buf),
            // The product's values reach the epilogue without a round trip through memory.
            Instr::MatMul { c, a, b, epilogue: Some(e), .. } => {
                size(&a.buf) + size(&b.buf) + e.launch.bytes(f, Some(*c), at) + if e.keep_product { size(c) } else { 0 }
            }
            Instr::Reduce { dst, src, .. } | Instr::Cast { dst, src } => size(dst) + size(src),
            Instr::Fill { dst, .. } | Instr::Iota { dst } | Instr::TriMask { dst, .. } => size(dst),
            Instr::Gather { dst, index, .. } => 2 * size(dst) + size(index),
            Instr::OneHot { dst, index, .. } => size(dst) + size(index),
            Instr::ScatterAdd { dst, updates, index, .. } => 2 * size(dst) + size(updates) + size(index),
            Instr::Attention(a) => size(&a.out) + size(&a.q.buf) + size(&a.k.buf) + size(&a.v.buf) + a.lse.as_ref().map_or(0, size),
            Instr::AttentionBackward(a) => [a.dq, a.dk, a.dv, a.q.buf, a.k.buf, a.v.buf, a.d_out.buf, a.lse, a.row].iter().map(size).sum(),
            Instr::Recurrence(r) => [r.state, r.dt, r.du, r.b, r.c, r.a, r.final_state, r.y].iter().map(size).sum(),
            Instr::CrossEntropy(c) => [c.x, c.target, c.max, c.sum, c.picked].iter().map(size).sum(),
            Instr::CrossEntropyBackward(c) => [c.d, c.x, c.target, c.shift, c.a, c.c].iter().map(size).sum(),
            Instr::Scan(_) | Instr::Parallel { .. } => 0,
        }
    }
}

/// A generated kernel over `outer` axes (walked by loops around the call, each input with its
/// `strides` along them) of `rows` rows of `n` elements; its outputs are written contiguously.
pub struct Launch {
    pub kernel: usize,
    pub outer: Vec<Size>,
    pub rows: Size,
    pub n: Size,
    pub ins: Vec<KernelInput>,
    pub outs: Vec<BufId>,
}

impl Launch {
    /// The elements it walks.
    pub fn elements(&self) -> Size {
        self.outer.iter().product::<Size>() * self.rows * self.n
    }

    /// Whether input `x` (`splat`: one element per row) is read element by element in the order
    /// the launch walks, as its outputs are written.
    pub fn reads_in_order(&self, x: &KernelInput, splat: bool) -> bool {
        let mut axes = self.outer.clone();
        axes.extend([self.rows, self.n]);
        let walk = contiguous_strides(&axes);
        // Strides along axes of length 1 are never applied.
        let strides = x.strides.iter().chain([&x.row_stride, &Size::ONE]);
        !splat && axes.iter().zip(strides).zip(&walk).all(|((len, s), w)| len.is_one() || s == w)
    }

    fn uses(&self) -> Vec<Use> {
        let ins = self.ins.iter().enumerate().map(|(i, x)| Use { buf: x.buf, name: format!("in{i}"), access: Access::Read });
        ins.chain(self.outs.iter().enumerate().map(|(i, &o)| Use { buf: o, name: format!("out{i}"), access: Access::Write })).collect()
    }

    fn flops(&self, specs: &[KernelSpec], at: &dyn Fn(Size) -> u64) -> u64 {
        let ops = specs[self.kernel].exprs.iter().filter(|e| matches!(e, Expr::Unary(..) | Expr::Binary(..))).count();
        at(self.elements()) * ops as u64
    }

    /// Bytes it reads and writes, not counting reads of `except`.
    fn bytes(&self, f: &Function, except: Option<BufId>, at: &dyn Fn(Size) -> u64) -> u64 {
        let size = |b: BufId| at(f.bufs[b].bytes());
        let walked = 4 * at(self.elements());
        let reads = self.ins.iter().filter(|i| Some(i.buf) != except).map(|i| size(i.buf).min(walked));
        reads.sum::<u64>() + self.outs.iter().map(|&o| size(o)).sum::<u64>()
    }
}

/// An elementwise kernel that is part of a product: it walks the product `c`'s elements in
/// order and reads `c` itself (the inputs whose buffer is `c`), so a backend may apply it to each
/// element of the product before the store (in registers, on the GPU; on the CPU, member by
/// member of a batch, or as the product accumulating into a value it is added to: schedules for
/// [`Products::GPU`] and [`Products::CPU`] hold epilogues). `c` holds the product afterwards only
/// if `keep_product` (something else reads it); otherwise it is scratch a backend need not write.
pub struct Epilogue {
    pub launch: Launch,
    pub keep_product: bool,
}

pub struct KernelInput {
    pub buf: BufId,
    pub strides: Vec<Size>,
    pub row_stride: Size,
}

#[derive(Clone)]
pub struct Operand {
    pub buf: BufId,
    pub batch_strides: Vec<Size>,
    pub row_stride: Size,
    pub col_stride: Size,
}

/// Attention's sizes per index of `batch` (`tq` queries and `tk` keys of width `d`, values of
/// width `dv`) and its scores' scale and mask, both ways.
pub struct AttentionShape {
    pub batch: Vec<Size>,
    pub tq: Size,
    pub tk: Size,
    pub d: Size,
    pub dv: Size,
    /// The scores divided or multiplied by a constant (`BinaryOp::Div` or `Mul`).
    pub scale: Option<(tttc_ir::BinaryOp, f32)>,
    /// Keys after their query (column > row) masked out.
    pub causal: bool,
    /// With the causal mask, keys `window` or more before their query masked out too.
    pub window: Option<usize>,
}

impl AttentionShape {
    /// The (query, key) pairs computed: about half of them under a causal mask, at most `window`
    /// per query under a window.
    fn pairs(&self, at: &dyn Fn(Size) -> u64) -> u64 {
        let all = at(self.batch.iter().product::<Size>() * self.tq * self.tk);
        match (self.causal, self.window) {
            (false, _) => all,
            (true, None) => all / 2,
            (true, Some(w)) => (all / 2).min(at(self.batch.iter().product::<Size>() * self.tq) * w as u64),
        }
    }
}

/// `out = softmax(scale(q·kᵀ), masked) · v` for each index of the batch (`out` contiguous, the
/// operands read with their strides as a product's: `q` of `tq × d`, `k` the product's right
/// operand kᵀ of `d × tk`, `v` of `tk × dv`), and each row's log-sum-exp of its scaled, masked
/// scores in `lse` (`batch × tq`, contiguous) when wanted.
pub struct AttentionInstr {
    pub out: BufId,
    pub lse: Option<BufId>,
    pub q: Operand,
    pub k: Operand,
    pub v: Operand,
    pub shape: AttentionShape,
}

impl AttentionInstr {
    /// The two products' FLOPs over the pairs computed and the softmax's exponentials.
    fn flops(&self, at: &dyn Fn(Size) -> u64) -> u64 {
        let s = &self.shape;
        s.pairs(at) * (2 * at(s.d + s.dv) + 1)
    }
}

/// The backward of [`AttentionInstr`] for each index of the batch, given the result's adjoint
/// `d_out` (`tq × dv`), each row's log-sum-exp `lse` and `rowsum(d_out ⊙ out)` `row` (`batch ×
/// tq`, contiguous): with `p` the weights and `ds = p ⊙ (d_out·vᵀ − row)` scaled as the scores,
/// `dq = ds·k` (`tq × d`), `dk = dsᵀ·q` (`tk × d`), `dv = pᵀ·d_out` (`tk × dv`), each
/// contiguous, or its transpose where `transposed` says so. `v` is read as the product
/// `d_out·vᵀ` reads it (`dv × tk`).
pub struct AttentionBackwardInstr {
    pub dq: BufId,
    pub dk: BufId,
    pub dv: BufId,
    pub transposed: [bool; 3],
    pub q: Operand,
    pub k: Operand,
    pub v: Operand,
    pub d_out: Operand,
    pub lse: BufId,
    pub row: BufId,
    pub shape: AttentionShape,
}

impl AttentionBackwardInstr {
    /// Five products over the pairs computed (the scores again, `d_out·vᵀ`, and the three
    /// adjoints) and the weights' exponentials.
    fn flops(&self, at: &dyn Fn(Size) -> u64) -> u64 {
        let s = &self.shape;
        s.pairs(at) * (2 * at(s.d * 3 + s.dv * 2) + 1)
    }
}

/// Mamba's selective scan over `len` positions for each of `batch` sequences (see
/// `recurrence.rs`), every buffer contiguous: from the state `state [batch, width, states]`,
/// per position `h = exp(Δ ⊗ A) ⊙ h + Δu ⊗ b` and `y = h · c`, with `dt` and `du` `[batch, len,
/// width]`, `b` and `c` `[batch, len, states]`, `a` `[width, states]`; `y` is `[batch, len,
/// width]`, `final_state` the state after the last position.
pub struct RecurrenceInstr {
    pub state: BufId,
    pub dt: BufId,
    pub du: BufId,
    pub b: BufId,
    pub c: BufId,
    pub a: BufId,
    pub final_state: BufId,
    pub y: BufId,
    pub batch: Size,
    pub len: Size,
    pub width: Size,
    pub states: Size,
}

impl RecurrenceInstr {
    /// Per state element and position: the decay's product and exponential, the update's two
    /// products and sum, and the output's multiply-add.
    fn flops(&self, at: &dyn Fn(Size) -> u64) -> u64 {
        7 * at(self.batch * self.len * self.width * self.states)
    }
}

/// A softmax cross-entropy's statistics over `rows` rows of `depth` logits `x` (every buffer
/// contiguous): each row's maximum `max`, the sum of `exp(x − max)` `sum` and the logit at the
/// row's `target` (i64) `picked`.
pub struct CrossEntropyInstr {
    pub x: BufId,
    pub target: BufId,
    pub max: BufId,
    pub sum: BufId,
    pub picked: BufId,
    pub rows: Size,
    pub depth: usize,
}

/// Its backward: `d = a·one_hot(target) + c·exp(x − shift)` over the same rows, `a`, `c` and
/// `shift` one value per row.
pub struct CrossEntropyBackwardInstr {
    pub d: BufId,
    pub x: BufId,
    pub target: BufId,
    pub shift: BufId,
    pub a: BufId,
    pub c: BufId,
    pub rows: Size,
    pub depth: usize,
}

#[derive(Clone, Debug)]
pub struct Strided {
    pub shape: Vec<Size>,
    pub dst_at: Size,
    pub dst_strides: Vec<Size>,
    pub src_at: Size,
    pub src_strides: Vec<Size>,
}

/// The values of sizes scheduled at known lengths (what a schedule made with
/// [`Lengths::Fixed`], or at a call's sizes, holds).
pub fn fixed(sizes: &[Size]) -> Vec<usize> {
    sizes.iter().map(|s| s.fixed()).collect()
}

/// A [`Strided`] copy scheduled at known lengths, in numbers.
pub struct Walk {
    pub shape: Vec<usize>,
    pub dst_at: usize,
    pub dst_strides: Vec<usize>,
    pub src_at: usize,
    pub src_strides: Vec<usize>,
}

/// An [`Operand`]'s strides scheduled at known lengths, in numbers.
pub struct Strides {
    pub batch_strides: Vec<usize>,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Operand {
    pub fn fixed(&self) -> Strides {
        Strides { batch_strides: fixed(&self.batch_strides), row_stride: self.row_stride.fixed(), col_stride: self.col_stride.fixed() }
    }
}

impl Strided {
    pub fn fixed(&self) -> Walk {
        Walk {
            shape: fixed(&self.shape),
            dst_at: self.dst_at.fixed(),
            dst_strides: fixed(&self.dst_strides),
            src_at: self.src_at.fixed(),
            src_strides: fixed(&self.src_strides),
        }
    }

    /// The same copy the other way, from destination to source.
    pub fn swapped(self) -> Strided {
        Strided { shape: self.shape, dst_at: self.src_at, dst_strides: self.src_strides, src_at: self.dst_at, src_strides: self.dst_strides }
    }

    /// Merges axes that both sides walk contiguously and drops axes of length 1.
    pub fn simplified(mut self) -> Strided {
        let mut shape = Vec::new();
        let (mut ds, mut ss) = (Vec::new(), Vec::new());
        for d in 0..self.shape.len() {
            if self.shape[d].is_one() {
                continue;
            }
            let n = self.shape[d];
            match (shape.last_mut(), ds.last(), ss.last()) {
                (Some(last), Some(&dl), Some(&sl)) if dl == self.dst_strides[d] * n && sl == self.src_strides[d] * n => {
                    *last *= n;
                    *ds.last_mut().unwrap() = self.dst_strides[d];
                    *ss.last_mut().unwrap() = self.src_strides[d];
                }
                _ => {
                    shape.push(n);
                    ds.push(self.dst_strides[d]);
                    ss.push(self.src_strides[d]);
                }
            }
        }
        self.shape = shape;
        self.dst_strides = ds;
        self.src_strides = ss;
        self
    }
}

/// A scan over its sequences in chunks of `chunk`: `full` iterations of the body function over
/// whole chunks and, where the length may not be a multiple of the chunk, `tail` (the body for
/// the shorter last chunk, and that chunk's length: a program scheduled for lengths known at
/// launch runs it `tail_count` times, once when that length is not 0). The
/// chunks are visited in order, or from the last for a `reverse` scan (a gradient's backward
/// sweep), which starts with the shorter chunk.
pub struct ScanInstr {
    pub body: usize,
    pub tail: Option<(usize, Size)>,
    /// Whole chunks.
    pub full: Size,
    /// Iterations of `tail`: 1, or where the lengths are known only at launch 0 or 1.
    pub tail_count: Size,
    pub chunk: usize,
    pub axis: usize,
    pub reverse: bool,
    /// Per carry: its initial value and the two buffers iterations write in turn, so that the
    /// last writes the first of them ([`ScanInstr::carry_written`]); each reads the buffer the
    /// iteration before wrote, the first the initial value.
    pub carries: Vec<(BufId, [BufId; 2])>,
    /// Per carry: whether the body (and the tail) may write it where it reads it
    /// ([`Function::may_update_in_place`]): one buffer, holding the initial value first, can
    /// then serve every iteration, so a weight stays in cache from one mini-batch to the next.
    /// Using the two buffers in turn is always right.
    pub in_place: Vec<bool>,
    pub seqs: Vec<Slicing>,
    pub invariants: Vec<BufId>,
    /// Per-chunk outputs, written into their place in the stacked result.
    pub outputs: Vec<Slicing>,
    /// The scan as in the graph, and the sizes bound where it runs (its chunk symbol unbound):
    /// what a backend needs to compile the loop whole.
    pub ir: Box<tttc_ir::Scan>,
    pub env: SizeEnv,
    /// Bytes from the calling function's workspace to the body's own (after the caller's arena;
    /// the parts of a [`Instr::Parallel`] each get their own).
    pub workspace_at: usize,
}

/// Consecutive iterations of a scan that run the same body function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The first iteration (iterations count from 0 in the order they execute).
    pub first: Size,
    /// How many: the whole chunks, or for the tail 1 or (where the lengths are known only at
    /// launch) 0.
    pub count: Size,
    pub function: usize,
    /// Positions in each of its chunks.
    pub len: Size,
    /// Whether it is the shorter last chunk.
    pub tail: bool,
}

impl ScanInstr {
    /// Iterations the scan runs: one per chunk, the shorter last chunk included.
    pub fn iterations(&self) -> Size {
        self.full + self.tail_count
    }

    /// The chunk iteration `i` of `n` (the [`ScanInstr::iterations`] at the lengths of a call)
    /// works on.
    pub fn chunk_of(&self, i: usize, n: usize) -> usize {
        if self.reverse {
            n - 1 - i
        } else {
            i
        }
    }

    /// The iterations in the order they execute, as runs of one body function.
    pub fn runs(&self) -> Vec<Run> {
        let whole = (!self.full.is_zero()).then_some((self.full, self.body, Size::of(self.chunk), false));
        let tail = self.tail.map(|(function, len)| (self.tail_count, function, len, true));
        let order = if self.reverse { [tail, whole] } else { [whole, tail] };
        let mut first = Size::ZERO;
        order
            .into_iter()
            .flatten()
            .map(|(count, function, len, tail)| {
                let run = Run { first, count, function, len, tail };
                first += count;
                run
            })
            .collect()
    }

    /// Which of a carry's two buffers iteration `i` of `n` writes: the other one than the
    /// iteration before, and the first for the last iteration.
    pub fn carry_written(i: usize, n: usize) -> usize {
        (n - 1 - i) % 2
    }

    /// Elements from one iteration's piece of the sliced buffer `sl` (of function `f`) to the
    /// next.
    pub fn step(&self, f: &Function, sl: &Slicing) -> Size {
        contiguous_strides(&f.bufs[sl.buf].shape)[self.axis] * sl.per
    }

    /// The copy of a piece of the sliced buffer `sl` from its place (an iteration's offset not
    /// included) into a contiguous buffer: `len` positions of a chunked sequence or output, one
    /// of a per-iteration one. [`Strided::swapped`] copies it back.
    pub fn piece(&self, f: &Function, sl: &Slicing, len: Size) -> Strided {
        let whole = &f.bufs[sl.buf].shape;
        let mut shape = whole.clone();
        shape[self.axis] = if sl.per == 1 { Size::ONE } else { len };
        Strided { dst_strides: contiguous_strides(&shape), shape, dst_at: Size::ZERO, src_at: Size::ZERO, src_strides: contiguous_strides(whole) }.simplified()
    }

    /// The buffer that holds carry `j`'s final value: the one the last iteration wrote.
    pub fn final_carry(&self, j: usize) -> BufId {
        self.carries[j].1[0]
    }
}

/// A sequence operand or a stacked result of a scan, and how one iteration's piece of it is
/// reached: `per` positions along the axis per iteration (the chunk, or 1 for an iteration
/// sequence). A piece is addressed in place when every axis before the scan's is 1; otherwise
/// it is copied through `staging`.
pub struct Slicing {
    pub buf: BufId,
    pub per: usize,
    pub staging: Option<BufId>,
}

pub struct Function {
    pub bufs: Vec<Buf>,
    pub instrs: Vec<Instr>,
    /// Bytes of workspace of this function's own buffers; the functions it calls get the
    /// workspace after them.
    pub arena: usize,
    /// Bytes of workspace this function and the functions it calls need.
    pub workspace: usize,
}

impl Function {
    /// Lays the workspace out again with bytes of its own for every buffer, for a function that
    /// calls none and whose instructions run in any order their data allows (the phases of a
    /// persistent GPU kernel): reused bytes would order instructions that share no data.
    pub fn separate_buffers(&mut self, most: &dyn Fn(Size) -> usize) {
        assert!(!self.instrs.iter().any(|i| matches!(i, Instr::Scan(_) | Instr::Parallel { .. })), "a function that calls others keeps its layout");
        self.arena = layout(self, most, false);
        self.workspace = self.arena;
    }

    /// The buffer whose memory `b` is.
    pub fn root(&self, b: BufId) -> BufId {
        self.locate(b).0
    }

    /// Where `b`'s memory is: in buffer `root` (an argument, an output or the workspace's),
    /// `at` bytes from its start.
    pub fn locate(&self, b: BufId) -> (BufId, Size) {
        locate(&self.bufs, b)
    }

    /// Outputs that begin with a copy of a whole argument, as `(output, argument)`: a KV cache a
    /// decoding step appends to. Nothing else writes that prefix of the output, so a caller that
    /// gives the argument up may hand its memory, extended, to the output: the copy then has one
    /// place as its source and destination, and copies nothing.
    pub fn prefix_copies(&self) -> Vec<(usize, usize)> {
        let mut candidates: Vec<(usize, BufId, usize, Size)> = Vec::new(); // (instruction, output root, argument, prefix bytes)
        for (t, instr) in self.instrs.iter().enumerate() {
            let Instr::Copy { dst, src, copy } = instr else { continue };
            let ((out, out_at), (arg, arg_at)) = (self.locate(*dst), self.locate(*src));
            let (Home::Out(_), Home::Arg(_)) = (&self.bufs[out].home, &self.bufs[arg].home) else { continue };
            let whole = self.bufs[arg].len();
            let dense = copy.shape.len() == 1 && copy.dst_strides == [Size::ONE] && copy.src_strides == [Size::ONE];
            let at_start = [out_at, arg_at, copy.dst_at, copy.src_at].iter().all(|a| a.is_zero());
            if dense && at_start && copy.shape[0] == whole && self.bufs[out].dtype == self.bufs[arg].dtype {
                candidates.push((t, out, arg, whole * elem_bytes(self.bufs[out].dtype)));
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        // Every other write into such an output must start past its prefix: where each
        // instruction writes (its buffers, and for a copy how far into its own).
        let mut overlapped = vec![false; candidates.len()];
        for (t, instr) in self.instrs.iter().enumerate() {
            let writes = match instr {
                Instr::Copy { dst, copy, .. } => vec![(*dst, copy.dst_at * elem_bytes(self.bufs[*dst].dtype))],
                _ => instr.uses().into_iter().filter(|u| u.access != Access::Read).map(|u| (u.buf, Size::ZERO)).collect(),
            };
            for (b, from) in writes {
                let (root, at) = self.locate(b);
                for (c, &(copy_at, out, _, prefix)) in candidates.iter().enumerate() {
                    let past = matches!(((at + from).known(), prefix.known()), (Some(a), Some(p)) if a >= p);
                    overlapped[c] |= root == out && t != copy_at && !past;
                }
            }
        }
        let mut found: Vec<(usize, usize)> = Vec::new();
        for (&(_, out, arg, _), overlapped) in candidates.iter().zip(overlapped) {
            let (Home::Out(o), Home::Arg(j)) = (self.bufs[out].home, self.bufs[arg].home) else { continue };
            if !overlapped && !found.iter().any(|&(fo, fj)| fo == o || fj == j) {
                found.push((o, j));
            }
        }
        found
    }

    /// Whether output `out` may be written into argument `arg`'s memory (a scan's carry updated
    /// in place, one buffer instead of two in turn): every instruction that reads the argument
    /// comes no later than the first that writes the output, and that one reads it element by
    /// element in the order it writes (a kernel, or the epilogue of a product that neither reads
    /// it nor is stored in the output), each element before it writes that element.
    pub fn may_update_in_place(&self, specs: &[KernelSpec], arg: usize, out: usize) -> bool {
        let homed = |home: Home| -> Vec<BufId> { (0..self.bufs.len()).filter(|&b| self.bufs[b].home == home).collect() };
        let (args, outs) = (homed(Home::Arg(arg)), homed(Home::Out(out)));
        let touches =
            |i: &Instr, roots: &[BufId], access: &dyn Fn(Access) -> bool| i.uses().iter().any(|u| access(u.access) && roots.contains(&self.root(u.buf)));
        let reads = |i: &Instr| touches(i, &args, &|a| a != Access::Write);
        let Some(w) = self.instrs.iter().position(|i| touches(i, &outs, &|a| a != Access::Read)) else { return false };
        if self.instrs[w + 1..].iter().any(reads) {
            return false;
        }
        // Whether a buffer starts where its root does.
        let at_start = |b: BufId| self.locate(b).1.is_zero();
        let in_order = |l: &Launch| {
            let walked = |(x, &splat): (&KernelInput, &bool)| at_start(x.buf) && l.reads_in_order(x, splat);
            l.ins.iter().zip(&specs[l.kernel].splat).filter(|(x, _)| args.contains(&self.root(x.buf))).all(walked)
                && l.outs.iter().filter(|&&o| outs.contains(&self.root(o))).all(|&o| at_start(o))
        };
        match &self.instrs[w] {
            i if !reads(i) => true,
            Instr::Kernel(l) => in_order(l),
            // The product itself stored in the output's place would overwrite what the
            // epilogue still reads.
            Instr::MatMul { c, a, b, epilogue: Some(e), .. } => {
                !outs.contains(&self.root(*c)) && ![a.buf, b.buf].iter().any(|&x| args.contains(&self.root(x))) && in_order(&e.launch)
            }
            _ => false,
        }
    }
}

/// Whether every range of positions along `axis` of a dense `shape` is one contiguous piece of
/// memory (every axis before it has length 1): such a piece can be a view.
fn pieces_contiguous(shape: &[Size], axis: usize) -> bool {
    shape[..axis].iter().all(|d| d.is_one())
}

fn locate(bufs: &[Buf], mut b: BufId) -> (BufId, Size) {
    let mut at = Size::ZERO;
    loop {
        match bufs[b].home {
            Home::Alias(a) => b = a,
            Home::View { of, at: more } => {
                b = of;
                at += more;
            }
            Home::Arg(_) | Home::Out(_) | Home::Work => return (b, at),
        }
    }
}

/// Every function of a compiled model (the model last) and the kernels they call.
pub struct Schedule {
    pub functions: Vec<Function>,
    pub specs: Vec<KernelSpec>,
    pub products: Products,
    /// Each length symbol's greatest value (its least is 1), where the sizes are known only at
    /// launch.
    pub bounds: DimEnv,
    /// The functions scheduled so far, by planned body (its address), argument shapes and
    /// bindings: a body called at the same sizes again (each lane of a split scan) is one function.
    scheduled: Vec<(usize, Vec<Vec<Size>>, SizeEnv, usize)>,
}

/// The lengths a schedule is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lengths {
    /// The sizes the environment binds.
    Fixed,
    /// Any length from 1 up to the one the environment binds, read when the program is launched
    /// (a length bound to 1 is 1).
    UpTo,
}

/// What a backend's matrix products can do, which shapes how the schedule feeds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Products {
    /// A transposed right operand is packed first (copied with contiguous rows) for a product
    /// of at least this many rows at the bounds; a shorter one reads it through its strides (0:
    /// always packed; `usize::MAX`: never).
    pub pack_transposed_rhs_from: usize,
    /// An elementwise kernel that follows a product is applied to its elements before they are
    /// stored ([`Epilogue`]).
    pub epilogues: bool,
    /// The chains that run as one instruction each ([`Instr::Attention`] and its backward,
    /// [`Instr::Recurrence`], [`Instr::CrossEntropy`] and its backward), planned as one step each.
    pub native: crate::plan::Native,
    /// The steps of a scan's body that read only the scan's loop invariants run once before it
    /// (at the whole chunk's length), their results passed to the body as further invariants
    /// ([`HoistedSteps`]), instead of in every iteration.
    pub hoist_scan_invariants: bool,
}

impl Products {
    /// The CPU's (the `gemm` crate): operands with any strides. Epilogues run on each member of
    /// a batch of products right after its product, while it is in cache (the mini-batch scans'
    /// weight updates `W − a·b`); a lone product's after the whole of it (`gemm` blocks
    /// internally, and blocking its rows for the epilogue gained no more than the run-to-run
    /// spread: BENCHMARKS.md, "Fusion").
    /// Attention chains run as one instruction (`exec.rs`'s tiled running softmax), and so do
    /// selective scans (a block of channels' state held in registers over the sequence) and
    /// cross-entropies' rows. A scan's steps that read only its invariants run before it.
    pub const CPU: Products = Products {
        pack_transposed_rhs_from: usize::MAX,
        epilogues: true,
        native: Native { attention: true, recurrences: true, cross_entropy: true },
        hoist_scan_invariants: true,
    };
    /// The CPU model's portable product (Cranelift's 128-bit vectors; compute-bound: an epilogue
    /// would gain nothing).
    pub const CPU_MODEL: Products = Products { pack_transposed_rhs_from: 0, epilogues: false, native: Native::NONE, hoist_scan_invariants: true };
    /// The CPU model's AVX-512 product, which gathers a transposed right operand's rows at
    /// about two thirds of its rate with contiguous ones: packing, a pass over the operand,
    /// costs less from a few hundred rows on (BENCHMARKS.md, "The compiled model").
    pub const CPU_MODEL_AVX512: Products = Products { pack_transposed_rhs_from: 256, epilogues: false, native: Native::NONE, hoist_scan_invariants: true };
    /// The GPU's: operands with any strides, epilogues applied in registers. Nothing hoisted:
    /// a persistent kernel splits a scan's operands into lanes by the scan as written.
    pub const GPU: Products = Products { pack_transposed_rhs_from: usize::MAX, epilogues: true, native: Native::NONE, hoist_scan_invariants: false };
}

/// A value the model reads or writes: its shape in the lengths it is launched with.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Size>,
}

/// What a compiled model takes and needs.
#[derive(Clone, Debug)]
pub struct Signature {
    pub args: Vec<Slot>,
    pub outputs: Vec<Slot>,
    /// The length symbols it is launched with and the greatest value of each (none when every
    /// size is fixed).
    pub lengths: Vec<(String, usize)>,
    /// Enough for every length up to the bounds.
    pub workspace_bytes: usize,
    pub functions: usize,
    pub kernels: usize,
    /// What one call computes and moves, as scheduled (see [`Schedule::traffic`]).
    pub traffic: Traffic,
}

impl Signature {
    /// The lengths of a call with `args`, in [`Signature::lengths`]' order: read from the
    /// arguments' axes that are a length, each checked against its bound, and every argument's
    /// type and shape checked against them.
    pub fn bind(&self, args: &[&Tensor]) -> Result<Vec<usize>> {
        for (slot, t) in self.args.iter().zip(args) {
            ensure!(!matches!(t.data, Data::F64(_)), "argument {}: f64 data", slot.name);
        }
        self.bind_views(&args.iter().map(|t| t.view()).collect::<Vec<_>>())
    }

    /// [`Signature::bind`] for arguments in the caller's memory.
    pub fn bind_views(&self, args: &[TensorView]) -> Result<Vec<usize>> {
        ensure!(args.len() == self.args.len(), "the model takes {} arguments, got {}", self.args.len(), args.len());
        for (slot, t) in self.args.iter().zip(args) {
            ensure!(t.dtype == slot.dtype, "argument {}: compiled for {}, got {}{:?}", slot.name, slot.dtype, t.dtype, t.shape);
        }
        let shapes: Vec<&[usize]> = args.iter().map(|t| t.shape).collect();
        let mut env = DimEnv::new();
        for (slot, shape) in self.args.iter().zip(&shapes) {
            ensure!(slot.shape.len() == shape.len(), "argument {}: compiled for rank {}, got shape {shape:?}", slot.name, slot.shape.len());
            for (d, &n) in slot.shape.iter().zip(*shape) {
                if let [(1, atoms)] = d.terms().as_slice() {
                    if let [tttc_ir::size::Atom::Sym(name)] = atoms.as_slice() {
                        let bound = env.entry(name.clone()).or_insert(n);
                        ensure!(*bound == n, "argument {}: {name} is {n} here and {bound} in an earlier argument", slot.name);
                    }
                }
            }
        }
        let mut values = Vec::new();
        for (name, bound) in &self.lengths {
            let v = env.get(name).copied().with_context(|| format!("no argument gives the length {name}"))?;
            ensure!((1..=*bound).contains(&v), "{name} = {v}: compiled for {name} from 1 to {bound}");
            values.push(v);
        }
        for (slot, shape) in self.args.iter().zip(shapes) {
            ensure!(self.shape(slot, &values)? == shape, "argument {}: compiled for {:?}, got shape {shape:?}", slot.name, slot.shape);
        }
        Ok(values)
    }

    /// A size's value at the lengths `values` (in [`Signature::lengths`]' order).
    pub fn value(&self, s: Size, values: &[usize]) -> Result<usize> {
        let v = s.eval(&|sym| self.lengths.iter().position(|(name, _)| name == sym).map(|j| values[j] as i64))?;
        usize::try_from(v).with_context(|| format!("size {s} is {v}"))
    }

    /// A slot's shape at the lengths `values`.
    pub fn shape(&self, slot: &Slot, values: &[usize]) -> Result<Vec<usize>> {
        slot.shape.iter().map(|&d| self.value(d, values)).collect()
    }
}

/// Floating-point operations and bytes of memory read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub flops: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, o: Traffic) {
        self.flops += o.flops;
        self.bytes += o.bytes;
    }
}

impl Schedule {
    fn new(specs: Vec<KernelSpec>, products: Products, bounds: DimEnv) -> Schedule {
        Schedule { functions: Vec::new(), specs, products, bounds, scheduled: Vec::new() }
    }

    /// A size's value with every length at its bound.
    pub fn at_bound(&self, s: Size) -> u64 {
        let v = s.eval(&|sym| self.bounds.get(sym).map(|&v| v as i64)).expect("every length symbol has a bound");
        v.max(0) as u64
    }

    /// The least and greatest values a size takes with the lengths anywhere from 1 to their
    /// bounds (interval arithmetic: the range may be wider).
    pub fn range(&self, s: Size) -> (i64, i64) {
        s.range(&|sym| self.bounds.get(sym).map(|&v| (1, v as i64))).expect("every length symbol has a bound")
    }

    /// The greatest value a size takes with the lengths up to their bounds (what memory is laid
    /// out for).
    pub fn most(&self, s: Size) -> usize {
        self.range(s).1.max(0) as usize
    }

    /// What one call of function `f` computes and moves, with every length at its bound: its
    /// instructions' FLOPs and bytes, each scan's body once per iteration (the staging of scan
    /// pieces not counted).
    pub fn traffic(&self, f: usize) -> Traffic {
        self.instrs_traffic(&self.functions[f], &self.functions[f].instrs)
    }

    fn instrs_traffic(&self, f: &Function, instrs: &[Instr]) -> Traffic {
        let at = |s: Size| self.at_bound(s);
        let mut t = Traffic::default();
        for i in instrs {
            match i {
                Instr::Scan(s) => {
                    for run in s.runs() {
                        let body = self.traffic(run.function);
                        let count = at(run.count);
                        t += Traffic { flops: body.flops * count, bytes: body.bytes * count };
                    }
                }
                Instr::Parallel { parts } => parts.iter().for_each(|p| t += self.instrs_traffic(f, p)),
                _ => t += Traffic { flops: i.flops(&self.specs, &at), bytes: i.bytes(f, &at) },
            }
        }
        t
    }
}

/// Plans `graph` (after the pass pipeline) for `threads` (scans split into as many lanes, run
/// as the parts of an [`Instr::Parallel`]) and schedules it for the `lengths` `env` binds: every
/// function of the model, and what it takes and needs.
pub fn model(graph: &Graph, env: &DimEnv, lengths: Lengths, products: Products, threads: usize) -> Result<(Schedule, Signature)> {
    let mut specs = Vec::new();
    let body = crate::plan::plan(graph, threads, products.native, &mut specs, &mut crate::plan::PlanStats::default());
    let open = |sym: &String, v: usize| {
        lengths == Lengths::UpTo && v > 1 && graph.args.iter().any(|a| graph.ty(a.value).shape.iter().any(|d| d.sym.as_ref() == Some(sym)))
    };
    let sizes: SizeEnv = env.iter().map(|(k, &v)| (k.clone(), if open(k, v) { Size::sym(k) } else { Size::of(v) })).collect();
    let bounds: DimEnv = env.iter().filter(|(k, &v)| open(k, v)).map(|(k, &v)| (k.clone(), v)).collect();
    let mut s = Schedule::new(specs, products, bounds.clone());
    let shapes: Vec<Vec<Size>> = body.graph.args.iter().map(|a| body.graph.ty(a.value).sizes(&sizes)).collect::<Result<_>>()?;
    function(&mut s, &body, sizes.clone(), &shapes, None).context("scheduling the model")?;
    let slot =
        |name: &str, v: tttc_ir::ValueId| -> Result<Slot> { Ok(Slot { name: name.to_string(), dtype: graph.ty(v).dtype, shape: graph.ty(v).sizes(&sizes)? }) };
    let mut lengths: Vec<(String, usize)> = bounds.into_iter().collect();
    lengths.sort();
    let sig = Signature {
        args: graph.args.iter().map(|a| slot(&a.name, a.value)).collect::<Result<_>>()?,
        outputs: graph.outputs.iter().map(|(name, v)| slot(name, *v)).collect::<Result<_>>()?,
        lengths,
        workspace_bytes: s.functions.last().map_or(0, |f| f.workspace),
        functions: s.functions.len(),
        kernels: s.specs.len(),
        traffic: s.traffic(s.functions.len() - 1),
    };
    Ok((s, sig))
}

/// Schedules a body planned for one thread as a function of arguments of `shapes` (its graph's
/// other symbols bound in `env`); the function is the schedule's last.
pub fn schedule_with_shapes(body: &Body, specs: Vec<KernelSpec>, env: &DimEnv, shapes: &[Vec<usize>], products: Products) -> Result<Schedule> {
    let shapes: Vec<Vec<Size>> = shapes.iter().map(|sh| sh.iter().map(|&n| Size::of(n)).collect()).collect();
    schedule_with_sizes(body, specs, tttc_ir::size::known(env), &shapes, products, DimEnv::new())
}

/// [`schedule_with_shapes`] at sizes that may depend on the length symbols `bounds` bounds.
pub fn schedule_with_sizes(body: &Body, specs: Vec<KernelSpec>, env: SizeEnv, shapes: &[Vec<Size>], products: Products, bounds: DimEnv) -> Result<Schedule> {
    let mut s = Schedule::new(specs, products, bounds);
    function(&mut s, body, env, shapes, None)?;
    Ok(s)
}

/// The steps of a scan's body that read only the scan's loop invariants, constants and each
/// other's values: every iteration of a whole chunk computes the same values with them (a
/// mini-batch's RoPE angles and token scales, a weight's transpose), so they run once before
/// the scan and their values reach the body as further invariants
/// ([`Products::hoist_scan_invariants`]). The shorter last chunk's body computes them itself.
struct HoistedSteps {
    /// Per step of the body: whether it is hoisted.
    steps: Vec<bool>,
    /// The values of those steps that the others or the body's outputs read, in the order the
    /// body receives them after its own arguments.
    values: Vec<ValueId>,
}

impl HoistedSteps {
    /// `body`'s hoistable steps, its arguments from `first_invariant` on being the invariants;
    /// `None` when there are none.
    fn find(body: &Body, first_invariant: usize) -> Option<HoistedSteps> {
        let g = &body.graph;
        let mut known: HashSet<ValueId> = g.args[first_invariant..].iter().map(|a| a.value).collect();
        let mut steps = Vec::with_capacity(body.steps.len());
        let mut computed = Vec::new();
        let mut needed: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
        for step in &body.steps {
            let reads = step.reads(g);
            let writes = match step {
                Step::Kernel(k) => Some(&k.outputs),
                Step::Op(i) | Step::Reduce(i) | Step::MatMul(i, _) => Some(&g.nodes[*i].outputs),
                _ => None,
            };
            let hoist = writes.is_some() && reads.iter().all(|v| known.contains(v));
            if let Some(writes) = writes.filter(|_| hoist) {
                known.extend(writes);
                computed.extend(writes);
            } else {
                needed.extend(reads);
            }
            steps.push(hoist);
        }
        let values: Vec<ValueId> = computed.into_iter().filter(|v| needed.contains(v)).collect();
        (!values.is_empty()).then_some(HoistedSteps { steps, values })
    }
}

/// Schedules `body` as a function of arguments of `shapes`, binding its symbols in `env` (once
/// per body, shapes and bindings); with `hoisted`, a scan's body whose hoisted steps' values
/// are its last arguments (their shapes the last of `shapes`).
fn function(s: &mut Schedule, body: &Body, env: SizeEnv, shapes: &[Vec<Size>], hoisted: Option<&HoistedSteps>) -> Result<usize> {
    let key = body as *const Body as usize;
    if let Some(&(.., f)) = s.scheduled.iter().find(|(b, sh, e, _)| *b == key && sh == shapes && *e == env) {
        return Ok(f);
    }
    let f = new_function(s, body, env.clone(), shapes, hoisted)?;
    s.scheduled.push((key, shapes.to_vec(), env, f));
    Ok(f)
}

fn new_function(s: &mut Schedule, body: &Body, mut env: SizeEnv, shapes: &[Vec<Size>], hoisted: Option<&HoistedSteps>) -> Result<usize> {
    let g = &body.graph;
    for (a, shape) in g.args.iter().zip(shapes) {
        g.ty(a.value).bind_sizes(shape, &mut env).with_context(|| format!("argument {} of {}", a.name, g.name))?;
    }
    let mut f = Builder { s, bufs: Vec::new(), instrs: Vec::new(), env };
    let mut vals = HashMap::new();
    for (j, a) in g.args.iter().enumerate() {
        let shape = f.shape_of(g, a.value)?;
        vals.insert(a.value, f.buf(g.ty(a.value).dtype, shape, Home::Arg(j)));
    }
    for (k, &v) in hoisted.iter().flat_map(|h| &h.values).enumerate() {
        let j = g.args.len() + k;
        let shape = shapes.get(j).context("a hoisted value without its shape")?.clone();
        vals.insert(v, f.buf(g.ty(v).dtype, shape, Home::Arg(j)));
    }
    let mut wanted = HashMap::new();
    for (j, (_, v)) in g.outputs.iter().enumerate() {
        wanted.entry(*v).or_insert(Home::Out(j));
    }
    let skip = hoisted.map(|h| h.steps.as_slice());
    let outs = f.body(body, vals, skip, &mut wanted)?;
    for (j, &b) in outs.iter().enumerate() {
        let (root, at) = locate(&f.bufs, b);
        if f.bufs[root].home != Home::Out(j) || !at.is_zero() || f.bufs[root].len() != f.bufs[b].len() {
            let out = f.buf(f.bufs[b].dtype, f.bufs[b].shape.clone(), Home::Out(j));
            f.copy_all(out, b);
            // An argument passed through (a scan's weights at a chunk's start, kept for the
            // backward pass) is copied first, before anything writes over it in place.
            if matches!(f.bufs[root].home, Home::Arg(_)) {
                let copy = f.instrs.pop().expect("just pushed");
                f.instrs.insert(0, copy);
            }
        }
    }
    let Builder { bufs, mut instrs, .. } = f;
    if s.products.epilogues {
        fuse_epilogues(&bufs, &mut instrs, &s.specs);
    }
    let mut func = Function { bufs, instrs, arena: 0, workspace: 0 };
    func.arena = layout(&mut func, &|b| s.most(b), true);
    // The scans' bodies run in the workspace after the arena; each part of a parallel
    // instruction in its own stretch of it.
    let callee_bytes = |sc: &ScanInstr| std::iter::once(sc.body).chain(sc.tail.map(|t| t.0)).map(|k| s.functions[k].workspace).max().unwrap_or(0);
    let mut nested = 0;
    for instr in &mut func.instrs {
        match instr {
            Instr::Scan(sc) => {
                sc.workspace_at = func.arena;
                nested = nested.max(callee_bytes(sc));
            }
            Instr::Parallel { parts } => {
                let scans = |part: &[Instr]| part.iter().filter_map(|i| if let Instr::Scan(sc) = i { Some(callee_bytes(sc)) } else { None }).max();
                let stride = parts.iter().filter_map(|p| scans(p)).max().unwrap_or(0).div_ceil(ALIGN) * ALIGN;
                for (k, part) in parts.iter_mut().enumerate() {
                    for i in part {
                        if let Instr::Scan(sc) = i {
                            sc.workspace_at = func.arena + k * stride;
                        }
                    }
                }
                nested = nested.max(parts.len() * stride);
            }
            _ => {}
        }
    }
    func.workspace = func.arena + nested;
    s.functions.push(func);
    Ok(s.functions.len() - 1)
}

struct Builder<'a> {
    s: &'a mut Schedule,
    bufs: Vec<Buf>,
    instrs: Vec<Instr>,
    env: SizeEnv,
}

impl Builder<'_> {
    fn shape_of(&self, g: &Graph, v: ValueId) -> Result<Vec<Size>> {
        g.ty(v).sizes(&self.env)
    }

    fn buf(&mut self, dtype: DType, shape: Vec<Size>, home: Home) -> BufId {
        self.bufs.push(Buf { dtype, shape, home, offset: 0 });
        self.bufs.len() - 1
    }

    /// A new buffer for value `v`: the output it is wanted as, if any, else the workspace.
    fn fresh(&mut self, g: &Graph, v: ValueId, wanted: &mut HashMap<ValueId, Home>) -> Result<BufId> {
        let home = wanted.remove(&v).unwrap_or(Home::Work);
        Ok(self.buf(g.ty(v).dtype, self.shape_of(g, v)?, home))
    }

    /// A new buffer for each of `node`'s results, recorded in `vals`.
    fn results(&mut self, g: &Graph, node: &tttc_ir::Node, vals: &mut HashMap<ValueId, BufId>, wanted: &mut HashMap<ValueId, Home>) -> Result<Vec<BufId>> {
        let outs: Vec<BufId> = node.outputs.iter().map(|&v| self.fresh(g, v, wanted)).collect::<Result<_>>()?;
        vals.extend(node.outputs.iter().copied().zip(outs.iter().copied()));
        Ok(outs)
    }

    fn copy_all(&mut self, dst: BufId, src: BufId) {
        let shape = self.bufs[dst].shape.clone();
        let strides = contiguous_strides(&shape);
        let copy = Strided { shape, dst_at: Size::ZERO, dst_strides: strides.clone(), src_at: Size::ZERO, src_strides: strides }.simplified();
        self.instrs.push(Instr::Copy { dst, src, copy });
    }

    /// Schedules a planned body given the buffers of its arguments (and of the values of the
    /// steps `skip` marks, computed before it); returns its outputs' buffers.
    fn body(&mut self, body: &Body, mut vals: HashMap<ValueId, BufId>, skip: Option<&[bool]>, wanted: &mut HashMap<ValueId, Home>) -> Result<Vec<BufId>> {
        let g = &body.graph;
        let skipped = |k: usize| skip.is_some_and(|s| s[k]);
        self.place_pieces(g, body, &skipped, wanted)?;
        for (k, step) in body.steps.iter().enumerate() {
            if skipped(k) {
                continue;
            }
            let what = || match step {
                Step::Kernel(k) => format!("kernel {} in {}", k.kernel, g.name),
                Step::Attention(c) => format!("attention (defining %{}) in {}", g.nodes[c.node].outputs[0].0, g.name),
                Step::AttentionBackward(b) => format!("attention's backward (defining %{}) in {}", b.dq.0 .0, g.name),
                Step::CrossEntropy(r) => format!("a cross-entropy's rows (defining %{}) in {}", r.max.0, g.name),
                Step::CrossEntropyBackward(b) => format!("a cross-entropy's backward (defining %{}) in {}", b.d.0, g.name),
                Step::Op(i) | Step::MatMul(i, _) | Step::Reduce(i) | Step::Scan(i, _) | Step::Recurrence(i, _) => {
                    let node = &g.nodes[*i];
                    format!("{} (defining %{}) in {}", node.op.name(), node.outputs.first().map_or(0, |v| v.0), g.name)
                }
            };
            self.step(g, step, &mut vals, wanted).with_context(what)?;
        }
        g.outputs.iter().map(|(name, v)| vals.get(v).copied().with_context(|| format!("output {name} of {} is undefined", g.name))).collect()
    }

    fn step(&mut self, g: &Graph, step: &Step, vals: &mut HashMap<ValueId, BufId>, wanted: &mut HashMap<ValueId, Home>) -> Result<()> {
        let get = |vals: &HashMap<ValueId, BufId>, v: &ValueId| vals.get(v).copied().with_context(|| format!("%{} is not defined", v.0));
        match step {
            Step::Kernel(k) => {
                let shape: Vec<Size> = k.shape.iter().map(|d| d.size(&self.env)).collect::<Result<_>>()?;
                let ins: Vec<BufId> = k.inputs.iter().map(|v| get(vals, v)).collect::<Result<_>>()?;
                let outs: Vec<BufId> = k.outputs.iter().map(|&v| self.fresh(g, v, wanted)).collect::<Result<_>>()?;
                for (v, b) in k.outputs.iter().zip(&outs) {
                    vals.insert(*v, *b);
                }
                self.kernel(k.kernel, &shape, &ins, &k.splat, outs)
            }
            Step::MatMul(i, operands) => {
                let node = &g.nodes[*i];
                let a = get(vals, &operands[0].0)?;
                let b = get(vals, &operands[1].0)?;
                let c = self.fresh(g, node.outputs[0], wanted)?;
                vals.insert(node.outputs[0], c);
                self.matmul(c, (a, &operands[0].1), (b, &operands[1].1))
            }
            Step::Attention(chain) => {
                let [q, k, v] = [chain.q, chain.k, chain.v].map(|(x, t)| get(vals, &x).map(|b| (b, t)));
                let mut result = |v: ValueId| -> Result<BufId> {
                    let b = self.fresh(g, v, wanted)?;
                    vals.insert(v, b);
                    Ok(b)
                };
                let out = result(g.nodes[chain.node].outputs[0])?;
                let lse = chain.lse.map(&mut result).transpose()?;
                self.attention(out, lse, [q?, k?, v?], chain.scale, (chain.causal, chain.window))
            }
            Step::AttentionBackward(b) => {
                let [q, k, v, d_out] = [b.q, b.k, b.v, b.d_out].map(|(x, t)| get(vals, &x).map(|buf| (buf, t)));
                let (lse, row) = (get(vals, &b.lse)?, get(vals, &b.row)?);
                let [dq, dk, dv] = [b.dq, b.dk, b.dv].map(|(v, t)| self.fresh(g, v, wanted).map(|buf| (buf, t)));
                let (dq, dk, dv) = (dq?, dk?, dv?);
                vals.extend([(b.dq.0, dq.0), (b.dk.0, dk.0), (b.dv.0, dv.0)]);
                self.attention_backward([dq, dk, dv], [q?, k?, v?, d_out?], [lse, row], b.scale, (b.causal, b.window))
            }
            Step::CrossEntropy(r) => {
                let (x, target) = (get(vals, &r.x)?, get(vals, &r.target)?);
                let [max, sum, picked] = [r.max, r.sum, r.picked].map(|v| self.fresh(g, v, wanted));
                let (max, sum, picked) = (max?, sum?, picked?);
                vals.extend([(r.max, max), (r.sum, sum), (r.picked, picked)]);
                let (rows, depth) = self.rows_of(x)?;
                self.instrs.push(Instr::CrossEntropy(Box::new(CrossEntropyInstr { x, target, max, sum, picked, rows, depth })));
                Ok(())
            }
            Step::CrossEntropyBackward(b) => {
                let [x, target, shift, a, c] = [b.x, b.target, b.shift, b.a, b.c].map(|v| get(vals, &v));
                let (x, target, shift, a, c) = (x?, target?, shift?, a?, c?);
                let d = self.fresh(g, b.d, wanted)?;
                vals.insert(b.d, d);
                let (rows, depth) = self.rows_of(x)?;
                self.instrs.push(Instr::CrossEntropyBackward(Box::new(CrossEntropyBackwardInstr { d, x, target, shift, a, c, rows, depth })));
                Ok(())
            }
            Step::Reduce(i) => {
                let node = &g.nodes[*i];
                let Op::Reduce { kind, axis, keepdim } = node.op else { bail!("not a reduction") };
                let src = get(vals, &node.inputs[0])?;
                let (outer, len, inner, shape) = reduction(&self.bufs[src].shape, kind, axis, keepdim)?;
                // Along an axis of length 1 (a batch of one, summed in a gradient) the result is
                // its operand, reshaped.
                let dst = if len.is_one() && !wanted.contains_key(&node.outputs[0]) {
                    self.buf(DType::F32, shape, Home::Alias(src))
                } else {
                    let dst = self.fresh(g, node.outputs[0], wanted)?;
                    self.instrs.push(Instr::Reduce { dst, src, kind, outer, len, inner });
                    dst
                };
                vals.insert(node.outputs[0], dst);
                Ok(())
            }
            Step::Scan(i, ScanPlan::Whole(body)) => {
                let node = &g.nodes[*i];
                let Op::Scan(scan) = &node.op else { bail!("not a scan") };
                let ins: Vec<BufId> = node.inputs.iter().map(|v| get(vals, v)).collect::<Result<_>>()?;
                let outs = self.results(g, node, vals, wanted)?;
                self.scan(scan, body, &ins, &outs)
            }
            Step::Recurrence(i, r) => {
                let node = &g.nodes[*i];
                let [state, dt, du, b, c, a] = [r.state, r.dt, r.du, r.b, r.c, r.a].map(|k| get(vals, &node.inputs[k]));
                let outs = self.results(g, node, vals, wanted)?;
                self.recurrence([state?, dt?, du?, b?, c?, a?], [outs[0], outs[1]])
            }
            Step::Scan(i, ScanPlan::Lanes(lanes)) => {
                let node = &g.nodes[*i];
                let ins: Vec<BufId> = node.inputs.iter().map(|v| get(vals, v)).collect::<Result<_>>()?;
                let outs = self.results(g, node, vals, wanted)?;
                self.lanes(lanes, &ins, &outs)
            }
            Step::Op(i) => {
                let node = &g.nodes[*i];
                let ins: Vec<BufId> = node.inputs.iter().map(|v| get(vals, v)).collect::<Result<_>>()?;
                let out = node.outputs[0];
                let b = match &node.op {
                    Op::Reshape { .. } | Op::Barrier | Op::StopGradient => {
                        let ty = g.ty(out);
                        self.buf(ty.dtype, self.shape_of(g, out)?, Home::Alias(ins[0]))
                    }
                    // A slice of contiguous memory (every axis before the sliced one has length
                    // 1: a sequence's shifted window) is a view of it.
                    Op::Slice { axis, start, .. } if pieces_contiguous(&self.bufs[ins[0]].shape, *axis) => {
                        let (from, dtype) = (self.bufs[ins[0]].shape.clone(), self.bufs[ins[0]].dtype);
                        let at = slice_start(*start, from[*axis])? * contiguous_strides(&from)[*axis] * elem_bytes(dtype);
                        self.buf(dtype, self.shape_of(g, out)?, Home::View { of: ins[0], at })
                    }
                    // Masked in place when nothing else reads the scores (attention's).
                    Op::TriMask { fill, window } if !wanted.contains_key(&out) && self.last_read(g, node.inputs[0], ins[0]) => {
                        let shape = self.bufs[ins[0]].shape.clone();
                        let b = self.buf(DType::F32, shape.clone(), Home::Alias(ins[0]));
                        self.tri_mask(b, &shape, *fill, *window)?;
                        b
                    }
                    op => {
                        let dst = self.fresh(g, out, wanted)?;
                        self.op(op, dst, &ins)?;
                        dst
                    }
                };
                vals.insert(out, b);
                Ok(())
            }
        }
    }

    /// Values the body computes that a concat or a pad only places in its result are written
    /// straight into their place (a view of the result, which then exists from the first of
    /// them on), so the concat copies nothing of them and the pad fills only its margins: the
    /// conv's padded input, for one. Only where each piece is contiguous (every axis before the
    /// joined one has length 1); the result keeps the home it is wanted at (an output's).
    fn place_pieces(&mut self, g: &Graph, body: &Body, skipped: &dyn Fn(usize) -> bool, wanted: &mut HashMap<ValueId, Home>) -> Result<()> {
        for (k, step) in body.steps.iter().enumerate() {
            let Step::Op(i) = step else { continue };
            if skipped(k) {
                continue;
            }
            let node = &g.nodes[*i];
            let (axis, pieces) = match node.op {
                Op::Concat { axis } => {
                    let mut at = Size::ZERO;
                    let mut pieces = Vec::new();
                    for &v in &node.inputs {
                        pieces.push((v, at));
                        at += self.shape_of(g, v)?[axis];
                    }
                    (axis, pieces)
                }
                Op::Pad { axis, before, .. } => (axis, vec![(node.inputs[0], Size::of(before))]),
                _ => continue,
            };
            let (out, dtype) = (node.outputs[0], g.ty(node.outputs[0]).dtype);
            let shape = self.shape_of(g, out)?;
            if !pieces_contiguous(&shape, axis) {
                continue;
            }
            let home = wanted.remove(&out).unwrap_or(Home::Work);
            let dst = self.buf(dtype, shape.clone(), home);
            wanted.insert(out, Home::Alias(dst));
            let stride = contiguous_strides(&shape)[axis] * elem_bytes(dtype);
            for &(v, at) in &pieces {
                let computed = !g.args.iter().any(|a| a.value == v);
                let once = node.inputs.iter().filter(|&&x| x == v).count() == 1;
                if computed && once && !wanted.contains_key(&v) {
                    wanted.insert(v, Home::View { of: dst, at: at * stride });
                }
            }
        }
        Ok(())
    }

    /// Copies `piece` into `dst` at position `at` along `axis`, unless it was computed there.
    fn put(&mut self, dst: BufId, piece: BufId, axis: usize, at: Size) {
        let shape = self.bufs[dst].shape.clone();
        let strides = contiguous_strides(&shape);
        let (root, offset) = locate(&self.bufs, dst);
        if locate(&self.bufs, piece) == (root, offset + at * strides[axis] * elem_bytes(self.bufs[dst].dtype)) {
            return;
        }
        let piece_shape = self.bufs[piece].shape.clone();
        let copy =
            Strided { src_strides: contiguous_strides(&piece_shape), shape: piece_shape, dst_at: at * strides[axis], dst_strides: strides, src_at: Size::ZERO };
        self.instrs.push(Instr::Copy { dst, src: piece, copy: copy.simplified() });
    }

    /// Lane `k` of `parts` of buffer `b` along `axis`: a view of its memory when the lane is
    /// contiguous (every axis before `axis` has length 1), else a buffer of its own with the copy
    /// from `b` into it.
    fn lane_piece(&mut self, b: BufId, axis: usize, k: usize, parts: usize) -> Result<(BufId, Option<Strided>)> {
        let (dtype, whole) = (self.bufs[b].dtype, self.bufs[b].shape.clone());
        let mut shape = whole.clone();
        shape[axis] = whole[axis].div_exact(parts).with_context(|| format!("lane axis of {whole:?} does not split into {parts}"))?;
        let strides = contiguous_strides(&whole);
        let at = k * shape[axis] * strides[axis];
        if pieces_contiguous(&whole, axis) {
            return Ok((self.buf(dtype, shape, Home::View { of: b, at: at * elem_bytes(dtype) }), None));
        }
        let piece = self.buf(dtype, shape.clone(), Home::Work);
        Ok((piece, Some(Strided { dst_strides: contiguous_strides(&shape), shape, dst_at: Size::ZERO, src_at: at, src_strides: strides }.simplified())))
    }

    /// Whether the one node that reads value `v` of `g` is the one being scheduled and `v`'s
    /// buffer `b` is its own (in the workspace, no other value's memory).
    fn last_read(&self, g: &Graph, v: ValueId, b: BufId) -> bool {
        let readers = g.nodes.iter().filter(|n| n.inputs.contains(&v)).count();
        readers == 1
            && !g.outputs.iter().any(|(_, o)| *o == v)
            && !g.args.iter().any(|a| a.value == v)
            && self.bufs[b].home == Home::Work
            && !self.bufs.iter().any(|x| matches!(x.home, Home::Alias(of) | Home::View { of, .. } if of == b))
    }

    /// The rows and the row length (a constant) of logits `x`.
    fn rows_of(&self, x: BufId) -> Result<(Size, usize)> {
        let shape = &self.bufs[x].shape;
        let depth = shape.last().and_then(|d| d.known()).context("a cross-entropy's rows have a known length")?;
        Ok((shape[..shape.len() - 1].iter().product(), depth))
    }

    fn tri_mask(&mut self, dst: BufId, shape: &[Size], fill: f64, window: Option<usize>) -> Result<()> {
        let r = shape.len();
        ensure!(r >= 2, "tri_mask needs rank 2 or more");
        self.instrs.push(Instr::TriMask { dst, rows: shape[r - 2], cols: shape[r - 1], fill: fill as f32, window });
        Ok(())
    }

    fn kernel(&mut self, kernel: usize, shape: &[Size], ins: &[BufId], splat: &[bool], outs: Vec<BufId>) -> Result<()> {
        if shape.iter().product::<Size>().is_zero() {
            return Ok(());
        }
        let in_shapes: Vec<&[Size]> = ins.iter().map(|&b| &self.bufs[b].shape[..]).collect();
        let RowLayout { n, rows, outer, strides, row_strides } = row_layout(shape, &in_shapes, splat)?;
        let ins =
            ins.iter().zip(strides).zip(row_strides).map(|((&buf, s), row_stride)| KernelInput { buf, strides: s[..outer].to_vec(), row_stride }).collect();
        self.instrs.push(Instr::Kernel(Launch { kernel, outer: shape[..outer].to_vec(), rows, n, ins, outs }));
        Ok(())
    }

    fn matmul(&mut self, c: BufId, a: (BufId, &Read), b: (BufId, &Read)) -> Result<()> {
        let transposed_a = *a.1 != Read::Stored;
        let (mut batch, mut m, n, k, mut a, mut b) = self.operands(a, b)?;
        // A shared right operand (a weight): the left operand's batch rows are one tall matrix.
        let rows_in_order = a.batch_strides == in_matrices(contiguous_strides(&batch), m * k);
        if b.batch_strides.iter().all(|s| s.is_zero()) && !transposed_a && rows_in_order {
            m *= batch.iter().product::<Size>();
            batch.clear();
            a.batch_strides.clear();
            b.batch_strides.clear();
        }
        self.instrs.push(Instr::MatMul { c, a, b, batch, m, n, k, epilogue: None });
        Ok(())
    }

    /// A product's operands (each read as [`Read`] says): its batch, `m`, `n` and `k`, and how
    /// it reads each. A transposed right operand is packed first where the backend wants it so.
    #[allow(clippy::type_complexity)]
    fn operands(&mut self, (a, ra): (BufId, &Read), (b, rb): (BufId, &Read)) -> Result<(Vec<Size>, Size, Size, Size, Operand, Operand)> {
        let a_matrix = matrix(&self.bufs[a].shape, ra)?;
        let (m, k) = (a_matrix.rows, a_matrix.cols);
        // Where the product reads a right operand whose columns are not contiguous (transposed,
        // or permuted with its last axis moved) slowly or not at all, it is packed; so is one
        // whose column stride is past the 32-bit indices of gathers.
        let (shape, perm) = (self.bufs[b].shape.clone(), permutation(rb, self.bufs[b].shape.len()));
        let (contiguous, last) = (contiguous_strides(&shape), *perm.last().context("a product of a scalar")?);
        let strided_columns = last != shape.len() - 1;
        let packed = strided_columns && (self.s.most(m) >= self.s.products.pack_transposed_rhs_from || self.s.most(contiguous[last]) >= 1 << 25);
        let b = if packed {
            let (packed, src): (Vec<Size>, Vec<Size>) = perm.iter().map(|&p| (shape[p], contiguous[p])).unzip();
            let dst = self.buf(DType::F32, packed.clone(), Home::Work);
            let copy =
                Strided { dst_strides: contiguous_strides(&packed), shape: packed, dst_at: Size::ZERO, src_at: Size::ZERO, src_strides: src }.simplified();
            self.instrs.push(Instr::Copy { dst, src: b, copy });
            dst
        } else {
            b
        };
        let b_matrix = matrix(&self.bufs[b].shape, if packed { &Read::Stored } else { rb })?;
        let (k2, n) = (b_matrix.rows, b_matrix.cols);
        ensure!(k == k2, "contracted dimensions differ: {k} and {k2}");
        let batch = broadcast_shape(&a_matrix.batch, &b_matrix.batch)?;
        let a = a_matrix.operand(a, &batch)?;
        let b = b_matrix.operand(b, &batch)?;
        Ok((batch, m, n, k, a, b))
    }

    /// Attention's chain as one instruction: `q·kᵀ` and `p·v` each read as a product reads
    /// its operands.
    fn attention(
        &mut self,
        out: BufId,
        lse: Option<BufId>,
        [q, k, v]: [(BufId, bool); 3],
        scale: Option<(tttc_ir::BinaryOp, f32)>,
        (causal, window): (bool, Option<usize>),
    ) -> Result<()> {
        let (batch, tq, tk, d, q, k) = self.operands((q.0, &Read::transposed_if(q.1)), (k.0, &Read::transposed_if(k.1)))?;
        let values = matrix(&self.bufs[v.0].shape, &Read::transposed_if(v.1))?;
        let (tk2, dv) = (values.rows, values.cols);
        ensure!(tk == tk2, "attention over {tk} keys and {tk2} values");
        let out_batch = broadcast_shape(&batch, &values.batch)?;
        ensure!(out_batch == batch, "attention's values broadcast its batch {batch:?} to {out_batch:?}");
        let v = values.operand(v.0, &batch)?;
        if let Some(lse) = lse {
            self.per_row(lse, &batch, tq)?;
        }
        let shape = AttentionShape { batch, tq, tk, d, dv, scale, causal, window };
        self.instrs.push(Instr::Attention(Box::new(AttentionInstr { out, lse, q, k, v, shape })));
        Ok(())
    }

    /// Attention's backward as one instruction: `q·kᵀ` and `d_out·vᵀ` read as products read
    /// their operands.
    fn attention_backward(
        &mut self,
        [dq, dk, dv]: [(BufId, bool); 3],
        [q, k, v, d_out]: [(BufId, bool); 4],
        [lse, row]: [BufId; 2],
        scale: Option<(tttc_ir::BinaryOp, f32)>,
        (causal, window): (bool, Option<usize>),
    ) -> Result<()> {
        let read = |(b, t): (BufId, bool)| (b, Read::transposed_if(t));
        let [q, k, v, d_out] = [q, k, v, d_out].map(read);
        let (batch, tq, tk, d, q, k) = self.operands((q.0, &q.1), (k.0, &k.1))?;
        let (batch2, tq2, tk2, dv_len, d_out, v) = self.operands((d_out.0, &d_out.1), (v.0, &v.1))?;
        ensure!((batch2.as_slice(), tq2, tk2) == (batch.as_slice(), tq, tk), "attention's backward reads {tq2}×{tk2} values' products beside {tq}×{tk} scores");
        for ((buf, transposed), rows, cols) in [(dq, tq, d), (dk, tk, d), (dv, tk, dv_len)] {
            let matrix = if transposed { [cols, rows] } else { [rows, cols] };
            let want: Vec<Size> = batch.iter().copied().chain(matrix).collect();
            ensure!(self.bufs[buf].shape == want, "an adjoint of attention's backward is {:?}, not {want:?}", self.bufs[buf].shape);
        }
        let transposed = [dq.1, dk.1, dv.1];
        let [dq, dk, dv] = [dq.0, dk.0, dv.0];
        self.per_row(lse, &batch, tq)?;
        self.per_row(row, &batch, tq)?;
        let shape = AttentionShape { batch, tq, tk, d, dv: dv_len, scale, causal, window };
        let a = AttentionBackwardInstr { dq, dk, dv, transposed, q, k, v, d_out, lse, row, shape };
        self.instrs.push(Instr::AttentionBackward(Box::new(a)));
        Ok(())
    }

    /// A selective scan as one instruction, its operands' shapes checked against its state's.
    fn recurrence(&mut self, [state, dt, du, b, c, a]: [BufId; 6], [final_state, y]: [BufId; 2]) -> Result<()> {
        let &[batch, width, states] = self.bufs[state].shape.as_slice() else { bail!("a selective scan's state is {:?}", self.bufs[state].shape) };
        let len = self.bufs[dt].shape.get(1).copied().context("a selective scan's Δ has no time axis")?;
        let by_channel = [batch, len, width];
        let by_state = [batch, len, states];
        let want = [
            (dt, &by_channel[..]),
            (du, &by_channel),
            (y, &by_channel),
            (b, &by_state),
            (c, &by_state),
            (a, &[width, states]),
            (final_state, &[batch, width, states]),
        ];
        for (buf, shape) in want {
            ensure!(self.bufs[buf].shape == shape, "a selective scan's operand is {:?}, not {shape:?}", self.bufs[buf].shape);
        }
        let r = RecurrenceInstr { state, dt, du, b, c, a, final_state, y, batch, len, width, states };
        self.instrs.push(Instr::Recurrence(Box::new(r)));
        Ok(())
    }

    /// Checks that `buf` holds one value per row of attention: `batch × tq × 1`.
    fn per_row(&self, buf: BufId, batch: &[Size], tq: Size) -> Result<()> {
        let want: Vec<Size> = batch.iter().copied().chain([tq, Size::ONE]).collect();
        ensure!(self.bufs[buf].shape == want, "a value per row of attention is {:?}, not {want:?}", self.bufs[buf].shape);
        Ok(())
    }

    /// An op that is neither elementwise-in-a-kernel, a product, a reduction nor a region.
    fn op(&mut self, op: &Op, dst: BufId, ins: &[BufId]) -> Result<()> {
        let shape = self.bufs[dst].shape.clone();
        let contiguous = contiguous_strides(&shape);
        let strided = |src_at: Size, src_strides: Vec<Size>| {
            Strided { shape: shape.clone(), dst_at: Size::ZERO, dst_strides: contiguous.clone(), src_at, src_strides }.simplified()
        };
        match op {
            Op::Const { value, dtype } => {
                let bits = match dtype {
                    DType::F32 => (*value as f32).to_bits() as u64,
                    DType::I64 => (*value as i64) as u64,
                };
                self.instrs.push(Instr::Fill { dst, bits });
            }
            Op::Iota { .. } => self.instrs.push(Instr::Iota { dst }),
            Op::Cast { .. } => self.instrs.push(Instr::Cast { dst, src: ins[0] }),
            Op::Transpose { perm } => {
                let src = contiguous_strides(&self.bufs[ins[0]].shape);
                self.instrs.push(Instr::Copy { dst, src: ins[0], copy: strided(Size::ZERO, perm.iter().map(|&p| src[p]).collect()) });
            }
            Op::Broadcast { .. } => {
                let src = broadcast_strides(&self.bufs[ins[0]].shape, &shape)?;
                self.instrs.push(Instr::Copy { dst, src: ins[0], copy: strided(Size::ZERO, src) });
            }
            Op::Slice { axis, start, .. } => {
                let from = &self.bufs[ins[0]].shape;
                let start = slice_start(*start, from[*axis])?;
                let src = contiguous_strides(from);
                self.instrs.push(Instr::Copy { dst, src: ins[0], copy: strided(start * src[*axis], src) });
            }
            Op::Concat { axis } => {
                let mut at = Size::ZERO;
                for &piece in ins {
                    self.put(dst, piece, *axis, at);
                    at += self.bufs[piece].shape[*axis];
                }
            }
            Op::Pad { axis, before, after } => {
                let (axis, inner) = (*axis, self.bufs[ins[0]].shape[*axis]);
                if pieces_contiguous(&shape, axis) {
                    // Contiguous margins: zeroed as views, around the operand.
                    let dtype = self.bufs[dst].dtype;
                    for (at, len) in [(Size::ZERO, *before), (inner + *before, *after)] {
                        if len > 0 {
                            let mut margin = shape.clone();
                            margin[axis] = Size::of(len);
                            let m = self.buf(dtype, margin, Home::View { of: dst, at: at * contiguous[axis] * elem_bytes(dtype) });
                            self.instrs.push(Instr::Fill { dst: m, bits: 0 });
                        }
                    }
                } else {
                    self.instrs.push(Instr::Fill { dst, bits: 0 });
                }
                self.put(dst, ins[0], axis, Size::of(*before));
            }
            Op::Gather { axis } => {
                let table = &self.bufs[ins[0]].shape;
                let outer: Size = table[..*axis].iter().product();
                let row: Size = table[axis + 1..].iter().product();
                self.instrs.push(Instr::Gather { dst, table: ins[0], index: ins[1], outer, len: table[*axis], row });
            }
            Op::OneHot { depth } => self.instrs.push(Instr::OneHot { dst, index: ins[0], depth: *depth }),
            Op::ScatterAdd { depth } => {
                // Each update is a row of the trailing axes the index does not have.
                let row = self.bufs[ins[0]].shape[self.bufs[ins[1]].shape.len()..].iter().product();
                self.instrs.push(Instr::ScatterAdd { dst, updates: ins[0], index: ins[1], depth: *depth, row });
            }
            Op::TriMask { fill, window } => {
                self.copy_all(dst, ins[0]);
                self.tri_mask(dst, &shape, *fill, *window)?;
            }
            Op::Unary(u) if self.bufs[ins[0]].dtype == DType::F32 => self.single(Expr::Unary(*u, 0), dst, ins)?,
            Op::Binary(b) if ins.iter().all(|&i| self.bufs[i].dtype == DType::F32) => self.single(Expr::Binary(*b, 0, 1), dst, ins)?,
            op => bail!("`{}` is not supported in a compiled model", op.name()),
        }
        Ok(())
    }

    /// One elementwise op the planner could not put in a kernel (its broadcast was not known
    /// from the types): a kernel of its own, now that the shapes are known. `e` reads the
    /// inputs as entries `0..ins.len()`.
    fn single(&mut self, e: Expr, dst: BufId, ins: &[BufId]) -> Result<()> {
        let shape = self.bufs[dst].shape.clone();
        let splat: Vec<bool> = ins.iter().map(|&b| shape.last().is_some_and(|n| !n.is_one()) && self.bufs[b].shape.last().is_none_or(|d| d.is_one())).collect();
        let mut exprs: Vec<Expr> = (0..ins.len()).map(Expr::Input).collect();
        exprs.push(e);
        self.s.specs.push(KernelSpec { outputs: vec![exprs.len() - 1], exprs, splat: splat.clone() });
        self.kernel(self.s.specs.len() - 1, &shape, ins, &splat, vec![dst])
    }

    /// A scan writing `outs` (its final carries, then its stacked outputs): its body scheduled as
    /// a function (two when the last chunk is shorter), called once per chunk.
    fn scan(&mut self, scan: &tttc_ir::Scan, body: &Body, ins: &[BufId], outs: &[BufId]) -> Result<()> {
        let (nc, ns) = (scan.carries, scan.seqs);
        let first = (nc..nc + ns).find(|&i| !scan.is_iteration_seq(i)).context("scan has no chunked sequence")?;
        let total = self.bufs[ins[first]].shape[scan.axis];
        ensure!(!total.is_zero(), "scan over an empty sequence");
        let (mut full, mut rem) = (total.div_floor(scan.chunk), total.modulo(scan.chunk));
        // Where the bounds decide it: no whole chunk (a chunk longer than any sequence), or no
        // shorter last one.
        let range = |s: Size| self.s.range(s);
        if range(full).1 == 0 {
            (full, rem) = (Size::ZERO, total);
        }
        if range(rem).1 == 0 {
            rem = Size::ZERO;
        }
        let tail_count = match rem {
            r if r.is_zero() => Size::ZERO,
            r if range(r).0 >= 1 => Size::ONE,
            _ => total.div_ceil(scan.chunk) - total.div_floor(scan.chunk),
        };
        // The chunk symbol is the body's own.
        let mut env = self.env.clone();
        if let Some(sym) = scan.body.ty(scan.body.args[first].value).shape.get(scan.axis).and_then(|d| d.sym.as_ref()) {
            env.remove(sym);
        }
        let piece = |shape: &[Size], iteration: bool, len: Size| {
            let mut s = shape.to_vec();
            s[scan.axis] = if iteration { Size::ONE } else { len };
            s
        };
        let arg_shapes = |len: Size| -> Vec<Vec<Size>> {
            ins.iter()
                .enumerate()
                .map(|(i, &b)| {
                    let shape = &self.bufs[b].shape;
                    if (nc..nc + ns).contains(&i) {
                        piece(shape, scan.is_iteration_seq(i), len)
                    } else {
                        shape.clone()
                    }
                })
                .collect()
        };
        let env_for_ir = env.clone();
        let (mut whole_shapes, tail_shapes) = (arg_shapes(Size::of(scan.chunk)), arg_shapes(rem));
        let mut invariants = ins[nc + ns..].to_vec();
        let whole = if full.is_zero() {
            None
        } else {
            // (Where the lengths are known only at launch, a run may have no whole chunk after
            // all: the hoisted steps then run for nothing, once.)
            let mut hoisted = HoistedSteps::find(body, nc + ns).filter(|_| self.s.products.hoist_scan_invariants);
            if let Some(h) = &hoisted {
                match self.hoist(body, h, &ins[nc + ns..], nc + ns, (&env, &whole_shapes)) {
                    Ok(values) => {
                        whole_shapes.extend(values.iter().map(|&b| self.bufs[b].shape.clone()));
                        invariants.extend(values);
                    }
                    // Sizes the caller cannot give them: they stay in the body.
                    Err(_) => hoisted = None,
                }
            }
            Some(function(self.s, body, env.clone(), &whole_shapes, hoisted.as_ref())?)
        };
        let tail = if rem.is_zero() { None } else { Some((function(self.s, body, env, &tail_shapes, None)?, rem)) };
        // A staged piece has room for a whole chunk, or the whole sequence when that is shorter.
        let longest = Size::of(self.s.most(total).min(scan.chunk));
        let body_fn = whole.or(tail.map(|t| t.0)).expect("one of them exists");
        let (axis, chunk) = (scan.axis, scan.chunk);
        let slicing = |b: &mut Self, buf: BufId, iteration: bool| -> Slicing {
            let shape = b.bufs[buf].shape.clone();
            let per = if iteration { 1 } else { chunk };
            let staging = if pieces_contiguous(&shape, axis) {
                None
            } else {
                let dtype = b.bufs[buf].dtype;
                Some(b.buf(dtype, piece(&shape, iteration, longest), Home::Work))
            };
            Slicing { buf, per, staging }
        };
        let mut carries = Vec::new();
        for &init in &ins[..nc] {
            let (dtype, shape) = (self.bufs[init].dtype, self.bufs[init].shape.clone());
            let pair = [self.buf(dtype, shape.clone(), Home::Work), self.buf(dtype, shape, Home::Work)];
            carries.push((init, pair));
        }
        let mut seqs = Vec::new();
        for (i, &seq) in ins.iter().enumerate().take(nc + ns).skip(nc) {
            seqs.push(slicing(self, seq, scan.is_iteration_seq(i)));
        }
        let mut outputs = Vec::new();
        for (j, &out) in outs[nc..].iter().enumerate() {
            outputs.push(slicing(self, out, scan.is_iteration_output(j)));
        }
        let functions = std::iter::once(body_fn).chain(tail.map(|t| t.0));
        let in_place = (0..nc).map(|j| functions.clone().all(|k| self.s.functions[k].may_update_in_place(&self.s.specs, j, j))).collect();
        let scan = ScanInstr {
            body: body_fn,
            tail,
            full,
            tail_count,
            chunk,
            axis,
            reverse: scan.reverse,
            carries,
            in_place,
            seqs,
            invariants,
            outputs,
            ir: Box::new(scan.clone()),
            env: env_for_ir,
            workspace_at: 0,
        };
        let results: Vec<BufId> = (0..scan.carries.len()).map(|j| scan.final_carry(j)).collect();
        self.instrs.push(Instr::Scan(Box::new(scan)));
        // The final carries: the last buffer written, or copied out of it into an output.
        for (&want, &have) in outs[..nc].iter().zip(&results) {
            if self.bufs[want].home == Home::Work {
                self.bufs[want].home = Home::Alias(have);
            } else {
                self.copy_all(want, have);
            }
        }
        Ok(())
    }
}

impl Builder<'_> {
    /// Schedules `h`'s steps of a scan's `body` here, once, before the scan: its invariant
    /// arguments (from `first` on) are `invariants`, its symbols bound as the whole chunks'
    /// body binds them (`env` and its arguments' `shapes`). Returns the buffers of `h`'s values;
    /// on an error, nothing is scheduled.
    fn hoist(&mut self, body: &Body, h: &HoistedSteps, invariants: &[BufId], first: usize, (env, shapes): (&SizeEnv, &[Vec<Size>])) -> Result<Vec<BufId>> {
        let g = &body.graph;
        let mut inner = env.clone();
        for (a, shape) in g.args.iter().zip(shapes) {
            g.ty(a.value).bind_sizes(shape, &mut inner)?;
        }
        let mut vals: HashMap<ValueId, BufId> = g.args[first..].iter().map(|a| a.value).zip(invariants.iter().copied()).collect();
        let (outer, instrs, bufs) = (std::mem::replace(&mut self.env, inner), self.instrs.len(), self.bufs.len());
        let mut scheduled = || -> Result<Vec<BufId>> {
            for (step, _) in body.steps.iter().zip(&h.steps).filter(|(_, &hoist)| hoist) {
                self.step(g, step, &mut vals, &mut HashMap::new())?;
            }
            h.values.iter().map(|v| vals.get(v).copied().context("a hoisted value was not computed")).collect()
        };
        let done = scheduled();
        self.env = outer;
        if done.is_err() {
            self.instrs.truncate(instrs);
            self.bufs.truncate(bufs);
        }
        done
    }

    /// A scan split into lanes writing `outs`: one part per lane, each copying its slice of
    /// every operand that has lanes, running the narrower scan and copying its results into
    /// their slices of `outs`. An accumulator's parts write `[parts, …]` rows of a buffer of
    /// their own, the first starting from its initial value and the others from zero, and the
    /// rows are summed into its result afterwards.
    fn lanes(&mut self, lanes: &LaneScan, ins: &[BufId], outs: &[BufId]) -> Result<()> {
        let mut rows = vec![None; outs.len()];
        for (j, lane) in lanes.result_lanes.iter().enumerate() {
            if lane.is_none() {
                let (dtype, shape) = (self.bufs[outs[j]].dtype, self.bufs[outs[j]].shape.clone());
                let stacked = self.buf(dtype, [Size::of(lanes.parts)].into_iter().chain(shape.iter().copied()).collect(), Home::Work);
                let zero = self.buf(dtype, shape, Home::Work);
                self.instrs.push(Instr::Fill { dst: zero, bits: 0 });
                rows[j] = Some((stacked, zero));
            }
        }
        let mut all = Vec::new();
        for k in 0..lanes.parts {
            let start = self.instrs.len();
            let mut part_ins = Vec::new();
            // Carry `i` is both operand `i` and result `i`: an accumulator's rows are its result's.
            for (i, (&b, lane)) in ins.iter().zip(&lanes.operand_lanes).enumerate() {
                part_ins.push(match (lane, rows.get(i).copied().flatten()) {
                    (_, Some((_, zero))) if k > 0 => zero,
                    (Some(axis), _) => {
                        let (piece, copy) = self.lane_piece(b, *axis, k, lanes.parts)?;
                        if let Some(copy) = copy {
                            self.instrs.push(Instr::Copy { dst: piece, src: b, copy });
                        }
                        piece
                    }
                    (None, _) => b,
                });
            }
            let mut placements = Vec::new();
            let mut part_outs = Vec::new();
            for (j, (&b, &axis)) in outs.iter().zip(&lanes.result_lanes).enumerate() {
                let (piece, copy) = match (axis, rows[j]) {
                    (Some(axis), _) => self.lane_piece(b, axis, k, lanes.parts)?,
                    (None, Some((stacked, _))) => self.lane_piece(stacked, 0, k, lanes.parts)?,
                    (None, None) => unreachable!("an accumulator has its rows"),
                };
                part_outs.push(piece);
                if let Some(c) = copy {
                    // Back from the piece to its place.
                    placements.push((b, piece, c.swapped()));
                }
            }
            self.scan(&lanes.scan, &lanes.body, &part_ins, &part_outs)?;
            for (dst, src, copy) in placements {
                self.instrs.push(Instr::Copy { dst, src, copy });
            }
            all.push(self.instrs.drain(start..).collect());
        }
        self.instrs.push(Instr::Parallel { parts: all });
        for (&dst, row) in outs.iter().zip(&rows) {
            if let Some((stacked, _)) = *row {
                let inner = self.bufs[dst].shape.iter().fold(Size::ONE, |n, &d| n * d);
                self.instrs.push(Instr::Reduce { dst, src: stacked, kind: ReduceKind::Sum, outer: Size::ONE, len: Size::of(lanes.parts), inner });
            }
        }
        Ok(())
    }
}

/// Makes each elementwise kernel that follows a product, reads it and walks its elements in
/// order that product's [`Epilogue`]. The kernel may come later when those in between touch
/// neither the product nor the kernel's buffers (a constant's fill; the products of a mini-batch
/// step between a weight's update `W − a·b` and the step's end, where its runs are emitted).
fn fuse_epilogues(bufs: &[Buf], instrs: &mut Vec<Instr>, specs: &[KernelSpec]) {
    let root = |b: BufId| locate(bufs, b).0;
    let roots = |i: &Instr, access: &dyn Fn(Access) -> bool| -> Vec<BufId> { i.uses().into_iter().filter(|u| access(u.access)).map(|u| root(u.buf)).collect() };
    let mut i = 0;
    while i < instrs.len() {
        let Instr::MatMul { c, a, b, batch, m, n, epilogue: None, .. } = &instrs[i] else {
            i += 1;
            continue;
        };
        let (c, product) = (*c, [root(*c), root(a.buf), root(b.buf)]);
        let elements = batch.iter().product::<Size>() * *m * *n;
        // The product itself, or a reshape of it (an alias of the whole of its memory).
        let is_product = |b: BufId| b == c || (locate(bufs, b) == locate(bufs, c) && bufs[b].len() == bufs[c].len());
        let fits = |l: &Launch| {
            l.elements() == elements
                && l.ins.iter().any(|x| is_product(x.buf))
                && l.ins.iter().zip(&specs[l.kernel].splat).all(|(x, &splat)| if is_product(x.buf) { l.reads_in_order(x, splat) } else { root(x.buf) != product[0] })
                // Written while the product still reads its operands.
                && l.outs.iter().all(|&o| !product.contains(&root(o)))
        };
        let mut found = None;
        for (j, next) in instrs.iter().enumerate().skip(i + 1) {
            if let Instr::Kernel(l) = next {
                if fits(l) {
                    found = Some(j);
                    break;
                }
            }
            if roots(next, &|_| true).contains(&product[0]) {
                break;
            }
        }
        let Some(j) = found else {
            i += 1;
            continue;
        };
        // The product moves down to the kernel past the instructions in between, which then
        // must not write its operands (so that a weight's update stays after the step's last
        // read of the weight: [`Function::may_update_in_place`]); or else the kernel moves up,
        // past instructions that must neither write what it reads nor touch what it writes.
        let between = |x: &Instr| (roots(x, &|a| a != Access::Write), roots(x, &|a| a != Access::Read));
        let sinks = instrs[i + 1..j].iter().all(|x| between(x).1.iter().all(|r| !product[1..].contains(r)));
        let rises = || {
            let (reads, writes) = between(&instrs[j]);
            instrs[i + 1..j].iter().all(|x| {
                let (r, w) = between(x);
                w.iter().all(|b| !reads.contains(b) && !writes.contains(b)) && r.iter().all(|b| !writes.contains(b))
            })
        };
        let at = if sinks {
            let product = instrs.remove(i);
            instrs.insert(j - 1, product);
            j - 1
        } else if rises() {
            let kernel = instrs.remove(j);
            instrs.insert(i + 1, kernel);
            i
        } else {
            i += 1;
            continue;
        };
        let Instr::Kernel(mut launch) = instrs.remove(at + 1) else { unreachable!("found above") };
        // An epilogue reads the product as `c`.
        launch.ins.iter_mut().filter(|x| is_product(x.buf)).for_each(|x| x.buf = c);
        let read_later = instrs[at + 1..].iter().any(|later| roots(later, &|a| a != Access::Write).contains(&product[0]));
        let keep_product = bufs[product[0]].home != Home::Work || read_later;
        if let Instr::MatMul { epilogue, .. } = &mut instrs[at] {
            *epilogue = Some(Box::new(Epilogue { launch, keep_product }));
        }
        // After a sinking, the instruction now at `i` is yet to be seen.
        if !sinks {
            i += 1;
        }
    }
}

/// Where a slice starting at `start` (negative: from the end) begins on an axis of length `len`
/// (the verifier checked it is in range).
fn slice_start(start: i64, len: Size) -> Result<Size> {
    let at = if start < 0 { len + Size::int(start) } else { Size::int(start) };
    ensure!(at.constant().is_none_or(|c| c >= 0), "slice from {start} of an axis of length {len}");
    Ok(match (at.known(), len.known()) {
        (Some(a), Some(l)) => Size::of(a.min(l)),
        _ => at,
    })
}

/// A matrix product's operand as read from its source: its batch axes and their strides, rows,
/// columns, row stride and column stride (in elements).
struct Matrix {
    batch: Vec<Size>,
    batch_strides: Vec<Size>,
    rows: Size,
    cols: Size,
    row_stride: Size,
    col_stride: Size,
}

impl Matrix {
    /// The operand reading `buf` for a product over `batch` (broadcast batch axes read at
    /// stride 0).
    fn operand(&self, buf: BufId, batch: &[Size]) -> Result<Operand> {
        let batch_strides = broadcast_strides_of(&self.batch, &self.batch_strides, batch)?;
        Ok(Operand { buf, batch_strides, row_stride: self.row_stride, col_stride: self.col_stride })
    }
}

/// A matrix product's operand read from a contiguous source of shape `s` as `read` says.
fn matrix(s: &[Size], read: &Read) -> Result<Matrix> {
    let r = s.len();
    ensure!(r >= 2, "matmul operand of rank {r}");
    let strides = contiguous_strides(s);
    let perm = permutation(read, r);
    ensure!(perm.len() == r, "a permutation of {} axes reads an operand of rank {r}", perm.len());
    let (shape, strides): (Vec<Size>, Vec<Size>) = perm.iter().map(|&p| (s[p], strides[p])).unzip();
    Ok(Matrix {
        batch: shape[..r - 2].to_vec(),
        batch_strides: strides[..r - 2].to_vec(),
        rows: shape[r - 2],
        cols: shape[r - 1],
        row_stride: strides[r - 2],
        col_stride: strides[r - 1],
    })
}

/// The axes of a stored operand of rank `r` in the order `read` reads them.
fn permutation(read: &Read, r: usize) -> Vec<usize> {
    match read {
        Read::Stored => (0..r).collect(),
        Read::Transposed => (0..r - 2).chain([r - 1, r - 2]).collect(),
        Read::Permuted(perm) => perm.clone(),
    }
}

/// Batch strides counted in matrices of `size` elements, in elements.
fn in_matrices(strides: Vec<Size>, size: Size) -> Vec<Size> {
    strides.into_iter().map(|s| s * size).collect()
}

/// Workspace offsets are multiples of this (a cache line; the widest vector loads).
const ALIGN: usize = 64;

/// Gives every workspace buffer an offset: buffers whose lifetimes (first to last instruction
/// that touches them or an alias of them) overlap never share bytes, nor do any two when not
/// `reuse`. Largest first, each at the lowest offset that fits. Returns the bytes used.
fn layout(f: &mut Function, most: &dyn Fn(Size) -> usize, reuse: bool) -> usize {
    let n = f.bufs.len();
    let (mut first, mut last) = (vec![usize::MAX; n], vec![0usize; n]);
    for (t, instr) in f.instrs.iter().enumerate() {
        for b in instr.uses().into_iter().map(|u| u.buf) {
            let r = f.root(b);
            first[r] = first[r].min(t);
            last[r] = last[r].max(t);
        }
    }
    let mut order: Vec<BufId> = (0..n).filter(|&b| f.bufs[b].home == Home::Work && first[b] != usize::MAX).collect();
    order.sort_by_key(|&b| std::cmp::Reverse(most(f.bufs[b].bytes())));
    let mut placed: Vec<(usize, usize, BufId)> = Vec::new(); // (offset, end, buffer)
    let mut used = 0;
    for b in order {
        let size = most(f.bufs[b].bytes()).div_ceil(ALIGN) * ALIGN;
        let mut busy: Vec<(usize, usize)> = placed.iter().filter(|p| !reuse || (first[p.2] <= last[b] && first[b] <= last[p.2])).map(|p| (p.0, p.1)).collect();
        busy.sort();
        let mut at = 0;
        for (start, end) in busy {
            if at + size <= start {
                break;
            }
            at = at.max(end);
        }
        f.bufs[b].offset = at;
        placed.push((at, at + size, b));
        used = used.max(at + size);
    }
    used
}
