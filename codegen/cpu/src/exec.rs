//! Running a schedule on this machine: kernel launches split over the threads, matrix products
//! through `gemm`, reductions, copies and index instructions as native loops, scans calling their
//! body function chunk by chunk, and the parts of a parallel instruction on the thread pool.

use std::time::Instant;

use anyhow::{ensure, Result};
use tttc_ir::{BinaryOp, DType, ReduceKind, Size};
use tttc_lower::elementwise::Expr;
use tttc_lower::schedule::{elem_bytes, fixed, AttentionShape, Epilogue, Function, Home, Instr, Launch, Operand, ScanInstr, Schedule, Slicing, Strides, Walk};

use crate::attention::Shape;
use crate::kernel::KernelFn;

/// Work below this many element operations (a kernel's elements times its ops per element) or
/// multiply-adds runs on one thread: splitting it costs more than it saves.
const PARALLEL_WORK: usize = 1 << 17;
const PARALLEL_MACS: usize = 1 << 18;

/// A schedule with the kernels its instructions launch (by spec index).
pub(crate) struct Machine<'a> {
    pub schedule: &'a Schedule,
    pub kernels: &'a [KernelFn],
}

/// Raw pointers handed to the worker threads: each writes a disjoint range of memory (the
/// schedule gives every buffer live at once its own bytes).
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// The value (a closure calling this captures the whole `Shared`, not its field).
    pub fn get(self) -> T {
        self.0
    }
}

/// Every buffer of one call of a function, by its id: where it starts.
struct Frame<'f> {
    f: &'f Function,
    at: Vec<Shared<*mut u8>>,
    workspace: *mut u8,
}

unsafe impl Sync for Frame<'_> {}

impl Frame<'_> {
    fn ptr(&self, b: usize) -> *mut u8 {
        self.at[b].0
    }

    fn f32(&self, b: usize) -> *mut f32 {
        self.ptr(b) as *mut f32
    }

    fn i64(&self, b: usize) -> *const i64 {
        self.ptr(b) as *const i64
    }
}

