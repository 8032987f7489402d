//! A whole scan as one kernel: one block per lane (per batch × head for a TTT mini-batch loop)
//! runs every iteration of the body, the body's instructions in phases with a barrier between
//! them (only instructions that touch the same memory are ordered), so no launch separates two
//! mini-batches. The lanes come from splitting the scan
//! where its body keeps them apart (`tttc_lower::lanes`: the heads, then the batch); each block
//! reads its lane's slice of every operand in place and keeps its intermediate values in its own
//! part of the workspace. The carried state (TTT's inner weights) goes back and forth between
//! two copies in the block's shared memory when they fit (else two per-lane buffers only this
//! block touches), so it stays on chip from one mini-batch to the next. Matrix products inside
//! run on tensor cores ([`crate::gemm`]). Memory is addressed generically, shared or global.

use anyhow::Result;
use tttc_ir::layout::contiguous_strides;
use tttc_ir::Size;
use tttc_lower::lanes;
use tttc_lower::schedule::{self, Access, BufId, Function, Home, Instr, ScanInstr, Schedule};

use crate::build::Builder;
use crate::isa::*;
use crate::kernels::{self, elem_bytes, params_of, Generated, ParamRef, Spread, PERSISTENT_THREADS};
use crate::model::Work;

/// The most pointers a persistent kernel takes: each is held in registers through the loop, and
/// with more (a TTT-ReLU³ layer's backward sweep, 48) the body spills registers; such a scan is
/// driven from the host instead.
const MOST_PARAMS: usize = 40;

/// Workspace each lane's block gets, rounded to this.
const LANE_ALIGN: usize = 256;

/// Shared memory the carries may take: the 48 KiB a kernel has without opting in, less the
/// product tiles'.
const SHARED_FOR_CARRIES: usize = 48 * 1024 - crate::gemm::SHARED_BYTES;

pub struct Persistent {
    pub generated: Generated,
    /// Bytes of scratch it needs after the calling function's arena.
    pub scratch_bytes: usize,
    /// What one launch does: global memory counts the operands read and the outputs written
    /// once (the lanes' intermediate values and carries stay in their SM's caches); the serial
    /// steps are the barrier-separated phases each block runs one after another.
    pub work: Work,
    /// Kernels launched after it, one per accumulator: its lanes' shares summed, in lane order.
    pub sums: Vec<(Generated, Work)>,
}

/// Memory a body instruction touches: an argument, an output, or a byte range of the lane's
/// workspace (where every buffer has bytes of its own).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Region {
    Arg(usize),
    Out(usize),
    Work(usize, usize),
}

impl Region {
    fn overlaps(self, other: Region) -> bool {
        match (self, other) {
            (Region::Work(a, b), Region::Work(c, d)) => a < d && c < b,
            (x, y) => x == y,
        }
    }
}

/// What one instruction reads and writes.
struct Touches {
    reads: Vec<Region>,
    writes: Vec<Region>,
}

impl Touches {
    /// Whether the two must be ordered: one writes memory the other reads or writes.
    fn conflict(&self, other: &Touches) -> bool {
        let any = |xs: &[Region], ys: &[Region]| xs.iter().any(|&x| ys.iter().any(|&y| x.overlaps(y)));
        any(&self.reads, &other.writes) || any(&self.writes, &other.writes) || any(&self.writes, &other.reads)
    }
}

/// The body's instructions grouped into barrier-separated phases, in the order they are emitted,
/// each with whether a barrier goes before it. Only conflicting instructions are ordered, so
/// independent chains (RoPE's copies beside the inner loss's products) share phases instead of
/// each taking its own: the longest chain of conflicts sets the number of phases, and each
/// instruction goes into the latest phase the instructions after it allow (placed as early as
/// possible instead, the largest backward body spilled a register). Within a phase the
/// instructions keep their order.
fn phases_of<'f>(body: &Schedule, f: &'f Function) -> Vec<(bool, &'f Instr)> {
    let touches: Vec<Touches> = f
        .instrs
        .iter()
        .map(|instr| {
            let (reads, writes) = regions(body, f, instr);
            Touches { reads, writes }
        })
        .collect();
    let n = touches.len();
    let mut earliest: Vec<usize> = Vec::with_capacity(n);
    for i in 0..n {
        earliest.push((0..i).filter(|&j| touches[j].conflict(&touches[i])).map(|j| earliest[j] + 1).max().unwrap_or(0));
    }
    let last = earliest.iter().copied().max().unwrap_or(0);
    let mut phase = vec![last; n];
    for i in (0..n).rev() {
        phase[i] = (i + 1..n).filter(|&j| touches[i].conflict(&touches[j])).map(|j| phase[j] - 1).min().unwrap_or(last);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| phase[i]); // stable: program order within a phase
    order.iter().enumerate().map(|(k, &i)| (k > 0 && phase[order[k - 1]] != phase[i], &f.instrs[i])).collect()
}

