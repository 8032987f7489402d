//! Work split over POSIX threads from generated code: large matrix products, elementwise
//! kernels and reductions by rows (or lanes), and the parts of a scan split into lanes (`Instr::Parallel`). The calling thread does the first
//! share and threads created for the occasion the others, joined before the function returns;
//! a share whose thread cannot be created runs on the calling thread. How many threads is a
//! global of the module, `{prefix}_threads`: 0 (its initial value) means one per online
//! processor, asked of `sysconf` each time.

use anyhow::Result;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, Signature, StackSlotData, StackSlotKind, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};

use super::emit::{close, function, mem, open};

/// Below this many multiply-adds (about 0.1 ms on one core) a thread costs more than it saves.
const MIN_MACS: i64 = 1 << 24;
/// The same for a kernel's element operations (its elements times its operations per element).
pub(super) const MIN_KERNEL_WORK: i64 = 1 << 19;
/// The most inputs or outputs of a kernel whose rows are split.
pub(super) const MAX_KERNEL_OPERANDS: usize = 16;
/// The most threads one split uses.
const MAX_THREADS: i64 = 64;
/// Rows of a product's share are a multiple of the kernels' row blocks (12 and 6).
const ROW_QUANTUM: i64 = 12;
/// `sysconf(_SC_NPROCESSORS_ONLN)` on Linux.
const SC_NPROCESSORS_ONLN: i64 = 84;
/// The product's arguments `(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`, as a share's record
/// holds them.
const PRODUCT_ARGS: usize = 10;
/// A share of parallel parts: the parts' function pointers, their count, the first part and the
/// stride between parts of this share, the functions' four arguments, and the share's status.
const SHARE_FIELDS: usize = 9;
const STATUS: i32 = 8 * 8;

/// The thread count and the C library functions a split calls.
pub(super) struct Threads {
    count: DataId,
    create: FuncId,
    join: FuncId,
    sysconf: FuncId,
}

impl Threads {
    /// Defines `{prefix}_threads` (an `int32_t`, with `linkage`, initially 0) and imports
    /// `pthread_create`, `pthread_join` and `sysconf`.
    pub(super) fn declare<M: Module>(module: &mut M, prefix: &str, linkage: Linkage) -> Result<Threads> {
        let count = module.declare_data(&format!("{prefix}_threads"), linkage, true, false)?;
        let mut data = DataDescription::new();
        data.define_zeroinit(4);
        data.set_align(4);
        module.define_data(count, &data)?;
        let ptr = module.target_config().pointer_type();
        let mut import = |name: &str, params: &[types::Type], ret: types::Type| {
            let mut sig = module.make_signature();
            sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
            sig.returns.push(AbiParam::new(ret));
            module.declare_function(name, Linkage::Import, &sig).map_err(anyhow::Error::from)
        };
        Ok(Threads {
            create: import("pthread_create", &[ptr, ptr, ptr, ptr], types::I32)?,
            join: import("pthread_join", &[types::I64, ptr], types::I32)?,
            sysconf: import("sysconf", &[types::I32], types::I64)?,
            count,
        })
    }

