//! Elementwise kernels in AVX-512, assembled with iced-x86: sixteen lanes per instruction where
//! Cranelift's x86-64 backend emits four. The same ops as the Cranelift kernels, in the same
//! order ([`math`] writes them once), so both give the same bits; only the loop differs. A row
//! runs in groups of four (or two) whole vectors, their ops interleaved so that four chains of
//! dependent instructions overlap, then one vector at a time with the lanes past `n` masked off
//! (which also keeps their loads from faulting). The constants are loaded into registers once,
//! before the loops, where they fit beside the body's values.
//!
//! The kernel's ops are recorded first, then given zmm registers (a value's register is free
//! again after its last use) and mask registers for comparisons. A kernel that needs more
//! registers than there are even one vector at a time, or calls `sin`/`cos`, is left to
//! Cranelift ([`assemble`] returns `None`).

use iced_x86::code_asm::*;
use iced_x86::{IcedError, Register};
use tttc_lower::elementwise::{Expr, KernelSpec};
use tttc_lower::math::{self, Emit, FloatCmp, FloatOp, FloatUn, IntOp, Shift};

/// Whether the target runs these kernels (and the compiled model's AVX-512 product): AVX-512 (F)
/// for the vectors and masks, BMI2 for the masks' `bzhi`, the System V calling convention.
pub(crate) fn supported(isa: &dyn cranelift_codegen::isa::TargetIsa) -> bool {
    let has = |name: &str| isa.isa_flags().iter().any(|f| f.name == name && f.as_bool() == Some(true));
    isa.default_call_conv() == cranelift_codegen::isa::CallConv::SystemV && has("has_avx512f") && has("has_bmi2")
}

/// A recorded value: a vector of 16 floats or 32-bit integers, or a comparison's mask.
type V = usize;

#[derive(Clone, Copy)]
enum Op {
    /// Input `k`'s 16 elements at vector `at` from the current index (in the row's last, masked
    /// vector: zero past the row's end).
    Load(usize, usize),
    /// Input `k`'s one value for the row, in every lane.
    Splat(usize),
    /// The 32 bits in every lane.
    Const(u32),
    FBin(FloatOp, V, V),
    Fma(V, V, V),
    FUn(FloatUn, V),
    Cmp(FloatCmp, V, V),
    /// `mask ? a : b`.
    Select(V, V, V),
    IBin(IntOp, V, V),
    Shift(Shift, V, u8),
    IToF(V),
    /// Output `j` gets the value, at vector `at` from the current index.
    Store(usize, V, usize),
}

impl Op {
    fn operands(&self) -> Vec<V> {
        match *self {
            Op::Load(..) | Op::Splat(_) | Op::Const(_) => vec![],
            Op::FUn(_, a) | Op::Shift(_, a, _) | Op::IToF(a) | Op::Store(_, a, _) => vec![a],
            Op::FBin(_, a, b) | Op::Cmp(_, a, b) | Op::IBin(_, a, b) => vec![a, b],
            Op::Fma(a, b, c) | Op::Select(a, b, c) => vec![a, b, c],
        }
    }

    /// The op with its operands renamed by `value` and its loads and stores at vector `at`.
    fn renamed(self, value: impl Fn(V) -> V, at: usize) -> Op {
        match self {
            Op::Load(k, _) => Op::Load(k, at),
            Op::Splat(_) | Op::Const(_) => self,
            Op::FBin(f, a, b) => Op::FBin(f, value(a), value(b)),
            Op::Fma(a, b, c) => Op::Fma(value(a), value(b), value(c)),
            Op::FUn(f, a) => Op::FUn(f, value(a)),
            Op::Cmp(c, a, b) => Op::Cmp(c, value(a), value(b)),
            Op::Select(m, a, b) => Op::Select(value(m), value(a), value(b)),
            Op::IBin(f, a, b) => Op::IBin(f, value(a), value(b)),
            Op::Shift(s, a, by) => Op::Shift(s, value(a), by),
            Op::IToF(a) => Op::IToF(value(a)),
            Op::Store(j, v, _) => Op::Store(j, value(v), at),
        }
    }
}

