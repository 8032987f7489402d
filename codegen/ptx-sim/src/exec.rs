//! One kernel launch, executed thread by thread.
//!
//! Blocks run one after another. Within a block each thread runs on its own until it reaches a
//! synchronising instruction: `bar.sync` (released when every thread of the block is there) or a
//! warp-collective one (`shfl.sync`, `mma.sync`: executed once all 32 lanes of the warp are at
//! it). Between two barriers the order in which threads run is arbitrary, so a program whose
//! result depends on it has a data race; the shadow state of shared memory reports every such
//! pair of accesses, whatever order they happened to run in.

use anyhow::{anyhow, bail, ensure, Result};
use tttc_ptx::isa::*;

use crate::memory::Memory;

/// Grid and block dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

/// What a launch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Instructions executed, summed over threads.
    pub instructions: u64,
    /// `mma.sync` instructions executed, per warp.
    pub mma: u64,
    pub barriers: u64,
}

/// Where the shared window sits in the generic address space (above every global allocation).
const SHARED_WINDOW: u64 = 0x7f00_0000_0000;

/// Instructions one launch may execute before it is stopped as a runaway.
const BUDGET: u64 = 1 << 36;
const WARP: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    AtBarrier,
    AtCollective,
    Exited,
}

struct Thread {
    regs: Vec<u64>,
    pc: usize,
    state: State,
    tid: [u32; 3],
}

/// Per 4-byte word of shared memory: the last write and the last read in the current barrier
/// interval (`epoch`), by linear thread index; `many` when threads other than `reader` read too.
#[derive(Clone, Copy, Default)]
struct Shadow {
    write_epoch: u32,
    writer: u32,
    read_epoch: u32,
    reader: u32,
    many: bool,
}

/// Per 4-byte word of global memory touched in one launch, accesses named by (block, barrier
/// interval, thread): the last write; the first reading block and whether others read too; the
/// last reader and whether other threads of its block read in the same interval.
#[derive(Clone, Copy, Default)]
struct GlobalShadow {
    write: Option<(u32, u32, u32)>,
    read_block: Option<u32>,
    blocks_read: bool,
    last_read: Option<(u32, u32, u32)>,
    threads_read: bool,
}

/// Two accesses are ordered only within one block, across a barrier (or by the same thread).
fn unordered(a: (u32, u32, u32), b: (u32, u32, u32)) -> bool {
    a.0 != b.0 || (a.1 == b.1 && a.2 != b.2)
}

/// A kernel ready to run: labels resolved, registers numbered densely.
struct Prepared<'k> {
    kernel: &'k Kernel,
    label_pc: Vec<usize>,
    class_base: [usize; 5],
    nregs: usize,
    shared_at: Vec<(String, usize)>,
    shared_bytes: usize,
}

fn class_slot(c: Class) -> usize {
    Class::ALL.iter().position(|&x| x == c).expect("listed")
}

impl<'k> Prepared<'k> {
    fn new(kernel: &'k Kernel) -> Result<Prepared<'k>> {
        let mut class_base = [0; 5];
        let mut nregs = 0;
        for c in Class::ALL {
            class_base[class_slot(c)] = nregs;
            nregs += kernel.regs.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n as usize);
        }
        let mut label_pc = Vec::new();
        for (pc, s) in kernel.body.iter().enumerate() {
            if let Stmt::Label(l) = s {
                let l = *l as usize;
                if label_pc.len() <= l {
                    label_pc.resize(l + 1, usize::MAX);
                }
                ensure!(label_pc[l] == usize::MAX, "label $L{l} defined twice");
                label_pc[l] = pc;
            }
        }
        let mut shared_at = Vec::new();
        let mut at = 0usize;
        for s in &kernel.shared {
            at = at.div_ceil(s.align.max(1)) * s.align.max(1);
            shared_at.push((s.name.clone(), at));
            at += s.bytes;
        }
        Ok(Prepared { kernel, label_pc, class_base, nregs, shared_at, shared_bytes: at })
    }

    fn slot(&self, r: Reg) -> Result<usize> {
        let declared = self.kernel.regs.iter().find(|(c, _)| *c == r.class).map_or(0, |(_, n)| *n);
        ensure!(r.n < declared, "register {r} is not declared");
        Ok(self.class_base[class_slot(r.class)] + r.n as usize)
    }
}

