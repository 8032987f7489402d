//! Large products split over threads: the rows of `c` are cut into one part per thread (whole
//! blocks of rows each), the calling thread computes the first and POSIX threads the others.
//! The number of threads is a global of the module, `{prefix}_threads`: 0 (its initial value)
//! means one per online processor, asked of `sysconf` at each large product. Products under
//! [`MIN_MACS`] multiply-adds, and any part whose thread cannot be created, run on the calling
//! thread.

use anyhow::{anyhow, Result};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, StackSlotData, StackSlotKind, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};

use super::emit::{close, enter, mem, open};

/// Below this many multiply-adds (about 0.1 ms on one core) a thread costs more than it saves.
const MIN_MACS: i64 = 1 << 24;
/// The most parts a product is cut into.
const MAX_PARTS: i64 = 64;
/// Rows of a part are a multiple of the kernels' row blocks (12 and 6).
const ROW_QUANTUM: i64 = 12;
/// `sysconf(_SC_NPROCESSORS_ONLN)` on Linux.
const SC_NPROCESSORS_ONLN: i64 = 84;
/// The product's arguments `(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`, as a part's record
/// holds them.
const ARGS: usize = 10;

/// Defines the thread count `{prefix}_threads` (an `int32_t`, with `linkage`) and
/// `{prefix}_matmul(c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k)`, which runs `product` (same
/// arguments) over row parts on up to that many threads.
pub(super) fn define<M: Module>(module: &mut M, prefix: &str, product: FuncId, linkage: Linkage) -> Result<(FuncId, DataId)> {
    let threads = module.declare_data(&format!("{prefix}_threads"), linkage, true, false)?;
    let mut data = DataDescription::new();
    data.define_zeroinit(4);
    data.set_align(4);
    module.define_data(threads, &data)?;

    let ptr = module.target_config().pointer_type();
    let product_sig = {
        let mut sig = module.make_signature();
        sig.params.extend((0..ARGS).map(|_| AbiParam::new(types::I64)));
        sig
    };
    let import = |module: &mut M, name: &str, params: &[types::Type], ret: types::Type| {
        let mut sig = module.make_signature();
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        sig.returns.push(AbiParam::new(ret));
        module.declare_function(name, Linkage::Import, &sig).map_err(anyhow::Error::from)
    };
    let create = import(module, "pthread_create", &[ptr, ptr, ptr, ptr], types::I32)?;
    let join = import(module, "pthread_join", &[types::I64, ptr], types::I32)?;
    let sysconf = import(module, "sysconf", &[types::I32], types::I64)?;

    // The thread's function: one part's record in, the product computed, null out.
    let worker = {
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.returns.push(AbiParam::new(ptr));
        let id = module.declare_function(&format!("{prefix}_matmul_part"), Linkage::Local, &sig)?;
        let mut ctx = module.make_context();
        ctx.func.signature = sig;
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let record = enter(&mut b)[0];
            let args: Vec<Value> = (0..ARGS).map(|j| b.ins().load(types::I64, mem(), record, (8 * j) as i32)).collect();
            let product = module.declare_func_in_func(product, b.func);
            b.ins().call(product, &args);
            let null = b.ins().iconst(ptr, 0);
            b.ins().return_(&[null]);
            b.finalize(module.isa().frontend_config());
        }
        module.define_function(id, &mut ctx).map_err(|e| anyhow!("compiling the product's thread function: {e:?}"))?;
        id
    };

    let id = module.declare_function(&format!("{prefix}_matmul"), Linkage::Local, &product_sig)?;
    let mut ctx = module.make_context();
    ctx.func.signature = product_sig;
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let product = module.declare_func_in_func(product, b.func);
        let (create, join, sysconf) =
            (module.declare_func_in_func(create, b.func), module.declare_func_in_func(join, b.func), module.declare_func_in_func(sysconf, b.func));
        let worker = module.declare_func_in_func(worker, b.func);
        let threads = module.declare_data_in_func(threads, b.func);
        let args = enter(&mut b);
        let (c, a, a_rs, m, n, k) = (args[0], args[1], args[2], args[7], args[8], args[9]);

        // Small products, and one thread, go straight to the kernel.
        let (split, direct) = (b.create_block(), b.create_block());
        let macs = b.ins().imul(m, n);
        let macs = b.ins().imul(macs, k);
        let large = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, macs, MIN_MACS);
        let at = b.ins().symbol_value(ptr, threads);
        let set = b.ins().load(types::I32, mem(), at, 0);
        let set = b.ins().sextend(types::I64, set);
        let (ask, chosen) = (b.create_block(), b.create_block());
        b.append_block_param(chosen, types::I64);
        let unset = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, set, 0);
        b.ins().brif(large, ask, &[], direct, &[]);
        b.switch_to_block(ask);
        b.seal_block(ask);
        let (query, given) = (b.create_block(), b.create_block());
        b.ins().brif(unset, query, &[], given, &[]);
        b.switch_to_block(query);
        b.seal_block(query);
        let name = b.ins().iconst(types::I32, SC_NPROCESSORS_ONLN);
        let call = b.ins().call(sysconf, &[name]);
        let online = b.inst_results(call)[0];
        b.ins().jump(chosen, &[online.into()]);
        b.switch_to_block(given);
        b.seal_block(given);
        b.ins().jump(chosen, &[set.into()]);
        b.switch_to_block(chosen);
        b.seal_block(chosen);
        let wanted = b.block_params(chosen)[0];
        let one = b.ins().iconst(types::I64, 1);
        let wanted = b.ins().smax(wanted, one);
        let most = b.ins().iconst(types::I64, MAX_PARTS);
        let wanted = b.ins().smin(wanted, most);
        // Rows per part: ⌈m / threads⌉ rounded up to whole row blocks; parts: ⌈m / rows⌉.
        let rows = b.ins().iadd(m, wanted);
        let rows = b.ins().iadd_imm_s(rows, -1);
        let rows = b.ins().udiv(rows, wanted);
        let rows = b.ins().iadd_imm_s(rows, ROW_QUANTUM - 1);
        let rows = b.ins().udiv_imm_u(rows, ROW_QUANTUM);
        let rows = b.ins().imul_imm_s(rows, ROW_QUANTUM);
        let parts = b.ins().iadd(m, rows);
        let parts = b.ins().iadd_imm_s(parts, -1);
        let parts = b.ins().udiv(parts, rows);
        let several = b.ins().icmp_imm_s(IntCC::SignedGreaterThan, parts, 1);
        b.ins().brif(several, split, &[], direct, &[]);

        b.switch_to_block(split);
        b.seal_block(split);
        let slot = |b: &mut FunctionBuilder, bytes: i64| b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes as u32, 3));
        let records = slot(&mut b, MAX_PARTS * 8 * ARGS as i64);
        let ids = slot(&mut b, MAX_PARTS * 8);
        let started = slot(&mut b, MAX_PARTS * 8);
        let (records, ids, started) = (b.ins().stack_addr(ptr, records, 0), b.ins().stack_addr(ptr, ids, 0), b.ins().stack_addr(ptr, started, 0));
        let worker = b.ins().func_addr(ptr, worker);
        let null = b.ins().iconst(ptr, 0);
        let (p, parts_loop) = open(&mut b, one, parts, 1);
        {
            let first = b.ins().imul(p, rows);
            let left = b.ins().isub(m, first);
            let mp = b.ins().smin(left, rows);
            let c_at = b.ins().imul(first, n);
            let c_at = b.ins().ishl_imm_u(c_at, 2);
            let cp = b.ins().iadd(c, c_at);
            let a_at = b.ins().imul(first, a_rs);
            let a_at = b.ins().ishl_imm_u(a_at, 2);
            let ap = b.ins().iadd(a, a_at);
            let record = b.ins().imul_imm_s(p, 8 * ARGS as i64);
            let record = b.ins().iadd(records, record);
            let fields = [cp, ap, a_rs, args[3], args[4], args[5], args[6], mp, n, k];
            for (j, &v) in fields.iter().enumerate() {
                b.ins().store(mem(), v, record, (8 * j) as i32);
            }
            let at = b.ins().ishl_imm_u(p, 3);
            let id_at = b.ins().iadd(ids, at);
            let call = b.ins().call(create, &[id_at, null, worker, record]);
            let status = b.inst_results(call)[0];
            let ok = b.ins().icmp_imm_s(IntCC::Equal, status, 0);
            let ok = b.ins().uextend(types::I64, ok);
            let flag_at = b.ins().iadd(started, at);
            b.ins().store(mem(), ok, flag_at, 0);
            // No thread: this part runs here.
            let (inline, next) = (b.create_block(), b.create_block());
            b.ins().brif(ok, next, &[], inline, &[]);
            b.switch_to_block(inline);
            b.seal_block(inline);
            b.ins().call(product, &fields);
            b.ins().jump(next, &[]);
            b.switch_to_block(next);
            b.seal_block(next);
        }
        close(&mut b, parts_loop);
        let mine = b.ins().smin(m, rows);
        b.ins().call(product, &[c, a, a_rs, args[3], args[4], args[5], args[6], mine, n, k]);
        let (p, joins) = open(&mut b, one, parts, 1);
        {
            let at = b.ins().ishl_imm_u(p, 3);
            let flag_at = b.ins().iadd(started, at);
            let ok = b.ins().load(types::I64, mem(), flag_at, 0);
            let (wait, next) = (b.create_block(), b.create_block());
            b.ins().brif(ok, wait, &[], next, &[]);
            b.switch_to_block(wait);
            b.seal_block(wait);
            let id_at = b.ins().iadd(ids, at);
            let thread = b.ins().load(types::I64, mem(), id_at, 0);
            b.ins().call(join, &[thread, null]);
            b.ins().jump(next, &[]);
            b.switch_to_block(next);
            b.seal_block(next);
        }
        close(&mut b, joins);
        b.ins().return_(&[]);

        b.switch_to_block(direct);
        b.seal_block(direct);
        b.ins().call(product, &args);
        b.ins().return_(&[]);
        b.finalize(module.isa().frontend_config());
    }
    module.define_function(id, &mut ctx).map_err(|e| anyhow!("compiling the threaded product: {e:?}"))?;
    Ok((id, threads))
}