/// `copies` copies of a one-vector body working on consecutive vectors, interleaved op by op so
/// that their chains of dependent instructions overlap (one vector's chain alone leaves the
/// vector units waiting on each result); splats and constants are shared.
fn unroll(ops: &[Op], copies: usize) -> Vec<Op> {
    let mut out = Vec::with_capacity(ops.len() * copies);
    let mut renamed = vec![vec![0; ops.len()]; copies];
    for (i, &op) in ops.iter().enumerate() {
        if matches!(op, Op::Splat(_) | Op::Const(_)) {
            renamed.iter_mut().for_each(|r| r[i] = out.len());
            out.push(op);
            continue;
        }
        for (at, r) in renamed.iter_mut().enumerate() {
            let new = op.renamed(|v| r[v], at);
            r[i] = out.len();
            out.push(new);
        }
    }
    out
}

/// The ops of one kernel, as [`math`] emits them.
#[derive(Default)]
struct Recorder {
    ops: Vec<Op>,
    /// A `sin` or `cos` was asked for (a call, which these kernels do not make).
    calls: bool,
}

impl Recorder {
    fn push(&mut self, op: Op) -> V {
        self.ops.push(op);
        self.ops.len() - 1
    }
}

impl Emit for Recorder {
    type F = V;
    type I = V;
    type B = V;

    fn c(&mut self, v: f32) -> V {
        self.push(Op::Const(v.to_bits()))
    }
    fn ic(&mut self, v: i32) -> V {
        self.push(Op::Const(v as u32))
    }
    fn fbin(&mut self, op: FloatOp, a: V, b: V) -> V {
        self.push(Op::FBin(op, a, b))
    }
    fn fma(&mut self, a: V, b: V, c: V) -> V {
        self.push(Op::Fma(a, b, c))
    }
    fn fun(&mut self, op: FloatUn, a: V) -> V {
        self.push(Op::FUn(op, a))
    }
    fn fcmp(&mut self, cmp: FloatCmp, a: V, b: V) -> V {
        self.push(Op::Cmp(cmp, a, b))
    }
    fn select(&mut self, cond: V, a: V, b: V) -> V {
        self.push(Op::Select(cond, a, b))
    }
    // A register holds floats and integers alike.
    fn bits(&mut self, x: V) -> V {
        x
    }
    fn from_bits(&mut self, i: V) -> V {
        i
    }
    fn ibin(&mut self, op: IntOp, a: V, b: V) -> V {
        self.push(Op::IBin(op, a, b))
    }
    fn shift(&mut self, op: Shift, a: V, by: u8) -> V {
        self.push(Op::Shift(op, a, by))
    }
    fn i_to_f(&mut self, i: V) -> V {
        self.push(Op::IToF(i))
    }
    fn sin(&mut self, x: V) -> V {
        self.calls = true;
        x
    }
    fn cos(&mut self, x: V) -> V {
        self.calls = true;
        x
    }
}

/// Where each value lives while the body runs.
#[derive(Clone, Copy)]
enum Reg {
    Zmm(usize),
    /// k2…k7 (k1 masks the lanes past the row's end).
    Mask(usize),
}

/// The registers not holding a live value.
struct Free {
    zmm: Vec<usize>,
    masks: Vec<usize>,
}

impl Free {
    fn give_back(&mut self, r: Reg) {
        match r {
            Reg::Zmm(i) => self.zmm.push(i),
            Reg::Mask(k) => self.masks.push(k),
        }
    }
}