/// Runs `kernel` over `dims` with `params` (one value per parameter, in order: pointers as
/// addresses in `mem`). Errors name the kernel, the thread and the instruction.
pub fn launch(kernel: &Kernel, dims: Dims, params: &[u64], mem: &mut Memory) -> Result<Counts> {
    ensure!(params.len() == kernel.params.len(), "kernel {} takes {} parameters, got {}", kernel.name, kernel.params.len(), params.len());
    let threads_per_block: u32 = dims.block.iter().product();
    ensure!((1..=1024).contains(&threads_per_block), "kernel {}: a block of {threads_per_block} threads (1 to 1024 allowed)", kernel.name);
    let prepared = Prepared::new(kernel).map_err(|e| anyhow!("kernel {}: {e}", kernel.name))?;
    let mut counts = Counts::default();
    let mut global = std::collections::HashMap::new();
    let mut id = 0;
    for bz in 0..dims.grid[2] {
        for by in 0..dims.grid[1] {
            for bx in 0..dims.grid[0] {
                let mut block = Block::new(&prepared, dims, [bx, by, bz], params, id, &mut global);
                block.run(mem, &mut counts).map_err(|e| anyhow!("kernel {}, block ({bx}, {by}, {bz}): {e}", kernel.name))?;
                id += 1;
            }
        }
    }
    Ok(counts)
}

struct Block<'a, 'k> {
    p: &'a Prepared<'k>,
    /// This block's index in the launch, and the launch's global-memory shadow.
    id: u32,
    global: &'a mut std::collections::HashMap<u64, GlobalShadow>,
    dims: Dims,
    ctaid: [u32; 3],
    params: &'a [u64],
    threads: Vec<Thread>,
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    /// Barrier intervals completed, plus one (0 marks a shadow entry as never touched).
    epoch: u32,
}

impl<'a, 'k> Block<'a, 'k> {
    fn new(
        p: &'a Prepared<'k>,
        dims: Dims,
        ctaid: [u32; 3],
        params: &'a [u64],
        id: u32,
        global: &'a mut std::collections::HashMap<u64, GlobalShadow>,
    ) -> Block<'a, 'k> {
        let mut threads = Vec::new();
        for z in 0..dims.block[2] {
            for y in 0..dims.block[1] {
                for x in 0..dims.block[0] {
                    threads.push(Thread { regs: vec![0; p.nregs], pc: 0, state: State::Running, tid: [x, y, z] });
                }
            }
        }
        let shadow = vec![Shadow::default(); p.shared_bytes.div_ceil(4)];
        Block { p, id, global, dims, ctaid, params, threads, shared: vec![0; p.shared_bytes], shadow, epoch: 1 }
    }

    fn run(&mut self, mem: &mut Memory, counts: &mut Counts) -> Result<()> {
        loop {
            for t in 0..self.threads.len() {
                if self.threads[t].state == State::Running {
                    self.run_thread(t, mem, counts)?;
                }
            }
            // Warp collectives, then the barrier.
            let mut released = false;
            for w in 0..self.threads.len().div_ceil(WARP) {
                let lanes = w * WARP..((w + 1) * WARP).min(self.threads.len());
                if self.threads[lanes.clone()].iter().any(|t| t.state == State::AtCollective) {
                    self.collective(lanes, counts)?;
                    released = true;
                }
            }
            if released {
                continue;
            }
            let live = self.threads.iter().filter(|t| t.state != State::Exited).count();
            if live == 0 {
                return Ok(());
            }
            let waiting = self.threads.iter().filter(|t| t.state == State::AtBarrier).count();
            ensure!(waiting == self.threads.len(), "bar.sync reached by {waiting} of {} threads; the others exited", self.threads.len());
            for t in &mut self.threads {
                t.state = State::Running;
                t.pc += 1;
            }
            self.epoch += 1;
            counts.barriers += 1;
        }
    }

    fn where_(&self, t: usize) -> String {
        let th = &self.threads[t];
        let inst = match self.p.kernel.body.get(th.pc) {
            Some(Stmt::Inst { inst, .. }) => format!("`{inst}`"),
            _ => "the end of the kernel".to_string(),
        };
        format!("thread ({}, {}, {}) at {inst}", th.tid[0], th.tid[1], th.tid[2])
    }