impl Machine<'_> {
    /// Runs function `fi` on its arguments and outputs (in order) with `workspace` as its
    /// workspace.
    ///
    /// # Safety
    /// Each pointer holds its buffer at the sizes scheduled, `workspace` the function's
    /// workspace bytes, and nothing else uses the outputs or the workspace meanwhile.
    pub unsafe fn call(&self, fi: usize, args: &[*const u8], outs: &[*mut u8], workspace: *mut u8) -> Result<()> {
        let f = &self.schedule.functions[fi];
        let at = (0..f.bufs.len())
            .map(|b| {
                let (r, at) = f.locate(b);
                let base = match f.bufs[r].home {
                    Home::Arg(j) => args[j] as *mut u8,
                    Home::Out(j) => outs[j],
                    Home::Work => workspace.add(f.bufs[r].offset),
                    Home::Alias(_) | Home::View { .. } => unreachable!("locate() follows aliases and views"),
                };
                Shared(base.add(at.fixed()))
            })
            .collect();
        let frame = Frame { f, at, workspace };
        f.instrs.iter().try_for_each(|i| self.instr(&frame, i))
    }

    fn instr(&self, fr: &Frame, instr: &Instr) -> Result<()> {
        let profiling = crate::profile::enabled() && !matches!(instr, Instr::Scan(_) | Instr::Parallel { .. });
        let started = profiling.then(Instant::now);
        let f = fr.f;
        // SAFETY (every arm): the schedule sized each buffer for what its instructions touch.
        unsafe {
            match instr {
                Instr::Kernel(l) => self.launch(fr, l),
                Instr::MatMul { c, a, b, batch, m, n, k, epilogue } => {
                    let (batch, m, n, k) = (fixed(batch), m.fixed(), n.fixed(), k.fixed());
                    let product = |dest: Dest, member: Option<&(dyn Fn(usize) + Sync)>| {
                        matmul(dest, (fr.f32(a.buf), &a.fixed()), (fr.f32(b.buf), &b.fixed()), &batch, m, n, k, member)
                    };
                    let stored = Dest { c: fr.f32(*c), added: None };
                    match epilogue {
                        None => {
                            product(stored, None);
                        }
                        // `W − a·b`: the product subtracted where it is computed.
                        Some(e) if let Some(sum) = self.sum(fr, *c, e) => {
                            product(sum, None);
                        }
                        // A member's epilogue runs as soon as its product is computed, while the
                        // product is in cache: the rows of the kernel that walk its elements.
                        Some(e) if batch.iter().product::<usize>() > 1 && (m * n) % e.launch.n.fixed() == 0 => {
                            let rows = Rows::new(self, fr, &e.launch);
                            let per = m * n / rows.n;
                            if !product(stored, Some(&|i| rows.run(i * per, (i + 1) * per, 0, rows.n))) {
                                self.launch(fr, &e.launch);
                            }
                        }
                        // A lone product's, split over the threads, after it.
                        Some(e) => {
                            product(stored, None);
                            self.launch(fr, &e.launch);
                        }
                    }
                }
                Instr::Reduce { dst, src, kind, outer, len, inner } => reduce(fr.f32(*dst), fr.f32(*src), *kind, outer.fixed(), len.fixed(), inner.fixed()),
                Instr::Copy { dst, src, copy } => copy_strided(fr.ptr(*dst), fr.ptr(*src), &copy.fixed(), elem_bytes(f.bufs[*dst].dtype)),
                Instr::Fill { dst, bits } => fill(fr.ptr(*dst), f.bufs[*dst].len().fixed(), f.bufs[*dst].dtype, *bits),
                Instr::Gather { dst, table, index, outer, len, row } => {
                    let (outer, len, row) = (outer.fixed(), len.fixed(), row.fixed());
                    let size = elem_bytes(f.bufs[*dst].dtype);
                    let count = f.bufs[*index].len().fixed();
                    let index = std::slice::from_raw_parts(fr.i64(*index), count);
                    for o in 0..outer {
                        for (i, &k) in index.iter().enumerate() {
                            ensure!(k >= 0 && (k as usize) < len, "index {k} out of range for an axis of length {len}");
                            let from = fr.ptr(*table).add(((o * len + k as usize) * row) * size);
                            std::ptr::copy_nonoverlapping(from, fr.ptr(*dst).add(((o * count + i) * row) * size), row * size);
                        }
                    }
                }
                Instr::OneHot { dst, index, depth } => {
                    let count = f.bufs[*index].len().fixed();
                    std::ptr::write_bytes(fr.f32(*dst), 0, count * depth);
                    for (i, &k) in std::slice::from_raw_parts(fr.i64(*index), count).iter().enumerate() {
                        ensure!(k >= 0 && (k as usize) < *depth, "index {k} out of range for depth {depth}");
                        *fr.f32(*dst).add(i * depth + k as usize) = 1.0;
                    }
                }
                Instr::ScatterAdd { dst, updates, index, depth, row } => {
                    let (count, row) = (f.bufs[*index].len().fixed(), row.fixed());
                    let sums = std::slice::from_raw_parts_mut(fr.f32(*dst), depth * row);
                    sums.fill(0.0);
                    let updates = std::slice::from_raw_parts(fr.f32(*updates), count * row);
                    for (&k, update) in std::slice::from_raw_parts(fr.i64(*index), count).iter().zip(updates.chunks_exact(row)) {
                        ensure!(k >= 0 && (k as usize) < *depth, "index {k} out of range for depth {depth}");
                        sums[k as usize * row..][..row].iter_mut().zip(update).for_each(|(s, u)| *s += u);
                    }
                }
                Instr::Iota { dst } => {
                    let len = f.bufs[*dst].len().fixed();
                    match f.bufs[*dst].dtype {
                        DType::F32 => (0..len).for_each(|i| *fr.f32(*dst).add(i) = i as f32),
                        DType::I64 => (0..len).for_each(|i| *(fr.ptr(*dst) as *mut i64).add(i) = i as i64),
                    }
                }
                Instr::Cast { dst, src } => {
                    let len = f.bufs[*dst].len().fixed();
                    match (f.bufs[*src].dtype, f.bufs[*dst].dtype) {
                        (DType::I64, DType::F32) => (0..len).for_each(|i| *fr.f32(*dst).add(i) = *fr.i64(*src).add(i) as f32),
                        (DType::F32, DType::I64) => (0..len).for_each(|i| *(fr.ptr(*dst) as *mut i64).add(i) = *fr.f32(*src).add(i) as i64),
                        (from, _) => std::ptr::copy_nonoverlapping(fr.ptr(*src), fr.ptr(*dst), len * elem_bytes(from)),
                    }
                }
                Instr::TriMask { dst, rows, cols, fill, window } => {
                    tri_mask(fr.f32(*dst), f.bufs[*dst].len().fixed(), rows.fixed(), cols.fixed(), *fill, *window)
                }
                Instr::Scan(s) => self.scan(fr, s)?,
                Instr::Attention(a) => {
                    let (q, k, v, batch) = (a.q.fixed(), a.k.fixed(), a.v.fixed(), fixed(&a.shape.batch));
                    let attention = crate::attention::Attention {
                        q: (fr.f32(a.q.buf), &q),
                        k: (fr.f32(a.k.buf), &k),
                        v: (fr.f32(a.v.buf), &v),
                        shape: shape(&a.shape, &batch),
                    };
                    attention.run(fr.f32(a.out), a.lse.map(|b| fr.f32(b)))
                }
                Instr::AttentionBackward(a) => {
                    let [q, k, v, d_out] = [&a.q, &a.k, &a.v, &a.d_out].map(|o| o.fixed());
                    let batch = fixed(&a.shape.batch);
                    let backward = crate::attention_backward::Backward {
                        q: (fr.f32(a.q.buf), &q),
                        k: (fr.f32(a.k.buf), &k),
                        v: (fr.f32(a.v.buf), &v),
                        d_out: (fr.f32(a.d_out.buf), &d_out),
                        lse: fr.f32(a.lse),
                        row: fr.f32(a.row),
                        shape: shape(&a.shape, &batch),
                        transposed: a.transposed,
                    };
                    backward.run(fr.f32(a.dq), fr.f32(a.dk), fr.f32(a.dv))
                }
                Instr::Recurrence(r) => {
                    let recurrence = crate::recurrence::Recurrence {
                        state: fr.f32(r.state),
                        dt: fr.f32(r.dt),
                        du: fr.f32(r.du),
                        b: fr.f32(r.b),
                        c: fr.f32(r.c),
                        a: fr.f32(r.a),
                        batch: r.batch.fixed(),
                        len: r.len.fixed(),
                        width: r.width.fixed(),
                        states: r.states.fixed(),
                    };
                    recurrence.run(fr.f32(r.y), fr.f32(r.final_state))
                }
                Instr::CrossEntropy(c) => {
                    let (logits, rows) = logits(fr, c.x, c.target, c.rows, c.depth);
                    let row = |b: usize| std::slice::from_raw_parts_mut(fr.f32(b), rows);
                    logits.statistics(row(c.max), row(c.sum), row(c.picked))?;
                }
                Instr::CrossEntropyBackward(c) => {
                    let (logits, rows) = logits(fr, c.x, c.target, c.rows, c.depth);
                    let row = |b: usize| std::slice::from_raw_parts(fr.f32(b), rows);
                    logits.backward(std::slice::from_raw_parts_mut(fr.f32(c.d), rows * c.depth), row(c.shift), row(c.a), row(c.c))?;
                }
                Instr::Parallel { parts } => {
                    let mut results: Vec<Result<()>> = parts.iter().map(|_| Ok(())).collect();
                    rayon::scope(|scope| {
                        for (part, result) in parts.iter().zip(&mut results) {
                            scope.spawn(move |_| *result = part.iter().try_for_each(|i| self.instr(fr, i)));
                        }
                    });
                    results.into_iter().collect::<Result<()>>()?;
                }
            }
        }
        if let Some(t) = started {
            crate::profile::record(Some(self.label(f, instr)), t.elapsed());
        }
        Ok(())
    }

    /// Where product `c` goes when its epilogue only adds it to another value laid out as it
    /// (`x + c`, `c + x` or `x − c`, the product read by nothing else): into the epilogue's
    /// output, added to `x` as the product is computed.
    fn sum(&self, fr: &Frame, c: usize, e: &Epilogue) -> Option<Dest> {
        let (l, spec) = (&e.launch, &self.schedule.specs[e.launch.kernel]);
        let [Expr::Input(p), Expr::Input(q), Expr::Binary(op, 0, 1)] = spec.exprs[..] else { return None };
        let (x, times) = match (op, l.ins[p].buf == c, l.ins[q].buf == c) {
            (BinaryOp::Add, false, true) => (p, 1.0),
            (BinaryOp::Add, true, false) => (q, 1.0),
            (BinaryOp::Sub, false, true) => (p, -1.0),
            _ => return None,
        };
        let fits = !e.keep_product && spec.outputs == [2] && l.reads_in_order(&l.ins[x], spec.splat[x]);
        fits.then(|| Dest { c: fr.f32(l.outs[0]), added: Some((fr.f32(l.ins[x].buf) as *const f32, times)) })
    }

    /// What a leaf instruction is, for the profile.
    fn label(&self, f: &Function, instr: &Instr) -> String {
        let shape = |b: usize| format!("{:?}", f.bufs[b].shape);
        match instr {
            Instr::Kernel(l) => format!("kernel {} ({} ops per element)", shape(l.outs[0]), self.schedule.specs[l.kernel].ops_per_element()),
            Instr::MatMul { c, a, b, m, n, k, .. } => {
                // gemm packs an operand whose columns are strided (read transposed) first.
                let read = |o: &Operand, name| if o.col_stride == Size::ONE { String::new() } else { format!(", {name} read transposed") };
                format!("matmul {} ({m}×{k} · {k}×{n}{}{})", shape(*c), read(a, "a"), read(b, "b"))
            }
            Instr::Reduce { dst, src, kind, .. } => format!("reduce {kind:?} {} to {}", shape(*src), shape(*dst)),
            Instr::Copy { dst, .. } => format!("copy to {}", shape(*dst)),
            Instr::CrossEntropy(c) => format!("cross_entropy {}", shape(c.x)),
            Instr::CrossEntropyBackward(c) => format!("cross_entropy_backward {}", shape(c.d)),
            other => format!("{} {}", other.name(), other.writes().first().map(|&b| shape(b)).unwrap_or_default()),
        }
    }

    /// A kernel over the elements of `outer` × `rows` × `n`; the rows (or, for one long row, its
    /// pieces) are split over the threads.
    unsafe fn launch(&self, fr: &Frame, launch: &Launch) {
        let rows = Rows::new(self, fr, launch);
        let (n, all_rows) = (rows.n, rows.all);
        let threads = crate::threads();
        if all_rows * n * rows.ops_per_element < PARALLEL_WORK || threads == 1 {
            rows.run(0, all_rows, 0, n);
        } else if all_rows >= threads {
            let per = all_rows.div_ceil(threads);
            rayon::scope(|s| {
                for t in 0..threads {
                    let rows = &rows;
                    s.spawn(move |_| rows.run(t * per, ((t + 1) * per).min(all_rows), 0, n));
                }
            });
        } else {
            // Fewer rows than threads: each row's columns are split (a row's pieces stay rows of
            // one: the row stride never applies).
            let per = n.div_ceil(threads);
            rayon::scope(|s| {
                for q in 0..all_rows {
                    for t in 0..threads {
                        let rows = &rows;
                        let c0 = t * per;
                        if c0 < n {
                            s.spawn(move |_| rows.run(q, q + 1, c0, per.min(n - c0)));
                        }
                    }
                }
            });
        }
    }

    /// The scan's iterations: each chunk's pieces of the sequences addressed in place or staged,
    /// the body called in the workspace after the caller's, its outputs put in place.
    unsafe fn scan(&self, fr: &Frame, s: &ScanInstr) -> Result<()> {
        let f = fr.f;
        // Per sliced buffer: its element size, the bytes between iterations' pieces, and the
        // copy of a piece of the run's length to its staging buffer and back.
        let pieces = |sls: &[Slicing], len: Size| -> Vec<(usize, usize, Walk, Walk)> {
            sls.iter()
                .map(|sl| {
                    let (size, copy) = (elem_bytes(f.bufs[sl.buf].dtype), s.piece(f, sl, len));
                    (size, s.step(f, sl).fixed() * size, copy.fixed(), copy.swapped().fixed())
                })
                .collect()
        };
        let workspace = fr.workspace.add(s.workspace_at);
        let n = s.iterations().fixed();
        // A carry updated in place starts from a copy of its initial value in the buffer the
        // last iteration writes.
        for ((init, pair), _) in s.carries.iter().zip(&s.in_place).filter(|(_, &in_place)| in_place) {
            let bytes = f.bufs[*init].len().fixed() * elem_bytes(f.bufs[*init].dtype);
            std::ptr::copy_nonoverlapping(fr.ptr(*init), fr.ptr(pair[0]), bytes);
        }
        for run in s.runs() {
            let (first, count) = (run.first.fixed(), run.count.fixed());
            let (seqs, outputs) = (pieces(&s.seqs, run.len), pieces(&s.outputs, run.len));
            for i in first..first + count {
                let k = s.chunk_of(i, n);
                let mut args: Vec<*const u8> = Vec::with_capacity(s.carries.len() + s.seqs.len() + s.invariants.len());
                let mut outs: Vec<*mut u8> = Vec::with_capacity(s.carries.len() + s.outputs.len());
                let written = ScanInstr::carry_written(i, n);
                for ((init, pair), &in_place) in s.carries.iter().zip(&s.in_place) {
                    args.push(match (in_place, i) {
                        (true, _) => fr.ptr(pair[0]),
                        (false, 0) => fr.ptr(*init),
                        (false, _) => fr.ptr(pair[1 - written]),
                    });
                    outs.push(fr.ptr(pair[if in_place { 0 } else { written }]));
                }
                for (sl, (size, step, copy, _)) in s.seqs.iter().zip(&seqs) {
                    let from = fr.ptr(sl.buf).add(k * step);
                    args.push(match sl.staging {
                        None => from,
                        Some(stage) => {
                            copy_strided(fr.ptr(stage), from, copy, *size);
                            fr.ptr(stage)
                        }
                    });
                }
                args.extend(s.invariants.iter().map(|&b| fr.ptr(b) as *const u8));
                let mut placements = Vec::new();
                for (sl, (size, step, _, back)) in s.outputs.iter().zip(&outputs) {
                    let to = fr.ptr(sl.buf).add(k * step);
                    outs.push(match sl.staging {
                        None => to,
                        Some(stage) => {
                            placements.push((to, fr.ptr(stage), back, *size));
                            fr.ptr(stage)
                        }
                    });
                }
                self.call(run.function, &args, &outs, workspace)?;
                for (to, from, back, size) in placements {
                    copy_strided(to, from, back, size);
                }
            }
        }
        Ok(())
    }
}

