//! The matrix product of compiled models, generated with Cranelift so that the object file
//! needs nothing but the C library: `c[m×n] = a[m×k] · b[k×n]`, `c` row-major, `a` read
//! through (row, column) strides, `b`'s rows contiguous (`b_rs` apart; its column stride is
//! taken for the AVX-512 kernel's signature and must be 1: [`super::products`]).
//!
//! Blocks of 6 rows × 8 columns keep their sums in twelve f32x4 registers over the whole `k`
//! loop (one broadcast element of `a` times two vectors of `b`, fused multiply-adds); rows are
//! walked in panels of `PANEL` so that a panel of `a` stays in cache while the column blocks
//! sweep `b`. Edges use blocks of one row, four columns or one column. (Measured at
//! 2048×768×768 on one core: 4-row blocks 22 GFLOP/s, 6-row blocks 28–30.)

use anyhow::Result;
use cranelift_codegen::ir::{types, AbiParam, BlockArg, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{FuncId, Module};

use super::emit::{close, function, mem, open};

/// Rows per panel (a multiple of `ROWS`) and per block.
const PANEL: i64 = 48;
const ROWS: usize = 6;

/// Defines the product as a local function `name(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`:
/// the AVX-512 kernel where the target has it, else the one generated here.
pub(super) fn define<M: Module>(module: &mut M, name: &str) -> Result<FuncId> {
    if crate::kernel::avx512::supported(module.isa()) {
        super::avx512::define(module, name)
    } else {
        define_portable(module, name)
    }
}

/// The product generated with Cranelift, for any target.
pub(super) fn define_portable<M: Module>(module: &mut M, name: &str) -> Result<FuncId> {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    for ty in [ptr, ptr, types::I64, types::I64, ptr, types::I64, types::I64, types::I64, types::I64, types::I64] {
        sig.params.push(AbiParam::new(ty));
    }
    function(module, name, sig, |_, b, p| {
        let g = Gemm { c: p[0], a: p[1], a_rs: p[2], a_cs: p[3], b: p[4], b_rs: p[5], n: p[8], k: p[9], ptr };
        let m = p[7];
        let zero = b.ins().iconst(types::I64, 0);
        let (ic, panels) = open(b, zero, m, PANEL);
        let end = b.ins().iadd_imm_s(ic, PANEL);
        let end = b.ins().smin(end, m);
        // Column blocks of 8, then one of 4, then single columns.
        let n8 = b.ins().band_imm_s(g.n, !7);
        let (j, cols) = open(b, zero, n8, 8);
        g.rows(b, ic, end, j, 2);
        close(b, cols);
        let n4 = b.ins().band_imm_s(g.n, !3);
        let (j, cols) = open(b, n8, n4, 4);
        g.rows(b, ic, end, j, 1);
        close(b, cols);
        let (j, cols) = open(b, n4, g.n, 1);
        g.rows(b, ic, end, j, 0);
        close(b, cols);
        close(b, panels);
        b.ins().return_(&[]);
    })
}

struct Gemm {
    c: Value,
    a: Value,
    a_rs: Value,
    a_cs: Value,
    b: Value,
    b_rs: Value,
    n: Value,
    k: Value,
    ptr: Type,
}

impl Gemm {
    /// Rows `start..end` of column block `j`: `vectors` f32x4 columns (0: one scalar column),
    /// `ROWS` rows at a time, then one.
    fn rows(&self, b: &mut FunctionBuilder, start: Value, end: Value, j: Value, vectors: usize) {
        let span = b.ins().isub(end, start);
        let blocks = b.ins().udiv_imm_u(span, ROWS as i64);
        let whole = b.ins().imul_imm_s(blocks, ROWS as i64);
        let whole_end = b.ins().iadd(start, whole);
        let (i, l) = open(b, start, whole_end, ROWS as i64);
        self.block(b, i, ROWS, j, vectors);
        close(b, l);
        let (i, l) = open(b, whole_end, end, 1);
        self.block(b, i, 1, j, vectors);
        close(b, l);
    }

    /// `c[i..i+rows, j..]`: the sums over `k` kept in registers, carried by the loop's block
    /// parameters.
    fn block(&self, b: &mut FunctionBuilder, i: Value, rows: usize, j: Value, vectors: usize) {
        let (ty, width, count) = if vectors == 0 { (types::F32, 1, 1) } else { (types::F32X4, 4, vectors) };
        let zero_f = b.ins().f32const(0.0);
        let zero = if vectors == 0 { zero_f } else { b.ins().splat(types::F32X4, zero_f) };
        let a_rows: Vec<Value> = (0..rows)
            .map(|r| {
                let row = b.ins().iadd_imm_s(i, r as i64);
                let at = b.ins().imul(row, self.a_rs);
                let at = b.ins().ishl_imm_u(at, 2);
                b.ins().iadd(self.a, at)
            })
            .collect();
        let jb = b.ins().ishl_imm_u(j, 2);
        let b_col = b.ins().iadd(self.b, jb);
        let a_step = b.ins().ishl_imm_u(self.a_cs, 2);
        let b_step = b.ins().ishl_imm_u(self.b_rs, 2);

        let (head, body, exit) = (b.create_block(), b.create_block(), b.create_block());
        b.append_block_param(head, types::I64);
        b.append_block_param(head, self.ptr); // a offset in bytes
        b.append_block_param(head, self.ptr); // the row of b
        let sums = rows * count;
        for _ in 0..sums {
            b.append_block_param(head, ty);
            b.append_block_param(exit, ty);
        }
        let zero_i = b.ins().iconst(types::I64, 0);
        let mut start: Vec<BlockArg> = vec![zero_i.into(), zero_i.into(), b_col.into()];
        start.extend((0..sums).map(|_| BlockArg::from(zero)));
        b.ins().jump(head, &start);
        b.switch_to_block(head);
        let params = b.block_params(head).to_vec();
        let (p, a_off, b_row, acc) = (params[0], params[1], params[2], &params[3..]);
        let more = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, p, self.k);
        let pass: Vec<BlockArg> = acc.iter().map(|&v| v.into()).collect();
        b.ins().brif(more, body, &[], exit, &pass);
        b.switch_to_block(body);
        b.seal_block(body);
        let bv: Vec<Value> = (0..count).map(|v| b.ins().load(ty, mem(), b_row, (16 * v) as i32)).collect();
        let mut next = Vec::with_capacity(sums);
        for (r, &row) in a_rows.iter().enumerate() {
            let at = b.ins().iadd(row, a_off);
            let x = b.ins().load(types::F32, mem(), at, 0);
            let x = if vectors == 0 { x } else { b.ins().splat(types::F32X4, x) };
            for (v, &bv) in bv.iter().enumerate() {
                next.push(b.ins().fma(x, bv, acc[r * count + v]));
            }
        }
        let p1 = b.ins().iadd_imm_s(p, 1);
        let a_next = b.ins().iadd(a_off, a_step);
        let b_next = b.ins().iadd(b_row, b_step);
        let mut args: Vec<BlockArg> = vec![p1.into(), a_next.into(), b_next.into()];
        args.extend(next.iter().map(|&v| BlockArg::from(v)));
        b.ins().jump(head, &args);
        b.seal_block(head);
        b.switch_to_block(exit);
        b.seal_block(exit);
        let results = b.block_params(exit).to_vec();
        for r in 0..rows {
            let row = b.ins().iadd_imm_s(i, r as i64);
            let at = b.ins().imul(row, self.n);
            let at = b.ins().iadd(at, j);
            let at = b.ins().ishl_imm_u(at, 2);
            let dst = b.ins().iadd(self.c, at);
            for v in 0..count {
                b.ins().store(mem(), results[r * count + v], dst, (4 * width * v) as i32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Product = unsafe extern "C" fn(*mut f32, *const f32, i64, i64, *const f32, i64, i64, i64, i64, i64);

    /// Every product kernel this machine runs against a direct sum in f64, over shapes that
    /// hit each edge: rows and columns short of a block, a slice of `k` and of `n`, `k = 0`,
    /// `a` read transposed, `b`'s rows wider than `n`, and (the AVX-512 kernel) `b` transposed.
    #[test]
    fn products_match_a_direct_sum() {
        let mut module = crate::kernel::jit_module().unwrap();
        let mut kernels = vec![("portable", define_portable(&mut module, "portable").unwrap(), false)];
        if crate::kernel::avx512::supported(module.isa()) {
            kernels.push(("avx512", super::super::avx512::define(&mut module, "avx512").unwrap(), true));
        }
        module.finalize_definitions().unwrap();
        let shapes = [(1, 1, 1), (5, 3, 7), (12, 32, 16), (13, 33, 9), (25, 17, 300), (37, 1100, 5), (7, 48, 0), (130, 70, 513)];
        for (label, id, strided_b) in kernels {
            let f = unsafe { std::mem::transmute::<*const u8, Product>(module.get_finalized_function(id)) };
            for &(m, n, k) in &shapes {
                for (a_transposed, b_transposed) in [(false, false), (true, false), (false, true), (true, true)] {
                    if b_transposed && !strided_b {
                        continue;
                    }
                    // `b` has room for k × (n + 3) elements either way.
                    let (a_rs, a_cs) = if a_transposed { (1, m) } else { (k, 1) };
                    let (b_rs, b_cs) = if b_transposed { (1, k) } else { (n + 3, 1) };
                    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
                    let b: Vec<f32> = (0..k * (n + 3)).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
                    let mut c = vec![f32::NAN; m * n];
                    unsafe { f(c.as_mut_ptr(), a.as_ptr(), a_rs as i64, a_cs as i64, b.as_ptr(), b_rs as i64, b_cs as i64, m as i64, n as i64, k as i64) };
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k).map(|p| a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64).sum();
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{label} {m}×{n}×{k} (a transposed: {a_transposed}, b: {b_transposed}) at ({i}, {j}): {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