/// Registers assigned in order of definition, each freed after its value's last use; `None`
/// when more are live at once than the machine has. The constants in `hoisted` have registers of
/// their own for the whole kernel ([`held`]).
fn allocate(ops: &[Op], hoisted: &[u32]) -> Option<Vec<Reg>> {
    // A value nothing reads is free right after its definition.
    let mut last_use: Vec<usize> = (0..ops.len()).collect();
    for (i, op) in ops.iter().enumerate() {
        for v in op.operands() {
            last_use[v] = i;
        }
    }
    let fixed: Vec<Option<Reg>> = ops.iter().map(|op| held(op, hoisted)).collect();
    let mut free = Free { zmm: (0..32 - hoisted.len()).rev().collect(), masks: (2..8).rev().collect() };
    let mut regs = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        // Operands whose last use this is give their registers back first, so that the result
        // may take one of them (every instruction below reads its sources before writing).
        let mut operands = op.operands();
        operands.sort_unstable();
        operands.dedup();
        operands.into_iter().filter(|&v| last_use[v] == i && fixed[v].is_none()).for_each(|v| free.give_back(regs[v]));
        let reg = match (fixed[i], *op) {
            (Some(reg), _) => reg,
            (None, Op::Cmp(..)) => Reg::Mask(free.masks.pop()?),
            // A store defines nothing.
            (None, Op::Store(_, v, _)) => regs[v],
            (None, _) => Reg::Zmm(free.zmm.pop()?),
        };
        if last_use[i] == i && !matches!(op, Op::Store(..)) && fixed[i].is_none() {
            free.give_back(reg);
        }
        regs.push(reg);
    }
    Some(regs)
}

/// The register of a constant loaded once before the loops: the `i`th of `hoisted` in zmm31 − i.
fn held(op: &Op, hoisted: &[u32]) -> Option<Reg> {
    match *op {
        Op::Const(bits) => hoisted.iter().position(|&h| h == bits).map(|i| Reg::Zmm(31 - i)),
        _ => None,
    }
}

fn zmm(r: Reg) -> AsmRegisterZmm {
    match r {
        Reg::Zmm(i) => registers::get_zmm(Register::ZMM0 + i as u32).expect("a zmm register"),
        Reg::Mask(_) => unreachable!("a mask where a vector is read"),
    }
}

fn mask(r: Reg) -> AsmRegisterK {
    match r {
        Reg::Mask(k) => [k2, k3, k4, k5, k6, k7][k - 2],
        Reg::Zmm(_) => unreachable!("a vector where a mask is read"),
    }
}

/// `z` written only in the lanes of mask `m`.
fn masked(z: AsmRegisterZmm, m: Reg) -> AsmRegisterZmm {
    match m {
        Reg::Mask(2) => z.k2(),
        Reg::Mask(3) => z.k3(),
        Reg::Mask(4) => z.k4(),
        Reg::Mask(5) => z.k5(),
        Reg::Mask(6) => z.k6(),
        Reg::Mask(7) => z.k7(),
        _ => unreachable!("not a mask of a comparison"),
    }
}

/// The kernel of `spec` as machine code with the Cranelift kernels' signature
/// (`kernel(n, rows, inputs, strides, outputs)`, System V), or `None` when it is left to
/// Cranelift.
pub(super) fn assemble(spec: &KernelSpec) -> Option<(Vec<u8>, usize)> {
    let bodies = plan(spec)?;
    let code = emit(&bodies, spec.splat.len(), spec.outputs.len()).expect("the kernel's instructions assemble");
    Some((code, bodies.one.0.len()))
}