/// A kernel launch resolved to its pointers, run over any range of its rows: the whole launch
/// split over the threads, or the rows of one member of a batch of products it is the epilogue of.
struct Rows<'a> {
    kernel: KernelFn,
    launch: &'a Launch,
    splat: &'a [bool],
    ins: Vec<Shared<*const f32>>,
    row_strides: Vec<i64>,
    outs: Vec<Shared<*mut f32>>,
    rows: usize,
    n: usize,
    /// Rows of the flattened (outer, row) space.
    all: usize,
    ops_per_element: usize,
}

unsafe impl Sync for Rows<'_> {}

impl<'a> Rows<'a> {
    fn new(m: &Machine<'a>, fr: &Frame, launch: &'a Launch) -> Rows<'a> {
        let spec = &m.schedule.specs[launch.kernel];
        let (rows, n) = (launch.rows.fixed(), launch.n.fixed());
        Rows {
            kernel: m.kernels[launch.kernel],
            launch,
            splat: &spec.splat,
            ins: launch.ins.iter().map(|i| Shared(fr.f32(i.buf) as *const f32)).collect(),
            row_strides: launch.ins.iter().map(|i| i.row_stride.fixed() as i64).collect(),
            outs: launch.outs.iter().map(|&o| Shared(fr.f32(o))).collect(),
            rows,
            n,
            all: launch.outer.iter().map(|d| d.fixed()).product::<usize>() * rows,
            ops_per_element: spec.ops_per_element(),
        }
    }

    /// Rows [q0, q1) of the flattened (outer, row) space, columns [c0, c0 + len) of each.
    unsafe fn run(&self, q0: usize, q1: usize, c0: usize, len: usize) {
        let (rows, n, outer) = (self.rows, self.n, &self.launch.outer);
        let mut ins_at: Vec<*const f32> = vec![std::ptr::null(); self.ins.len()];
        let mut outs_at: Vec<*mut f32> = vec![std::ptr::null_mut(); self.outs.len()];
        let mut q = q0;
        while q < q1 {
            let (o, r0) = (q / rows, q % rows);
            let count = (rows - r0).min(q1 - q);
            for (j, p) in self.ins.iter().enumerate() {
                let mut off = r0 * self.row_strides[j] as usize + if self.splat[j] { 0 } else { c0 };
                let mut rem = o;
                for d in (0..outer.len()).rev() {
                    let len = outer[d].fixed();
                    off += (rem % len) * self.launch.ins[j].strides[d].fixed();
                    rem /= len;
                }
                ins_at[j] = p.0.add(off);
            }
            for (j, p) in self.outs.iter().enumerate() {
                outs_at[j] = p.0.add(q * n + c0);
            }
            (self.kernel)(len as i64, count as i64, ins_at.as_ptr(), self.row_strides.as_ptr(), outs_at.as_ptr());
            q += count;
        }
    }
}

