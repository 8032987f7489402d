//! Attention in one pass ([`Instr::Attention`](tttc_lower::schedule::Instr)): per batch index
//! and block of query rows, the keys in blocks — the block's scores, scaled and masked, each
//! row's running maximum and sum, the exponentials' product with the values accumulated and
//! rescaled whenever a row's maximum grows (the online softmax of FlashAttention). The `[tq, tk]`
//! scores are never stored whole, and under a causal mask nothing past the diagonal is computed
//! (with a window, nor the blocks of keys before it).
//!
//! Each batch index's keys and values are packed once (keys in panels of `NR`, values in rows
//! padded to `NR`), so the products of every block read them contiguously; the products are
//! micro-tiles of `MR × NR` sums held in registers (in AVX-512, `MR` rows by up to four blocks
//! of `NR` columns). A group of `MR` rows' scores, their softmax and their product with the
//! values follow each other while the scores are in the first-level cache. The packed operands
//! and the scratch are buffers each thread keeps from call to call (`reuse.rs`). Blocks of rows
//! are the unit of work, taken by whichever thread is free, the largest (the last rows, under a
//! causal mask) first. The code is compiled three times ([`Simd`]): for AVX-512, for AVX2 with
//! FMA, and for the baseline; a run takes the widest the processor has.

use tttc_ir::BinaryOp;
use tttc_lower::math::{self, Emit};
use tttc_lower::schedule::Strides;

use crate::exec::{batch_offset, Shared};
use crate::reuse::{self, Buffer};
use crate::scalar::Scalar;
use crate::simd::{Simd, AVX2, AVX512, PORTABLE};

/// Rows and columns of a micro-tile: its `MR × NR` sums are twelve 256-bit registers. AVX-512
/// takes up to four blocks of `NR` columns at once (`MR × 4` registers of 512 bits, each
/// broadcast of a row's term feeding four multiply-adds); a lone block is kept as two partial
/// sums per row, so that both multiply-add units have work while each waits on its previous
/// result.
pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;
/// Query rows per block (a multiple of `MR`): the packed keys and values are read once per
/// this many rows.
const ROWS: usize = 96;
/// Keys per block (a multiple of `NR`): a group of `MR` rows' scores stay in the first-level
/// cache.
const KEYS: usize = 256;

/// Attention's sizes per batch index and its scores' scale and mask, both ways.
#[derive(Clone, Copy)]
pub struct Shape<'a> {
    pub batch: &'a [usize],
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: Option<(BinaryOp, f32)>,
    pub causal: bool,
    /// With the causal mask, keys `window` or more before their query are masked out too.
    pub window: Option<usize>,
}

impl Shape<'_> {
    /// The first key query row `q` sees.
    pub(crate) fn first_key(&self, q: usize) -> usize {
        match (self.causal, self.window) {
            (true, Some(w)) => (q + 1).saturating_sub(w),
            _ => 0,
        }
    }
}

