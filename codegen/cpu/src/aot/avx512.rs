//! The matrix product of compiled models on x86-64 CPUs with AVX-512, assembled with iced-x86:
//! Cranelift's x86-64 backend emits 128-bit vectors only, a quarter of what these CPUs multiply
//! per instruction. `c[m×n] = a[m×k] · b[k×n]`, `c` row-major, `a` and `b` read through (row,
//! column) strides, System V calling convention.
//!
//! Blocks of 12 rows × 32 columns keep their sums in 24 zmm registers while `k` runs (one
//! broadcast element of `a` times two vectors of `b`); a block 16 columns wide or narrower uses
//! one vector. Columns past `n` are masked (AVX-512 masks also keep masked loads from faulting).
//! A row of `b` is one or two vector loads when its columns are contiguous, gathers otherwise (a
//! transposed `b`, its columns `b_cs` apart: at most 2^25 for the gathers' 32-bit indices), so
//! that nothing is transposed before a product.
//! `k` is walked in slices of [`KC`] so that the slice of `b` a row block sweeps stays in the
//! L2 cache, `n` in slices of [`NC`]; after the first slice of `k` a block adds to what `c`
//! holds. Nothing is packed: the 12 rows of `a` a block reads (12 × [`KC`] floats) stay in L1.

use anyhow::{anyhow, Result};
use cranelift_module::{FuncId, Linkage, Module};
use iced_x86::code_asm::*;
use iced_x86::Register;

use crate::kernel::avx512::{enter, leave};

/// Rows per block (three groups of four rows addressed from one pointer each).
const MR: usize = 12;
/// Depth of a slice of `k`, and width of a slice of `n`: 256 × 1024 floats of `b` is 1 MiB.
const KC: i32 = 256;
const NC: i32 = 1024;

/// Defines the product as a local function `name(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`.
pub(super) fn define<M: Module>(module: &mut M, name: &str) -> Result<FuncId> {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    for ty in [ptr, ptr, cranelift_codegen::ir::types::I64, cranelift_codegen::ir::types::I64, ptr] {
        sig.params.push(cranelift_codegen::ir::AbiParam::new(ty));
    }
    for _ in 0..5 {
        sig.params.push(cranelift_codegen::ir::AbiParam::new(cranelift_codegen::ir::types::I64));
    }
    let id = module.declare_function(name, Linkage::Local, &sig)?;
    let code = assemble().map_err(|e| anyhow!("assembling the AVX-512 matrix product: {e}"))?;
    module.define_function_bytes(id, 64, &code, &[])?;
    Ok(id)
}

// Locals, at these offsets from rsp once the frame is set up.
const M_: i32 = 0;
const N_: i32 = 8;
const K_: i32 = 16;
const A_: i32 = 24;
const B_: i32 = 32;
const PC: i32 = 40; // start of the slice of k
const JC: i32 = 48; // start of the slice of n
const NC_END: i32 = 56;
const KC_: i32 = 64; // depth of this slice of k
const A_AT: i32 = 72; // a + pc · a_cs (bytes)
const B_AT: i32 = 80; // b + pc · b_rs (bytes)
const B_CS: i32 = 88; // b_cs · 4
const GATHER: i32 = 96; // b_cs ≠ 1
const IOTA: i32 = 104; // 0, 1, …, 15 as int32
const FRAME: i32 = 168;
// The six callee-saved registers pushed, then the frame; the caller's return address is above
// them and its stack arguments (b_cs, m, n, k) above that.
const STACK_ARGS: i32 = FRAME + 6 * 8 + 8;

fn zmm(i: usize) -> AsmRegisterZmm {
    registers::get_zmm(Register::ZMM0 + i as u32).expect("a zmm register")
}