/// The regions `instr` of `body` reads and writes (a view whose place depends on the lengths
/// counts as the whole of the buffer it is in).
fn regions(body: &Schedule, f: &Function, instr: &Instr) -> (Vec<Region>, Vec<Region>) {
    let region = |b: BufId| {
        let (r, at) = f.locate(b);
        let start = f.bufs[r].offset;
        match (f.bufs[r].home, at.known(), f.bufs[b].bytes().known()) {
            (Home::Arg(j), ..) => Region::Arg(j),
            (Home::Out(j), ..) => Region::Out(j),
            (_, Some(at), Some(bytes)) => Region::Work(start + at, start + at + bytes),
            _ => Region::Work(start, start + body.most(f.bufs[r].bytes())),
        }
    };
    let uses = instr.uses();
    let with = |not: Access| uses.iter().filter(|u| u.access != not).map(|u| region(u.buf)).collect();
    (with(Access::Write), with(Access::Read))
}

/// How a scan splits into lanes: one or more splits, each `width` lanes wide.
struct Lanes {
    /// The width of each split, in the order the block index is decomposed.
    widths: Vec<Size>,
    /// Per scan operand (carries, sequences, invariants), per split: the operand's axis that
    /// holds the lane, or `None` when it is the same for every lane.
    operand: Vec<Vec<Option<usize>>>,
    /// Per per-chunk output, per split: its lane axis.
    output: Vec<Vec<Option<usize>>>,
    body: tttc_ir::Graph,
}