/// What every block reads.
#[derive(Clone, Copy)]
pub struct Attention<'a> {
    pub q: (*const f32, &'a Strides),
    /// kᵀ, `d × tk`.
    pub k: (*const f32, &'a Strides),
    pub v: (*const f32, &'a Strides),
    pub shape: Shape<'a>,
}

/// One batch index's keys in panels of `NR` keys (each `d × NR`, a key per column, zero past
/// the last key) and its values in rows of `dv` rounded up to `NR` (zero past `dv`).
struct Packed<'a> {
    keys: &'a [f32],
    values: &'a [f32],
}

/// A block's scratch: its query rows in panels of `MR` (each `d × MR`, a row per column), one
/// group of `MR` rows' scores (`MR × KEYS`), its rows' running maxima and sums, and their
/// outputs so far (rows of `dv` rounded up to `NR`).
struct Scratch {
    queries: Buffer,
    scores: Buffer,
    max: Buffer,
    sum: Buffer,
    acc: Buffer,
}

impl Attention<'_> {
    /// Writes `out` (`batch × tq × dv`, contiguous) and, when given, each row's log-sum-exp
    /// `lse` (`batch × tq`).
    ///
    /// # Safety
    /// The operands hold their matrices at the strides given, `out` and `lse` their elements.
    pub unsafe fn run(&self, out: *mut f32, lse: Option<*mut f32>) {
        self.run_with(out, lse, Simd::best())
    }

    /// [`Attention::run`] in the instructions of `simd` (which the processor has).
    unsafe fn run_with(&self, out: *mut f32, lse: Option<*mut f32>, simd: Simd) {
        use rayon::prelude::*;
        let count: usize = self.shape.batch.iter().product();
        let this = Shared(*self);
        let (d, tk, dvp) = (self.shape.d, self.shape.tk, self.shape.dv.next_multiple_of(NR));
        let (keys, values) = (tk.div_ceil(NR) * d * NR, tk * dvp);
        let each = keys + values;
        let mut buffer = reuse::buffer(count * each);
        // (No keys: nothing to pack, and chunks of none are not allowed.)
        buffer.par_chunks_mut(each.max(1)).enumerate().for_each(|(i, p)| this.get().pack(i, p.split_at_mut(keys)));
        let packed: Vec<Packed> = (0..count).map(|i| buffer[i * each..(i + 1) * each].split_at(keys)).map(|(keys, values)| Packed { keys, values }).collect();
        let blocks = self.shape.tq.div_ceil(ROWS);
        let (out, lse) = (Shared(out), Shared(lse));
        // The last blocks of rows first: under a causal mask they have the most keys.
        (0..count * blocks).into_par_iter().for_each_init(
            || Scratch {
                queries: reuse::buffer(ROWS * d),
                scores: reuse::buffer(MR * KEYS),
                max: reuse::buffer(ROWS),
                sum: reuse::buffer(ROWS),
                acc: reuse::buffer(ROWS * dvp),
            },
            |scratch, w| {
                let (i, block) = (w % count, blocks - 1 - w / count);
                let args = (i, block * ROWS, &packed[i], scratch, (out.get(), lse.get()));
                match simd {
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 => this.get().block_avx512(args),
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2 => this.get().block_avx2(args),
                    _ => this.get().block::<PORTABLE>(args),
                }
            },
        );
    }

    /// Packs batch index `i`'s keys and values into `keys` and `values`.
    unsafe fn pack(&self, i: usize, (keys, values): (&mut [f32], &mut [f32])) {
        let (d, tk, dv) = (self.shape.d, self.shape.tk, self.shape.dv);
        let (k, ks) = (self.k.0.add(batch_offset(i, self.shape.batch, &self.k.1.batch_strides)), self.k.1);
        // kᵀ: a key's elements are a column.
        pack_panels(keys, k, (ks.col_stride, ks.row_stride), tk, d, NR);
        let (v, vs) = (self.v.0.add(batch_offset(i, self.shape.batch, &self.v.1.batch_strides)), self.v.1);
        pack_rows(values, v, (vs.row_stride, vs.col_stride), tk, dv);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&self, args: BlockArgs) {
        self.block::<AVX2>(args)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block_avx512(&self, args: BlockArgs) {
        self.block::<AVX512>(args)
    }

    /// Rows `q0..` (up to `ROWS`) of batch index `i`, in the instructions of `SIMD`.
    #[inline(always)]
    unsafe fn block<const SIMD: u8>(&self, (i, q0, packed, s, (out, lse)): BlockArgs) {
        let (rows, d, dv) = (ROWS.min(self.shape.tq - q0), self.shape.d, self.shape.dv);
        let dvp = dv.next_multiple_of(NR);
        let qs = self.q.1;
        let q = self.q.0.add(batch_offset(i, self.shape.batch, &qs.batch_strides) + q0 * qs.row_stride);
        pack_panels(&mut s.queries[..rows.div_ceil(MR) * d * MR], q, (qs.row_stride, qs.col_stride), rows, d, MR);
        s.max[..rows].fill(f32::NEG_INFINITY);
        s.sum[..rows].fill(0.0);
        s.acc[..rows * dvp].fill(0.0);
        // Row r sees keys first_key(q0 + r)..=q0 + r under the mask; blocks of keys start at a
        // panel's.
        let keys = if self.shape.causal { self.shape.tk.min(q0 + rows) } else { self.shape.tk };
        let start = self.shape.first_key(q0).min(keys) / NR * NR;
        for k0 in (start..keys).step_by(KEYS) {
            let cols = KEYS.min(keys - k0);
            // The keys a group of rows from `r` sees in this block (its scores past them would
            // be masked: they are not computed), and the first one row `r` sees (a window's).
            let seen_by = |r: usize, mr: usize| if self.shape.causal { cols.min((q0 + r + mr).saturating_sub(k0)) } else { cols };
            let from_by = |r: usize| self.shape.first_key(q0 + r).saturating_sub(k0).min(cols);
            // A group of rows at a time, its scores, their softmax and the product with the
            // values in a row, while the scores are in the core's first cache; from the panel
            // of the first key the group's first row sees.
            for r in (0..rows).step_by(MR) {
                let mr = MR.min(rows - r);
                let seen = seen_by(r, mr);
                let skip = from_by(r) / NR * NR;
                if seen <= skip {
                    continue;
                }
                let panels = (packed.keys.as_ptr().add((k0 + skip) / NR * d * NR), NR, d * NR);
                let scores = (s.scores.as_mut_ptr().add(skip), KEYS, NR);
                tile::<SIMD, 1, MR>(mr, s.queries.as_ptr().add(r * d), panels, d, scores, (seen - skip).div_ceil(NR), false);
                for (g, row) in s.scores.chunks_exact_mut(KEYS).take(mr).enumerate() {
                    let acc = &mut s.acc[(r + g) * dvp..(r + g + 1) * dvp];
                    let seen = from_by(r + g) - skip..seen_by(r + g, 1) - skip;
                    softmax_row(&mut row[skip..cols], seen, self.shape.scale, &mut s.max[r + g], &mut s.sum[r + g], acc);
                }
                let values = (packed.values.as_ptr().add((k0 + skip) * dvp), dvp, NR);
                let acc = (s.acc.as_mut_ptr().add(r * dvp), dvp, NR);
                tile::<SIMD, KEYS, 1>(mr, s.scores.as_ptr().add(skip), values, seen - skip, acc, dvp / NR, true);
            }
        }
        for r in 0..rows {
            let dst = std::slice::from_raw_parts_mut(out.add((i * self.shape.tq + q0 + r) * dv), dv);
            let l = s.sum[r];
            dst.iter_mut().zip(&s.acc[r * dvp..]).for_each(|(o, &a)| *o = a / l);
            if let Some(lse) = lse {
                *lse.add(i * self.shape.tq + q0 + r) = s.max[r] + l.ln();
            }
        }
    }
}

/// `x`'s `rows × width` matrix (element `(r, e)` at `r·rs + e·cs`) into `out` in panels of `m`
/// rows, each `width × m`, zero past the last row (`out` holds an earlier call's values: no lane
/// past the last row computes on them, where a NaN or a subnormal would cost time).
pub(crate) unsafe fn pack_panels(out: &mut [f32], x: *const f32, (rs, cs): (usize, usize), rows: usize, width: usize, m: usize) {
    out[(rows / m) * width * m..].fill(0.0);
    for r in 0..rows {
        let panel = &mut out[(r / m) * width * m + r % m..];
        (0..width).for_each(|e| panel[e * m] = *x.add(r * rs + e * cs));
    }
}

/// `x`'s `rows × width` matrix into `out` in rows padded to a multiple of `NR` (zero past
/// `width`).
pub(crate) unsafe fn pack_rows(out: &mut [f32], x: *const f32, (rs, cs): (usize, usize), rows: usize, width: usize) {
    for (r, row) in out.chunks_exact_mut(width.next_multiple_of(NR)).take(rows).enumerate() {
        (0..width).for_each(|e| row[e] = *x.add(r * rs + e * cs));
        row[width..].fill(0.0);
    }
}

/// A block's arguments: the batch index, its first row, the index's packed keys and values, the
/// thread's scratch, and the outputs.
type BlockArgs<'a> = (usize, usize, &'a Packed<'a>, &'a mut Scratch, (*mut f32, Option<*mut f32>));

