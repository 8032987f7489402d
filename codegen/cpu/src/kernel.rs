//! Elementwise kernels: a run of elementwise ops compiled by Cranelift into one loop over a row
//! of elements, four lanes at a time (f32x4: Cranelift's x86-64 backend emits 128-bit vectors
//! only) with a scalar tail. The intermediate values of the run live in registers; only the
//! values used outside it are stored.
//!
//! A kernel runs over `rows` rows of `n` elements: `kernel(n, rows, inputs, strides, outputs)`,
//! with one pointer per input (to its first row: `n` contiguous floats, or one float that every
//! element of the row reads, a *splat* input), each input's distance from one row to the next
//! in elements (`strides`), and one pointer per output (rows stored one after the other).

use anyhow::{anyhow, Result};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use std::collections::HashMap;

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::{types, AbiParam, Endianness, FuncRef, Inst, InstBuilder, MemFlagsData, Type, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use tttc_ir::{BinaryOp, UnaryOp};
use tttc_lower::elementwise::{Expr, KernelSpec};

/// A compiled kernel: `(n, rows, inputs, input row strides, outputs)`.
pub type KernelFn = unsafe extern "C" fn(n: i64, rows: i64, inputs: *const *const f32, strides: *const i64, outputs: *const *mut f32);

/// The kernels of a program, compiled into one JIT module that lives as long as they do.
pub struct Jit {
    _module: JITModule,
    pub kernels: Vec<KernelFn>,
    /// Cranelift instructions generated, over all kernels.
    pub instructions: usize,
}

// The module's code is immutable once finalized and the kernels are plain functions.
unsafe impl Send for Jit {}
unsafe impl Sync for Jit {}

extern "C" fn sinf(x: f32) -> f32 {
    x.sin()
}
extern "C" fn cosf(x: f32) -> f32 {
    x.cos()
}

/// Cranelift's target for this machine (its CPU features detected at run time); position
/// independent code for object files that are linked into other programs.
fn host_isa(pic: bool) -> Result<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>> {
    let mut flags = settings::builder();
    // Kernels are already scheduled; `speed`'s e-graph sinks splats and FMAs into spills.
    flags.set("opt_level", "none").map_err(|e| anyhow!("{e}"))?;
    flags.set("is_pic", if pic { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    cranelift_native::builder()
        .map_err(|e| anyhow!("Cranelift does not support this CPU: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| anyhow!("{e}"))
}

/// Defines `specs` in `module` as functions named by `name` with `linkage`: their ids and the
/// Cranelift instructions generated. `sin`/`cos` are imported as the C library's `sinf`/`cosf`.
pub(crate) fn define_kernels<M: Module>(module: &mut M, specs: &[KernelSpec], name: impl Fn(usize) -> String, linkage: Linkage) -> Result<(Vec<FuncId>, usize)> {
    let ptr = module.target_config().pointer_type();
    let mut scalar_sig = module.make_signature();
    scalar_sig.params.push(AbiParam::new(types::F32));
    scalar_sig.returns.push(AbiParam::new(types::F32));
    let sin = module.declare_function("sinf", Linkage::Import, &scalar_sig)?;
    let cos = module.declare_function("cosf", Linkage::Import, &scalar_sig)?;

    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(types::I64), AbiParam::new(types::I64), AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
    let frontend = module.isa().frontend_config();
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut ids: Vec<FuncId> = Vec::with_capacity(specs.len());
    let mut instructions = 0;
    for (k, spec) in specs.iter().enumerate() {
        let id = module.declare_function(&name(k), linkage, &sig)?;
        ctx.func.signature = sig.clone();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let calls = Calls { sin: module.declare_func_in_func(sin, b.func), cos: module.declare_func_in_func(cos, b.func) };
            build_kernel(&mut b, spec, ptr, &calls);
            b.finalize(frontend);
        }
        instructions += ctx.func.dfg.num_insts();
        module.define_function(id, &mut ctx).map_err(|e| anyhow!("compiling kernel {k}: {e:?}"))?;
        module.clear_context(&mut ctx);
        ids.push(id);
    }
    Ok((ids, instructions))
}

/// A module that compiles into this process, for the machine it runs on.
pub(crate) fn jit_module() -> Result<JITModule> {
    let mut jb = JITBuilder::with_isa(host_isa(false)?, default_libcall_names());
    jb.symbol("sinf", sinf as *const u8);
    jb.symbol("cosf", cosf as *const u8);
    Ok(JITModule::new(jb))
}

/// A module that compiles into a relocatable object file for this machine (it imports `sinf`
/// and `cosf` from the C library).
pub(crate) fn object_module() -> Result<cranelift_object::ObjectModule> {
    let builder = cranelift_object::ObjectBuilder::new(host_isa(true)?, "tttc_model", default_libcall_names())?;
    Ok(cranelift_object::ObjectModule::new(builder))
}

/// Compiles `specs` into this process.
pub fn compile(specs: &[KernelSpec]) -> Result<Jit> {
    let mut module = jit_module()?;
    let (ids, instructions) = define_kernels(&mut module, specs, |k| format!("kernel{k}"), Linkage::Local)?;
    module.finalize_definitions()?;
    let kernels = ids
        .iter()
        .map(|&id| unsafe { std::mem::transmute::<*const u8, KernelFn>(module.get_finalized_function(id)) })
        .collect();
    Ok(Jit { _module: module, kernels, instructions })
}

struct Calls {
    sin: FuncRef,
    cos: FuncRef,
}

fn build_kernel(b: &mut FunctionBuilder, spec: &KernelSpec, ptr: Type, calls: &Calls) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let params = b.block_params(entry).to_vec();
    let (n, rows, ins, strides, outs) = (params[0], params[1], params[2], params[3], params[4]);
    let plain = MemFlagsData::trusted();
    // Element accesses: no trap, but no alignment promised.
    let elem = MemFlagsData::new().with_notrap();
    let in_bases: Vec<Value> = (0..spec.splat.len()).map(|i| b.ins().load(ptr, plain, ins, (8 * i) as i32)).collect();
    let in_steps: Vec<Value> = (0..spec.splat.len())
        .map(|i| {
            let s = b.ins().load(types::I64, plain, strides, (8 * i) as i32);
            b.ins().ishl_imm_u(s, 2)
        })
        .collect();
    let out_bases: Vec<Value> = (0..spec.outputs.len()).map(|i| b.ins().load(ptr, plain, outs, (8 * i) as i32)).collect();
    let out_step = b.ins().ishl_imm_u(n, 2);
    let four = b.ins().iconst(types::I64, 4);
    let one = b.ins().iconst(types::I64, 1);
    let rem = b.ins().band_imm_u(n, 3);
    let whole = b.ins().isub(n, rem);
    let zero = b.ins().iconst(types::I64, 0);

    let blocks: Vec<_> = (0..7).map(|_| b.create_block()).collect();
    let (rhead, rbody, vhead, vbody, thead, tbody, exit) = (blocks[0], blocks[1], blocks[2], blocks[3], blocks[4], blocks[5], blocks[6]);
    let entry_jump = b.ins().jump(rhead, &[zero.into()]);
    let mut consts = Consts { before: entry_jump, cache: HashMap::new() };

    // The row loop: r = 0 … rows − 1.
    b.append_block_param(rhead, types::I64);
    b.switch_to_block(rhead);
    let r = b.block_params(rhead)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, r, rows);
    b.ins().brif(more, rbody, &[], exit, &[]);
    b.switch_to_block(rbody);
    b.seal_block(rbody);
    let in_ptrs: Vec<Value> = in_bases
        .iter()
        .zip(&in_steps)
        .map(|(&base, &step)| {
            let off = b.ins().imul(r, step);
            b.ins().iadd(base, off)
        })
        .collect();
    let out_off = b.ins().imul(r, out_step);
    let out_ptrs: Vec<Value> = out_bases.iter().map(|&base| b.ins().iadd(base, out_off)).collect();
    let splats: Vec<Option<Value>> = spec.splat.iter().zip(&in_ptrs).map(|(&s, &p)| s.then(|| b.ins().load(types::F32, elem, p, 0))).collect();
    let vector_splats: Vec<Option<Value>> = splats.iter().map(|s| s.map(|v| b.ins().splat(types::F32X4, v))).collect();
    b.ins().jump(vhead, &[zero.into()]);

    // The vector loop: i = 0, 4, … while i < whole.
    b.append_block_param(vhead, types::I64);
    b.switch_to_block(vhead);
    let i = b.block_params(vhead)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, i, whole);
    b.ins().brif(more, vbody, &[], thead, &[i.into()]);
    b.switch_to_block(vbody);
    b.seal_block(vbody);
    step(b, spec, types::F32X4, i, &in_ptrs, &vector_splats, &out_ptrs, calls, &mut consts);
    let next = b.ins().iadd(i, four);
    b.ins().jump(vhead, &[next.into()]);
    b.seal_block(vhead);

    // The scalar tail: i < n, then the next row.
    b.append_block_param(thead, types::I64);
    b.switch_to_block(thead);
    let i = b.block_params(thead)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, i, n);
    let next_row = b.ins().iadd(r, one);
    b.ins().brif(more, tbody, &[], rhead, &[next_row.into()]);
    b.switch_to_block(tbody);
    b.seal_block(tbody);
    step(b, spec, types::F32, i, &in_ptrs, &splats, &out_ptrs, calls, &mut consts);
    let next = b.ins().iadd(i, one);
    b.ins().jump(thead, &[next.into()]);
    b.seal_block(thead);
    b.seal_block(rhead);

    b.switch_to_block(exit);
    b.seal_block(exit);
    b.ins().return_(&[]);
}