    /// Runs thread `t` until it waits or exits.
    fn run_thread(&mut self, t: usize, mem: &mut Memory, counts: &mut Counts) -> Result<()> {
        loop {
            let pc = self.threads[t].pc;
            let Some(stmt) = self.p.kernel.body.get(pc) else {
                self.threads[t].state = State::Exited;
                return Ok(());
            };
            let (guard, inst) = match stmt {
                Stmt::Label(_) => {
                    self.threads[t].pc += 1;
                    continue;
                }
                Stmt::Inst { guard, inst } => (guard, inst),
            };
            counts.instructions += 1;
            ensure!(counts.instructions < BUDGET, "more than {BUDGET} instructions: a runaway loop?");
            if let Some((p, negated)) = guard {
                let v = self.reg(t, *p).map_err(|e| anyhow!("{}: {e}", self.where_(t)))? != 0;
                if v == *negated {
                    self.threads[t].pc += 1;
                    continue;
                }
            }
            match inst {
                Inst::BarSync => {
                    self.threads[t].state = State::AtBarrier;
                    return Ok(());
                }
                Inst::Shfl { .. } | Inst::MmaTf32 { .. } => {
                    self.threads[t].state = State::AtCollective;
                    return Ok(());
                }
                Inst::Ret => {
                    self.threads[t].state = State::Exited;
                    return Ok(());
                }
                Inst::Bra { target } => {
                    let pc = self.p.label_pc.get(*target as usize).copied().filter(|&p| p != usize::MAX);
                    self.threads[t].pc = pc.ok_or_else(|| anyhow!("{}: no label $L{target}", self.where_(t)))?;
                }
                inst => {
                    self.execute(t, inst, mem).map_err(|e| anyhow!("{}: {e}", self.where_(t)))?;
                    self.threads[t].pc += 1;
                }
            }
        }
    }

    fn reg(&self, t: usize, r: Reg) -> Result<u64> {
        Ok(self.threads[t].regs[self.p.slot(r)?])
    }

    fn set(&mut self, t: usize, r: Reg, ty: Ty, bits: u64) -> Result<()> {
        ensure!(compatible(ty, r.class), "{r} cannot hold a .{}", ty.name());
        let slot = self.p.slot(r)?;
        self.threads[t].regs[slot] = mask(ty, bits);
        Ok(())
    }

    /// An operand's bits as type `ty`.
    fn val(&self, t: usize, v: &Val, ty: Ty) -> Result<u64> {
        Ok(match v {
            Val::Reg(r) => {
                ensure!(compatible(ty, r.class), "{r} read as .{}", ty.name());
                mask(ty, self.reg(t, *r)?)
            }
            Val::Int(i) => {
                ensure!(!ty.is_float(), "an integer literal used as .{}", ty.name());
                mask(ty, *i as u64)
            }
            Val::F32(x) => {
                ensure!(ty == Ty::F32 || ty == Ty::B32, "an f32 literal used as .{}", ty.name());
                x.to_bits() as u64
            }
            Val::F64(x) => {
                ensure!(ty == Ty::F64 || ty == Ty::B64, "an f64 literal used as .{}", ty.name());
                x.to_bits()
            }
            Val::Special(s) => {
                let th = &self.threads[t];
                (match s {
                    Special::Tid(a) => th.tid[*a as usize],
                    Special::Ntid(a) => self.dims.block[*a as usize],
                    Special::Ctaid(a) => self.ctaid[*a as usize],
                    Special::Nctaid(a) => self.dims.grid[*a as usize],
                    Special::LaneId => (t % WARP) as u32,
                }) as u64
            }
        })
    }

    /// A generic address as the state space it falls in and the address there.
    fn resolve(&self, space: Space, at: u64) -> (Space, u64) {
        match space {
            Space::Generic if (SHARED_WINDOW..SHARED_WINDOW + (1 << 32)).contains(&at) => (Space::Shared, at - SHARED_WINDOW),
            Space::Generic => (Space::Global, at),
            s => (s, at),
        }
    }

    fn address(&self, t: usize, addr: &Addr) -> Result<u64> {
        let base = match &addr.base {
            Base::Reg(r) => self.reg(t, *r)?,
            Base::Symbol(s) => bail!("address of `{s}` used outside ld.param"),
        };
        Ok(base.wrapping_add(addr.offset as u64))
    }