/// `c[r·crs + j·cbs + 0..NR] (+)= Σ_e a[r·ARS + e·ACS] · b[e·brs + j·bbs + 0..NR]` for the `mr`
/// (≤ `MR`) rows `r` of a micro-tile and its `blocks` blocks `j` of `NR` columns, over `k` terms,
/// in the instructions of `SIMD`; `b` and `c` are each a pointer, the stride between rows and
/// the stride between blocks (packed keys: a panel, `d·NR`; rows: `NR`). (`a`'s strides are
/// constants: its loads then need no address arithmetic.)
#[inline(always)]
pub(crate) unsafe fn tile<const SIMD: u8, const ARS: usize, const ACS: usize>(
    mr: usize,
    a: *const f32,
    (b, brs, bbs): (*const f32, usize, usize),
    k: usize,
    (c, crs, cbs): (*mut f32, usize, usize),
    blocks: usize,
    accumulate: bool,
) {
    macro_rules! rows {
        ($f:ident, $b:expr, $c:expr $(, $w:literal)?) => {
            match mr {
                1 => $f::<1, $($w,)? ARS, ACS>(a, $b, k, $c, accumulate),
                2 => $f::<2, $($w,)? ARS, ACS>(a, $b, k, $c, accumulate),
                3 => $f::<3, $($w,)? ARS, ACS>(a, $b, k, $c, accumulate),
                4 => $f::<4, $($w,)? ARS, ACS>(a, $b, k, $c, accumulate),
                5 => $f::<5, $($w,)? ARS, ACS>(a, $b, k, $c, accumulate),
                _ => $f::<MR, $($w,)? ARS, ACS>(a, $b, k, $c, accumulate),
            }
        };
    }
    // AVX-512 takes up to four blocks at once: each broadcast of `a` then feeds four
    // multiply-adds (one block at a time, the loads of `a` would keep the multiply-add units
    // waiting); `MR × 4` sums fill 24 of the 32 registers.
    #[cfg(target_arch = "x86_64")]
    if SIMD == AVX512 {
        let mut j = 0;
        while j < blocks {
            let (b, c) = ((b.add(j * bbs), brs, bbs), (c.add(j * cbs), crs, cbs));
            let w = (blocks - j).min(4);
            match w {
                1 => rows!(tile_rows_avx512, (b.0, brs), (c.0, crs)),
                2 => rows!(tile_wide_avx512, b, c, 2),
                3 => rows!(tile_wide_avx512, b, c, 3),
                _ => rows!(tile_wide_avx512, b, c, 4),
            }
            j += w;
        }
        return;
    }
    for j in 0..blocks {
        let (b, c) = ((b.add(j * bbs), brs), (c.add(j * cbs), crs));
        #[cfg(target_arch = "x86_64")]
        if SIMD == AVX2 {
            rows!(tile_rows_avx2, b, c);
            continue;
        }
        rows!(tile_rows, b, c)
    }
}