    /// How many threads a split may use: the global, or the online processors when it is 0;
    /// from 1 to [`MAX_THREADS`].
    fn wanted<M: Module>(&self, module: &mut M, b: &mut FunctionBuilder) -> Value {
        let ptr = module.target_config().pointer_type();
        let count = module.declare_data_in_func(self.count, b.func);
        let sysconf = module.declare_func_in_func(self.sysconf, b.func);
        let at = b.ins().symbol_value(ptr, count);
        let set = b.ins().load(types::I32, mem(), at, 0);
        let set = b.ins().sextend(types::I64, set);
        let (query, chosen) = (b.create_block(), b.create_block());
        b.append_block_param(chosen, types::I64);
        let unset = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, set, 0);
        b.ins().brif(unset, query, &[], chosen, &[set.into()]);
        b.switch_to_block(query);
        b.seal_block(query);
        let name = b.ins().iconst(types::I32, SC_NPROCESSORS_ONLN);
        let call = b.ins().call(sysconf, &[name]);
        let online = b.inst_results(call)[0];
        b.ins().jump(chosen, &[online.into()]);
        b.switch_to_block(chosen);
        b.seal_block(chosen);
        let wanted = b.block_params(chosen)[0];
        let one = b.ins().iconst(types::I64, 1);
        let wanted = b.ins().smax(wanted, one);
        let most = b.ins().iconst(types::I64, MAX_THREADS);
        b.ins().smin(wanted, most)
    }

    /// Runs `worker(record)` (a function `void *(void *)`) for each of the `count` records
    /// (`record_bytes` apart from `records`, `count` from 1 to [`MAX_THREADS`]): the first on this
    /// thread, each other on a thread of its own, joined before this returns.
    fn fork_join<M: Module>(&self, module: &mut M, b: &mut FunctionBuilder, count: Value, records: Value, record_bytes: i64, worker: FuncId) {
        let ptr = module.target_config().pointer_type();
        let (create, join) = (module.declare_func_in_func(self.create, b.func), module.declare_func_in_func(self.join, b.func));
        let worker = module.declare_func_in_func(worker, b.func);
        let slot = |b: &mut FunctionBuilder| b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (MAX_THREADS * 8) as u32, 3));
        let (ids, started) = (slot(b), slot(b));
        let (ids, started) = (b.ins().stack_addr(ptr, ids, 0), b.ins().stack_addr(ptr, started, 0));
        let address = b.ins().func_addr(ptr, worker);
        let null = b.ins().iconst(ptr, 0);
        let one = b.ins().iconst(types::I64, 1);
        let record = |b: &mut FunctionBuilder, j: Value| {
            let at = b.ins().imul_imm_s(j, record_bytes);
            b.ins().iadd(records, at)
        };
        let (j, threads) = open(b, one, count, 1);
        {
            let r = record(b, j);
            let at = b.ins().ishl_imm_u(j, 3);
            let id_at = b.ins().iadd(ids, at);
            let call = b.ins().call(create, &[id_at, null, address, r]);
            let status = b.inst_results(call)[0];
            let ok = b.ins().icmp_imm_s(IntCC::Equal, status, 0);
            let ok = b.ins().uextend(types::I64, ok);
            let flag_at = b.ins().iadd(started, at);
            b.ins().store(mem(), ok, flag_at, 0);
            // No thread: this share runs here.
            branch(b, ok, |b| {
                b.ins().call(worker, &[r]);
            });
        }
        close(b, threads);
        b.ins().call(worker, &[records]);
        let (j, joins) = open(b, one, count, 1);
        {
            let at = b.ins().ishl_imm_u(j, 3);
            let flag_at = b.ins().iadd(started, at);
            let ok = b.ins().load(types::I64, mem(), flag_at, 0);
            let not_started = b.ins().icmp_imm_s(IntCC::Equal, ok, 0);
            branch(b, not_started, |b| {
                let id_at = b.ins().iadd(ids, at);
                let thread = b.ins().load(types::I64, mem(), id_at, 0);
                b.ins().call(join, &[thread, null]);
            });
        }
        close(b, joins);
    }

    /// Runs `worker` on shares of `0..extent`, one per thread: ⌈extent / threads⌉ each, rounded
    /// up to a multiple of `quantum`. `record(b, at, start, count)` writes the record (`fields`
    /// words) of the share `start..start + count` at `at`.
    fn split<M: Module>(
        &self,
        module: &mut M,
        b: &mut FunctionBuilder,
        (extent, quantum): (Value, Value),
        fields: usize,
        worker: FuncId,
        mut record: impl FnMut(&mut FunctionBuilder, Value, Value, Value),
    ) {
        let ptr = module.target_config().pointer_type();
        let wanted = self.wanted(module, b);
        let per = ceil_div(b, extent, wanted);
        let per = ceil_div(b, per, quantum);
        let per = b.ins().imul(per, quantum);
        let shares = ceil_div(b, extent, per);
        let record_bytes = 8 * fields as i64;
        let records = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (MAX_THREADS * record_bytes) as u32, 3));
        let records = b.ins().stack_addr(ptr, records, 0);
        let zero = b.ins().iconst(types::I64, 0);
        let (w, fill) = open(b, zero, shares, 1);
        let at = b.ins().imul_imm_s(w, record_bytes);
        let at = b.ins().iadd(records, at);
        let start = b.ins().imul(w, per);
        let left = b.ins().isub(extent, start);
        let count = b.ins().smin(left, per);
        record(b, at, start, count);
        close(b, fill);
        self.fork_join(module, b, shares, records, record_bytes, worker);
    }
}

/// Stores `values` as the consecutive words of the record at `at`.
fn store_fields(b: &mut FunctionBuilder, at: Value, values: &[Value]) {
    for (f, &v) in values.iter().enumerate() {
        b.ins().store(mem(), v, at, (8 * f) as i32);
    }
}