    fn execute(&mut self, t: usize, inst: &Inst, mem: &mut Memory) -> Result<()> {
        match inst {
            Inst::Mov { ty, dst, src } => {
                let v = self.val(t, src, *ty)?;
                self.set(t, *dst, *ty, v)
            }
            Inst::SharedAddr { dst, symbol } => {
                let at = self.p.shared_at.iter().find(|(n, _)| n == symbol).map(|(_, a)| *a).ok_or_else(|| anyhow!("no shared array `{symbol}`"))?;
                self.set(t, *dst, Ty::U32, at as u64)
            }
            Inst::CvtaGlobal { dst, src } => {
                let v = self.reg(t, *src)?;
                ensure!(!(SHARED_WINDOW..SHARED_WINDOW + (1 << 32)).contains(&v), "cvta.to.global of a shared address 0x{v:x}");
                self.set(t, *dst, Ty::U64, v)
            }
            Inst::CvtaShared { dst, src } => {
                let v = self.reg(t, *src)?;
                ensure!(v <= u32::MAX as u64, "cvta.shared of 0x{v:x}, beyond the shared window");
                self.set(t, *dst, Ty::U64, SHARED_WINDOW + v)
            }
            Inst::Ld { space, ty, dst, addr } => {
                let n = ty.bytes();
                if *space == Space::Param {
                    let Base::Symbol(name) = &addr.base else { bail!("ld.param needs a parameter name") };
                    let i = self.p.kernel.params.iter().position(|p| &p.name == name).ok_or_else(|| anyhow!("no parameter `{name}`"))?;
                    ensure!(addr.offset == 0 && dst.len() == 1 && self.p.kernel.params[i].ty.bytes() == n, "ld.param must read a whole parameter");
                    return self.set(t, dst[0], *ty, self.params[i]);
                }
                let (space, at) = self.resolve(*space, self.address(t, addr)?);
                ensure!(at % (n * dst.len()) as u64 == 0, "misaligned {}-byte access at 0x{at:x}", n * dst.len());
                for (k, r) in dst.iter().enumerate() {
                    let a = at + (k * n) as u64;
                    let bytes = match space {
                        Space::Global => {
                            self.global_access(t, a, n, false)?;
                            mem.read(a, n)?.to_vec()
                        }
                        _ => self.shared_access(t, a, n, false)?.to_vec(),
                    };
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(&bytes);
                    self.set(t, *r, *ty, u64::from_le_bytes(b))?;
                }
                Ok(())
            }
            Inst::St { space, ty, addr, src } => {
                let n = ty.bytes();
                ensure!(*space != Space::Param, "st.param is not supported");
                let (space, at) = self.resolve(*space, self.address(t, addr)?);
                ensure!(at % (n * src.len()) as u64 == 0, "misaligned {}-byte access at 0x{at:x}", n * src.len());
                for (k, v) in src.iter().enumerate() {
                    let bits = self.val(t, v, *ty)?.to_le_bytes();
                    let a = at + (k * n) as u64;
                    match space {
                        Space::Global => {
                            self.global_access(t, a, n, true)?;
                            mem.write(a, &bits[..n])?
                        }
                        _ => self.shared_access(t, a, n, true)?.copy_from_slice(&bits[..n]),
                    }
                }
                Ok(())
            }
            Inst::Bin { op, ty, dst, a, b } => {
                let (x, y) = (self.val(t, a, *ty)?, self.val(t, b, if matches!(op, BinOp::Shl | BinOp::Shr) { Ty::U32 } else { *ty })?);
                let (out_ty, v) = binary(*op, *ty, x, y)?;
                self.set(t, *dst, out_ty, v)
            }
            Inst::Un { op, ty, dst, a } => {
                let x = self.val(t, a, *ty)?;
                let v = unary(*op, *ty, x)?;
                self.set(t, *dst, *ty, v)
            }
            Inst::Fma { ty, dst, a, b, c } => {
                let (x, y, z) = (self.val(t, a, *ty)?, self.val(t, b, *ty)?, self.val(t, c, *ty)?);
                let v = match ty {
                    Ty::F32 => f32::from_bits(x as u32).mul_add(f32::from_bits(y as u32), f32::from_bits(z as u32)).to_bits() as u64,
                    Ty::F64 => f64::from_bits(x).mul_add(f64::from_bits(y), f64::from_bits(z)).to_bits(),
                    _ => x.wrapping_mul(y).wrapping_add(z),
                };
                self.set(t, *dst, *ty, v)
            }
            Inst::Setp { cmp, ty, dst, a, b } => {
                let (x, y) = (self.val(t, a, *ty)?, self.val(t, b, *ty)?);
                let v = compare(*cmp, *ty, x, y)?;
                self.set(t, *dst, Ty::Pred, v as u64)
            }
            Inst::Selp { ty, dst, a, b, p } => {
                let v = if self.reg(t, *p)? != 0 { self.val(t, a, *ty)? } else { self.val(t, b, *ty)? };
                self.set(t, *dst, *ty, v)
            }
            Inst::Cvt { round, to, from, dst, src } => {
                let x = self.val(t, src, *from)?;
                let (ty, v) = convert(*round, *to, *from, x)?;
                self.set(t, *dst, ty, v)
            }
            Inst::NoUnroll => Ok(()),
            Inst::BarSync | Inst::Shfl { .. } | Inst::MmaTf32 { .. } | Inst::Ret | Inst::Bra { .. } => unreachable!("handled by the scheduler"),
        }
    }