/// `dst[dst_at + Σ i·dst_strides] = src[src_at + Σ i·src_strides]` over `copy.shape`, elements
/// of `size` bytes; large copies split their first axis over the threads.
unsafe fn copy_strided(dst: *mut u8, src: *const u8, copy: &Walk, size: usize) {
    let (dst, src) = (Shared(dst.add(copy.dst_at * size)), Shared(src.add(copy.src_at * size)));
    // Onto itself (an output that took over its argument's memory): nothing to copy.
    if std::ptr::eq(dst.0, src.0) && copy.dst_strides == copy.src_strides {
        return;
    }
    let total: usize = copy.shape.iter().product();
    match copy.shape.first() {
        Some(&outer) if total >= PARALLEL_WORK && outer > 1 && crate::threads() > 1 => {
            let per = outer.div_ceil(crate::threads());
            let (ds, ss) = (copy.dst_strides[0] * size, copy.src_strides[0] * size);
            rayon::scope(|s| {
                for start in (0..outer).step_by(per) {
                    s.spawn(move |_| {
                        let (dst, src) = (dst.get().add(start * ds), src.get().add(start * ss));
                        let n = per.min(outer - start);
                        if copy.shape.len() == 1 {
                            copy_line(dst, src, n, ds, ss, size);
                        } else {
                            (0..n).for_each(|i| copy_axes(dst.add(i * ds), src.add(i * ss), copy, 1, size));
                        }
                    });
                }
            });
        }
        _ => copy_axes(dst.0, src.0, copy, 0, size),
    }
}