/// The kernel's loop bodies with their registers, or `None` when it is left to Cranelift. The
/// most vectors at once whose values fit the registers with the constants hoisted, else without.
fn plan(spec: &KernelSpec) -> Option<Bodies> {
    let mut rec = Recorder::default();
    let mut vals: Vec<V> = Vec::with_capacity(spec.exprs.len());
    for e in &spec.exprs {
        let v = match *e {
            Expr::Input(k) => rec.push(if spec.splat[k] { Op::Splat(k) } else { Op::Load(k, 0) }),
            Expr::Const(c) => rec.c(c),
            Expr::Unary(u, x) => math::unary(&mut rec, u, vals[x]),
            Expr::Binary(op, x, y) => math::binary(&mut rec, op, vals[x], vals[y]),
        };
        vals.push(v);
    }
    for (j, &o) in spec.outputs.iter().enumerate() {
        rec.push(Op::Store(j, vals[o], 0));
    }
    if rec.calls {
        return None;
    }
    let mut constants: Vec<u32> = rec.ops.iter().filter_map(|op| if let Op::Const(bits) = *op { Some(bits) } else { None }).collect();
    constants.sort_unstable();
    constants.dedup();
    let plan = |hoisted: Vec<u32>, copies: usize| -> Option<Bodies> {
        if hoisted.len() >= 32 {
            return None;
        }
        let one = allocate(&rec.ops, &hoisted)?;
        let group = if copies > 1 {
            let ops = unroll(&rec.ops, copies);
            let regs = allocate(&ops, &hoisted)?;
            Some((copies, ops, regs))
        } else {
            None
        };
        Some(Bodies { hoisted, one: (rec.ops.clone(), one), group })
    };
    [(true, 4), (true, 2), (false, 4), (false, 2), (true, 1), (false, 1)]
        .into_iter()
        .find_map(|(hoist, copies)| plan(if hoist { constants.clone() } else { Vec::new() }, copies))
}

/// A kernel's loop bodies: one vector (masked: a row's last vector, and its vectors after the
/// whole groups), and when the registers allow, a group of `copies` whole vectors
/// ([`unroll`]). The `hoisted` constants are loaded into registers of their own before the loops
/// (when they fit: a constant in every iteration is a load that competes with the arithmetic).
struct Bodies {
    hoisted: Vec<u32>,
    one: (Vec<Op>, Vec<Reg>),
    group: Option<(usize, Vec<Op>, Vec<Reg>)>,
}

/// The row and element loops around the bodies. Registers: r12 `n`, r13 `rows`, r14 the
/// inputs' pointers, r15 their row strides, rbx the outputs' pointers, rbp the row, rcx the
/// element; the row's input and output pointers in the frame.
fn emit(bodies: &Bodies, inputs: usize, outputs: usize) -> Result<Vec<u8>, IcedError> {
    let frame = (8 * (inputs + outputs)).next_multiple_of(16) as i32 + 8;
    let at = Frame { inputs };
    let mut x = CodeAssembler::new(64)?;
    enter(&mut x, frame)?;
    x.mov(r12, rdi)?;
    x.mov(r13, rsi)?;
    x.mov(r14, rdx)?;
    x.mov(r15, rcx)?;
    x.mov(rbx, r8)?;
    x.xor(ebp, ebp)?;
    let mut pool: Vec<(u32, CodeLabel)> = Vec::new();
    for (i, &bits) in bodies.hoisted.iter().enumerate() {
        let label = constant(&mut x, &mut pool, bits);
        x.vbroadcastss(zmm(Reg::Zmm(31 - i)), dword_ptr(label))?;
    }

    let (mut row_top, mut done, mut element_top, mut row_done) = (x.create_label(), x.create_label(), x.create_label(), x.create_label());
    x.set_label(&mut row_top)?;
    x.cmp(rbp, r13)?;
    x.jge(done)?;
    for k in 0..inputs {
        x.mov(rax, qword_ptr(r15 + 8 * k as i32))?;
        x.imul_2(rax, rbp)?;
        x.shl(rax, 2)?;
        x.add(rax, qword_ptr(r14 + 8 * k as i32))?;
        x.mov(qword_ptr(at.input(k)), rax)?;
    }
    for j in 0..outputs {
        x.mov(rax, r12)?;
        x.imul_2(rax, rbp)?;
        x.shl(rax, 2)?;
        x.add(rax, qword_ptr(rbx + 8 * j as i32))?;
        x.mov(qword_ptr(at.output(j)), rax)?;
    }
    x.xor(ecx, ecx)?;
    let hoisted = bodies.hoisted.len();
    if let Some((copies, ops, regs)) = &bodies.group {
        let copies = *copies;
        // Whole groups while at least `copies` vectors remain.
        let mut group_top = x.create_label();
        x.set_label(&mut group_top)?;
        x.mov(rax, r12)?;
        x.sub(rax, rcx)?;
        x.cmp(rax, 16 * copies as i32)?;
        x.jl(element_top)?;
        body(&mut x, &mut pool, &at, ops, regs, hoisted, false)?;
        x.add(rcx, 16 * copies as i32)?;
        x.jmp(group_top)?;
    }
    x.set_label(&mut element_top)?;
    x.cmp(rcx, r12)?;
    x.jge(row_done)?;
    // k1: the lanes of min(n − i, 16) elements.
    x.mov(rax, r12)?;
    x.sub(rax, rcx)?;
    x.mov(edx, 16)?;
    x.cmp(rax, rdx)?;
    x.cmova(rax, rdx)?;
    x.mov(edx, -1)?;
    x.bzhi(edx, edx, eax)?;
    x.kmovw(k1, edx)?;
    body(&mut x, &mut pool, &at, &bodies.one.0, &bodies.one.1, hoisted, true)?;
    x.add(rcx, 16)?;
    x.jmp(element_top)?;
    x.set_label(&mut row_done)?;
    x.inc(rbp)?;
    x.jmp(row_top)?;

    x.set_label(&mut done)?;
    leave(&mut x, frame)?;
    for (bits, mut label) in pool {
        x.set_label(&mut label)?;
        x.dd(&[bits])?;
    }
    x.assemble(0)
}