    /// Records a global access of `n` bytes at `addr`; an error when another block, or another
    /// thread of this block since the last barrier, touched a word of it and one of the two wrote.
    fn global_access(&mut self, t: usize, addr: u64, n: usize, write: bool) -> Result<()> {
        let me = (self.id, self.epoch, t as u32);
        for w in (addr / 4)..(addr + n as u64).div_ceil(4) {
            let s = self.global.entry(w).or_default();
            if let Some(other) = s.write.filter(|&o| unordered(o, me)) {
                bail!(
                    "data race: global address 0x{:x} is written by thread {} of block {} and {} by thread {} of block {} with no ordering between",
                    w * 4,
                    other.2,
                    other.0,
                    if write { "written" } else { "read" },
                    me.2,
                    me.0
                );
            }
            if write {
                let other_block = s.read_block.is_some_and(|b| b != me.0) || s.blocks_read;
                let same_interval = s.last_read.is_some_and(|o| o.0 == me.0 && o.1 == me.1 && (o.2 != me.2 || s.threads_read));
                if other_block || same_interval {
                    bail!("data race: global address 0x{:x} is read and then written by thread {} of block {} with no ordering between", w * 4, me.2, me.0);
                }
                s.write = Some(me);
            } else {
                match s.read_block {
                    None => s.read_block = Some(me.0),
                    Some(b) if b != me.0 => s.blocks_read = true,
                    _ => {}
                }
                match s.last_read {
                    Some(o) if o.0 == me.0 && o.1 == me.1 => s.threads_read |= o.2 != me.2,
                    _ => {
                        s.last_read = Some(me);
                        s.threads_read = false;
                    }
                }
            }
        }
        Ok(())
    }

    /// `n` bytes of shared memory at `addr`, after checking bounds and recording the access.
    fn shared_access(&mut self, t: usize, addr: u64, n: usize, write: bool) -> Result<&mut [u8]> {
        let end = addr.checked_add(n as u64).filter(|&e| e <= self.shared.len() as u64);
        ensure!(end.is_some(), "shared access of {n} bytes at {addr} is out of bounds (the block has {} bytes)", self.shared.len());
        let me = t as u32;
        let epoch = self.epoch;
        for w in (addr as usize / 4)..(addr as usize + n).div_ceil(4) {
            let s = &mut self.shadow[w];
            let other = |tid: u32| tid != me;
            if write {
                if s.write_epoch == epoch && other(s.writer) {
                    bail!("data race: shared word {} is written by thread {} and thread {me} with no bar.sync between", w * 4, s.writer);
                }
                if s.read_epoch == epoch && (other(s.reader) || s.many) {
                    bail!("data race: shared word {} is read by thread {} and written by thread {me} with no bar.sync between", w * 4, s.reader);
                }
                s.write_epoch = epoch;
                s.writer = me;
            } else {
                if s.write_epoch == epoch && other(s.writer) {
                    bail!("data race: shared word {} is written by thread {} and read by thread {me} with no bar.sync between", w * 4, s.writer);
                }
                if s.read_epoch == epoch && other(s.reader) {
                    s.many = true;
                } else if s.read_epoch != epoch {
                    *s = Shadow { read_epoch: epoch, reader: me, many: false, ..*s };
                }
            }
        }
        Ok(&mut self.shared[addr as usize..addr as usize + n])
    }