/// The values at element `i` (one lane or four), stored to the outputs.
#[allow(clippy::too_many_arguments)]
fn step(b: &mut FunctionBuilder, spec: &KernelSpec, ty: Type, i: Value, ins: &[Value], splats: &[Option<Value>], outs: &[Value], calls: &Calls, consts: &mut Consts) {
    let elem = MemFlagsData::new().with_notrap();
    let offset = b.ins().ishl_imm_u(i, 2);
    let mut vals: Vec<Value> = Vec::with_capacity(spec.exprs.len());
    for e in &spec.exprs {
        let v = match *e {
            Expr::Input(k) => match splats[k] {
                Some(s) => s,
                None => {
                    let addr = b.ins().iadd(ins[k], offset);
                    b.ins().load(ty, elem, addr, 0)
                }
            },
            Expr::Const(c) => consts.float(b, ty, c),
            Expr::Unary(u, x) => Math { b: &mut *b, ty, calls, consts: &mut *consts }.unary(u, vals[x]),
            Expr::Binary(op, x, y) => Math { b: &mut *b, ty, calls, consts: &mut *consts }.binary(op, vals[x], vals[y]),
        };
        vals.push(v);
    }
    for (&o, &p) in spec.outputs.iter().zip(outs) {
        let addr = b.ins().iadd(p, offset);
        b.ins().store(elem, vals[o], addr, 0);
    }
}