/// Where the row's input and output pointers are kept in the frame.
struct Frame {
    inputs: usize,
}

impl Frame {
    fn input(&self, k: usize) -> AsmMemoryOperand {
        rsp + 8 * k as i32
    }
    fn output(&self, j: usize) -> AsmMemoryOperand {
        rsp + 8 * (self.inputs + j) as i32
    }
}

/// One loop body: `ops` in their registers, at element rcx (the constants in the top `hoisted`
/// registers already there); with `masked_by_k1`, loads and stores only in the lanes of k1.
#[allow(clippy::too_many_arguments)]
fn body(
    x: &mut CodeAssembler,
    pool: &mut Vec<(u32, CodeLabel)>,
    at: &Frame,
    ops: &[Op],
    regs: &[Reg],
    hoisted: usize,
    masked_by_k1: bool,
) -> Result<(), IcedError> {
    for (op, &r) in ops.iter().zip(regs) {
        let reg = |v: V| zmm(regs[v]);
        match *op {
            Op::Load(k, vector) => {
                x.mov(rax, qword_ptr(at.input(k)))?;
                let from = zmmword_ptr(rax + rcx * 4 + 64 * vector as i32);
                if masked_by_k1 {
                    x.vmovups(zmm(r).k1().z(), from)?;
                } else {
                    x.vmovups(zmm(r), from)?;
                }
            }
            Op::Splat(k) => {
                x.mov(rax, qword_ptr(at.input(k)))?;
                x.vbroadcastss(zmm(r), dword_ptr(rax))?;
            }
            Op::Const(_) if matches!(r, Reg::Zmm(i) if i >= 32 - hoisted) => {}
            Op::Const(bits) => {
                let label = constant(x, pool, bits);
                x.vbroadcastss(zmm(r), dword_ptr(label))?;
            }
            Op::FBin(f, a, b) => match f {
                FloatOp::Add => x.vaddps(zmm(r), reg(a), reg(b))?,
                FloatOp::Sub => x.vsubps(zmm(r), reg(a), reg(b))?,
                FloatOp::Mul => x.vmulps(zmm(r), reg(a), reg(b))?,
                FloatOp::Div => x.vdivps(zmm(r), reg(a), reg(b))?,
            },
            Op::Fma(a, b, c) => {
                // a·b + c into whichever operand's register the result took, else a copy of a.
                let d = zmm(r);
                if d == reg(c) {
                    x.vfmadd231ps(d, reg(a), reg(b))?;
                } else if d == reg(b) {
                    x.vfmadd213ps(d, reg(a), reg(c))?;
                } else {
                    if d != reg(a) {
                        x.vmovaps(d, reg(a))?;
                    }
                    x.vfmadd213ps(d, reg(b), reg(c))?;
                }
            }
            Op::FUn(f, a) => match f {
                FloatUn::Neg => {
                    let sign = constant(x, pool, 0x8000_0000);
                    x.vpxord(zmm(r), reg(a), dword_bcst(sign))?
                }
                FloatUn::Abs => {
                    let magnitude = constant(x, pool, 0x7fff_ffff);
                    x.vpandd(zmm(r), reg(a), dword_bcst(magnitude))?
                }
                FloatUn::Sqrt => x.vsqrtps(zmm(r), reg(a))?,
            },
            Op::Cmp(c, a, b) => {
                // The ordered, quiet predicates (false when either is NaN), and unordered.
                let predicate = match c {
                    FloatCmp::Lt => 0x11,
                    FloatCmp::Gt => 0x1e,
                    FloatCmp::Ge => 0x1d,
                    FloatCmp::Eq => 0x00,
                    FloatCmp::Unordered => 0x03,
                };
                x.vcmpps(mask(r), reg(a), reg(b), predicate)?;
            }
            // Lanes where the mask is set take the second source.
            Op::Select(m, a, b) => x.vblendmps(masked(zmm(r), regs[m]), reg(b), reg(a))?,
            Op::IBin(f, a, b) => match f {
                IntOp::Add => x.vpaddd(zmm(r), reg(a), reg(b))?,
                IntOp::Sub => x.vpsubd(zmm(r), reg(a), reg(b))?,
                IntOp::And => x.vpandd(zmm(r), reg(a), reg(b))?,
                IntOp::Or => x.vpord(zmm(r), reg(a), reg(b))?,
            },
            Op::Shift(s, a, by) => match s {
                Shift::Left => x.vpslld(zmm(r), reg(a), by as i32)?,
                Shift::RightSigned => x.vpsrad(zmm(r), reg(a), by as i32)?,
                Shift::RightUnsigned => x.vpsrld(zmm(r), reg(a), by as i32)?,
            },
            Op::IToF(a) => x.vcvtdq2ps(zmm(r), reg(a))?,
            Op::Store(j, v, vector) => {
                x.mov(rax, qword_ptr(at.output(j)))?;
                let to = zmmword_ptr(rax + rcx * 4 + 64 * vector as i32);
                if masked_by_k1 {
                    x.vmovups(to.k1(), reg(v))?;
                } else {
                    x.vmovups(to, reg(v))?;
                }
            }
        }
    }
    Ok(())
}