/// Writes `count` float pointers of the array `from`, each advanced by `offset(j, 8 · j)`
/// elements, into `record` from byte `field_at` on.
fn share_pointers(
    b: &mut FunctionBuilder,
    from: Value,
    count: Value,
    record: Value,
    field_at: i32,
    offset: impl Fn(&mut FunctionBuilder, Value, Value) -> Value,
) {
    let zero = b.ins().iconst(types::I64, 0);
    let (j, l) = open(b, zero, count, 1);
    let at = b.ins().ishl_imm_u(j, 3);
    let p_at = b.ins().iadd(from, at);
    let p = b.ins().load(types::I64, mem(), p_at, 0);
    let elements = offset(b, j, at);
    let bytes = b.ins().ishl_imm_u(elements, 2);
    let p = b.ins().iadd(p, bytes);
    let to = b.ins().iadd(record, at);
    b.ins().store(mem(), p, to, field_at);
    close(b, l);
}

/// ⌈x / y⌉ of positive `x` and `y`.
fn ceil_div(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let sum = b.ins().iadd(x, y);
    let sum = b.ins().iadd_imm_s(sum, -1);
    b.ins().udiv(sum, y)
}

/// Runs `then` unless `skip` is non-zero.
fn branch(b: &mut FunctionBuilder, skip: Value, then: impl FnOnce(&mut FunctionBuilder)) {
    let (body, next) = (b.create_block(), b.create_block());
    b.ins().brif(skip, next, &[], body, &[]);
    b.switch_to_block(body);
    b.seal_block(body);
    then(b);
    b.ins().jump(next, &[]);
    b.switch_to_block(next);
    b.seal_block(next);
}

/// The signature of a thread's function, `void *(void *)`.
fn thread_signature<M: Module>(module: &M) -> Signature {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.returns.push(AbiParam::new(ptr));
    sig
}

/// Defines `{prefix}_matmul(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`: `product` (same
/// arguments) on the whole, or from [`MIN_MACS`] multiply-adds on shares of `c`'s rows, one per
/// thread.
pub(super) fn define_product<M: Module>(module: &mut M, prefix: &str, threads: &Threads, product: FuncId) -> Result<FuncId> {
    let ptr = module.target_config().pointer_type();
    let share = function(module, &format!("{prefix}_matmul_share"), thread_signature(module), |module, b, params| {
        let args: Vec<Value> = (0..PRODUCT_ARGS).map(|j| b.ins().load(types::I64, mem(), params[0], (8 * j) as i32)).collect();
        let product = module.declare_func_in_func(product, b.func);
        b.ins().call(product, &args);
        let null = b.ins().iconst(ptr, 0);
        b.ins().return_(&[null]);
    })?;
    let mut sig = module.make_signature();
    sig.params.extend((0..PRODUCT_ARGS).map(|_| AbiParam::new(types::I64)));
    function(module, &format!("{prefix}_matmul"), sig, |module, b, args| {
        let (c, a, a_rs, m, n, k) = (args[0], args[1], args[2], args[7], args[8], args[9]);
        let direct = b.create_block();
        let macs = b.ins().imul(m, n);
        let macs = b.ins().imul(macs, k);
        let small = b.ins().icmp_imm_s(IntCC::SignedLessThan, macs, MIN_MACS);
        let large = b.create_block();
        b.ins().brif(small, direct, &[], large, &[]);
        b.switch_to_block(large);
        b.seal_block(large);
        // Shares of whole row blocks.
        let quantum = b.ins().iconst(types::I64, ROW_QUANTUM);
        threads.split(module, b, (m, quantum), PRODUCT_ARGS, share, |b, at, first, rows| {
            let c_at = b.ins().imul(first, n);
            let c_at = b.ins().ishl_imm_u(c_at, 2);
            let cj = b.ins().iadd(c, c_at);
            let a_at = b.ins().imul(first, a_rs);
            let a_at = b.ins().ishl_imm_u(a_at, 2);
            let aj = b.ins().iadd(a, a_at);
            store_fields(b, at, &[cj, aj, a_rs, args[3], args[4], args[5], args[6], rows, n, k]);
        });
        b.ins().return_(&[]);

        b.switch_to_block(direct);
        b.seal_block(direct);
        let product = module.declare_func_in_func(product, b.func);
        b.ins().call(product, args);
        b.ins().return_(&[]);
    })
}