/// The kernel's constants, materialised once in its entry block (before its jump into the
/// loops) rather than in every iteration: the kernels compile without optimisation.
struct Consts {
    before: Inst,
    cache: HashMap<(u32, bool, Type), Value>,
}

impl Consts {
    fn float(&mut self, b: &mut FunctionBuilder, ty: Type, c: f32) -> Value {
        self.get(b, ty, c.to_bits(), true)
    }

    fn int(&mut self, b: &mut FunctionBuilder, ty: Type, c: i32) -> Value {
        self.get(b, ty, c as u32, false)
    }

    fn get(&mut self, b: &mut FunctionBuilder, ty: Type, bits: u32, float: bool) -> Value {
        *self.cache.entry((bits, float, ty)).or_insert_with(|| {
            let mut cur = FuncCursor::new(b.func).at_inst(self.before);
            let s = if float { cur.ins().f32const(f32::from_bits(bits)) } else { cur.ins().iconst(types::I32, bits as i32 as i64) };
            if ty.is_vector() {
                cur.ins().splat(ty, s)
            } else {
                s
            }
        })
    }
}

/// Float math on one lane (`F32`) or four (`F32X4`), as the interpreter defines each op.
/// Transcendentals are polynomial approximations accurate to a few ulp (Cephes-style range
/// reductions); `sin`/`cos` (rotary angles only) call the standard library per lane.
struct Math<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    ty: Type,
    calls: &'a Calls,
    consts: &'a mut Consts,
}

