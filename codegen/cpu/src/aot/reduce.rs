//! Reductions of compiled models along the middle axis of `[outer, len, inner]`: sum, mean and
//! max, each a function `(dst, src, outer, len, inner, width)` over the first `width` of the
//! `inner` lanes from the given pointers (a thread's share: [`super::parallel::define_reduce`]
//! splits the rows or the lanes). A contiguous row (`inner` 1) is folded in four vectors of
//! partial results, then one, then lane by lane; other reductions run down the rows 16 lanes at
//! a time (four vectors), then 4, then 1, every lane's partial result in a register.

use anyhow::Result;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{FuncId, Module};
use tttc_ir::ReduceKind;

use super::emit::{close, function, mem, open};

/// Something for each kind of reduction (its function, a reference to it).
#[derive(Clone, Copy)]
pub(super) struct Reductions<T> {
    pub sum: T,
    pub mean: T,
    pub max: T,
}

impl<T: Copy> Reductions<T> {
    pub(super) fn get(&self, kind: ReduceKind) -> T {
        match kind {
            ReduceKind::Sum => self.sum,
            ReduceKind::Mean => self.mean,
            ReduceKind::Max => self.max,
        }
    }

    pub(super) fn map<U>(&self, mut f: impl FnMut(T) -> U) -> Reductions<U> {
        Reductions { sum: f(self.sum), mean: f(self.mean), max: f(self.max) }
    }
}

/// Lanes of a vector (Cranelift's x86-64 vectors are 128 bits).
const LANES: i64 = 4;
/// Vectors folded side by side, so that one's addition does not wait for the previous one.
const VECTORS: usize = 4;

/// Defines `{prefix}_reduce_{sum,mean,max}`.
pub(super) fn define<M: Module>(module: &mut M, prefix: &str) -> Result<Reductions<FuncId>> {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([ptr, ptr, types::I64, types::I64, types::I64, types::I64].map(AbiParam::new));
    let mut one = |kind: ReduceKind, name: &str| function(module, &format!("{prefix}_reduce_{name}"), sig.clone(), |_, b, p| body(b, kind, p));
    Ok(Reductions { sum: one(ReduceKind::Sum, "sum")?, mean: one(ReduceKind::Mean, "mean")?, max: one(ReduceKind::Max, "max")? })
}

fn body(b: &mut FunctionBuilder, kind: ReduceKind, p: &[Value]) {
    let [dst, src, outer, len, inner, width] = [p[0], p[1], p[2], p[3], p[4], p[5]];
    let zero = b.ins().iconst(types::I64, 0);
    let (o, rows) = open(b, zero, outer, 1);
    let from = b.ins().imul(o, len);
    let from = b.ins().imul(from, inner);
    let from = offset(b, src, from);
    let to = b.ins().imul(o, inner);
    let to = offset(b, dst, to);
    let (row, lanes, next) = (b.create_block(), b.create_block(), b.create_block());
    let contiguous = b.ins().icmp_imm_s(IntCC::Equal, inner, 1);
    b.ins().brif(contiguous, row, &[], lanes, &[]);
    b.switch_to_block(row);
    b.seal_block(row);
    fold_row(b, kind, to, from, len);
    b.ins().jump(next, &[]);
    b.switch_to_block(lanes);
    b.seal_block(lanes);
    fold_lanes(b, kind, to, from, (len, inner, width));
    b.ins().jump(next, &[]);
    b.switch_to_block(next);
    b.seal_block(next);
    close(b, rows);
    b.ins().return_(&[]);
}

/// `dst[0]` = the reduction of the `len` contiguous floats at `src`.
fn fold_row(b: &mut FunctionBuilder, kind: ReduceKind, dst: Value, src: Value, len: Value) {
    let start = b.ins().iconst(types::I64, 0);
    let blocks = b.ins().band_imm_s(len, !(LANES * VECTORS as i64 - 1));
    let v0 = initial(b, kind, types::F32X4);
    let partial = fold(b, (start, blocks, LANES * VECTORS as i64), &[v0; VECTORS], |b, k, acc| {
        let p = offset(b, src, k);
        (0..VECTORS).map(|j| combine_load(b, kind, acc[j], types::F32X4, p, j)).collect()
    });
    let pair = [combine(b, kind, partial[0], partial[1]), combine(b, kind, partial[2], partial[3])];
    let v = combine(b, kind, pair[0], pair[1]);
    let vectors = b.ins().band_imm_s(len, !(LANES - 1));
    let v = fold(b, (blocks, vectors, LANES), &[v], |b, k, acc| {
        let p = offset(b, src, k);
        vec![combine_load(b, kind, acc[0], types::F32X4, p, 0)]
    })[0];
    let mut acc = initial(b, kind, types::F32);
    for lane in 0..LANES as u8 {
        let x = b.ins().extractlane(v, lane);
        acc = combine(b, kind, acc, x);
    }
    let acc = fold(b, (vectors, len, 1), &[acc], |b, k, acc| {
        let p = offset(b, src, k);
        vec![combine_load(b, kind, acc[0], types::F32, p, 0)]
    })[0];
    let result = finish(b, kind, acc, len);
    b.ins().store(mem(), result, dst, 0);
}