/// The copy over its axes from `axis` on.
unsafe fn copy_axes(dst: *mut u8, src: *const u8, copy: &Walk, axis: usize, size: usize) {
    let rank = copy.shape.len();
    if axis == rank {
        std::ptr::copy_nonoverlapping(src, dst, size);
        return;
    }
    let (n, ds, ss) = (copy.shape[axis], copy.dst_strides[axis] * size, copy.src_strides[axis] * size);
    if axis + 1 == rank {
        copy_line(dst, src, n, ds, ss, size);
        return;
    }
    for i in 0..n {
        copy_axes(dst.add(i * ds), src.add(i * ss), copy, axis + 1, size);
    }
}

/// A cross-entropy's `rows` rows of `depth` logits in buffer `x` and their targets in `target`,
/// and the number of rows.
unsafe fn logits<'a>(fr: &'a Frame, x: usize, target: usize, rows: Size, depth: usize) -> (crate::cross_entropy::Logits<'a>, usize) {
    let rows = rows.fixed();
    let logits = crate::cross_entropy::Logits {
        x: std::slice::from_raw_parts(fr.f32(x), rows * depth),
        target: std::slice::from_raw_parts(fr.i64(target), rows),
        depth,
    };
    (logits, rows)
}

/// `n` elements of `size` bytes, `ds` and `ss` bytes apart.
unsafe fn copy_line(dst: *mut u8, src: *const u8, n: usize, ds: usize, ss: usize, size: usize) {
    if ds == size && ss == size {
        std::ptr::copy_nonoverlapping(src, dst, n * size);
    } else if size == 4 && (ds, ss) == (4, 8) {
        // One of interleaved pairs out (RoPE's even or odd elements): strides the compiler
        // knows, so it vectorises the loop with shuffles.
        let (d, s) = (dst as *mut u32, src as *const u32);
        (0..n).for_each(|i| *d.add(i) = *s.add(2 * i));
    } else if size == 4 && (ds, ss) == (8, 4) {
        // Into one of interleaved pairs.
        let (d, s) = (dst as *mut u32, src as *const u32);
        (0..n).for_each(|i| *d.add(2 * i) = *s.add(i));
    } else if size == 4 {
        (0..n).for_each(|i| *(dst.add(i * ds) as *mut u32) = *(src.add(i * ss) as *const u32));
    } else {
        (0..n).for_each(|i| *(dst.add(i * ds) as *mut u64) = *(src.add(i * ss) as *const u64));
    }
}