impl Math<'_, '_> {
    fn c(&mut self, v: f32) -> Value {
        self.consts.float(self.b, self.ty, v)
    }

    fn int_ty(&self) -> Type {
        if self.ty.is_vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    fn float_bits(&mut self, x: Value) -> Value {
        let t = self.int_ty();
        self.b.ins().bitcast(t, MemFlagsData::new().with_endianness(Endianness::Little), x)
    }

    fn bits_as_float(&mut self, x: Value) -> Value {
        let t = self.ty;
        self.b.ins().bitcast(t, MemFlagsData::new().with_endianness(Endianness::Little), x)
    }

    /// `cond ? a : b` for a float comparison result.
    fn select(&mut self, cond: Value, a: Value, b: Value) -> Value {
        if self.ty.is_vector() {
            let mask = self.bits_as_float(cond);
            self.b.ins().bitselect(mask, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    /// Horner: `((c0·x + c1)·x + c2)…`.
    fn poly(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.c(coeffs[0]);
        for &k in &coeffs[1..] {
            let kv = self.c(k);
            acc = self.fma(acc, x, kv);
        }
        acc
    }

    fn binary(&mut self, op: BinaryOp, x: Value, y: Value) -> Value {
        let ins = self.b.ins();
        match op {
            BinaryOp::Add => ins.fadd(x, y),
            BinaryOp::Sub => ins.fsub(x, y),
            BinaryOp::Mul => ins.fmul(x, y),
            BinaryOp::Div => ins.fdiv(x, y),
            // As the interpreter: y when y > x, else x (NaN in y loses).
            BinaryOp::Max => {
                let gt = ins.fcmp(FloatCC::GreaterThan, y, x);
                self.select(gt, y, x)
            }
            BinaryOp::Ge => {
                let ge = ins.fcmp(FloatCC::GreaterThanOrEqual, x, y);
                let (one, zero) = (self.c(1.0), self.c(0.0));
                self.select(ge, one, zero)
            }
        }
    }

    fn unary(&mut self, u: UnaryOp, x: Value) -> Value {
        match u {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Exp => self.exp(x),
            UnaryOp::Log => self.log(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Rsqrt => {
                let s = self.b.ins().sqrt(x);
                let one = self.c(1.0);
                self.b.ins().fdiv(one, s)
            }
            UnaryOp::Tanh => self.tanh(x),
            UnaryOp::Sigmoid => {
                let one = self.c(1.0);
                let d = self.one_plus_exp_neg(x);
                self.b.ins().fdiv(one, d)
            }
            UnaryOp::Silu => {
                let d = self.one_plus_exp_neg(x);
                self.b.ins().fdiv(x, d)
            }
            UnaryOp::GeluTanh => {
                // ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
                let x2 = self.b.ins().fmul(x, x);
                let k = self.c(0.044715);
                let x3 = self.b.ins().fmul(x2, x);
                let inner = self.fma(k, x3, x);
                let c = self.c((2.0f64 / std::f64::consts::PI).sqrt() as f32);
                let arg = self.b.ins().fmul(c, inner);
                let t = self.tanh(arg);
                let one = self.c(1.0);
                let half = self.c(0.5);
                let hx = self.b.ins().fmul(half, x);
                let s = self.b.ins().fadd(one, t);
                self.b.ins().fmul(hx, s)
            }
            UnaryOp::Softplus => {
                // x above 20, else log(1 + eˣ).
                let e = self.exp(x);
                let one = self.c(1.0);
                let s = self.b.ins().fadd(one, e);
                let l = self.log(s);
                let twenty = self.c(20.0);
                let big = self.b.ins().fcmp(FloatCC::GreaterThan, x, twenty);
                self.select(big, x, l)
            }
            UnaryOp::Sin => {
                let f = self.calls.sin;
                self.per_lane(f, x)
            }
            UnaryOp::Cos => {
                let f = self.calls.cos;
                self.per_lane(f, x)
            }
        }
    }

    fn one_plus_exp_neg(&mut self, x: Value) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(nx);
        let one = self.c(1.0);
        self.b.ins().fadd(one, e)
    }

    fn per_lane(&mut self, f: FuncRef, x: Value) -> Value {
        if !self.ty.is_vector() {
            let call = self.b.ins().call(f, &[x]);
            return self.b.inst_results(call)[0];
        }
        let mut out = x;
        for lane in 0..4u8 {
            let v = self.b.ins().extractlane(x, lane);
            let call = self.b.ins().call(f, &[v]);
            let r = self.b.inst_results(call)[0];
            out = self.b.ins().insertlane(out, r, lane);
        }
        out
    }

    /// eˣ: x = n·ln2 + r with |r| ≤ ½ln2, eʳ by a degree-7 polynomial, 2ⁿ built in the exponent
    /// bits. Below −87.3 the result is 0, above 88.7 it is +∞.
    fn exp(&mut self, x: Value) -> Value {
        let (lo, hi) = (self.c(-87.33654), self.c(88.72283));
        // Clamped by compare-and-select: `fmax`/`fmin` lower to NaN-exact sequences thrice as
        // long, and NaN is handled at the end.
        let below = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let xc = self.select(below, lo, x);
        let above = self.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
        let xc = self.select(above, hi, xc);
        let log2e = self.c(std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(xc, log2e);
        // n = round(t) by adding 1.5·2²³: the sum's low mantissa bits are n, as an integer too.
        let magic = self.c(12_582_912.0);
        let k = self.b.ins().fadd(t, magic);
        let n = self.b.ins().fsub(k, magic);
        let (ln2_hi, ln2_lo) = (self.c(-0.693_359_4), self.c(2.121_944_4e-4));
        let r = self.fma(n, ln2_hi, xc);
        let r = self.fma(n, ln2_lo, r);
        let p = self.poly(r, &[1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5]);
        let r2 = self.b.ins().fmul(r, r);
        let p = self.fma(p, r2, r);
        let one = self.c(1.0);
        let p = self.b.ins().fadd(p, one);
        // 2ⁿ as two factors 2^⌊n/2⌋ · 2^(n−⌊n/2⌋), each built as float bits ((e + 127) << 23):
        // n ∈ [−126, 128] after the clamp, beyond one factor's exponent range at the top.
        let kb = self.float_bits(k);
        let magic_bits = self.int_splat(0x4B40_0000);
        let ni = self.b.ins().isub(kb, magic_bits);
        let half_n = self.b.ins().sshr_imm_u(ni, 1);
        let rest = self.b.ins().isub(ni, half_n);
        let s1 = self.pow2(half_n);
        let s2 = self.pow2(rest);
        let p = self.b.ins().fmul(p, s1);
        let y = self.b.ins().fmul(p, s2);
        let zero = self.c(0.0);
        let y = self.select(below, zero, y);
        let inf = self.c(f32::INFINITY);
        let y = self.select(above, inf, y);
        // NaN in, NaN out.
        let nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.select(nan, x, y)
    }

    /// 2ᵉ for an integer e ∈ [−126, 127] (lanes of `int_ty`).
    fn pow2(&mut self, e: Value) -> Value {
        let bias = self.int_splat(127);
        let biased = self.b.ins().iadd(e, bias);
        let bits = self.b.ins().ishl_imm_u(biased, 23);
        self.bits_as_float(bits)
    }

    fn int_splat(&mut self, v: i32) -> Value {
        let t = self.int_ty();
        self.consts.int(self.b, t, v)
    }

    /// ln x for x > 0: x = m·2ᵉ with m ∈ [√½, √2), ln(m) = f − f²/2 + f³·P(f) for f = m − 1.
    /// ln 0 = −∞; a negative x gives NaN.
    fn log(&mut self, x: Value) -> Value {
        // Subnormals first scaled into the normal range by 2²³.
        let tiny = self.c(f32::MIN_POSITIVE);
        let is_tiny = self.b.ins().fcmp(FloatCC::LessThan, x, tiny);
        let scale = self.c(8_388_608.0);
        let scaled = self.b.ins().fmul(x, scale);
        let xs = self.select(is_tiny, scaled, x);
        let bits = self.float_bits(xs);
        let e = self.b.ins().ushr_imm_u(bits, 23);
        let mask = self.int_splat(0xff);
        let e = self.b.ins().band(e, mask);
        let bias = self.int_splat(127);
        let e = self.b.ins().isub(e, bias);
        let mant_mask = self.int_splat(0x007f_ffff);
        let m = self.b.ins().band(bits, mant_mask);
        let one_bits = self.int_splat(0x3f80_0000);
        let m = self.b.ins().bor(m, one_bits);
        let m = self.bits_as_float(m); // [1, 2)
        let ef = self.b.ins().fcvt_from_sint(self.ty, e);
        let (shift, none) = (self.c(23.0), self.c(0.0));
        let shift = self.select(is_tiny, shift, none);
        let ef = self.b.ins().fsub(ef, shift);
        // Into [√½, √2): halve m and bump e when m > √2.
        let sqrt2 = self.c(std::f32::consts::SQRT_2);
        let big = self.b.ins().fcmp(FloatCC::GreaterThan, m, sqrt2);
        let half = self.c(0.5);
        let mh = self.b.ins().fmul(m, half);
        let m = self.select(big, mh, m);
        let one = self.c(1.0);
        let e1 = self.b.ins().fadd(ef, one);
        let ef = self.select(big, e1, ef);
        let f = self.b.ins().fsub(m, one);
        let z = self.b.ins().fmul(f, f);
        let p = self.poly(
            f,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_9e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_8e-1,
                2.000_071_5e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
        );
        let y = self.b.ins().fmul(p, f);
        let y = self.b.ins().fmul(y, z);
        let c1 = self.c(-2.121_944_4e-4);
        let y = self.fma(ef, c1, y);
        let mhalf = self.c(-0.5);
        let y = self.fma(z, mhalf, y);
        let r = self.b.ins().fadd(f, y);
        let c2 = self.c(0.693_359_4);
        let r = self.fma(ef, c2, r);
        // Special cases: 0 → −∞, negative → NaN, +∞ → +∞, NaN → NaN.
        let zero = self.c(0.0);
        let is_zero = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let ninf = self.c(f32::NEG_INFINITY);
        let r = self.select(is_zero, ninf, r);
        let neg = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
        let nan = self.c(f32::NAN);
        let r = self.select(neg, nan, r);
        let inf = self.c(f32::INFINITY);
        let is_inf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        let r = self.select(is_inf, inf, r);
        let unordered = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.select(unordered, x, r)
    }

    /// tanh x: an odd polynomial for |x| < 0.625, else sign(x)·(1 − 2/(e^{2|x|} + 1)).
    fn tanh(&mut self, x: Value) -> Value {
        let ax = self.b.ins().fabs(x);
        let two = self.c(2.0);
        let a2 = self.b.ins().fmul(ax, two);
        let e = self.exp(a2);
        let one = self.c(1.0);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let big = self.b.ins().fsub(one, q);
        let neg_big = self.b.ins().fneg(big);
        let zero = self.c(0.0);
        let negative = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
        let big = self.select(negative, neg_big, big);
        let s = self.b.ins().fmul(x, x);
        let p = self.poly(s, &[-5.704_988_7e-3, 2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1]);
        let p = self.b.ins().fmul(p, s);
        let small = self.fma(p, x, x);
        let cut = self.c(0.625);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, ax, cut);
        self.select(is_small, small, big)
    }
}