/// `dst[i]` = the reduction of `src[r · inner + i]` over the rows `r` in `0..len`, for `i` in
/// `0..width`.
fn fold_lanes(b: &mut FunctionBuilder, kind: ReduceKind, dst: Value, src: Value, (len, inner, width): (Value, Value, Value)) {
    let mut start = b.ins().iconst(types::I64, 0);
    for (ty, vectors) in [(types::F32X4, VECTORS), (types::F32X4, 1), (types::F32, 1)] {
        let step = ty.lane_count() as i64 * vectors as i64;
        let end = b.ins().band_imm_s(width, !(step - 1));
        let (i, columns) = open(b, start, end, step);
        let zero = b.ins().iconst(types::I64, 0);
        let v0 = initial(b, kind, ty);
        let acc = fold(b, (zero, len, 1), &vec![v0; vectors], |b, r, acc| {
            let at = b.ins().imul(r, inner);
            let at = b.ins().iadd(at, i);
            let p = offset(b, src, at);
            (0..vectors).map(|j| combine_load(b, kind, acc[j], ty, p, j)).collect()
        });
        let p = offset(b, dst, i);
        for (j, &a) in acc.iter().enumerate() {
            let result = finish(b, kind, a, len);
            b.ins().store(mem(), result, p, (16 * j) as i32);
        }
        close(b, columns);
        start = end;
    }
}

/// A loop over `start..end` by `step` carrying `init`: `next(k, values)` gives the next values.
fn fold(
    b: &mut FunctionBuilder,
    (start, end, step): (Value, Value, i64),
    init: &[Value],
    mut next: impl FnMut(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let (head, body, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(head, types::I64);
    for &v in init {
        let ty = b.func.dfg.value_type(v);
        b.append_block_param(head, ty);
        b.append_block_param(exit, ty);
    }
    let args: Vec<_> = std::iter::once(start).chain(init.iter().copied()).map(Into::into).collect();
    b.ins().jump(head, &args);
    b.switch_to_block(head);
    let params = b.block_params(head).to_vec();
    let more = b.ins().icmp(IntCC::SignedLessThan, params[0], end);
    let carried: Vec<_> = params[1..].iter().map(|&v| v.into()).collect();
    b.ins().brif(more, body, &[], exit, &carried);
    b.switch_to_block(body);
    b.seal_block(body);
    let values = next(b, params[0], &params[1..]);
    let k = b.ins().iadd_imm_s(params[0], step);
    let args: Vec<_> = std::iter::once(k).chain(values).map(Into::into).collect();
    b.ins().jump(head, &args);
    b.seal_block(head);
    b.switch_to_block(exit);
    b.seal_block(exit);
    b.block_params(exit).to_vec()
}

/// `base + elements` floats.
fn offset(b: &mut FunctionBuilder, base: Value, elements: Value) -> Value {
    let bytes = b.ins().ishl_imm_u(elements, 2);
    b.ins().iadd(base, bytes)
}

/// [`combine`]s the `j`-th value of type `ty` from `p` into `acc`.
fn combine_load(b: &mut FunctionBuilder, kind: ReduceKind, acc: Value, ty: Type, p: Value, j: usize) -> Value {
    let x = b.ins().load(ty, mem(), p, (ty.bytes() as usize * j) as i32);
    combine(b, kind, acc, x)
}

/// The reduction of nothing, in every lane of `ty`.
fn initial(b: &mut FunctionBuilder, kind: ReduceKind, ty: Type) -> Value {
    let x = b.ins().f32const(if kind == ReduceKind::Max { f32::NEG_INFINITY } else { 0.0 });
    if ty.is_vector() {
        b.ins().splat(ty, x)
    } else {
        x
    }
}

/// Adds `x` into `acc`, or keeps the larger: `x > acc ? x : acc` (a NaN is passed over).
fn combine(b: &mut FunctionBuilder, kind: ReduceKind, acc: Value, x: Value) -> Value {
    match kind {
        ReduceKind::Sum | ReduceKind::Mean => b.ins().fadd(acc, x),
        ReduceKind::Max => {
            let greater = b.ins().fcmp(FloatCC::GreaterThan, x, acc);
            let ty = b.func.dfg.value_type(x);
            if ty.is_vector() {
                let mask = b.ins().bitcast(ty, MemFlagsData::new().with_endianness(Endianness::Little), greater);
                b.ins().bitselect(mask, x, acc)
            } else {
                b.ins().select(greater, x, acc)
            }
        }
    }
}

/// The result from the folded value: the mean divides by `len`.
fn finish(b: &mut FunctionBuilder, kind: ReduceKind, acc: Value, len: Value) -> Value {
    if kind != ReduceKind::Mean {
        return acc;
    }
    let n = b.ins().fcvt_from_uint(types::F32, len);
    let ty = b.func.dfg.value_type(acc);
    let n = if ty.is_vector() { b.ins().splat(ty, n) } else { n };
    b.ins().fdiv(acc, n)
}