    /// Executes the warp-collective instruction the lanes of one warp wait at.
    fn collective(&mut self, lanes: std::ops::Range<usize>, counts: &mut Counts) -> Result<()> {
        let first = lanes.start;
        let pc = self.threads[first].pc;
        let full = lanes.len() == WARP;
        for t in lanes.clone() {
            let th = &self.threads[t];
            ensure!(
                th.state == State::AtCollective && th.pc == pc,
                "{}: warp-collective instruction not reached by every lane of the warp (lane {} is elsewhere)",
                self.where_(first),
                t - first
            );
        }
        let Some(Stmt::Inst { inst, .. }) = self.p.kernel.body.get(pc) else { unreachable!("a collective is an instruction") };
        let inst = inst.clone();
        let at = self.where_(first);
        let context = |e: anyhow::Error| anyhow!("{at}: {e}");
        match &inst {
            Inst::Shfl { mode, dst, src, lane, clamp, mask } => {
                let present = if full { u32::MAX } else { (1u32 << lanes.len()) - 1 };
                ensure!(
                    mask & !present == 0 && mask & present == present,
                    "{}: shfl.sync member mask 0x{mask:08x} must name exactly the warp's {} lanes",
                    self.where_(first),
                    lanes.len()
                );
                let mut out = Vec::with_capacity(lanes.len());
                for t in lanes.clone() {
                    let i = (t - first) as u32;
                    let b = self.val(t, lane, Ty::U32).map_err(context)? as u32 & 31;
                    let c = self.val(t, clamp, Ty::U32).map_err(context)? as u32;
                    let (cval, seg) = (c & 31, (c >> 8) & 31);
                    let (max_lane, min_lane) = ((i & seg) | (cval & !seg), i & seg);
                    let (j, ok) = match mode {
                        ShflMode::Up => (i.wrapping_sub(b), i as i64 - b as i64 >= max_lane as i64),
                        ShflMode::Down => (i + b, i + b <= max_lane),
                        ShflMode::Bfly => (i ^ b, (i ^ b) <= max_lane),
                        ShflMode::Idx => (min_lane | (b & !seg), (min_lane | (b & !seg)) <= max_lane),
                    };
                    let j = if ok { j } else { i };
                    ensure!((j as usize) < lanes.len(), "{}: shfl.sync reads lane {j}, which does not exist", self.where_(first));
                    out.push(self.val(first + j as usize, src, Ty::B32).map_err(context)?);
                }
                for (k, t) in lanes.clone().enumerate() {
                    self.set(t, *dst, Ty::B32, out[k]).map_err(context)?;
                }
            }
            Inst::MmaTf32 { d, a, b, c } => {
                ensure!(full, "{}: mma.sync needs a whole warp of 32 lanes", self.where_(first));
                let (mut am, mut bm, mut cm) = ([[0f64; 8]; 16], [[0f64; 8]; 8], [[0f64; 8]; 16]);
                let f = |bits: u64| f32::from_bits(bits as u32) as f64;
                // tf32 operands: the low 13 mantissa bits are ignored.
                let tf = |bits: u64| f32::from_bits(bits as u32 & !0x1fff) as f64;
                for lane in 0..WARP {
                    let t = first + lane;
                    let (g, q) = (lane / 4, lane % 4);
                    for (i, r) in a.iter().enumerate() {
                        am[g + 8 * (i & 1)][q + 4 * (i >> 1)] = tf(self.reg(t, *r).map_err(context)?);
                    }
                    for (i, r) in b.iter().enumerate() {
                        bm[q + 4 * i][g] = tf(self.reg(t, *r).map_err(context)?);
                    }
                    for (i, r) in c.iter().enumerate() {
                        cm[g + 8 * (i >> 1)][2 * q + (i & 1)] = f(self.reg(t, *r).map_err(context)?);
                    }
                }
                for lane in 0..WARP {
                    let t = first + lane;
                    let (g, q) = (lane / 4, lane % 4);
                    for (i, r) in d.iter().enumerate() {
                        let (row, col) = (g + 8 * (i >> 1), 2 * q + (i & 1));
                        // Products of tf32 values are exact in f64; the sum is rounded once.
                        let sum: f64 = (0..8).map(|k| am[row][k] * bm[k][col]).sum::<f64>() + cm[row][col];
                        self.set(t, *r, Ty::F32, (sum as f32).to_bits() as u64).map_err(context)?;
                    }
                }
                counts.mma += 1;
            }
            _ => unreachable!("only shfl and mma are collective"),
        }
        for t in lanes {
            self.threads[t].state = State::Running;
            self.threads[t].pc += 1;
        }
        Ok(())
    }
}

/// PTX's rule for an instruction type and a register: the same size, and a float type only in a
/// float register, an integer type only in an integer one (`.bNN` goes anywhere of its size).
fn compatible(ty: Ty, class: Class) -> bool {
    match ty {
        Ty::Pred => class == Class::Pred,
        Ty::B32 => matches!(class, Class::R32 | Class::F32),
        Ty::B64 => matches!(class, Class::R64 | Class::F64),
        Ty::U32 | Ty::S32 => class == Class::R32,
        Ty::U64 | Ty::S64 => class == Class::R64,
        Ty::F32 => class == Class::F32,
        Ty::F64 => class == Class::F64,
    }
}