/// Defines `{prefix}_parallel(parts, count, lengths, args, outputs, workspace) -> status`: runs
/// the `count` functions at `parts` (each `(lengths, args, outputs, workspace) -> status`, as
/// the model's) in shares of every `threads`-th part, one share per thread; the first non-zero
/// status of a share, or 0.
pub(super) fn define_parts<M: Module>(module: &mut M, prefix: &str, threads: &Threads) -> Result<FuncId> {
    let ptr = module.target_config().pointer_type();
    let mut part_sig = module.make_signature();
    part_sig.params.extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
    part_sig.returns.push(AbiParam::new(types::I32));
    // A share: parts first, first + stride, … until one fails.
    let share = function(module, &format!("{prefix}_parallel_share"), thread_signature(module), |_, b, params| {
        let record = params[0];
        let field = |b: &mut FunctionBuilder, f: usize| b.ins().load(types::I64, mem(), record, (8 * f) as i32);
        let (parts, count, first, stride) = (field(b, 0), field(b, 1), field(b, 2), field(b, 3));
        let call_args: Vec<Value> = (4..8).map(|f| field(b, f)).collect();
        let sig = b.import_signature(part_sig.clone());
        let (head, body, done) = (b.create_block(), b.create_block(), b.create_block());
        b.append_block_param(head, types::I64);
        b.ins().jump(head, &[first.into()]);
        b.switch_to_block(head);
        let j = head_param(b, head);
        let more = b.ins().icmp(IntCC::SignedLessThan, j, count);
        b.ins().brif(more, body, &[], done, &[]);
        b.switch_to_block(body);
        b.seal_block(body);
        let at = b.ins().ishl_imm_u(j, 3);
        let at = b.ins().iadd(parts, at);
        let f = b.ins().load(ptr, mem(), at, 0);
        let call = b.ins().call_indirect(sig, f, &call_args);
        let status = b.inst_results(call)[0];
        let status = b.ins().sextend(types::I64, status);
        b.ins().store(mem(), status, record, STATUS);
        let next = b.ins().iadd(j, stride);
        let failed = b.ins().icmp_imm_s(IntCC::NotEqual, status, 0);
        b.ins().brif(failed, done, &[], head, &[next.into()]);
        b.seal_block(head);
        b.switch_to_block(done);
        b.seal_block(done);
        let null = b.ins().iconst(ptr, 0);
        b.ins().return_(&[null]);
    })?;
    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(ptr), AbiParam::new(types::I64), AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
    sig.returns.push(AbiParam::new(types::I32));
    function(module, &format!("{prefix}_parallel"), sig, |module, b, args| {
        let count = args[1];
        let wanted = threads.wanted(module, b);
        let shares = b.ins().smin(wanted, count);
        let records = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (MAX_THREADS * 8 * SHARE_FIELDS as i64) as u32, 3));
        let records = b.ins().stack_addr(ptr, records, 0);
        let zero = b.ins().iconst(types::I64, 0);
        let (w, fill) = open(b, zero, shares, 1);
        {
            let record = b.ins().imul_imm_s(w, 8 * SHARE_FIELDS as i64);
            let record = b.ins().iadd(records, record);
            let fields = [args[0], count, w, shares, args[2], args[3], args[4], args[5], zero];
            for (f, &v) in fields.iter().enumerate() {
                b.ins().store(mem(), v, record, (8 * f) as i32);
            }
        }
        close(b, fill);
        threads.fork_join(module, b, shares, records, 8 * SHARE_FIELDS as i64, share);
        // The first failure, in share order.
        let (head, body, done) = (b.create_block(), b.create_block(), b.create_block());
        b.append_block_param(head, types::I64);
        b.append_block_param(done, types::I64);
        b.ins().jump(head, &[zero.into()]);
        b.switch_to_block(head);
        let w = head_param(b, head);
        let more = b.ins().icmp(IntCC::SignedLessThan, w, shares);
        b.ins().brif(more, body, &[], done, &[zero.into()]);
        b.switch_to_block(body);
        b.seal_block(body);
        let at = b.ins().imul_imm_s(w, 8 * SHARE_FIELDS as i64);
        let at = b.ins().iadd(records, at);
        let status = b.ins().load(types::I64, mem(), at, STATUS);
        let next = b.ins().iadd_imm_s(w, 1);
        let failed = b.ins().icmp_imm_s(IntCC::NotEqual, status, 0);
        b.ins().brif(failed, done, &[status.into()], head, &[next.into()]);
        b.seal_block(head);
        b.switch_to_block(done);
        b.seal_block(done);
        let status = b.block_params(done)[0];
        let status = b.ins().ireduce(types::I32, status);
        b.ins().return_(&[status]);
    })
}