/// Registers: rdi `c`, rdx `a_rs`·4, rcx `a_cs`·4, r9 `b_rs`·4, r10 3·`a_rs`·4, r11 `n`·4;
/// r14 the block's first row, r15 its first column; in a block rax/rbx/rbp point at rows 0, 4
/// and 8 of `a`, r12 at the row of `b`, r13 counts `k`, rsi walks `c`'s rows. zmm30/31 hold
/// the gathers' indices: `b_cs` times 0..15 and 16..31.
fn assemble() -> Result<Vec<u8>, IcedError> {
    let mut x = CodeAssembler::new(64)?;
    enter(&mut x, FRAME)?;
    for (local, arg) in [(B_CS, 0), (M_, 8), (N_, 16), (K_, 24)] {
        x.mov(rax, qword_ptr(rsp + STACK_ARGS + arg))?;
        x.mov(qword_ptr(rsp + local), rax)?;
    }
    x.mov(qword_ptr(rsp + A_), rsi)?;
    x.mov(qword_ptr(rsp + B_), r8)?;
    x.shl(rdx, 2)?;
    x.shl(rcx, 2)?;
    x.shl(r9, 2)?;
    x.lea(r10, ptr(rdx + rdx * 2))?;
    x.mov(r11, qword_ptr(rsp + N_))?;
    x.shl(r11, 2)?;
    x.mov(rax, qword_ptr(rsp + B_CS))?;
    x.xor(ebx, ebx)?;
    x.cmp(rax, 1)?;
    x.setne(bl)?;
    x.mov(qword_ptr(rsp + GATHER), rbx)?;
    for i in 0..16 {
        x.mov(dword_ptr(rsp + IOTA + 4 * i), i)?;
    }
    x.vpbroadcastd(zmm31, eax)?;
    x.vpmulld(zmm30, zmm31, zmmword_ptr(rsp + IOTA))?;
    x.vpslld(zmm31, zmm31, 4)?;
    x.vpaddd(zmm31, zmm31, zmm30)?;
    x.shl(rax, 2)?;
    x.mov(qword_ptr(rsp + B_CS), rax)?;

    // for jc in (0..n).step_by(NC)
    let (mut jc_top, mut done) = (x.create_label(), x.create_label());
    x.mov(qword_ptr(rsp + JC), 0)?;
    x.set_label(&mut jc_top)?;
    x.mov(rax, qword_ptr(rsp + JC))?;
    x.cmp(rax, qword_ptr(rsp + N_))?;
    x.jae(done)?;
    x.add(rax, NC)?;
    x.cmp(rax, qword_ptr(rsp + N_))?;
    x.cmova(rax, qword_ptr(rsp + N_))?;
    x.mov(qword_ptr(rsp + NC_END), rax)?;

    // for pc in (0..k).step_by(KC), at least once (k = 0 still writes zeros)
    let mut pc_top = x.create_label();
    x.mov(qword_ptr(rsp + PC), 0)?;
    x.set_label(&mut pc_top)?;
    x.mov(rax, qword_ptr(rsp + K_))?;
    x.sub(rax, qword_ptr(rsp + PC))?;
    x.mov(rbx, KC as u64)?;
    x.cmp(rax, rbx)?;
    x.cmova(rax, rbx)?;
    x.mov(qword_ptr(rsp + KC_), rax)?;
    x.mov(rax, qword_ptr(rsp + PC))?;
    x.imul_2(rax, rcx)?;
    x.add(rax, qword_ptr(rsp + A_))?;
    x.mov(qword_ptr(rsp + A_AT), rax)?;
    x.mov(rax, qword_ptr(rsp + PC))?;
    x.imul_2(rax, r9)?;
    x.add(rax, qword_ptr(rsp + B_))?;
    x.mov(qword_ptr(rsp + B_AT), rax)?;

    // Whole blocks of MR rows, then one of the rows left.
    let (mut rows_top, mut tail, mut rows_done) = (x.create_label(), x.create_label(), x.create_label());
    x.xor(r14, r14)?;
    x.set_label(&mut rows_top)?;
    x.lea(rax, ptr(r14 + MR as i32))?;
    x.cmp(rax, qword_ptr(rsp + M_))?;
    x.ja(tail)?;
    columns(&mut x, MR)?;
    x.add(r14, MR as i32)?;
    x.jmp(rows_top)?;
    x.set_label(&mut tail)?;
    x.mov(rax, qword_ptr(rsp + M_))?;
    x.sub(rax, r14)?;
    for rows in 1..MR {
        // (A label needs an instruction of its own: the last test goes straight to the end.)
        let mut next = x.create_label();
        x.cmp(rax, rows as i32)?;
        x.jne(if rows + 1 < MR { next } else { rows_done })?;
        columns(&mut x, rows)?;
        x.jmp(rows_done)?;
        if rows + 1 < MR {
            x.set_label(&mut next)?;
        }
    }
    x.set_label(&mut rows_done)?;

    x.mov(rax, qword_ptr(rsp + PC))?;
    x.add(rax, KC)?;
    x.mov(qword_ptr(rsp + PC), rax)?;
    x.cmp(rax, qword_ptr(rsp + K_))?;
    x.jb(pc_top)?;

    x.add(qword_ptr(rsp + JC), NC)?;
    x.jmp(jc_top)?;

    x.set_label(&mut done)?;
    leave(&mut x, FRAME)?;
    x.assemble(0)
}