fn mask(ty: Ty, bits: u64) -> u64 {
    match ty.bytes() {
        1 => (bits != 0) as u64,
        4 => bits & 0xffff_ffff,
        _ => bits,
    }
}

fn sext32(x: u64) -> i64 {
    x as u32 as i32 as i64
}

fn binary(op: BinOp, ty: Ty, x: u64, y: u64) -> Result<(Ty, u64)> {
    use BinOp::*;
    if ty == Ty::F32 {
        let (a, b) = (f32::from_bits(x as u32), f32::from_bits(y as u32));
        let r = match op {
            Add => a + b,
            Sub => a - b,
            Mul => a * b,
            Div => a / b,
            // PTX: the non-NaN operand when one is NaN.
            Min => {
                if a.is_nan() {
                    b
                } else if b.is_nan() {
                    a
                } else {
                    a.min(b)
                }
            }
            Max => {
                if a.is_nan() {
                    b
                } else if b.is_nan() {
                    a
                } else {
                    a.max(b)
                }
            }
            _ => bail!("{} is not defined for .f32", op.mnemonic(ty)),
        };
        return Ok((ty, r.to_bits() as u64));
    }
    if ty == Ty::F64 {
        let (a, b) = (f64::from_bits(x), f64::from_bits(y));
        let r = match op {
            Add => a + b,
            Sub => a - b,
            Mul => a * b,
            Div => a / b,
            _ => bail!("{} is not supported for .f64", op.mnemonic(ty)),
        };
        return Ok((ty, r.to_bits()));
    }
    ensure!(ty != Ty::Pred || matches!(op, And | Or | Xor), "{} is not defined for predicates", op.mnemonic(ty));
    let wide = ty.bytes() == 8;
    let signed = ty.is_signed();
    let s = |v: u64| if wide { v as i64 } else { sext32(v) };
    let bits = if wide { 64 } else { 32 };
    let r = match op {
        Add => x.wrapping_add(y),
        Sub => x.wrapping_sub(y),
        Mul => x.wrapping_mul(y),
        MulWide => {
            ensure!(!wide, "mul.wide needs 32-bit operands");
            let v = if signed { (sext32(x) * sext32(y)) as u64 } else { x * y };
            return Ok((if signed { Ty::S64 } else { Ty::U64 }, v));
        }
        Div | Rem => {
            ensure!(y != 0 || ty == Ty::Pred, "integer division by zero");
            match (op, signed) {
                (Div, true) => s(x).wrapping_div(s(y)) as u64,
                (Div, false) => x / y,
                (_, true) => s(x).wrapping_rem(s(y)) as u64,
                (_, false) => x % y,
            }
        }
        Min => {
            if signed {
                s(x).min(s(y)) as u64
            } else {
                x.min(y)
            }
        }
        Max => {
            if signed {
                s(x).max(s(y)) as u64
            } else {
                x.max(y)
            }
        }
        And => x & y,
        Or => x | y,
        Xor => x ^ y,
        // Shift amounts beyond the width give 0 (or the sign, for a signed right shift).
        Shl => {
            if y >= bits {
                0
            } else {
                x << y
            }
        }
        Shr if signed => (s(x) >> y.min(bits - 1)) as u64,
        Shr => {
            if y >= bits {
                0
            } else {
                x >> y
            }
        }
    };
    Ok((ty, r))
}

fn unary(op: UnOp, ty: Ty, x: u64) -> Result<u64> {
    Ok(match (ty, op) {
        (Ty::F32, _) => {
            let a = f32::from_bits(x as u32);
            (match op {
                UnOp::Neg => -a,
                UnOp::Abs => a.abs(),
                UnOp::Sqrt => a.sqrt(),
                UnOp::Rcp => 1.0 / a,
                UnOp::Not => bail!("not.f32 is not defined"),
            })
            .to_bits() as u64
        }
        (Ty::F64, _) => {
            let a = f64::from_bits(x);
            (match op {
                UnOp::Neg => -a,
                UnOp::Abs => a.abs(),
                UnOp::Sqrt => a.sqrt(),
                UnOp::Rcp => 1.0 / a,
                UnOp::Not => bail!("not.f64 is not defined"),
            })
            .to_bits()
        }
        (_, UnOp::Not) => !x,
        (_, UnOp::Neg) => x.wrapping_neg(),
        (t, UnOp::Abs) if t.is_signed() => {
            if t.bytes() == 8 {
                (x as i64).wrapping_abs() as u64
            } else {
                sext32(x).wrapping_abs() as u64
            }
        }
        _ => bail!("{} is not supported", op.mnemonic(ty)),
    })
}

