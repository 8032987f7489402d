//! A schedule as Cranelift functions: every function `(lengths, arguments, outputs, workspace)
//! -> status` takes the lengths it is launched with (the schedule's length symbols in name
//! order), arrays of pointers to its arguments and outputs and a pointer to its workspace, and
//! returns 0, 1 when an index (a token id, a one-hot target) is out of range, or (the entry
//! point, which checks them) 2 when a length is not in `1..=` its bound. Every size is computed
//! from the lengths where it depends on them.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, Block, FuncRef, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type, Value};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module};
use tttc_ir::size::Atom;
use tttc_ir::{DType, ReduceKind, Size};

use super::reduce::Reductions;
use tttc_lower::schedule::{elem_bytes, BufId, Function, Home, Instr, Launch, ScanInstr, Schedule, Strided};

/// Rows of a copy at least this long (in elements) go through `memcpy`.
const MEMCPY_ELEMENTS: usize = 8;
/// Columns a transposing copy takes down its rows at a time: one cache line of `f32`s.
const TRANSPOSE_BLOCK: i64 = 16;

/// Status a compiled function returns when an index is out of range.
pub const INDEX_OUT_OF_RANGE: i32 = 1;
/// Status the entry point returns when a length is 0 or past its bound.
pub const LENGTH_OUT_OF_RANGE: i32 = 2;

/// What the model's functions call besides its kernels and each other.
#[derive(Clone, Copy)]
pub(super) struct Shared {
    /// `(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`: the matrix product ([`super::gemm`]).
    pub matmul: FuncId,
    /// `(parts, count, lengths, args, outputs, workspace) -> status`: functions run on threads
    /// ([`super::parallel`]).
    pub parallel: FuncId,
    /// `(kernel, n, rows, ins, strides, outs, inputs, outputs, work, splat)`: a kernel's rows
    /// (or one row's columns) split over threads when the work is large.
    pub kernel_rows: FuncId,
    /// `(reduction, dst, src, outer, len, inner)`: one of `reductions`, split over threads when
    /// the work is large.
    pub reduce: FuncId,
    /// `(dst, src, outer, len, inner, width)`: each kind of reduction ([`super::reduce`]).
    pub reductions: Reductions<FuncId>,
}

/// Defines the schedule's functions in `module`, the model's (the last) as `entry` with
/// `linkage`, everything else local to the module and named after `prefix`; the parts of each
/// [`Instr::Parallel`] become functions of their own, run on threads.
pub(super) fn define<M: Module>(
    module: &mut M,
    s: &Schedule,
    lengths: &[String],
    prefix: &str,
    entry: &str,
    linkage: Linkage,
    shared: Shared,
) -> Result<FuncId> {
    let (kernels, _) = crate::kernel::define_kernels(module, &s.specs, |k| format!("{prefix}_kernel_{k}"), Linkage::Local, false)?;
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
    sig.returns.push(AbiParam::new(types::I32));
    let last = s.functions.len() - 1;
    let mut ids: Vec<FuncId> = Vec::with_capacity(s.functions.len());
    for i in 0..s.functions.len() {
        let (name, linkage) = if i == last { (entry.to_string(), linkage) } else { (format!("{prefix}_fn_{i}"), Linkage::Local) };
        ids.push(module.declare_function(&name, linkage, &sig)?);
    }
    let common = Common { sig, lengths, kernels, shared, frontend: module.isa().frontend_config() };
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    for (i, f) in s.functions.iter().enumerate() {
        let mut parallel = Vec::new();
        for (q, parts) in f.instrs.iter().filter_map(|x| if let Instr::Parallel { parts } = x { Some(parts) } else { None }).enumerate() {
            let mut part_ids = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let id = module.declare_function(&format!("{prefix}_fn_{i}_parallel_{q}_part_{j}"), Linkage::Local, &common.sig)?;
                let body = Body { s, f, instrs: part, callees: &ids[..i], parallel: &[], check_lengths: None };
                body.define(module, &mut ctx, &mut fctx, &common, id)?;
                part_ids.push(id);
            }
            parallel.push(part_ids);
        }
        let check_lengths = (i == last).then_some(&s.bounds);
        let body = Body { s, f, instrs: &f.instrs, callees: &ids[..i], parallel: &parallel, check_lengths };
        body.define(module, &mut ctx, &mut fctx, &common, ids[i])?;
    }
    Ok(ids[last])
}

/// What every function of a schedule is emitted with.
struct Common<'a> {
    /// `(lengths, args, outputs, workspace) -> status`.
    sig: cranelift_codegen::ir::Signature,
    lengths: &'a [String],
    kernels: Vec<FuncId>,
    shared: Shared,
    frontend: TargetFrontendConfig,
}