/// The column blocks of the rows `r14..r14 + rows`, across the slice of `n`: masks for the
/// columns past its end, one vector when 16 columns or fewer are left.
fn columns(x: &mut CodeAssembler, rows: usize) -> Result<(), IcedError> {
    let (mut top, mut next, mut end) = (x.create_label(), x.create_label(), x.create_label());
    x.mov(r15, qword_ptr(rsp + JC))?;
    x.cmp(r15, qword_ptr(rsp + NC_END))?;
    x.jae(end)?;
    x.set_label(&mut top)?;
    // w = min(columns left, 32); k1 = the first min(w, 16) lanes, k2 = the next w - 16.
    x.mov(rax, qword_ptr(rsp + NC_END))?;
    x.sub(rax, r15)?;
    x.mov(esi, 32)?;
    x.cmp(rax, rsi)?;
    x.cmova(rax, rsi)?;
    x.mov(esi, -1)?;
    x.bzhi(esi, esi, eax)?;
    x.kmovw(k1, esi)?;
    x.lea(rbx, ptr(rax - 16))?;
    x.mov(esi, -1)?;
    x.bzhi(esi, esi, ebx)?;
    x.kmovw(k2, esi)?;
    let mut gathered = x.create_label();
    x.cmp(qword_ptr(rsp + GATHER), 0)?;
    x.jne(gathered)?;
    for gather in [false, true] {
        let mut one = x.create_label();
        x.cmp(rax, 16)?;
        x.jbe(one)?;
        block(x, rows, 2, gather)?;
        x.jmp(next)?;
        x.set_label(&mut one)?;
        block(x, rows, 1, gather)?;
        x.jmp(next)?;
        if !gather {
            x.set_label(&mut gathered)?;
        }
    }
    x.set_label(&mut next)?;
    x.add(r15, 32)?;
    x.cmp(r15, qword_ptr(rsp + NC_END))?;
    x.jb(top)?;
    x.set_label(&mut end)?;
    Ok(())
}

/// Row `q` of a block's rows of `a`.
fn a_row(q: usize) -> AsmMemoryOperand {
    let base = [rax, rbx, rbp][q / 4];
    match q % 4 {
        0 => ptr(base),
        1 => ptr(base + rdx),
        2 => ptr(base + rdx * 2),
        _ => ptr(base + r10),
    }
}