/// [`tile`] over `M` rows, in plain arithmetic.
#[inline(always)]
unsafe fn tile_rows<const M: usize, const ARS: usize, const ACS: usize>(
    a: *const f32,
    (b, brs): (*const f32, usize),
    k: usize,
    (c, crs): (*mut f32, usize),
    accumulate: bool,
) {
    let mut acc = [[0f32; NR]; M];
    if accumulate {
        (0..M).for_each(|r| acc[r] = *(c.add(r * crs) as *const [f32; NR]));
    }
    for e in 0..k {
        let be = *(b.add(e * brs) as *const [f32; NR]);
        for (r, sums) in acc.iter_mut().enumerate() {
            let x = *a.add(r * ARS + e * ACS);
            sums.iter_mut().zip(&be).for_each(|(sum, &y)| *sum += x * y);
        }
    }
    (0..M).for_each(|r| *(c.add(r * crs) as *mut [f32; NR]) = acc[r]);
}

/// [`tile`] over `M` rows in AVX2 registers: two vectors of sums per row, a broadcast of `a`
/// times a row of `b` per term.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_rows_avx2<const M: usize, const ARS: usize, const ACS: usize>(
    a: *const f32,
    (b, brs): (*const f32, usize),
    k: usize,
    (c, crs): (*mut f32, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    if accumulate {
        for (r, sums) in acc.iter_mut().enumerate() {
            *sums = [_mm256_loadu_ps(c.add(r * crs)), _mm256_loadu_ps(c.add(r * crs + 8))];
        }
    }
    for e in 0..k {
        let (b0, b1) = (_mm256_loadu_ps(b.add(e * brs)), _mm256_loadu_ps(b.add(e * brs + 8)));
        for (r, sums) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a.add(r * ARS + e * ACS));
            *sums = [_mm256_fmadd_ps(x, b0, sums[0]), _mm256_fmadd_ps(x, b1, sums[1])];
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(r * crs), sums[0]);
        _mm256_storeu_ps(c.add(r * crs + 8), sums[1]);
    }
}