/// `len` elements of `dtype` set to the value whose bits are `bits`.
unsafe fn fill(dst: *mut u8, len: usize, dtype: DType, bits: u64) {
    match dtype {
        _ if bits == 0 => std::ptr::write_bytes(dst, 0, len * elem_bytes(dtype)),
        DType::F32 => std::slice::from_raw_parts_mut(dst as *mut u32, len).fill(bits as u32),
        DType::I64 => std::slice::from_raw_parts_mut(dst as *mut u64, len).fill(bits),
    }
}

/// Over matrices of `rows × cols` (`len` elements in all), the entries above the diagonal become
/// `fill`, and with a window W those W or more below it; split over the threads when large.
unsafe fn tri_mask(dst: *mut f32, len: usize, rows: usize, cols: usize, fill: f32, window: Option<usize>) {
    let v = std::slice::from_raw_parts_mut(dst, len);
    let mask = |m: &mut [f32]| {
        for (i, row) in m.chunks_mut(cols.max(1)).enumerate() {
            row.iter_mut().skip(i + 1).for_each(|x| *x = fill);
            if let Some(w) = window {
                let far = (i + 1).saturating_sub(w).min(row.len());
                row[..far].fill(fill);
            }
        }
    };
    let size = (rows * cols).max(1);
    if len >= PARALLEL_WORK {
        use rayon::prelude::*;
        v.par_chunks_mut(size).for_each(mask);
    } else {
        v.chunks_mut(size).for_each(mask);
    }
}

/// Where a batch of products goes: into `c` (contiguous), or with `added` as `(x, times)`,
/// `c = x + times · a · b` (`x` laid out as `c`, and either `c` itself or apart from it: then
/// copied into `c` first, member by member).
#[derive(Clone, Copy)]
struct Dest {
    c: *mut f32,
    added: Option<(*const f32, f32)>,
}

unsafe impl Send for Dest {}
unsafe impl Sync for Dest {}

impl Dest {
    /// `c[range]` holding what the products are added to.
    unsafe fn start(self, range: std::ops::Range<usize>) {
        if let Some((x, _)) = self.added.filter(|&(x, _)| !std::ptr::eq(x, self.c)) {
            std::ptr::copy_nonoverlapping(x.add(range.start), self.c.add(range.start), range.len());
        }
    }

    fn times(self) -> Option<f32> {
        self.added.map(|(_, times)| times)
    }
}