/// One block: `rows` rows × `vectors` vectors of 16 columns at (r14, r15), over this slice of
/// `k`, `b`'s rows loaded or (`gather`) gathered. The sum of row `q`, vector `v` lives in
/// zmm(q · vectors + v); zmm24/25 hold `b`'s row, zmm26–29 the broadcast elements of `a`.
fn block(x: &mut CodeAssembler, rows: usize, vectors: usize, gather: bool) -> Result<(), IcedError> {
    let acc = |q: usize, v: usize| zmm(q * vectors + v);
    let masked = |x: &mut CodeAssembler, v: usize, at: AsmMemoryOperand, dst: AsmRegisterZmm| {
        if v == 0 {
            x.vmovups(dst.k1().z(), at)
        } else {
            x.vmovups(dst.k2().z(), at)
        }
    };
    // The sums start at 0 in the first slice of k and at c's values after it.
    let (mut from_c, mut started) = (x.create_label(), x.create_label());
    x.cmp(qword_ptr(rsp + PC), 0)?;
    x.jne(from_c)?;
    for q in 0..rows {
        for v in 0..vectors {
            x.vpxord(acc(q, v), acc(q, v), acc(q, v))?;
        }
    }
    x.jmp(started)?;
    x.set_label(&mut from_c)?;
    c_rows(x)?;
    for q in 0..rows {
        for v in 0..vectors {
            masked(x, v, zmmword_ptr(rsi + 64 * v as i32), acc(q, v))?;
        }
        x.add(rsi, r11)?;
    }
    x.set_label(&mut started)?;

    x.mov(rax, r14)?;
    x.imul_2(rax, rdx)?;
    x.add(rax, qword_ptr(rsp + A_AT))?;
    x.lea(rbx, ptr(rax + rdx * 4))?;
    x.lea(rbp, ptr(rbx + rdx * 4))?;
    x.mov(r12, r15)?;
    x.imul_2(r12, qword_ptr(rsp + B_CS))?;
    x.add(r12, qword_ptr(rsp + B_AT))?;
    x.mov(r13, qword_ptr(rsp + KC_))?;
    let (mut top, mut end) = (x.create_label(), x.create_label());
    x.test(r13, r13)?;
    x.jz(end)?;
    x.set_label(&mut top)?;
    for v in 0..vectors {
        if gather {
            // A gather clears its mask as it goes: it gets a copy.
            if v == 0 {
                x.kmovw(k3, k1)?;
                x.vgatherdps(zmm24.k3(), ptr(r12 + zmm30 * 4))?;
            } else {
                x.kmovw(k4, k2)?;
                x.vgatherdps(zmm25.k4(), ptr(r12 + zmm31 * 4))?;
            }
        } else {
            masked(x, v, zmmword_ptr(r12 + 64 * v as i32), zmm(24 + v))?;
        }
    }
    for q in 0..rows {
        if vectors == 1 {
            x.vfmadd231ps(acc(q, 0), zmm24, dword_bcst(a_row(q)))?;
        } else {
            let t = zmm(26 + q % 4);
            x.vbroadcastss(t, dword_ptr(a_row(q)))?;
            for v in 0..vectors {
                x.vfmadd231ps(acc(q, v), zmm(24 + v), t)?;
            }
        }
    }
    x.add(rax, rcx)?;
    x.add(rbx, rcx)?;
    x.add(rbp, rcx)?;
    x.add(r12, r9)?;
    x.dec(r13)?;
    x.jnz(top)?;
    x.set_label(&mut end)?;

    c_rows(x)?;
    for q in 0..rows {
        for v in 0..vectors {
            let at = zmmword_ptr(rsi + 64 * v as i32);
            if v == 0 {
                x.vmovups(at.k1(), acc(q, v))?;
            } else {
                x.vmovups(at.k2(), acc(q, v))?;
            }
        }
        x.add(rsi, r11)?;
    }
    Ok(())
}

/// rsi = the block's first element of `c`: c + (r14 · n + r15) · 4.
fn c_rows(x: &mut CodeAssembler) -> Result<(), IcedError> {
    x.mov(rsi, r14)?;
    x.imul_2(rsi, r11)?;
    x.add(rsi, rdi)?;
    x.lea(rsi, ptr(rsi + r15 * 4))?;
    Ok(())
}