/// The callee-saved registers (System V) the functions assembled here use.
fn callee_saved() -> [AsmRegister64; 6] {
    [rbx, rbp, r12, r13, r14, r15]
}

/// A function's entry: the callee-saved registers pushed, then `frame` bytes of locals.
pub(crate) fn enter(x: &mut CodeAssembler, frame: i32) -> Result<(), IcedError> {
    for r in callee_saved() {
        x.push(r)?;
    }
    x.sub(rsp, frame)
}

/// A function's exit after [`enter`]: the upper halves of the vector registers cleared (for SSE
/// code that follows), the locals dropped, the registers restored.
pub(crate) fn leave(x: &mut CodeAssembler, frame: i32) -> Result<(), IcedError> {
    x.vzeroupper()?;
    x.add(rsp, frame)?;
    for r in callee_saved().into_iter().rev() {
        x.pop(r)?;
    }
    x.ret()
}

/// The label of `bits` in the constant pool (added when new).
fn constant(x: &mut CodeAssembler, pool: &mut Vec<(u32, CodeLabel)>, bits: u32) -> CodeLabel {
    match pool.iter().find(|(b, _)| *b == bits) {
        Some(&(_, l)) => l,
        None => {
            let l = x.create_label();
            pool.push((bits, l));
            l
        }
    }
}