/// [`tile`] over `M` rows in AVX-512 registers: a row of sums is one vector, kept as two
/// (the even terms and the odd ones, added at the end) so that `2·M` chains of multiply-adds
/// overlap.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_rows_avx512<const M: usize, const ARS: usize, const ACS: usize>(
    a: *const f32,
    (b, brs): (*const f32, usize),
    k: usize,
    (c, crs): (*mut f32, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; M];
    if accumulate {
        for (r, sums) in acc.iter_mut().enumerate() {
            sums[0] = _mm512_loadu_ps(c.add(r * crs));
        }
    }
    let pairs = k / 2;
    for p in 0..pairs {
        let e = 2 * p;
        let (b0, b1) = (_mm512_loadu_ps(b.add(e * brs)), _mm512_loadu_ps(b.add((e + 1) * brs)));
        for (r, sums) in acc.iter_mut().enumerate() {
            sums[0] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * ARS + e * ACS)), b0, sums[0]);
            sums[1] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * ARS + (e + 1) * ACS)), b1, sums[1]);
        }
    }
    if k % 2 == 1 {
        let e = k - 1;
        let be = _mm512_loadu_ps(b.add(e * brs));
        for (r, sums) in acc.iter_mut().enumerate() {
            sums[0] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * ARS + e * ACS)), be, sums[0]);
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(r * crs), _mm512_add_ps(sums[0], sums[1]));
    }
}

/// [`tile`] over `M` rows and `W` blocks of columns in AVX-512 registers: a vector of sums per
/// row and block (`M · W` chains of multiply-adds overlap), a broadcast of `a` times `W` vectors
/// of `b` per term.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_wide_avx512<const M: usize, const W: usize, const ARS: usize, const ACS: usize>(
    a: *const f32,
    (b, brs, bbs): (*const f32, usize, usize),
    k: usize,
    (c, crs, cbs): (*mut f32, usize, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); W]; M];
    if accumulate {
        for (r, sums) in acc.iter_mut().enumerate() {
            *sums = std::array::from_fn(|w| _mm512_loadu_ps(c.add(r * crs + w * cbs)));
        }
    }
    for e in 0..k {
        let be: [__m512; W] = std::array::from_fn(|w| _mm512_loadu_ps(b.add(e * brs + w * bbs)));
        for (r, sums) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * ARS + e * ACS));
            sums.iter_mut().zip(&be).for_each(|(sum, &y)| *sum = _mm512_fmadd_ps(x, y, *sum));
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        sums.iter().enumerate().for_each(|(w, &sum)| _mm512_storeu_ps(c.add(r * crs + w * cbs), sum));
    }
}