/// `c = a · b` for each index of `batch` (the operands read with their strides, `dest` as it
/// says), through `gemm`. Where each member's product runs on one thread, `member` (if any) is
/// called on that thread right after it, with the member's index, and the result is `true`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    dest: Dest,
    (a, ao): (*const f32, &Strides),
    (b, bo): (*const f32, &Strides),
    batch: &[usize],
    m: usize,
    n: usize,
    k: usize,
    member: Option<&(dyn Fn(usize) + Sync)>,
) -> bool {
    let count: usize = batch.iter().product();
    let (a, b) = (Shared(a), Shared(b));
    // A small product of a few rows: in registers, on one thread (a lone one large enough for
    // two runs split inside gemm).
    let small = (count > 1 || m * k * n < PARALLEL_MACS) && crate::small_product::takes(m, k, n, (bo.row_stride, bo.col_stride));
    let one = |i: usize, par: gemm::Parallelism| {
        let (a, b) = (a, b);
        let (a, b) = (a.0.add(batch_offset(i, batch, &ao.batch_strides)), b.0.add(batch_offset(i, batch, &bo.batch_strides)));
        let c = dest.c.add(i * m * n);
        dest.start(i * m * n..(i + 1) * m * n);
        if small {
            crate::small_product::product(c, a, (ao.row_stride, ao.col_stride), b, (bo.row_stride, bo.col_stride), m, k, n, dest.times());
        } else {
            gemm_into(c, (a, ao), (b, bo), m, k, n, dest.times(), par);
        }
        if let (Some(then), gemm::Parallelism::None) = (member, par) {
            then(i);
        }
    };
    if m <= FEW_ROWS && count * m * n <= FEW_RESULTS && bo.col_stride == 1 {
        dest.start(0..count * m * n);
        rows_times(dest, (a.0, ao), (b.0, bo), batch, (m, n, k));
        return false;
    }
    // gemm multiplies by a vector (one row or one column: a decoding step's projections, its
    // scores) on one thread: such products split over their members, or their long side over
    // the threads.
    let threads = crate::threads();
    if (m == 1 || n == 1) && count * m * k * n >= PARALLEL_MACS && threads > 1 {
        use rayon::prelude::*;
        if count >= threads {
            (0..count).into_par_iter().for_each(|i| one(i, gemm::Parallelism::None));
            return true;
        }
        dest.start(0..count * m * n);
        let long = m.max(n);
        let per = long.div_ceil(threads).next_multiple_of(16);
        for i in 0..count {
            let (a, b) = (Shared(a.0.add(batch_offset(i, batch, &ao.batch_strides))), Shared(b.0.add(batch_offset(i, batch, &bo.batch_strides))));
            let c = Shared(dest.c.add(i * m * n));
            (0..long.div_ceil(per)).into_par_iter().for_each(|p| {
                let (c, a, b) = (c, a, b);
                let (from, len) = (p * per, per.min(long - p * per));
                if m == 1 {
                    gemm_into(c.0.add(from), (a.0, ao), (b.0.add(from * bo.col_stride), bo), 1, k, len, dest.times(), gemm::Parallelism::None);
                } else {
                    gemm_into(c.0.add(from), (a.0.add(from * ao.row_stride), ao), (b.0, bo), len, k, 1, dest.times(), gemm::Parallelism::None);
                }
            });
        }
        return false;
    }
    // Large products split inside gemm (one in registers runs on one thread: a batch of them
    // splits over its members); a batch of small ones splits over its members, unless all of it
    // is small.
    let members_in_turn =
        if small { count == 1 || count * m * k * n < PARALLEL_MACS } else { m * k * n >= PARALLEL_MACS || count * m * k * n < PARALLEL_MACS * 4 };
    if members_in_turn {
        let par = if small { gemm::Parallelism::None } else { parallelism(m * k * n) };
        (0..count).for_each(|i| one(i, par));
        matches!(par, gemm::Parallelism::None)
    } else {
        use rayon::prelude::*;
        (0..count).into_par_iter().for_each(|i| one(i, gemm::Parallelism::None));
        true
    }
}

/// An attention instruction's shape at fixed sizes (its batch `batch`, resolved).
fn shape<'a>(s: &AttentionShape, batch: &'a [usize]) -> Shape<'a> {
    Shape { batch, tq: s.tq.fixed(), tk: s.tk.fixed(), d: s.d.fixed(), dv: s.dv.fixed(), scale: s.scale, causal: s.causal, window: s.window }
}

/// Where member `i` (in row-major order) of a batch of `batch` lies, for `strides`.
pub(crate) fn batch_offset(i: usize, batch: &[usize], strides: &[usize]) -> usize {
    let mut rem = i;
    let mut off = 0;
    for d in (0..batch.len()).rev() {
        off += (rem % batch[d]) * strides[d];
        rem /= batch[d];
    }
    off
}