#[cfg(test)]
mod tests {
    use tttc_ir::{BinaryOp, UnaryOp};
    use tttc_lower::elementwise::{Expr, KernelSpec};

    use crate::kernel::{compile, KernelFn};

    /// Values at every edge of the math: NaN, ±∞, ±0, subnormals, exp's clamps, tanh's and
    /// softplus's thresholds, and ordinary numbers of both signs.
    fn edge_values(len: usize) -> Vec<f32> {
        let edges = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-40, -1e-40, 88.8, 88.7, -87.4, -87.3, 20.0, 20.5, 9.0, -9.0, 1e-4, 0.625];
        (0..len).map(|i| if i % 3 == 0 { edges[(i / 3) % edges.len()] } else { ((i * 7919 % 2003) as f32 - 1001.0) / 97.0 }).collect()
    }

    /// Runs `f` over `rows` rows of `n` elements (inputs' rows `n + 3` apart; splat inputs one
    /// value per row); the outputs have one guard element after each row's `n`.
    fn run(f: KernelFn, spec: &KernelSpec, rows: usize, n: usize) -> Vec<Vec<f32>> {
        let stride = n + 3;
        let inputs: Vec<Vec<f32>> = (0..spec.splat.len()).map(|k| edge_values(rows * stride + k).split_off(k)).collect();
        let mut outputs: Vec<Vec<f32>> = spec.outputs.iter().map(|_| vec![12345.0; rows * n + 1]).collect();
        let ins: Vec<*const f32> = inputs.iter().map(|v| v.as_ptr()).collect();
        let strides: Vec<i64> = spec.splat.iter().map(|_| stride as i64).collect();
        let outs: Vec<*mut f32> = outputs.iter_mut().map(|v| v.as_mut_ptr()).collect();
        unsafe { f(n as i64, rows as i64, ins.as_ptr(), strides.as_ptr(), outs.as_ptr()) };
        outputs
    }

    /// Every kernel assembled for AVX-512 against Cranelift's for the same spec, bit for bit
    /// (NaN for NaN), on every unary and binary op, splat inputs, several outputs, rows of
    /// whole vectors, of a tail only, of both, and nothing written past a row's end. On a CPU
    /// without AVX-512 both are Cranelift's; there [`kernels_beyond_the_registers_are_left_to_cranelift`]
    /// and the backends' tests check the portable kernels.
    #[test]
    fn kernels_give_the_portable_kernels_bits() {
        use UnaryOp::*;
        let unary = [Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Silu, GeluTanh, Softplus];
        let binary = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Ge];
        let mut specs: Vec<KernelSpec> = unary
            .iter()
            .map(|&u| KernelSpec { exprs: vec![Expr::Input(0), Expr::Unary(u, 0)], splat: vec![false], outputs: vec![1] })
            .chain(binary.iter().flat_map(|&b| {
                [[false, false], [false, true], [true, false]].map(|splat| KernelSpec {
                    exprs: vec![Expr::Input(0), Expr::Input(1), Expr::Binary(b, 0, 1)],
                    splat: splat.to_vec(),
                    outputs: vec![2],
                })
            }))
            .collect();
        // GELU's derivative as the pass pipeline writes it, and a value stored twice.
        specs.push(KernelSpec {
            exprs: vec![
                Expr::Input(0),
                Expr::Input(1),
                Expr::Const(0.5),
                Expr::Unary(GeluTanh, 0),
                Expr::Binary(BinaryOp::Mul, 0, 2),
                Expr::Unary(Sigmoid, 4),
                Expr::Binary(BinaryOp::Mul, 5, 1),
                Expr::Binary(BinaryOp::Sub, 6, 3),
            ],
            splat: vec![false, false],
            outputs: vec![3, 7, 3],
        });
        // 31 constants in a chain: too many to hoist beside the values of two vectors at once,
        // so they are loaded in the loop.
        let mut chain = vec![Expr::Input(0)];
        for i in 1..=31 {
            chain.push(Expr::Const(1.0 + i as f32 / 1024.0));
            chain.push(Expr::Binary(BinaryOp::Mul, chain.len() - 2, chain.len() - 1));
        }
        specs.push(KernelSpec { outputs: vec![chain.len() - 1], exprs: chain, splat: vec![false] });
        // Both group sizes with the constants hoisted, and a group whose constants are loaded in
        // the loop, among them: (vectors per group, constants hoisted, constants in the loop).
        let layouts: Vec<(Option<usize>, bool, bool)> = specs
            .iter()
            .map(|s| {
                let b = super::plan(s).expect("assembled");
                let in_loop = b.hoisted.is_empty() && b.one.0.iter().any(|op| matches!(op, super::Op::Const(_)));
                (b.group.as_ref().map(|g| g.0), !b.hoisted.is_empty(), in_loop)
            })
            .collect();
        for want in [(Some(4), true, false), (Some(2), true, false), (Some(4), false, true)] {
            assert!(layouts.contains(&want), "no kernel laid out as {want:?}: {layouts:?}");
        }
        // (Assembling needs no AVX-512: this checks the encodings on any machine.)
        assert!(specs.iter().all(|s| super::assemble(s).is_some()), "a kernel left to Cranelift");
        let portable = compile(&specs, true).unwrap();
        let native = compile(&specs, false).unwrap();
        for (k, spec) in specs.iter().enumerate() {
            for (rows, n) in [(1, 1), (2, 5), (3, 16), (2, 37), (1, 256), (2, 101), (1, 200)] {
                let (want, got) = (run(portable.kernels[k], spec, rows, n), run(native.kernels[k], spec, rows, n));
                for (w, g) in want.iter().zip(&got) {
                    assert_eq!(g[rows * n], 12345.0, "{spec:?}: written past the last row");
                    for (i, (a, b)) in w.iter().zip(g).enumerate() {
                        assert!(a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(), "{spec:?}, {rows} × {n}, element {i}: {b} against {a}");
                    }
                }
            }
        }
    }

    /// A kernel holding more values at once than there are registers, or calling `sin` or
    /// `cos`, is left to Cranelift; the first computes the same either way.
    #[test]
    fn kernels_beyond_the_registers_are_left_to_cranelift() {
        // 40 inputs loaded before the first sum: all live together.
        let inputs = 40;
        let mut exprs: Vec<Expr> = (0..inputs).map(Expr::Input).collect();
        exprs.push(Expr::Binary(BinaryOp::Add, 0, 1));
        for i in 2..inputs {
            exprs.push(Expr::Binary(BinaryOp::Add, exprs.len() - 1, i));
        }
        let spec = KernelSpec { outputs: vec![exprs.len() - 1], exprs, splat: vec![false; inputs] };
        assert!(super::assemble(&spec).is_none());
        for trig in [UnaryOp::Sin, UnaryOp::Cos] {
            let calls = KernelSpec { exprs: vec![Expr::Input(0), Expr::Unary(trig, 0)], splat: vec![false], outputs: vec![1] };
            assert!(super::assemble(&calls).is_none(), "{trig:?} needs a call");
        }
        let out = run(compile(std::slice::from_ref(&spec), false).unwrap().kernels[0], &spec, 2, 21);
        let want = run(compile(std::slice::from_ref(&spec), true).unwrap().kernels[0], &spec, 2, 21);
        assert!(out[0].iter().zip(&want[0]).all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan()));
    }
}