/// One row of a block's scores: its entries in `seen` scaled, the row's running maximum raised
/// to theirs, the entries replaced by their exponentials from that maximum (the others by 0),
/// the running sum and the row's output so far rescaled to it.
#[inline(always)]
fn softmax_row(row: &mut [f32], seen: std::ops::Range<usize>, scale: Option<(BinaryOp, f32)>, row_max: &mut f32, row_sum: &mut f32, acc: &mut [f32]) {
    let (before, rest) = row.split_at_mut(seen.start);
    before.fill(0.0);
    let (x, rest) = rest.split_at_mut(seen.len());
    rest.fill(0.0);
    if x.is_empty() {
        return;
    }
    let (m, block_sum) = match Scale::of(scale) {
        Scale::Div(c) => exponentials(x, |s| s / c, *row_max),
        Scale::Mul(c) => exponentials(x, |s| s * c, *row_max),
    };
    // The output so far was weighed from the old maximum (nothing, before the first block).
    let rescale = (*row_max - m).exp();
    if rescale != 1.0 {
        acc.iter_mut().for_each(|a| *a *= rescale);
    }
    *row_sum = *row_sum * rescale + block_sum;
    *row_max = m;
}

/// Lanes of the softmax's passes over a row (a 512-bit vector).
const LANES: usize = 16;

/// The scores `x` scaled by `scale` and replaced by their exponentials from their maximum (or
/// `floor`, if larger): that maximum and the exponentials' sum. Two passes over the row (scale
/// and maximum, then exponentials and sum), each in `LANES` lanes.
#[inline(always)]
fn exponentials(x: &mut [f32], scale: impl Fn(f32) -> f32, floor: f32) -> (f32, f32) {
    let larger = |m: f32, s: f32| if s > m { s } else { m };
    let mut maxima = [floor; LANES];
    let mut rows = x.chunks_exact_mut(LANES);
    for v in rows.by_ref() {
        v.iter_mut().zip(&mut maxima).for_each(|(s, m)| {
            *s = scale(*s);
            *m = larger(*m, *s);
        });
    }
    let m = rows.into_remainder().iter_mut().fold(maxima.into_iter().fold(floor, larger), |m, s| {
        *s = scale(*s);
        larger(m, *s)
    });
    let mut sums = [0f32; LANES];
    let mut rows = x.chunks_exact_mut(LANES);
    for v in rows.by_ref() {
        v.iter_mut().zip(&mut sums).for_each(|(s, sum)| {
            *s = exp_from(*s, m);
            *sum += *s;
        });
    }
    let tail = rows.into_remainder().iter_mut().fold(0.0, |sum, s| {
        *s = exp_from(*s, m);
        sum + *s
    });
    (m, sums.iter().sum::<f32>() + tail)
}

/// The scores' constant as a factor or a divisor.
enum Scale {
    Mul(f32),
    Div(f32),
}

impl Scale {
    #[inline(always)]
    fn of(scale: Option<(BinaryOp, f32)>) -> Scale {
        match scale {
            Some((BinaryOp::Div, c)) if !power_of_two(c) => Scale::Div(c),
            // Dividing by a power of two is multiplying by its inverse, exactly (and faster).
            Some((BinaryOp::Div, c)) => Scale::Mul(1.0 / c),
            Some((_, c)) => Scale::Mul(c),
            None => Scale::Mul(1.0),
        }
    }
}

/// `x` divided or multiplied by the scores' constant.
#[inline(always)]
pub(crate) fn scaled(x: &mut [f32], scale: Option<(BinaryOp, f32)>) {
    match Scale::of(scale) {
        Scale::Div(c) => x.iter_mut().for_each(|s| *s /= c),
        Scale::Mul(c) => x.iter_mut().for_each(|s| *s *= c),
    }
}

/// Whether `c` is ±2ᵏ with a normal 2⁻ᵏ (its inverse is exact).
fn power_of_two(c: f32) -> bool {
    c.is_normal() && c.to_bits() & 0x007f_ffff == 0 && (1.0 / c).is_normal()
}