/// One function to emit: instructions of a scheduled function (all of them, or a parallel part's).
struct Body<'a> {
    s: &'a Schedule,
    f: &'a Function,
    instrs: &'a [Instr],
    /// The functions it may call (those before it).
    callees: &'a [FuncId],
    /// Per `Instr::Parallel` among `instrs`, in order: its parts' functions.
    parallel: &'a [Vec<FuncId>],
    /// The entry point's bounds, checked first.
    check_lengths: Option<&'a tttc_ir::DimEnv>,
}

impl Body<'_> {
    fn define<M: Module>(
        &self,
        module: &mut M,
        ctx: &mut cranelift_codegen::Context,
        fctx: &mut FunctionBuilderContext,
        common: &Common,
        id: FuncId,
    ) -> Result<()> {
        let Common { ref sig, lengths, ref kernels, shared, frontend } = *common;
        ctx.func.signature = sig.clone();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
            let mut refs = HashMap::new();
            let mut declare = |id: FuncId, b: &mut FunctionBuilder| *refs.entry(id).or_insert_with(|| module.declare_func_in_func(id, b.func));
            let matmul = declare(shared.matmul, &mut b);
            let run_parallel = declare(shared.parallel, &mut b);
            let kernel_rows = declare(shared.kernel_rows, &mut b);
            let reduce = declare(shared.reduce, &mut b);
            let reductions = shared.reductions.map(|id| declare(id, &mut b));
            let kernel_refs: Vec<FuncRef> = kernels.iter().map(|&k| declare(k, &mut b)).collect();
            let fn_refs: Vec<FuncRef> = self.callees.iter().map(|&k| declare(k, &mut b)).collect();
            let parallel: Vec<Vec<FuncRef>> = self.parallel.iter().map(|parts| parts.iter().map(|&p| declare(p, &mut b)).collect()).collect();
            let ptr = module.target_config().pointer_type();
            let refs = Refs { kernels: kernel_refs, functions: fn_refs, matmul, run_parallel, kernel_rows, reduce, reductions, parallel, frontend };
            let mut e = Emitter::new(&mut b, self.s, self.f, ptr, lengths, refs);
            if let Some(bounds) = self.check_lengths {
                let mut own: Vec<(&String, &usize)> = bounds.iter().collect();
                own.sort();
                e.check_lengths(&own);
            }
            for instr in self.instrs {
                e.instr(instr);
            }
            e.finish();
            b.finalize(frontend);
        }
        module.define_function(id, ctx).map_err(|e| anyhow!("compiling function {}: {e:?}", module.declarations().get_function_decl(id).linkage_name(id)))?;
        module.clear_context(ctx);
        Ok(())
    }
}

struct Refs {
    kernels: Vec<FuncRef>,
    functions: Vec<FuncRef>,
    matmul: FuncRef,
    run_parallel: FuncRef,
    kernel_rows: FuncRef,
    reduce: FuncRef,
    reductions: Reductions<FuncRef>,
    /// Per `Instr::Parallel` of the function, in order: its parts.
    parallel: Vec<Vec<FuncRef>>,
    /// For the C library's `memcpy`.
    frontend: TargetFrontendConfig,
}

/// An open counted loop (see [`open`]).
pub(super) struct Loop {
    head: Block,
    exit: Block,
    index: Value,
    step: i64,
}

/// Opens `for i in (start..end).step_by(step)`: the builder is left in the loop's body.
pub(super) fn open(b: &mut FunctionBuilder, start: Value, end: Value, step: i64) -> (Value, Loop) {
    let (head, body, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(head, types::I64);
    b.ins().jump(head, &[start.into()]);
    b.switch_to_block(head);
    let i = b.block_params(head)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, i, end);
    b.ins().brif(more, body, &[], exit, &[]);
    b.switch_to_block(body);
    b.seal_block(body);
    (i, Loop { head, exit, index: i, step })
}

/// Closes a loop opened by [`open`]: the builder continues after it.
pub(super) fn close(b: &mut FunctionBuilder, l: Loop) {
    let next = b.ins().iadd_imm_s(l.index, l.step);
    b.ins().jump(l.head, &[next.into()]);
    b.seal_block(l.head);
    b.switch_to_block(l.exit);
    b.seal_block(l.exit);
}

/// Starts a function's body in its entry block; returns the function's parameters.
fn enter(b: &mut FunctionBuilder) -> Vec<Value> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    b.block_params(entry).to_vec()
}

/// Defines a local function `name` with `sig`, its body built by `body` from its parameters.
pub(super) fn function<M: Module>(
    module: &mut M,
    name: &str,
    sig: cranelift_codegen::ir::Signature,
    body: impl FnOnce(&mut M, &mut FunctionBuilder, &[Value]),
) -> Result<FuncId> {
    let id = module.declare_function(name, Linkage::Local, &sig)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let params = enter(&mut b);
        body(module, &mut b, &params);
        b.finalize(module.isa().frontend_config());
    }
    module.define_function(id, &mut ctx).map_err(|e| anyhow!("compiling {name}: {e:?}"))?;
    Ok(id)
}

