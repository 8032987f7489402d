//! Elementwise kernels: a run of elementwise ops compiled by Cranelift into one loop over a row
//! of elements, four lanes at a time (f32x4: Cranelift's x86-64 backend emits 128-bit vectors
//! only) with a scalar tail; on CPUs with AVX-512 the same ops are assembled sixteen lanes at a
//! time instead ([`avx512`]). The intermediate values of the run live in registers; only the
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
use tttc_lower::elementwise::{Expr, KernelSpec};
use tttc_lower::math::{self, Emit, FloatCmp, FloatOp, FloatUn, IntOp, Shift};

pub(crate) mod avx512;

/// A compiled kernel: `(n, rows, inputs, input row strides, outputs)`.
pub type KernelFn = unsafe extern "C" fn(n: i64, rows: i64, inputs: *const *const f32, strides: *const i64, outputs: *const *mut f32);

/// The kernels of a program, compiled into one JIT module that lives as long as they do.
pub struct Jit {
    _module: JITModule,
    pub kernels: Vec<KernelFn>,
    /// Cranelift instructions generated, over all kernels (for one assembled in AVX-512, its
    /// recorded ops).
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
pub(crate) fn host_isa(pic: bool) -> Result<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>> {
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
/// Where the target has AVX-512, a kernel is assembled for it instead ([`avx512`]) unless
/// `portable`; `instructions` counts its recorded ops then.
pub(crate) fn define_kernels<M: Module>(
    module: &mut M,
    specs: &[KernelSpec],
    name: impl Fn(usize) -> String,
    linkage: Linkage,
    portable: bool,
) -> Result<(Vec<FuncId>, usize)> {
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
    let avx512 = !portable && avx512::supported(module.isa());
    for (k, spec) in specs.iter().enumerate() {
        let id = module.declare_function(&name(k), linkage, &sig)?;
        if let Some((code, ops)) = avx512.then(|| avx512::assemble(spec)).flatten() {
            module.define_function_bytes(id, 64, &code, &[]).map_err(|e| anyhow!("defining kernel {k}: {e:?}"))?;
            instructions += ops;
            ids.push(id);
            continue;
        }
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

/// Compiles `specs` into this process (in AVX-512 where this machine has it, unless
/// `portable`: Cranelift's code for any x86-64 or AArch64 CPU).
pub fn compile(specs: &[KernelSpec], portable: bool) -> Result<Jit> {
    let mut module = jit_module()?;
    let (ids, instructions) = define_kernels(&mut module, specs, |k| format!("kernel{k}"), Linkage::Local, portable)?;
    module.finalize_definitions()?;
    let kernels = ids.iter().map(|&id| unsafe { std::mem::transmute::<*const u8, KernelFn>(module.get_finalized_function(id)) }).collect();
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
fn step(
    b: &mut FunctionBuilder,
    spec: &KernelSpec,
    ty: Type,
    i: Value,
    ins: &[Value],
    splats: &[Option<Value>],
    outs: &[Value],
    calls: &Calls,
    consts: &mut Consts,
) {
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
            Expr::Unary(u, x) => math::unary(&mut Math { b: &mut *b, ty, calls, consts: &mut *consts }, u, vals[x]),
            Expr::Binary(op, x, y) => math::binary(&mut Math { b: &mut *b, ty, calls, consts: &mut *consts }, op, vals[x], vals[y]),
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

/// The primitive instructions of [`tttc_lower::math`] on one lane (`F32`) or four (`F32X4`);
/// `sin`/`cos` (rotary angles only) call the standard library per lane.
struct Math<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    ty: Type,
    calls: &'a Calls,
    consts: &'a mut Consts,
}

impl Math<'_, '_> {
    fn int_ty(&self) -> Type {
        if self.ty.is_vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    fn bitcast(&mut self, to: Type, x: Value) -> Value {
        self.b.ins().bitcast(to, MemFlagsData::new().with_endianness(Endianness::Little), x)
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
}

impl Emit for Math<'_, '_> {
    type F = Value;
    type I = Value;
    type B = Value;

    fn c(&mut self, v: f32) -> Value {
        self.consts.float(self.b, self.ty, v)
    }

    fn ic(&mut self, v: i32) -> Value {
        let t = self.int_ty();
        self.consts.int(self.b, t, v)
    }

    fn fbin(&mut self, op: FloatOp, a: Value, b: Value) -> Value {
        let ins = self.b.ins();
        match op {
            FloatOp::Add => ins.fadd(a, b),
            FloatOp::Sub => ins.fsub(a, b),
            FloatOp::Mul => ins.fmul(a, b),
            FloatOp::Div => ins.fdiv(a, b),
        }
    }

    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    fn fun(&mut self, op: FloatUn, a: Value) -> Value {
        match op {
            FloatUn::Neg => self.b.ins().fneg(a),
            FloatUn::Abs => self.b.ins().fabs(a),
            FloatUn::Sqrt => self.b.ins().sqrt(a),
        }
    }

    fn fcmp(&mut self, cmp: FloatCmp, a: Value, b: Value) -> Value {
        let cc = match cmp {
            FloatCmp::Lt => FloatCC::LessThan,
            FloatCmp::Gt => FloatCC::GreaterThan,
            FloatCmp::Ge => FloatCC::GreaterThanOrEqual,
            FloatCmp::Eq => FloatCC::Equal,
            FloatCmp::Unordered => FloatCC::Unordered,
        };
        self.b.ins().fcmp(cc, a, b)
    }

    // Clamps and NaN handling are compare-and-select: `fmax`/`fmin` lower to NaN-exact
    // sequences thrice as long.
    fn select(&mut self, cond: Value, a: Value, b: Value) -> Value {
        if self.ty.is_vector() {
            let mask = self.bitcast(self.ty, cond);
            self.b.ins().bitselect(mask, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    fn bits(&mut self, x: Value) -> Value {
        let t = self.int_ty();
        self.bitcast(t, x)
    }

    fn from_bits(&mut self, i: Value) -> Value {
        let t = self.ty;
        self.bitcast(t, i)
    }

    fn ibin(&mut self, op: IntOp, a: Value, b: Value) -> Value {
        let ins = self.b.ins();
        match op {
            IntOp::Add => ins.iadd(a, b),
            IntOp::Sub => ins.isub(a, b),
            IntOp::And => ins.band(a, b),
            IntOp::Or => ins.bor(a, b),
        }
    }

    fn shift(&mut self, op: Shift, a: Value, by: u8) -> Value {
        let ins = self.b.ins();
        match op {
            Shift::Left => ins.ishl_imm_u(a, by as i64),
            Shift::RightSigned => ins.sshr_imm_u(a, by as i64),
            Shift::RightUnsigned => ins.ushr_imm_u(a, by as i64),
        }
    }

    fn i_to_f(&mut self, i: Value) -> Value {
        self.b.ins().fcvt_from_sint(self.ty, i)
    }

    fn sin(&mut self, x: Value) -> Value {
        let f = self.calls.sin;
        self.per_lane(f, x)
    }

    fn cos(&mut self, x: Value) -> Value {
        let f = self.calls.cos;
        self.per_lane(f, x)
    }
}