/// The scan `s` of `f` (a function of `model`, whose lengths the kernel reads) as one persistent
/// kernel, or `None` when its lanes cannot be separated into at least two independent,
/// contiguous slices.
pub fn compile(model: &Schedule, f: &Function, s: &ScanInstr, lengths: &[(String, usize)]) -> Result<Option<Persistent>> {
    let operands: Vec<BufId> = s.carries.iter().map(|c| c.0).chain(s.seqs.iter().map(|sl| sl.buf)).chain(s.invariants.iter().copied()).collect();
    let Some(lanes) = split(model, f, s, &operands) else { return Ok(None) };
    let count: Size = lanes.widths.iter().product();
    if model.most(count) < 2 {
        return Ok(None);
    }
    let narrow = |shape: &[Size], at: &[Option<usize>]| -> Vec<Size> {
        let mut out = shape.to_vec();
        for p in at.iter().flatten() {
            out[*p] = Size::ONE;
        }
        out
    };
    let (nc, ns) = (s.carries.len(), s.seqs.len());
    // A lane's piece of a buffer (a whole operand, or one iteration's chunk of a sequence or
    // output): contiguous in the buffer, as the body reads its arguments.
    let piece = |buf: BufId, at: &[Option<usize>], chunked: Option<usize>| -> Vec<Size> {
        let mut p = narrow(&f.bufs[buf].shape, at);
        if let Some(per) = chunked {
            p[s.axis] = Size::of(per.min(s.chunk));
        }
        p
    };
    let contiguous = |buf: BufId, shape: &[Size]| {
        let strides = contiguous_strides(&f.bufs[buf].shape);
        let mut expected = Size::ONE;
        shape.iter().zip(&strides).rev().filter(|(d, _)| !d.is_one()).all(|(&d, &st)| {
            let ok = st == expected;
            expected *= d;
            ok
        })
    };
    for (j, &b) in operands.iter().enumerate() {
        let chunked = (nc..nc + ns).contains(&j).then(|| s.seqs[j - nc].per);
        if !contiguous(b, &piece(b, &lanes.operand[j], chunked)) {
            return Ok(None);
        }
    }
    for (j, sl) in s.outputs.iter().enumerate() {
        if !contiguous(sl.buf, &piece(sl.buf, &lanes.output[j], Some(sl.per))) {
            return Ok(None);
        }
    }

    // The narrow body, planned and scheduled for one lane at each chunk length.
    let mut specs = Vec::new();
    let plan = tttc_lower::plan::plan(&lanes.body, 1, schedule::Products::GPU.native, &mut specs, &mut tttc_lower::plan::PlanStats::default());
    let shapes = |len: Size| -> Vec<Vec<Size>> {
        operands
            .iter()
            .enumerate()
            .map(|(j, &b)| {
                let mut n = narrow(&f.bufs[b].shape, &lanes.operand[j]);
                if (nc..nc + ns).contains(&j) {
                    n[s.axis] = if s.seqs[j - nc].per == 1 { Size::ONE } else { len };
                }
                n
            })
            .collect()
    };
    // One body per run of iterations, in the order they execute.
    let mut bodies = Vec::new();
    for run in s.runs() {
        let mut sched = schedule::schedule_with_sizes(&plan, specs.clone(), s.env.clone(), &shapes(run.len), schedule::Products::GPU, model.bounds.clone())?;
        if sched.functions.len() != 1 || sched.functions[0].instrs.iter().any(|i| matches!(i, Instr::Scan(_))) {
            return Ok(None);
        }
        // Buffers that share no data share no bytes either, so that only data orders the phases
        // (the body is scheduled with the model's bounds).
        sched.functions[0].separate_buffers(&|x| model.most(x));
        bodies.push((sched, run.count));
    }
    // The carried state between iterations: in shared memory when both copies of every carry
    // fit beside the product tiles (TTT-Linear's inner weights at the 125m width), so it never
    // leaves the SM; else in the lane's slices of the carries' two buffers.
    let carry_bytes: Vec<Size> =
        (0..nc).map(|j| narrow(&f.bufs[operands[j]].shape, &lanes.operand[j]).iter().product::<Size>() * elem_bytes(f.bufs[operands[j]].dtype)).collect();
    let carry_words: Vec<Size> = carry_bytes.iter().map(|c| c.div_exact(4).expect("carries are of 4-byte words")).collect();
    let slot_bytes: Vec<usize> = carry_bytes.iter().map(|&c| model.most(c).div_ceil(16) * 16).collect();
    let slots: usize = slot_bytes.iter().map(|c| 2 * c).sum();
    let on_chip = slots <= SHARED_FOR_CARRIES;
    // A lane's scratch: its body's workspace, then each accumulator (a carry that sums across the
    // lanes: each lane sums its own share, `sums` adds the shares afterwards), both of its copies
    // when off chip, else the final one.
    let mut lane_bytes = bodies.iter().map(|(sc, _)| sc.functions[0].workspace).max().unwrap_or(0).div_ceil(16) * 16;
    let accumulator_at: Vec<Option<usize>> = (0..nc)
        .map(|j| {
            lanes.operand[j].iter().all(Option::is_none).then(|| {
                let at = lane_bytes;
                lane_bytes += if on_chip { 1 } else { 2 } * slot_bytes[j];
                at
            })
        })
        .collect();
    let lane_bytes = lane_bytes.div_ceil(LANE_ALIGN) * LANE_ALIGN;

    // Parameters: every operand, the carries' two buffers, every output, then scratch and status.
    let mut params: Vec<(ParamRef, String)> = Vec::new();
    for (j, &b) in operands.iter().enumerate() {
        params.push((ParamRef::Buf(b), format!("operand{j}")));
    }
    for (j, (_, pair)) in s.carries.iter().enumerate() {
        params.push((ParamRef::Buf(pair[0]), format!("carry{j}_even")));
        params.push((ParamRef::Buf(pair[1]), format!("carry{j}_odd")));
    }
    for (j, sl) in s.outputs.iter().enumerate() {
        params.push((ParamRef::Buf(sl.buf), format!("output{j}")));
    }
    params.push((ParamRef::Scratch, "scratch".into()));
    params.push((ParamRef::Status, "status".into()));
    if params.len() > MOST_PARAMS {
        return Ok(None);
    }
    let mut b = Builder::new("tttc_kernel", lengths);
    // Generic addresses throughout: the carries may live in shared memory.
    b.use_generic_addresses();
    let ptrs: Vec<Reg> = params.iter().map(|(_, n)| b.ptr_param(n)).collect();
    let n_ops = operands.len();
    let (op_ptrs, pair_ptrs) = (&ptrs[..n_ops], &ptrs[n_ops..n_ops + 2 * nc]);
    let out_ptrs = &ptrs[n_ops + 2 * nc..n_ops + 2 * nc + s.outputs.len()];
    let (scratch, status) = (ptrs[ptrs.len() - 2], ptrs[ptrs.len() - 1]);

    // This block's lane, and each buffer's lane offset in bytes.
    let lane = b.special(Special::Ctaid(0));
    let lane = b.cvt(None, Ty::U64, Ty::U32, lane);
    let mut lane_index = Vec::new();
    let mut rest: Val = lane.into();
    for &width in lanes.widths.iter().rev() {
        let width = b.size(width);
        lane_index.push(b.bin(BinOp::Rem, Ty::U64, rest, width));
        rest = b.bin(BinOp::Div, Ty::U64, rest, width).into();
    }
    lane_index.reverse();
    let offset = |b: &mut Builder, base: Reg, buf: BufId, at: &[Option<usize>]| -> Reg {
        let strides = contiguous_strides(&f.bufs[buf].shape);
        let off = b.mov(Ty::U64, Val::Int(0));
        for (p, &i) in at.iter().zip(&lane_index) {
            if let Some(p) = p {
                let step = b.size(strides[*p] * elem_bytes(f.bufs[buf].dtype));
                b.emit(Inst::Fma { ty: Ty::U64, dst: off, a: i.into(), b: step, c: off.into() });
            }
        }
        b.bin(BinOp::Add, Ty::U64, base, off)
    };
    let op_lane: Vec<Reg> = operands.iter().enumerate().map(|(j, &buf)| offset(&mut b, op_ptrs[j], buf, &lanes.operand[j])).collect();
    let pair_global: Vec<[Reg; 2]> = s
        .carries
        .iter()
        .enumerate()
        .map(|(j, (_, pair))| [offset(&mut b, pair_ptrs[2 * j], pair[0], &lanes.operand[j]), offset(&mut b, pair_ptrs[2 * j + 1], pair[1], &lanes.operand[j])])
        .collect();
    let lane_ws = b.fma(Ty::U64, lane, Val::Int(lane_bytes as i64), scratch);
    let lane_slot = |b: &mut Builder, at: usize| b.bin(BinOp::Add, Ty::U64, lane_ws, Val::Int(at as i64));
    let pair_lane: Vec<[Reg; 2]> = if on_chip {
        let base = b.shared("carries", slots.max(16), 16);
        let base = b.cvt(None, Ty::U64, Ty::U32, base);
        let generic = b.reg(Class::R64);
        b.emit(Inst::CvtaShared { dst: generic, src: base });
        let mut at = 0;
        slot_bytes
            .iter()
            .map(|c| {
                let slot = |b: &mut Builder, at: usize| b.bin(BinOp::Add, Ty::U64, generic, Val::Int(at as i64));
                let pair = [slot(&mut b, at), slot(&mut b, at + c)];
                at += 2 * c;
                pair
            })
            .collect()
    } else {
        pair_global.clone()
    };
    // Where carry `j`'s two copies are: an accumulator's off chip in the lane's scratch, its
    // addresses computed where they are used rather than held through the loop.
    let carry_slots = |b: &mut Builder, j: usize| match accumulator_at[j] {
        Some(at) if !on_chip => [lane_slot(b, at), lane_slot(b, at + slot_bytes[j])],
        _ => pair_lane[j],
    };
    // An accumulator starts from its initial value in the first lane and from zero in the others
    // (in both of its copies: which one the first iteration reads depends on the length).
    if accumulator_at.iter().any(Option::is_some) {
        let (others, started) = (b.label(), b.label());
        let not_first = b.setp(Cmp::Ne, Ty::U64, lane, Val::Int(0));
        b.bra_if(not_first, false, others);
        for j in (0..nc).filter(|&j| accumulator_at[j].is_some()) {
            for slot in carry_slots(&mut b, j) {
                kernels::block_copy_words(&mut b, slot, op_lane[j], carry_words[j]);
            }
        }
        b.bra(started);
        b.place(others);
        for j in (0..nc).filter(|&j| accumulator_at[j].is_some()) {
            for slot in carry_slots(&mut b, j) {
                kernels::block_zero_words(&mut b, slot, carry_words[j]);
            }
        }
        b.place(started);
        b.emit(Inst::BarSync);
    }
    let out_lane: Vec<Reg> = s.outputs.iter().enumerate().map(|(j, sl)| offset(&mut b, out_ptrs[j], sl.buf, &lanes.output[j])).collect();

    // Where an iteration's piece of a sequence or output starts: `chunk` (a `u32`) times the
    // bytes between consecutive pieces, from `base`.
    let piece_at = |b: &mut Builder, base: Reg, chunk: Reg, buf: BufId, per: usize| -> Reg {
        let shape = &f.bufs[buf].shape;
        let step = b.size32(shape[s.axis + 1..].iter().product::<Size>() * (per * elem_bytes(f.bufs[buf].dtype)));
        let offset = b.bin(BinOp::MulWide, Ty::U32, chunk, step);
        b.bin(BinOp::Add, Ty::U64, base, offset)
    };
    // The iteration count in 32 bits: a 64-bit one whose bound `ptxas` cannot see costs the
    // address arithmetic 64-bit registers (the Mamba scan's kernel took 46 registers, not 30,
    // which halved its blocks per SM).
    let it = b.mov(Ty::U32, Val::Int(0));
    let last_chunk = b.size32(s.iterations() - Size::ONE);
    let mut serial_steps = 0;
    let mut run_end = Size::ZERO;
    for (sched, iterations) in &bodies {
        let body = &sched.functions[0];
        run_end += *iterations;
        let end = b.size32(run_end);
        let (top, after) = (b.label(), b.label());
        if iterations.constant().is_none() {
            // A run the lengths leave empty (no whole chunk, or no shorter last one).
            let done = b.setp(Cmp::Ge, Ty::U32, it, end);
            b.bra_if(done, false, after);
        }
        // This body's sizes, computed once before its iterations.
        b.open_size_scope();
        b.place(top);
        // The chunk this iteration works on: a reverse scan visits them from the last.
        let left = b.bin(BinOp::Sub, Ty::U32, last_chunk, it);
        let chunk = if s.reverse { left } else { it };
        // The iteration's arguments and outputs: the carries' first buffers are written when an
        // even number of iterations is left after it.
        let parity = b.bin(BinOp::And, Ty::B32, left, Val::Int(1));
        let even = b.setp(Cmp::Eq, Ty::U32, parity, Val::Int(0));
        let at_start = b.setp(Cmp::Eq, Ty::U32, it, Val::Int(0));
        let mut args = Vec::new();
        let mut outs = Vec::new();
        for j in 0..nc {
            let pair = carry_slots(&mut b, j);
            let previous = b.selp(Ty::U64, even, pair[1], pair[0]);
            args.push(if accumulator_at[j].is_some() { previous } else { b.selp(Ty::U64, at_start, op_lane[j], previous) });
            outs.push(b.selp(Ty::U64, even, pair[0], pair[1]));
        }
        for (j, sl) in s.seqs.iter().enumerate() {
            args.push(piece_at(&mut b, op_lane[nc + j], chunk, sl.buf, sl.per));
        }
        args.extend_from_slice(&op_lane[nc + ns..]);
        for (j, sl) in s.outputs.iter().enumerate() {
            outs.push(piece_at(&mut b, out_lane[j], chunk, sl.buf, sl.per));
        }
        // A barrier between phases, and always one at the end of an iteration.
        let mut phases = 1;
        for (barrier, instr) in phases_of(sched, body) {
            if barrier {
                b.emit(Inst::BarSync);
                phases += 1;
            }
            let ptrs: Vec<Reg> = params_of(instr)
                .into_iter()
                .map(|(p, _)| match p {
                    ParamRef::Buf(x) => {
                        let (r, at) = body.locate(x);
                        let (base, offset) = match body.bufs[r].home {
                            Home::Arg(j) => (args[j], at),
                            Home::Out(j) => (outs[j], at),
                            // The lane's workspace is a register: its buffers always need the add.
                            Home::Work => {
                                let at = b.size(at + body.bufs[r].offset);
                                return b.bin(BinOp::Add, Ty::U64, lane_ws, at);
                            }
                            Home::Alias(_) | Home::View { .. } => unreachable!("locate() follows aliases and views"),
                        };
                        if offset.is_zero() {
                            base
                        } else {
                            let offset = b.size(offset);
                            b.bin(BinOp::Add, Ty::U64, base, offset)
                        }
                    }
                    ParamRef::Status => status,
                    ParamRef::Scratch | ParamRef::Lengths => {
                        unreachable!("a body's instructions take no scratch, and read the lengths through the kernel's own parameter")
                    }
                })
                .collect();
            kernels::emit(&mut b, Spread::Block, body, instr, &sched.specs, &ptrs);
        }
        b.emit(Inst::BarSync);
        serial_steps += model.at_bound(*iterations) * phases;
        b.bin_to(it, BinOp::Add, Ty::U32, it, Val::Int(1));
        if model.most(*iterations) > 1 {
            let more = b.setp(Cmp::Lt, Ty::U32, it, end);
            b.bra_if(more, false, top);
        }
        b.close_size_scope();
        b.place(after);
    }
    if on_chip {
        // The final state where the model reads it: the buffer the last iteration wrote (an
        // accumulator's share where `sums` reads it).
        for (j, &words) in carry_words.iter().enumerate() {
            let to = match accumulator_at[j] {
                Some(at) => lane_slot(&mut b, at),
                None => pair_global[j][0],
            };
            kernels::block_copy_words(&mut b, to, pair_lane[j][0], words);
        }
    }
    let generated = Generated::new(b, ([count, Size::ONE, Size::ONE], [PERSISTENT_THREADS, 1, 1]), params.into_iter().map(|p| p.0).collect());
    let mut work = Work { launches: 1, serial_steps, ..Work::default() };
    work.bytes = generated.params.iter().map(|r| if let ParamRef::Buf(b) = r { model.at_bound(f.bufs[*b].bytes()) } else { 0 }).sum();
    let at = |s: Size| model.at_bound(s);
    for (body, iterations) in &bodies {
        for i in &body.functions[0].instrs {
            work.flops += at(count * *iterations) * i.flops(&body.specs, &at);
        }
    }
    // Each accumulator's lanes' shares summed into the buffer the model reads it from.
    let sums = (0..nc)
        .filter_map(|j| {
            let at = accumulator_at[j]?;
            let words = carry_words[j];
            let sum = kernels::lane_sums_kernel(s.carries[j].1[0], (count, lane_bytes, at), words, lengths);
            let bytes = model.at_bound(carry_bytes[j] * (count + Size::ONE));
            Some((sum, Work { launches: 1, flops: model.at_bound(words * count), bytes, serial_steps: 0 }))
        })
        .collect();
    Ok(Some(Persistent { generated, sums, scratch_bytes: model.most(count) * lane_bytes, work }))
}