fn parallelism(macs: usize) -> gemm::Parallelism {
    let threads = crate::threads();
    if macs >= PARALLEL_MACS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Products of at most this many rows, with at most this many results over their batch (their
/// sums held in L1 and L2), run down the right operand's rows ([`rows_times`]).
const FEW_ROWS: usize = 8;
const FEW_RESULTS: usize = 1 << 14;

/// A batch of products of a few rows each by a right operand with contiguous rows,
/// `dst[j] = rows_j[m×k] · rhs_j[k×n]`, in one pass down the rows of all of them together, the
/// positions split over the threads (partial sums added at the end): a decoding step's weights
/// times the values of a position-major KV cache (a row per query of a kv head's group), whose
/// heads' rows interleave. Head by head, each head's rows lie a page apart and gemm (which packs
/// them first) streams them slowly.
unsafe fn rows_times(dest: Dest, (a, ao): (*const f32, &Strides), (b, bo): (*const f32, &Strides), batch: &[usize], (m, n, k): (usize, usize, usize)) {
    let count: usize = batch.iter().product();
    let a_at: Vec<usize> = (0..count).map(|j| batch_offset(j, batch, &ao.batch_strides)).collect();
    let b_at: Vec<usize> = (0..count).map(|j| batch_offset(j, batch, &bo.batch_strides)).collect();
    let (a, b) = (Shared(a), Shared(b));
    let sums = |positions: std::ops::Range<usize>| {
        let (a, b) = (a, b);
        let mut acc = vec![0.0f32; count * m * n];
        for i in positions {
            for (j, member) in acc.chunks_exact_mut(m * n).enumerate() {
                let row = std::slice::from_raw_parts(b.0.add(b_at[j] + i * bo.row_stride), n);
                for (r, out) in member.chunks_exact_mut(n).enumerate() {
                    let w = *a.0.add(a_at[j] + r * ao.row_stride + i * ao.col_stride);
                    out.iter_mut().zip(row).for_each(|(o, &x)| *o += w * x);
                }
            }
        }
        acc
    };
    let parts = crate::threads().min(count * m * k * n / PARALLEL_MACS).max(1);
    let total = if parts == 1 {
        sums(0..k)
    } else {
        use rayon::prelude::*;
        let per = k.div_ceil(parts);
        (0..parts)
            .into_par_iter()
            .map(|p| sums(p * per..((p + 1) * per).min(k)))
            .reduce_with(|mut x, y| {
                x.iter_mut().zip(&y).for_each(|(s, t)| *s += t);
                x
            })
            .expect("at least one part")
    };
    let dst = std::slice::from_raw_parts_mut(dest.c, count * m * n);
    match dest.times() {
        None => dst.copy_from_slice(&total),
        Some(times) => dst.iter_mut().zip(&total).for_each(|(d, t)| *d += times * t),
    }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`, or with `added` `dst += added · lhs · rhs`: `dst`
/// row-major, the operands with their (row, column) strides.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    (lhs, l): (*const f32, &Strides),
    (rhs, r): (*const f32, &Strides),
    m: usize,
    k: usize,
    n: usize,
    added: Option<f32>,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        n as isize,
        added.is_some(),
        lhs,
        l.col_stride as isize,
        l.row_stride as isize,
        rhs,
        r.col_stride as isize,
        r.row_stride as isize,
        // dst = alpha · dst + beta · lhs · rhs
        if added.is_some() { 1.0 } else { 0.0 },
        added.unwrap_or(1.0),
        false,
        false,
        false,
        par,
    )
}

/// Sum, mean or max along the middle axis of `outer × len × inner`, eight partial sums at a time
/// along a contiguous axis.
unsafe fn reduce(dst: *mut f32, src: *const f32, kind: ReduceKind, outer: usize, len: usize, inner: usize) {
    let x = std::slice::from_raw_parts(src, outer * len * inner);
    let out = std::slice::from_raw_parts_mut(dst, outer * inner);
    let reduce_block = |o: usize, dst: &mut [f32]| {
        let block = &x[o * len * inner..(o + 1) * len * inner];
        if inner == 1 {
            dst[0] = match kind {
                ReduceKind::Sum | ReduceKind::Mean => sum(block),
                ReduceKind::Max => max(block),
            };
        } else {
            match kind {
                ReduceKind::Sum | ReduceKind::Mean => {
                    dst.fill(0.0);
                    for row in block.chunks_exact(inner) {
                        dst.iter_mut().zip(row).for_each(|(d, &v)| *d += v);
                    }
                }
                ReduceKind::Max => {
                    dst.copy_from_slice(&block[..inner]);
                    for row in block.chunks_exact(inner).skip(1) {
                        dst.iter_mut().zip(row).for_each(|(d, &v)| {
                            if v > *d {
                                *d = v
                            }
                        });
                    }
                }
            }
        }
        if kind == ReduceKind::Mean {
            dst.iter_mut().for_each(|d| *d /= len as f32);
        }
    };
    if outer * len * inner >= PARALLEL_WORK && outer > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(inner).enumerate().for_each(|(o, dst)| reduce_block(o, dst));
    } else {
        out.chunks_mut(inner.max(1)).enumerate().for_each(|(o, dst)| reduce_block(o, dst));
    }
}

/// The largest element (NaN never wins; −∞ for none), in eight interleaved partial maxima (which
/// the compiler vectorises), then combined.
#[inline(always)]
pub(crate) fn max(v: &[f32]) -> f32 {
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, larger);
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = larger(*a, x);
        }
    }
    acc.iter().copied().fold(tail, larger)
}

/// A sum in eight interleaved partial sums (which the compiler vectorises), then combined.
#[inline(always)]
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}