/// A reduction's share: the function, then its arguments `(dst, src, outer, len, inner, width)`.
const REDUCE_FIELDS: usize = 7;

/// Defines `{prefix}_reduce(reduction, dst, src, outer, len, inner)`: calls `reduction(dst, src,
/// outer, len, inner, width)` ([`super::reduce`]) on the whole, or from [`MIN_KERNEL_WORK`]
/// elements on shares of the `outer` rows or (when there are more lanes than rows) of the
/// `inner` lanes (whole vectors of 16), one per thread.
pub(super) fn define_reduce<M: Module>(module: &mut M, prefix: &str, threads: &Threads) -> Result<FuncId> {
    let ptr = module.target_config().pointer_type();
    let mut reduction_sig = module.make_signature();
    reduction_sig.params.extend([ptr, ptr, types::I64, types::I64, types::I64, types::I64].map(AbiParam::new));
    let share = function(module, &format!("{prefix}_reduce_share"), thread_signature(module), |_, b, params| {
        let fields: Vec<Value> = (0..REDUCE_FIELDS).map(|f| b.ins().load(types::I64, mem(), params[0], (8 * f) as i32)).collect();
        let sig = b.import_signature(reduction_sig.clone());
        b.ins().call_indirect(sig, fields[0], &fields[1..]);
        let null = b.ins().iconst(ptr, 0);
        b.ins().return_(&[null]);
    })?;
    let mut sig = module.make_signature();
    sig.params.extend([ptr, ptr, ptr, types::I64, types::I64, types::I64].map(AbiParam::new));
    function(module, &format!("{prefix}_reduce"), sig, |module, b, args| {
        let (reduction, dst, src, outer, len, inner) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        let (direct, large) = (b.create_block(), b.create_block());
        let work = b.ins().imul(outer, len);
        let work = b.ins().imul(work, inner);
        let small = b.ins().icmp_imm_s(IntCC::SignedLessThan, work, MIN_KERNEL_WORK);
        b.ins().brif(small, direct, &[], large, &[]);
        b.switch_to_block(large);
        b.seal_block(large);
        // Shares of the rows, or of the lanes (whole vectors of 16) when there are more lanes.
        let by_rows = b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, outer, inner);
        let extent = b.ins().select(by_rows, outer, inner);
        let (one, sixteen) = (b.ins().iconst(types::I64, 1), b.ins().iconst(types::I64, 16));
        let quantum = b.ins().select(by_rows, one, sixteen);
        threads.split(module, b, (extent, quantum), REDUCE_FIELDS, share, |b, at, start, count| {
            // A share of rows starts `start` rows on (`inner` floats of `dst`, `len · inner` of
            // `src` each); a share of lanes `start` floats on in both.
            let dst_step = b.ins().select(by_rows, inner, one);
            let src_step = b.ins().imul(len, inner);
            let src_step = b.ins().select(by_rows, src_step, dst_step);
            let advance = |b: &mut FunctionBuilder, p: Value, step: Value| {
                let at = b.ins().imul(start, step);
                let at = b.ins().ishl_imm_u(at, 2);
                b.ins().iadd(p, at)
            };
            let (dst, src) = (advance(b, dst, dst_step), advance(b, src, src_step));
            let rows = b.ins().select(by_rows, count, outer);
            let width = b.ins().select(by_rows, inner, count);
            store_fields(b, at, &[reduction, dst, src, rows, len, inner, width]);
        });
        b.ins().return_(&[]);

        b.switch_to_block(direct);
        b.seal_block(direct);
        let sig = b.import_signature(reduction_sig.clone());
        b.ins().call_indirect(sig, reduction, &[dst, src, outer, len, inner, inner]);
        b.ins().return_(&[]);
    })
}

/// A kernel's share: the kernel, its `n`, its rows, the inputs' row strides, then its input
/// and output pointers at the share's first row.
const KERNEL_FIELDS: usize = 4 + 2 * MAX_KERNEL_OPERANDS;