/// Splits the scan into lanes along the axes of its first carry that its body keeps apart: the
/// heads, then the batch, then any other (Mamba's channels); a dimension the body's arguments
/// hold at more than one axis, or of width 1, is not tried.
fn split(model: &Schedule, f: &Function, s: &ScanInstr, operands: &[BufId]) -> Option<Lanes> {
    let mut scan = (*s.ir).clone();
    let mut lanes = Lanes { widths: Vec::new(), operand: vec![Vec::new(); operands.len()], output: vec![Vec::new(); s.outputs.len()], body: scan.body.clone() };
    let rank = f.bufs[*operands.first()?].shape.len();
    let order = [1, 0].into_iter().filter(|&a| a < rank).chain(2..rank);
    for axis in order {
        let width = f.bufs[operands[0]].shape[axis];
        let most = model.most(width);
        let dim = scan.body.ty(scan.body.args.first()?.value).shape.get(axis)?.clone();
        if most < 2 || dim.is_one() {
            continue;
        }
        let Some(arg_axes) = lanes::axes_of_dim(&scan.body, &dim) else { continue };
        // Split into as many lanes as the width at its greatest: each lane one wide.
        let Some(split) = lanes::split_along(&scan, &arg_axes, most, most) else { continue };
        // Every output has a lane; a carry is an accumulator (no lane) in every split or in none.
        let carries_agree = (0..scan.carries).all(|j| lanes.operand[j].first().is_none_or(|first| first.is_some() == split.operand_lanes[j].is_some()));
        if split.result_lanes.len() != scan.carries + lanes.output.len() || split.result_lanes[scan.carries..].iter().any(Option::is_none) || !carries_agree {
            continue;
        }
        for (j, lane) in split.operand_lanes.iter().enumerate() {
            lanes.operand[j].push(*lane);
        }
        for (j, &lane) in split.result_lanes[scan.carries..].iter().enumerate() {
            lanes.output[j].push(lane);
        }
        lanes.widths.push(width);
        scan.body = split.body;
    }
    lanes.body = scan.body;
    Some(lanes)
}