fn compare(cmp: Cmp, ty: Ty, x: u64, y: u64) -> Result<bool> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match ty {
        Ty::F32 => f32::from_bits(x as u32).partial_cmp(&f32::from_bits(y as u32)),
        Ty::F64 => f64::from_bits(x).partial_cmp(&f64::from_bits(y)),
        t if t.is_signed() => Some(if t.bytes() == 8 { (x as i64).cmp(&(y as i64)) } else { sext32(x).cmp(&sext32(y)) }),
        Ty::Pred => bail!("setp on predicates is not supported"),
        _ => Some(x.cmp(&y)),
    };
    if cmp == Cmp::Nan {
        ensure!(ty.is_float(), "setp.nan needs a float type");
        return Ok(ord.is_none());
    }
    // Ordered comparisons are false when either operand is NaN, except `ne`.
    Ok(match ord {
        None => cmp == Cmp::Ne,
        Some(o) => match cmp {
            Cmp::Eq => o == Ordering::Equal,
            Cmp::Ne => o != Ordering::Equal,
            Cmp::Lt => o == Ordering::Less,
            Cmp::Le => o != Ordering::Greater,
            Cmp::Gt => o == Ordering::Greater,
            Cmp::Ge => o != Ordering::Less,
            Cmp::Nan => unreachable!("handled above"),
        },
    })
}

/// f32 rounded to tf32 (10 mantissa bits) to nearest, ties away from zero; NaN and ±∞ kept.
pub fn to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & !0x1fff)
}

fn convert(round: Option<Round>, to: CvtTo, from: Ty, x: u64) -> Result<(Ty, u64)> {
    let to = match to {
        CvtTo::Tf32 => {
            ensure!(from == Ty::F32 && round == Some(Round::Rna), "only cvt.rna.tf32.f32 converts to tf32");
            return Ok((Ty::B32, to_tf32(f32::from_bits(x as u32)).to_bits() as u64));
        }
        CvtTo::Ty(t) => t,
    };
    let as_f64 = |x: u64| -> f64 {
        match from {
            Ty::F32 => f32::from_bits(x as u32) as f64,
            Ty::F64 => f64::from_bits(x),
            t if t.is_signed() => {
                if t.bytes() == 8 {
                    x as i64 as f64
                } else {
                    sext32(x) as f64
                }
            }
            _ => x as f64,
        }
    };
    Ok((
        to,
        match (from.is_float(), to.is_float()) {
            // Integer to integer: truncate or extend (sign-extend a signed source).
            (false, false) => {
                ensure!(round.is_none(), "an integer cvt takes no rounding");
                if from.is_signed() && from.bytes() == 4 {
                    sext32(x) as u64
                } else {
                    x
                }
            }
            (true, true) => {
                let v = as_f64(x);
                match to {
                    Ty::F32 => {
                        ensure!(from == Ty::F32 || round == Some(Round::Rn), "cvt to .f32 from .f64 needs .rn");
                        (v as f32).to_bits() as u64
                    }
                    _ => v.to_bits(),
                }
            }
            (false, true) => {
                ensure!(round == Some(Round::Rn), "cvt from an integer to a float needs .rn");
                match to {
                    // i64 → f32 in one rounding (through f64 would round twice).
                    Ty::F32 if from.bytes() == 8 => (if from.is_signed() { x as i64 as f32 } else { x as f32 }).to_bits() as u64,
                    Ty::F32 => (as_f64(x) as f32).to_bits() as u64,
                    _ => as_f64(x).to_bits(),
                }
            }
            (true, false) => {
                ensure!(round == Some(Round::Rzi), "cvt from a float to an integer: tttc writes .rzi");
                // Toward zero, saturating; NaN gives 0.
                let v = as_f64(x).trunc();
                let v = if v.is_nan() { 0.0 } else { v };
                match to {
                    Ty::S32 => v.clamp(i32::MIN as f64, i32::MAX as f64) as i32 as u32 as u64,
                    Ty::U32 => v.clamp(0.0, u32::MAX as f64) as u32 as u64,
                    Ty::S64 => v.clamp(i64::MIN as f64, i64::MAX as f64) as i64 as u64,
                    _ => v.clamp(0.0, u64::MAX as f64) as u64,
                }
            }
        },
    ))
}