/// Defines `{prefix}_kernel_rows(kernel, n, rows, ins, strides, outs, inputs, outputs, work,
/// splat)`: calls `kernel(n, rows, ins, strides, outs)` (an elementwise kernel's signature) on
/// the whole, or from [`MIN_KERNEL_WORK`] element operations (`work`) on shares of its rows, one
/// per thread; one long row is shared out by columns (bit j of `splat` set: input j is one value
/// per row, the same for every column). At most [`MAX_KERNEL_OPERANDS`] inputs and outputs.
pub(super) fn define_kernel_rows<M: Module>(module: &mut M, prefix: &str, threads: &Threads) -> Result<FuncId> {
    let ptr = module.target_config().pointer_type();
    let mut kernel_sig = module.make_signature();
    kernel_sig.params.extend([AbiParam::new(types::I64), AbiParam::new(types::I64), AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
    let outs_at = (8 * (4 + MAX_KERNEL_OPERANDS)) as i64;
    let share = function(module, &format!("{prefix}_kernel_share"), thread_signature(module), |_, b, params| {
        let record = params[0];
        let field = |b: &mut FunctionBuilder, f: usize| b.ins().load(types::I64, mem(), record, (8 * f) as i32);
        let (kernel, n, rows, strides) = (field(b, 0), field(b, 1), field(b, 2), field(b, 3));
        let ins = b.ins().iadd_imm_s(record, 32);
        let outs = b.ins().iadd_imm_s(record, outs_at);
        let sig = b.import_signature(kernel_sig.clone());
        b.ins().call_indirect(sig, kernel, &[n, rows, ins, strides, outs]);
        let null = b.ins().iconst(ptr, 0);
        b.ins().return_(&[null]);
    })?;
    let mut sig = module.make_signature();
    sig.params.extend([ptr, types::I64, types::I64, ptr, ptr, ptr, types::I64, types::I64, types::I64, types::I64].map(AbiParam::new));
    function(module, &format!("{prefix}_kernel_rows"), sig, |module, b, args| {
        let (kernel, n, rows, ins, strides, outs, inputs, outputs, work, splat) =
            (args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8], args[9]);
        let (direct, large) = (b.create_block(), b.create_block());
        let small = b.ins().icmp_imm_s(IntCC::SignedLessThan, work, MIN_KERNEL_WORK);
        b.ins().brif(small, direct, &[], large, &[]);
        b.switch_to_block(large);
        b.seal_block(large);
        // Shares of the rows, or of one row's columns (whole vectors of 16).
        let one_row = b.ins().icmp_imm_s(IntCC::Equal, rows, 1);
        let extent = b.ins().select(one_row, n, rows);
        let (zero, one, sixteen) = (b.ins().iconst(types::I64, 0), b.ins().iconst(types::I64, 1), b.ins().iconst(types::I64, 16));
        let quantum = b.ins().select(one_row, sixteen, one);
        threads.split(module, b, (extent, quantum), KERNEL_FIELDS, share, |b, record, start, count| {
            let (row, share_rows) = (b.ins().select(one_row, zero, start), b.ins().select(one_row, one, count));
            let (column, share_n) = (b.ins().select(one_row, start, zero), b.ins().select(one_row, count, n));
            store_fields(b, record, &[kernel, share_n, share_rows, strides]);
            // Input j at the share's first element: ins[j] + row · strides[j] + column (no
            // column for a splat input) floats; outputs are whole rows of n.
            share_pointers(b, ins, inputs, record, 32, |b, j, at| {
                let stride_at = b.ins().iadd(strides, at);
                let stride = b.ins().load(types::I64, mem(), stride_at, 0);
                let offset = b.ins().imul(row, stride);
                let is_splat = b.ins().ushr(splat, j);
                let is_splat = b.ins().band_imm_s(is_splat, 1);
                let own_column = b.ins().select(is_splat, zero, column);
                b.ins().iadd(offset, own_column)
            });
            share_pointers(b, outs, outputs, record, outs_at as i32, |b, _, _| {
                let offset = b.ins().imul(row, n);
                b.ins().iadd(offset, column)
            });
        });
        b.ins().return_(&[]);

        b.switch_to_block(direct);
        b.seal_block(direct);
        let sig = b.import_signature(kernel_sig.clone());
        b.ins().call_indirect(sig, kernel, &[n, rows, ins, strides, outs]);
        b.ins().return_(&[]);
    })
}

fn head_param(b: &FunctionBuilder, head: Block) -> Value {
    b.block_params(head)[0]
}