/// `exp(x − m)` for `x ≤ m`, as the generated kernels compute it.
#[inline(always)]
pub(crate) fn exp_from(x: f32, m: f32) -> f32 {
    let mut e = Scalar;
    let shifted = e.sub(x, m);
    math::exp_nonpositive(&mut e, shifted)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` values in [-1, 1) (`salt` varies them).
    pub(crate) fn operand(n: usize, salt: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// Row `row` of `q`'s attention weights over the `keys` keys of `k` from `k0` (both
    /// matrices of width `d`, the scores divided by 3), in f64, and its log-sum-exp.
    pub(crate) fn weights(q: &[f32], k: &[f32], row: usize, k0: usize, keys: usize, d: usize) -> (Vec<f64>, f64) {
        let s: Vec<f64> = (0..keys).map(|j| (0..d).map(|e| q[row * d + e] as f64 * k[(k0 + j) * d + e] as f64).sum::<f64>() / 3.0).collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
        (s.iter().map(|x| (x - m).exp() / l).collect(), m + l.ln())
    }

    /// The masks the kernels are checked with: none, causal, and causal windows narrower than a
    /// block of keys (starting inside one) and wider.
    pub(crate) const MASKS: [(bool, Option<usize>); 4] = [(false, None), (true, None), (true, Some(37)), (true, Some(200))];

    /// The keys query row `i` of `tk` sees under `mask`: from the first, how many.
    pub(crate) fn seen((causal, window): (bool, Option<usize>), i: usize, tk: usize) -> (usize, usize) {
        let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
        (first, if causal { i + 1 - first } else { tk })
    }

    /// Every build this processor runs (AVX-512, AVX2 with FMA, the portable one) against
    /// softmax attention computed directly in f64, under every mask of [`MASKS`], with sizes
    /// that fill no tile, and with more keys than a block holds (the running softmax rescaled)
    /// and rows of one to five blocks of columns.
    #[test]
    fn every_build_matches_attention_computed_directly() {
        let batch = [2usize];
        for (tq, tk, d, dv) in [(131, 131, 19, 21), (300, 300, 64, 80)] {
            let [q, k, v] = [(tq, d), (tk, d), (tk, dv)].map(|(rows, width)| operand(2 * rows * width, rows + width));
            // Keys growing with their index, so that later blocks raise the rows' maxima.
            let k: Vec<f32> = k.iter().enumerate().map(|(i, x)| x * (1.0 + (i / d % tk) as f32 / 50.0)).collect();
            // q and v as stored; kᵀ read through the strides of k.
            let qs = Strides { batch_strides: vec![tq * d], row_stride: d, col_stride: 1 };
            let ks = Strides { batch_strides: vec![tk * d], row_stride: 1, col_stride: d };
            let vs = Strides { batch_strides: vec![tk * dv], row_stride: dv, col_stride: 1 };
            for mask @ (causal, window) in MASKS {
                let mut want = vec![0f64; 2 * tq * dv];
                for b in 0..2 {
                    for i in 0..tq {
                        let (first, keys) = seen(mask, i, tk);
                        let (p, _) = weights(&q, &k, b * tq + i, b * tk + first, keys, d);
                        for c in 0..dv {
                            want[(b * tq + i) * dv + c] = p.iter().enumerate().map(|(j, w)| w * v[(b * tk + first + j) * dv + c] as f64).sum();
                        }
                    }
                }
                for simd in Simd::available() {
                    let a = Attention {
                        q: (q.as_ptr(), &qs),
                        k: (k.as_ptr(), &ks),
                        v: (v.as_ptr(), &vs),
                        shape: Shape { batch: &batch, tq, tk, d, dv, scale: Some((BinaryOp::Div, 3.0)), causal, window },
                    };
                    let mut out = vec![f32::NAN; 2 * tq * dv];
                    // SAFETY: the operands hold their matrices at these strides; `out` its elements.
                    unsafe { a.run_with(out.as_mut_ptr(), None, simd) };
                    for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                        assert!((o as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "mask {mask:?}, {simd:?}, element {i}: {o} against {w}");
                    }
                }
            }
        }
    }
}