/// Memory accesses of the generated code: in bounds by construction, not necessarily aligned.
pub(super) fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

struct Emitter<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    s: &'a Schedule,
    f: &'a Function,
    ptr: Type,
    /// The length symbols, in the order of `lengths`, and their values.
    symbols: &'a [String],
    lengths: Value,
    length_values: Vec<Value>,
    args: Value,
    outs: Value,
    ws: Value,
    /// Returns its parameter (a non-zero status).
    fail: Block,
    refs: Refs,
    /// `Instr::Parallel`s emitted so far.
    parallels: usize,
}

impl<'a, 'b> Emitter<'a, 'b> {
    fn new(b: &'a mut FunctionBuilder<'b>, s: &'a Schedule, f: &'a Function, ptr: Type, symbols: &'a [String], refs: Refs) -> Self {
        let p = enter(b);
        let fail = b.create_block();
        b.append_block_param(fail, types::I32);
        let length_values = (0..symbols.len()).map(|j| b.ins().load(types::I64, mem().with_readonly(), p[0], (8 * j) as i32)).collect();
        Emitter { b, s, f, ptr, symbols, lengths: p[0], length_values, args: p[1], outs: p[2], ws: p[3], fail, refs, parallels: 0 }
    }

    /// Returns [`LENGTH_OUT_OF_RANGE`] unless every length is in `1..=` its bound.
    fn check_lengths(&mut self, bounds: &[(&String, &usize)]) {
        for (name, &bound) in bounds {
            let j = self.symbols.iter().position(|x| x == *name).expect("every length symbol is an argument");
            let v = self.length_values[j];
            let below = self.b.ins().iadd_imm_s(v, -1);
            let ok = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, below, bound as i64);
            let (good, status) = (self.b.create_block(), self.b.ins().iconst(types::I32, LENGTH_OUT_OF_RANGE as i64));
            self.b.ins().brif(ok, good, &[], self.fail, &[status.into()]);
            self.b.switch_to_block(good);
            self.b.seal_block(good);
        }
    }

    /// A size's value: a constant, or computed from the lengths.
    fn size(&mut self, s: Size) -> Value {
        if let Some(c) = s.constant() {
            return self.b.ins().iconst(types::I64, c);
        }
        let mut total = None;
        for (coefficient, atoms) in s.terms() {
            let mut term = None;
            for atom in &atoms {
                let v = match atom {
                    Atom::Sym(name) => {
                        let j = self.symbols.iter().position(|x| x == name).expect("every length symbol is an argument");
                        self.length_values[j]
                    }
                    Atom::Div(x, d) => {
                        let x = self.size(*x);
                        self.b.ins().udiv_imm_u(x, *d)
                    }
                    Atom::Rem(x, d) => {
                        let x = self.size(*x);
                        self.b.ins().urem_imm_u(x, *d)
                    }
                };
                term = Some(match term {
                    None => v,
                    Some(t) => self.b.ins().imul(t, v),
                });
            }
            let term = match term {
                None => self.b.ins().iconst(types::I64, coefficient),
                Some(t) if coefficient == 1 => t,
                Some(t) => self.b.ins().imul_imm_s(t, coefficient),
            };
            total = Some(match total {
                None => term,
                Some(acc) => self.b.ins().iadd(acc, term),
            });
        }
        total.expect("a size that is not a constant has a term")
    }

    /// `x · s`.
    fn times(&mut self, x: Value, s: Size) -> Value {
        match s.constant() {
            Some(c) => self.b.ins().imul_imm_s(x, c),
            None => {
                let v = self.size(s);
                self.b.ins().imul(x, v)
            }
        }
    }

    fn finish(self) {
        let zero = self.b.ins().iconst(types::I32, 0);
        self.b.ins().return_(&[zero]);
        self.b.switch_to_block(self.fail);
        self.b.seal_block(self.fail);
        let status = self.b.block_params(self.fail)[0];
        self.b.ins().return_(&[status]);
    }

    /// Returns the status of `call` unless it is 0.
    fn check(&mut self, call: cranelift_codegen::ir::Inst) {
        let status = self.b.inst_results(call)[0];
        let ok = self.b.create_block();
        self.b.ins().brif(status, self.fail, &[status.into()], ok, &[]);
        self.b.switch_to_block(ok);
        self.b.seal_block(ok);
    }

    /// Runs the parts of an `Instr::Parallel`, each compiled as a function, on threads.
    fn run_parallel(&mut self, parts: &[FuncRef]) {
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (8 * parts.len()) as u32, 3));
        for (j, &part) in parts.iter().enumerate() {
            let at = self.b.ins().func_addr(self.ptr, part);
            self.b.ins().stack_store(self.ptr, at, slot, (8 * j) as i32);
        }
        let table = self.b.ins().stack_addr(self.ptr, slot, 0);
        let count = self.int(parts.len() as i64);
        let call = self.b.ins().call(self.refs.run_parallel, &[table, count, self.lengths, self.args, self.outs, self.ws]);
        self.check(call);
    }

    fn int(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// The address of buffer `buf`'s first element.
    fn base(&mut self, buf: BufId) -> Value {
        let (root, at) = self.f.locate(buf);
        let r = &self.f.bufs[root];
        let base = match r.home {
            Home::Arg(j) => self.b.ins().load(self.ptr, mem(), self.args, (8 * j) as i32),
            Home::Out(j) => self.b.ins().load(self.ptr, mem(), self.outs, (8 * j) as i32),
            Home::Work => self.b.ins().iadd_imm_s(self.ws, r.offset as i64),
            Home::Alias(_) | Home::View { .. } => unreachable!("roots are not aliases or views"),
        };
        if at.is_zero() {
            base
        } else {
            let at = self.size(at);
            self.b.ins().iadd(base, at)
        }
    }

    /// `base + elements · size` for a run-time element count.
    fn offset(&mut self, base: Value, elements: Value, size: usize) -> Value {
        let bytes = self.b.ins().imul_imm_s(elements, size as i64);
        self.b.ins().iadd(base, bytes)
    }

    /// `Σ index · stride` (elements).
    fn dot(&mut self, index: &[Value], strides: &[Size]) -> Value {
        let mut acc = self.int(0);
        for (&i, &s) in index.iter().zip(strides) {
            if !s.is_zero() {
                let t = self.times(i, s);
                acc = self.b.ins().iadd(acc, t);
            }
        }
        acc
    }

    /// Opens one loop per axis of `dims`, outermost first: the indices and the loops to close.
    fn nest(&mut self, dims: &[Size]) -> (Vec<Value>, Vec<Loop>) {
        let mut index = Vec::new();
        let mut loops = Vec::new();
        for &n in dims {
            let (start, end) = (self.int(0), self.size(n));
            let (i, l) = open(self.b, start, end, 1);
            index.push(i);
            loops.push(l);
        }
        (index, loops)
    }

    fn unnest(&mut self, loops: Vec<Loop>) {
        for l in loops.into_iter().rev() {
            close(self.b, l);
        }
    }

    /// Calls a generated kernel once per index of its outer axes.
    fn launch(&mut self, launch: &Launch) {
        let Launch { kernel, ref outer, rows, n, ref ins, ref outs } = *launch;
        let slot =
            |b: &mut FunctionBuilder, count: usize| b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (8 * count.max(1)) as u32, 3));
        let (in_slot, stride_slot, out_slot) = (slot(self.b, ins.len()), slot(self.b, ins.len()), slot(self.b, outs.len()));
        for (j, input) in ins.iter().enumerate() {
            let s = self.size(input.row_stride);
            self.b.ins().stack_store(self.ptr, s, stride_slot, (8 * j) as i32);
        }
        let in_bases: Vec<Value> = ins.iter().map(|i| self.base(i.buf)).collect();
        let out_bases: Vec<Value> = outs.iter().map(|&o| self.base(o)).collect();
        let (index, loops) = self.nest(outer);
        let out_strides: Vec<Size> = tttc_ir::layout::contiguous_strides(outer).iter().map(|&s| s * rows * n).collect();
        for (j, input) in ins.iter().enumerate() {
            let at = self.dot(&index, &input.strides);
            let p = self.offset(in_bases[j], at, 4);
            self.b.ins().stack_store(self.ptr, p, in_slot, (8 * j) as i32);
        }
        let at = self.dot(&index, &out_strides);
        for (j, &base) in out_bases.iter().enumerate() {
            let p = self.offset(base, at, 4);
            self.b.ins().stack_store(self.ptr, p, out_slot, (8 * j) as i32);
        }
        let (nv, rv) = (self.size(n), self.size(rows));
        let ptrs: Vec<Value> = [in_slot, stride_slot, out_slot].iter().map(|&s| self.b.ins().stack_addr(self.ptr, s, 0)).collect();
        // A launch that can be large has its rows split over threads when it is.
        let ops = self.s.specs[kernel].ops_per_element() as i64;
        let large = self.s.most(rows * n) as i64 * ops >= super::parallel::MIN_KERNEL_WORK;
        if large && ins.len().max(outs.len()) <= super::parallel::MAX_KERNEL_OPERANDS {
            let f = self.b.ins().func_addr(self.ptr, self.refs.kernels[kernel]);
            let work = self.b.ins().imul(nv, rv);
            let work = self.b.ins().imul_imm_s(work, ops);
            let (inputs, outputs) = (self.int(ins.len() as i64), self.int(outs.len() as i64));
            let splat = self.s.specs[kernel].splat.iter().enumerate().fold(0, |m, (j, &s)| m | (i64::from(s) << j));
            let splat = self.int(splat);
            self.b.ins().call(self.refs.kernel_rows, &[f, nv, rv, ptrs[0], ptrs[1], ptrs[2], inputs, outputs, work, splat]);
        } else {
            self.b.ins().call(self.refs.kernels[kernel], &[nv, rv, ptrs[0], ptrs[1], ptrs[2]]);
        }
        self.unnest(loops);
    }

    fn instr(&mut self, instr: &Instr) {
        match instr {
            Instr::Kernel(l) => self.launch(l),
            Instr::MatMul { epilogue: Some(_), .. } => unreachable!("the CPU model's schedule has no epilogues (`Products::CPU_MODEL*`)"),
            Instr::MatMul { c, a, b, batch, m, n, k, epilogue: None } => {
                let (cb, ab, bb) = (self.base(*c), self.base(a.buf), self.base(b.buf));
                let (index, loops) = self.nest(batch);
                let c_strides: Vec<Size> = tttc_ir::layout::contiguous_strides(batch).iter().map(|&s| s * *m * *n).collect();
                let at = self.dot(&index, &c_strides);
                let cp = self.offset(cb, at, 4);
                let at = self.dot(&index, &a.batch_strides);
                let ap = self.offset(ab, at, 4);
                let at = self.dot(&index, &b.batch_strides);
                let bp = self.offset(bb, at, 4);
                let args: Vec<Value> = [a.row_stride, a.col_stride, b.row_stride, b.col_stride, *m, *n, *k].iter().map(|&v| self.size(v)).collect();
                self.b.ins().call(self.refs.matmul, &[cp, ap, args[0], args[1], bp, args[2], args[3], args[4], args[5], args[6]]);
                self.unnest(loops);
            }
            Instr::Reduce { dst, src, kind, outer, len, inner } => self.reduce(*dst, *src, *kind, *outer, *len, *inner),
            Instr::Copy { dst, src, copy } => {
                let size = elem_bytes(self.f.bufs[*dst].dtype);
                let (d, s) = (self.base(*dst), self.base(*src));
                self.copy(d, s, copy, size);
            }
            Instr::Fill { dst, bits } => {
                let (ty, size) = self.int_type(*dst);
                let d = self.base(*dst);
                let v = self.b.ins().iconst(ty, *bits as i64);
                let (index, loops) = self.nest(&[self.f.bufs[*dst].len()]);
                let p = self.offset(d, index[0], size);
                self.b.ins().store(mem(), v, p, 0);
                self.unnest(loops);
            }
            Instr::Gather { dst, table, index, outer, len, row } => {
                let (ty, size) = self.int_type(*dst);
                let count = self.f.bufs[*index].len();
                let (d, t, x) = (self.base(*dst), self.base(*table), self.base(*index));
                let (i, loops) = self.nest(&[*outer, count]);
                let k = self.load_index(x, i[1], *len);
                let from = self.times(i[0], *len);
                let from = self.b.ins().iadd(from, k);
                let from = self.times(from, *row);
                let to = self.dot(&i, &[count * *row, *row]);
                let (src, dst) = (self.offset(t, from, size), self.offset(d, to, size));
                let (j, inner) = self.nest(&[*row]);
                let (s, dd) = (self.offset(src, j[0], size), self.offset(dst, j[0], size));
                let v = self.b.ins().load(ty, mem(), s, 0);
                self.b.ins().store(mem(), v, dd, 0);
                self.unnest(inner);
                self.unnest(loops);
            }
            Instr::OneHot { dst, index, depth } => {
                self.instr(&Instr::Fill { dst: *dst, bits: 0 });
                let count = self.f.bufs[*index].len();
                let (d, x) = (self.base(*dst), self.base(*index));
                let (i, loops) = self.nest(&[count]);
                let k = self.load_index(x, i[0], Size::of(*depth));
                let at = self.b.ins().imul_imm_s(i[0], *depth as i64);
                let at = self.b.ins().iadd(at, k);
                let p = self.offset(d, at, 4);
                let one = self.b.ins().f32const(1.0);
                self.b.ins().store(mem(), one, p, 0);
                self.unnest(loops);
            }
            Instr::ScatterAdd { dst, updates, index, depth, row } => {
                self.instr(&Instr::Fill { dst: *dst, bits: 0 });
                let count = self.f.bufs[*index].len();
                let (d, u, x) = (self.base(*dst), self.base(*updates), self.base(*index));
                let (i, loops) = self.nest(&[count]);
                let k = self.load_index(x, i[0], Size::of(*depth));
                let to = self.times(k, *row);
                let from = self.times(i[0], *row);
                let (to, from) = (self.offset(d, to, 4), self.offset(u, from, 4));
                let (j, inner) = self.nest(&[*row]);
                let (t, f) = (self.offset(to, j[0], 4), self.offset(from, j[0], 4));
                let (sum, add) = (self.b.ins().load(types::F32, mem(), t, 0), self.b.ins().load(types::F32, mem(), f, 0));
                let sum = self.b.ins().fadd(sum, add);
                self.b.ins().store(mem(), sum, t, 0);
                self.unnest(inner);
                self.unnest(loops);
            }
            Instr::Iota { dst } => {
                let dtype = self.f.bufs[*dst].dtype;
                let d = self.base(*dst);
                let (i, loops) = self.nest(&[self.f.bufs[*dst].len()]);
                let v = if dtype == DType::F32 { self.b.ins().fcvt_from_sint(types::F32, i[0]) } else { i[0] };
                let p = self.offset(d, i[0], elem_bytes(dtype));
                self.b.ins().store(mem(), v, p, 0);
                self.unnest(loops);
            }
            Instr::Cast { dst, src } => {
                let (to, from) = (self.f.bufs[*dst].dtype, self.f.bufs[*src].dtype);
                let (d, s) = (self.base(*dst), self.base(*src));
                let (i, loops) = self.nest(&[self.f.bufs[*dst].len()]);
                let (sp, dp) = (self.offset(s, i[0], elem_bytes(from)), self.offset(d, i[0], elem_bytes(to)));
                let v = self.b.ins().load(if from == DType::F32 { types::F32 } else { types::I64 }, mem(), sp, 0);
                let v = match (from, to) {
                    (DType::I64, DType::F32) => self.b.ins().fcvt_from_sint(types::F32, v),
                    (DType::F32, DType::I64) => self.b.ins().fcvt_to_sint_sat(types::I64, v),
                    _ => v,
                };
                self.b.ins().store(mem(), v, dp, 0);
                self.unnest(loops);
            }
            Instr::TriMask { dst, rows, cols, fill, window } => {
                let d = self.base(*dst);
                let shape = &self.f.bufs[*dst].shape;
                let matrices = shape[..shape.len() - 2].iter().product();
                let (i, loops) = self.nest(&[matrices, *rows]);
                let row = self.dot(&i, &[*rows * *cols, *cols]);
                let row = self.offset(d, row, 4);
                let cols = self.size(*cols);
                // Columns after the row's, then (with a window W) those up to row − W.
                let after = self.b.ins().iadd_imm_s(i[1], 1);
                let mut ranges = vec![(after, cols)];
                if let Some(w) = window {
                    let zero = self.b.ins().iconst(types::I64, 0);
                    let far = self.b.ins().iadd_imm_s(i[1], 1 - *w as i64);
                    ranges.push((zero, self.b.ins().smin(far, cols)));
                }
                for (start, end) in ranges {
                    let (j, l) = open(self.b, start, end, 1);
                    let p = self.offset(row, j, 4);
                    let v = self.b.ins().f32const(*fill);
                    self.b.ins().store(mem(), v, p, 0);
                    close(self.b, l);
                }
                self.unnest(loops);
            }
            Instr::Scan(s) => self.scan(s),
            Instr::Attention(_) | Instr::AttentionBackward(_) | Instr::Recurrence(_) | Instr::CrossEntropy(_) | Instr::CrossEntropyBackward(_) => {
                unreachable!("the CPU model's schedule runs attention, selective scans and cross-entropies as their ops (`Products::CPU_MODEL*`)")
            }
            // One thread runs the parts one after the other.
            Instr::Parallel { parts } => match self.refs.parallel.get(self.parallels).cloned() {
                Some(functions) => {
                    self.parallels += 1;
                    self.run_parallel(&functions);
                }
                // (A part holds none: their own functions get no list.)
                None => parts.iter().flatten().for_each(|i| self.instr(i)),
            },
        }
    }

    /// The integer type that moves one element of `buf` (its bits), and the element's size.
    fn int_type(&self, buf: BufId) -> (Type, usize) {
        match self.f.bufs[buf].dtype {
            DType::F32 => (types::I32, 4),
            DType::I64 => (types::I64, 8),
        }
    }

    /// The index at `x[i]`, or a jump to the failure exit when it is not in `0..len`.
    fn load_index(&mut self, x: Value, i: Value, len: Size) -> Value {
        let p = self.offset(x, i, 8);
        let k = self.b.ins().load(types::I64, mem(), p, 0);
        let len = self.size(len);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, k, len);
        let (good, status) = (self.b.create_block(), self.b.ins().iconst(types::I32, INDEX_OUT_OF_RANGE as i64));
        self.b.ins().brif(ok, good, &[], self.fail, &[status.into()]);
        self.b.switch_to_block(good);
        self.b.seal_block(good);
        k
    }

    /// `dst[Σ i·dst_strides] = src[Σ i·src_strides]` over `copy.shape`, from the given bases
    /// plus the copy's offsets.
    fn copy(&mut self, dst: Value, src: Value, copy: &Strided, size: usize) {
        let ty = if size == 4 { types::I32 } else { types::I64 };
        let at = self.size(copy.dst_at * size);
        let d0 = self.b.ins().iadd(dst, at);
        let at = self.size(copy.src_at * size);
        let s0 = self.b.ins().iadd(src, at);
        // The innermost axes contiguous on both sides are one row, copied by `memcpy` when it
        // is long enough to pay for the call.
        let mut axes = copy.shape.len();
        let mut row = Size::ONE;
        while axes > 0 && copy.dst_strides[axes - 1] == row && copy.src_strides[axes - 1] == row {
            row *= copy.shape[axes - 1];
            axes -= 1;
        }
        if axes < copy.shape.len() && row.known().is_none_or(|r| r >= MEMCPY_ELEMENTS) {
            let (index, loops) = self.nest(&copy.shape[..axes]);
            let (d, s) = self.copy_at((d0, s0), &index, copy, size);
            let bytes = self.size(row * size);
            self.b.call_memcpy(self.refs.frontend, d, s, bytes);
            self.unnest(loops);
            return;
        }
        let Some(last) = copy.shape.len().checked_sub(1) else {
            let v = self.b.ins().load(ty, mem(), s0, 0);
            self.b.ins().store(mem(), v, d0, 0);
            return;
        };
        let steps = (self.size(copy.dst_strides[last] * size), self.size(copy.src_strides[last] * size));
        // A transpose (the source contiguous along the axis before the last, strided along the
        // last) walks the last axis in blocks of `TRANSPOSE_BLOCK`, each down every row before
        // the next: the block's source lines stay cached from one row to the next.
        let transpose = last > 0 && copy.src_strides[last - 1].is_one() && !copy.src_strides[last].is_one();
        if !transpose {
            let (index, loops) = self.nest(&copy.shape[..last]);
            let (d, s) = self.copy_at((d0, s0), &index, copy, size);
            let count = self.size(copy.shape[last]);
            self.copy_run(ty, (d, s), steps, count);
            self.unnest(loops);
            return;
        }
        let (mut index, outer) = self.nest(&copy.shape[..last - 1]);
        let (start, end) = (self.int(0), self.size(copy.shape[last]));
        let (block, block_loop) = open(self.b, start, end, TRANSPOSE_BLOCK);
        let left = self.b.ins().isub(end, block);
        let width = self.int(TRANSPOSE_BLOCK);
        let wider = self.b.ins().icmp(IntCC::SignedGreaterThan, left, width);
        let count = self.b.ins().select(wider, width, left);
        let (row, rows) = self.nest(&copy.shape[last - 1..last]);
        index.extend([row[0], block]);
        let (d, s) = self.copy_at((d0, s0), &index, copy, size);
        self.copy_run(ty, (d, s), steps, count);
        self.unnest(rows);
        close(self.b, block_loop);
        self.unnest(outer);
    }

    /// A copy's destination and source addresses at `index` along its first axes, from `d0` and
    /// `s0`.
    fn copy_at(&mut self, (d0, s0): (Value, Value), index: &[Value], copy: &Strided, size: usize) -> (Value, Value) {
        let axes = index.len();
        let at = self.dot(index, &copy.dst_strides[..axes]);
        let d = self.offset(d0, at, size);
        let at = self.dot(index, &copy.src_strides[..axes]);
        (d, self.offset(s0, at, size))
    }

    /// `count` elements of type `ty` from `s` to `d`, the pointers advancing by `steps` bytes.
    fn copy_run(&mut self, ty: Type, (d, s): (Value, Value), (d_step, s_step): (Value, Value), count: Value) {
        let (head, body, exit) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        for _ in 0..3 {
            self.b.append_block_param(head, types::I64);
        }
        self.b.ins().jump(head, &[count.into(), d.into(), s.into()]);
        self.b.switch_to_block(head);
        let [left, d, s] = [0, 1, 2].map(|j| self.b.block_params(head)[j]);
        self.b.ins().brif(left, body, &[], exit, &[]);
        self.b.switch_to_block(body);
        self.b.seal_block(body);
        let v = self.b.ins().load(ty, mem(), s, 0);
        self.b.ins().store(mem(), v, d, 0);
        let left = self.b.ins().iadd_imm_s(left, -1);
        let (d, s) = (self.b.ins().iadd(d, d_step), self.b.ins().iadd(s, s_step));
        self.b.ins().jump(head, &[left.into(), d.into(), s.into()]);
        self.b.seal_block(head);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// Sum, mean or max along the middle axis of `[outer, len, inner]`: the module's reduction
    /// of that kind, through the splitter.
    fn reduce(&mut self, dst: BufId, src: BufId, kind: ReduceKind, outer: Size, len: Size, inner: Size) {
        let (d, s) = (self.base(dst), self.base(src));
        let reduction = self.b.ins().func_addr(self.ptr, self.refs.reductions.get(kind));
        let (outer, len, inner) = (self.size(outer), self.size(len), self.size(inner));
        self.b.ins().call(self.refs.reduce, &[reduction, d, s, outer, len, inner]);
    }

    fn scan(&mut self, s: &ScanInstr) {
        // A carry updated in place starts from a copy of its initial value in the buffer every
        // iteration reads and writes.
        for ((init, pair), _) in s.carries.iter().zip(&s.in_place).filter(|(_, &in_place)| in_place) {
            let (to, from) = (self.base(pair[0]), self.base(*init));
            let bytes = self.size(self.f.bufs[*init].len() * elem_bytes(self.f.bufs[*init].dtype));
            self.b.call_memcpy(self.refs.frontend, to, from, bytes);
        }
        for run in s.runs() {
            if run.count.is_one() {
                let i = self.size(run.first);
                self.iteration(s, i, run.function, run.len);
            } else {
                let (start, end) = (self.size(run.first), self.size(run.first + run.count));
                let (i, l) = open(self.b, start, end, 1);
                self.iteration(s, i, run.function, run.len);
                close(self.b, l);
            }
        }
    }

    /// Iteration `i` of a scan: its chunk's pieces of the sequences (`len` positions of each
    /// chunked one) addressed or staged, the body called, its outputs put in place.
    fn iteration(&mut self, s: &ScanInstr, i: Value, body: usize, len: Size) {
        let slot =
            |b: &mut FunctionBuilder, count: usize| b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (8 * count.max(1)) as u32, 3));
        let (args, outs) = (slot(self.b, s.carries.len() + s.seqs.len() + s.invariants.len()), slot(self.b, s.carries.len() + s.outputs.len()));
        // Iterations left after this one: the carries' first buffers are written when it is even.
        let last = self.size(s.iterations() - 1);
        let left = self.b.ins().isub(last, i);
        let parity = self.b.ins().band_imm_s(left, 1);
        let (is_first, even) = (self.b.ins().icmp_imm_s(IntCC::Equal, i, 0), self.b.ins().icmp_imm_s(IntCC::Equal, parity, 0));
        let k = if s.reverse { left } else { i };
        for (j, ((init, pair), &in_place)) in s.carries.iter().zip(&s.in_place).enumerate() {
            let (i0, p0, p1) = (self.base(*init), self.base(pair[0]), self.base(pair[1]));
            let (read, write) = if in_place {
                (p0, p0)
            } else {
                let previous = self.b.ins().select(even, p1, p0);
                (self.b.ins().select(is_first, i0, previous), self.b.ins().select(even, p0, p1))
            };
            self.b.ins().stack_store(self.ptr, read, args, (8 * j) as i32);
            self.b.ins().stack_store(self.ptr, write, outs, (8 * j) as i32);
        }
        // Where chunk k's piece of a sliced buffer starts, in elements.
        let piece_at = |e: &mut Self, slicing: &tttc_lower::schedule::Slicing| -> (Value, usize) {
            let at = e.times(k, s.step(e.f, slicing));
            (at, elem_bytes(e.f.bufs[slicing.buf].dtype))
        };
        for (j, slicing) in s.seqs.iter().enumerate() {
            let (at, size) = piece_at(self, slicing);
            let base = self.base(slicing.buf);
            let from = self.offset(base, at, size);
            let p = match slicing.staging {
                None => from,
                Some(stage) => {
                    let to = self.base(stage);
                    self.copy(to, from, &s.piece(self.f, slicing, len), size);
                    to
                }
            };
            self.b.ins().stack_store(self.ptr, p, args, (8 * (s.carries.len() + j)) as i32);
        }
        for (j, &inv) in s.invariants.iter().enumerate() {
            let p = self.base(inv);
            self.b.ins().stack_store(self.ptr, p, args, (8 * (s.carries.len() + s.seqs.len() + j)) as i32);
        }
        let mut placements = Vec::new();
        for (j, slicing) in s.outputs.iter().enumerate() {
            let (at, size) = piece_at(self, slicing);
            let base = self.base(slicing.buf);
            let to = self.offset(base, at, size);
            let p = match slicing.staging {
                None => to,
                Some(stage) => {
                    let from = self.base(stage);
                    placements.push((to, from, s.piece(self.f, slicing, len).swapped(), size));
                    from
                }
            };
            self.b.ins().stack_store(self.ptr, p, outs, (8 * (s.carries.len() + j)) as i32);
        }
        let a = self.b.ins().stack_addr(self.ptr, args, 0);
        let o = self.b.ins().stack_addr(self.ptr, outs, 0);
        let w = self.b.ins().iadd_imm_s(self.ws, s.workspace_at as i64);
        let call = self.b.ins().call(self.refs.functions[body], &[self.lengths, a, o, w]);
        self.check(call);
        for (to, from, copy, size) in placements {
            self.copy(to, from, &copy, size);
        }
    }
}
