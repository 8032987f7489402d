//! Attention's backward in one pass ([`Instr::AttentionBackward`](tttc_lower::schedule::Instr)),
//! FlashAttention's: per batch index, the keys in blocks; for each block of keys every block of
//! query rows that sees it recomputes its weights `p = exp(scale(q·kᵀ) − lse)` and
//! `ds = scale(p ⊙ (d_out·vᵀ − row))`, adds `pᵀ·d_out` and `dsᵀ·q` to the key block's `dv` and
//! `dk` and `ds·k` to the rows' `dq`. The `[tq, tk]` weights are never stored whole and, under a
//! causal mask, nothing past the diagonal is computed (with a window, nor the blocks of rows
//! past it).
//!
//! Every operand is packed once per batch index in the layout its products read (the forward's
//! panels for `q·kᵀ` and `d_out·vᵀ`, rows padded to `NR` for the others); the five products are
//! the forward's `MR × NR` micro-tiles. A batch index is the unit of work, taken by whichever
//! thread is free.

use tttc_lower::schedule::Strides;

use crate::attention::{exp_from, pack_panels, pack_rows, scaled, tile, Shape, MR, NR};
use crate::exec::{batch_offset, Shared};
use crate::reuse::{self, Buffer};
use crate::simd::{Simd, AVX2, AVX512, PORTABLE};

/// Query rows per block (a multiple of `MR`).
const ROWS: usize = 96;
/// Keys per block (a multiple of `NR`): a block's weights stay in the core's cache.
const KEYS: usize = 64;

/// What every batch index reads.
#[derive(Clone, Copy)]
pub struct Backward<'a> {
    pub q: (*const f32, &'a Strides),
    /// kᵀ, `d × tk`.
    pub k: (*const f32, &'a Strides),
    /// vᵀ, `dv × tk`.
    pub v: (*const f32, &'a Strides),
    pub d_out: (*const f32, &'a Strides),
    /// `batch × tq` each.
    pub lse: *const f32,
    pub row: *const f32,
    pub shape: Shape<'a>,
    /// Whether `dq`, `dk` and `dv` are each written transposed.
    pub transposed: [bool; 3],
}

/// One batch index's operands, packed: `q` and `d_out` in panels of `MR` rows (each
/// `width × MR`) and in rows padded to `NR`; `k` and `v` in panels of `NR` keys (each
/// `width × NR`), `k` in rows padded to `NR` too; and `dq` accumulated in rows padded to `NR`.
struct Packed {
    q_panels: Buffer,
    q_rows: Buffer,
    d_panels: Buffer,
    d_rows: Buffer,
    k_panels: Buffer,
    k_rows: Buffer,
    v_panels: Buffer,
    dq: Buffer,
}

/// A batch index's arguments: the index, its packed operands, the thread's scratch, and the
/// results `dq`, `dk` and `dv`.
type IndexArgs<'a> = (usize, &'a mut Packed, &'a mut Scratch, [*mut f32; 3]);

/// A block's scratch: its weights and `ds` (`ROWS × KEYS`), the key block's `dk` and `dv` so
/// far (rows padded to `NR`).
struct Scratch {
    p: Buffer,
    ds: Buffer,
    dk: Buffer,
    dv: Buffer,
}

/// `x`'s `rows × width` matrix (element `(r, e)` at `r·rs + e·cs`) in panels of `m` rows
/// ([`pack_panels`]).
unsafe fn panels(x: *const f32, strides: (usize, usize), rows: usize, width: usize, m: usize) -> Buffer {
    let mut out = reuse::buffer(rows.next_multiple_of(m) * width);
    pack_panels(&mut out, x, strides, rows, width, m);
    out
}

/// `len` zeros.
fn zeros(len: usize) -> Buffer {
    let mut out = reuse::buffer(len);
    out.fill(0.0);
    out
}

/// `x`'s `rows × width` matrix in rows padded to a multiple of `NR` ([`pack_rows`]).
unsafe fn padded_rows(x: *const f32, strides: (usize, usize), rows: usize, width: usize) -> Buffer {
    let mut out = reuse::buffer(rows * width.next_multiple_of(NR));
    pack_rows(&mut out, x, strides, rows, width);
    out
}

impl Backward<'_> {
    /// Writes `dq` (`batch × tq × d`), `dk` (`batch × tk × d`) and `dv` (`batch × tk × dv`),
    /// contiguous (each matrix transposed where `transposed` says).
    ///
    /// # Safety
    /// The operands hold their matrices at the strides given, `lse` and `row` a value per row,
    /// the results their elements.
    pub unsafe fn run(&self, dq: *mut f32, dk: *mut f32, dv: *mut f32) {
        self.run_with([dq, dk, dv], Simd::best())
    }

    /// [`Backward::run`] in the instructions of `simd` (which the processor has).
    unsafe fn run_with(&self, results: [*mut f32; 3], simd: Simd) {
        use rayon::prelude::*;
        let count: usize = self.shape.batch.iter().product();
        let (this, results) = (Shared(*self), Shared(results));
        (0..count).into_par_iter().for_each_init(
            || Scratch {
                p: reuse::buffer(ROWS * KEYS),
                ds: reuse::buffer(ROWS * KEYS),
                dk: reuse::buffer(KEYS * this.get().shape.d.next_multiple_of(NR)),
                dv: reuse::buffer(KEYS * this.get().shape.dv.next_multiple_of(NR)),
            },
            |scratch, i| {
                let mut packed = this.get().pack(i);
                let args = (i, &mut packed, scratch, results.get());
                match simd {
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 => this.get().index_avx512(args),
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2 => this.get().index_avx2(args),
                    _ => this.get().index::<PORTABLE>(args),
                }
            },
        );
    }

    unsafe fn pack(&self, i: usize) -> Packed {
        let (tq, tk, d, dv) = (self.shape.tq, self.shape.tk, self.shape.d, self.shape.dv);
        // Where batch index i's matrix starts, and its row and column strides.
        let at = |(x, s): (*const f32, &Strides)| (x.add(batch_offset(i, self.shape.batch, &s.batch_strides)), (s.row_stride, s.col_stride));
        let (q, qs) = at(self.q);
        let (g, gs) = at(self.d_out);
        // kᵀ and vᵀ: a key's elements are a column.
        let ((k, (kr, kc)), (v, (vr, vc))) = (at(self.k), at(self.v));
        Packed {
            q_panels: panels(q, qs, tq, d, MR),
            q_rows: padded_rows(q, qs, tq, d),
            d_panels: panels(g, gs, tq, dv, MR),
            d_rows: padded_rows(g, gs, tq, dv),
            k_panels: panels(k, (kc, kr), tk, d, NR),
            k_rows: padded_rows(k, (kc, kr), tk, d),
            v_panels: panels(v, (vc, vr), tk, dv, NR),
            dq: zeros(tq * d.next_multiple_of(NR)),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn index_avx2(&self, args: IndexArgs) {
        self.index::<AVX2>(args)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn index_avx512(&self, args: IndexArgs) {
        self.index::<AVX512>(args)
    }

    /// Batch index `i`, in the instructions of `SIMD`.
    #[inline(always)]
    unsafe fn index<const SIMD: u8>(&self, (i, pk, s, [dq, dk, dv]): IndexArgs) {
        let (tq, tk, d, dvl) = (self.shape.tq, self.shape.tk, self.shape.d, self.shape.dv);
        let (dp, dvp) = (d.next_multiple_of(NR), dvl.next_multiple_of(NR));
        let (lse, row) = (self.lse.add(i * tq), self.row.add(i * tq));
        for k0 in (0..tk).step_by(KEYS) {
            let cols = KEYS.min(tk - k0);
            s.dk.fill(0.0);
            s.dv.fill(0.0);
            // Under the mask, the first block of rows that sees a key of this block, and (under
            // a window W) the end of the rows that do: the last key's row + W − 1.
            let first = if self.shape.causal { k0 / ROWS * ROWS } else { 0 };
            let last = match (self.shape.causal, self.shape.window) {
                (true, Some(w)) => tq.min(k0 + cols + w - 1),
                _ => tq,
            };
            for q0 in (first..last).step_by(ROWS) {
                let rows = ROWS.min(tq - q0);
                // The keys of this block row q0 + r sees (before and past them its weights are 0).
                let seen_by = |r: usize| if self.shape.causal { cols.min((q0 + r + 1).saturating_sub(k0)) } else { cols };
                let from_by = |r: usize| self.shape.first_key(q0 + r).saturating_sub(k0).min(cols);
                // The first row that sees key k0 + c.
                let first_row = |c: usize| if self.shape.causal { (k0 + c).saturating_sub(q0).min(rows) } else { 0 };
                // q·kᵀ and d_out·vᵀ, tile by tile up to what the tile's last row sees.
                for r in (0..rows).step_by(MR) {
                    let mr = MR.min(rows - r);
                    let blocks = seen_by(r + mr - 1).div_ceil(NR);
                    let (q, k) = (pk.q_panels.as_ptr().add((q0 + r) * d), (pk.k_panels.as_ptr().add(k0 * d), NR, d * NR));
                    tile::<SIMD, 1, MR>(mr, q, k, d, (s.p.as_mut_ptr().add(r * KEYS), KEYS, NR), blocks, false);
                    let (g, v) = (pk.d_panels.as_ptr().add((q0 + r) * dvl), (pk.v_panels.as_ptr().add(k0 * dvl), NR, dvl * NR));
                    tile::<SIMD, 1, MR>(mr, g, v, dvl, (s.ds.as_mut_ptr().add(r * KEYS), KEYS, NR), blocks, false);
                }
                for r in 0..rows {
                    let (from, seen) = (from_by(r), seen_by(r));
                    let [p, ds] = [&mut s.p, &mut s.ds].map(|x| {
                        let (x, rest) = x[r * KEYS..r * KEYS + cols].split_at_mut(seen);
                        rest.fill(0.0);
                        let (before, x) = x.split_at_mut(from.min(seen));
                        before.fill(0.0);
                        x
                    });
                    scaled(p, self.shape.scale);
                    let (l, centre) = (*lse.add(q0 + r), *row.add(q0 + r));
                    p.iter_mut().zip(ds.iter_mut()).for_each(|(p, ds)| {
                        *p = exp_from(*p, l);
                        *ds = *p * (*ds - centre);
                    });
                    scaled(ds, self.shape.scale);
                }
                // dv += pᵀ·d_out and dk += dsᵀ·q over the rows that see each group of keys.
                for c in (0..cols).step_by(MR) {
                    let (mr, r) = (MR.min(cols - c), first_row(c));
                    let (g, dv) = ((pk.d_rows.as_ptr().add((q0 + r) * dvp), dvp, NR), (s.dv.as_mut_ptr().add(c * dvp), dvp, NR));
                    tile::<SIMD, 1, KEYS>(mr, s.p.as_ptr().add(r * KEYS + c), g, rows - r, dv, dvp / NR, true);
                    let (q, dk) = ((pk.q_rows.as_ptr().add((q0 + r) * dp), dp, NR), (s.dk.as_mut_ptr().add(c * dp), dp, NR));
                    tile::<SIMD, 1, KEYS>(mr, s.ds.as_ptr().add(r * KEYS + c), q, rows - r, dk, dp / NR, true);
                }
                // dq += ds·k over the keys each group of rows sees.
                for r in (0..rows).step_by(MR) {
                    let mr = MR.min(rows - r);
                    let (k, dq) = ((pk.k_rows.as_ptr().add(k0 * dp), dp, NR), (pk.dq.as_mut_ptr().add((q0 + r) * dp), dp, NR));
                    tile::<SIMD, KEYS, 1>(mr, s.ds.as_ptr().add(r * KEYS), k, seen_by(r + mr - 1), dq, dp / NR, true);
                }
            }
            let [_, tdk, tdv] = self.transposed;
            store(&s.dk, dp, (dk.add(i * tk * d), tdk), (k0, cols, tk), d);
            store(&s.dv, dvp, (dv.add(i * tk * dvl), tdv), (k0, cols, tk), dvl);
        }
        store(&pk.dq, dp, (dq.add(i * tq * d), self.transposed[0]), (0, tq, tq), d);
    }
}

/// Rows `from..from + count` of a `len × width` result, held in rows of `stride`, into `dst` (its
/// matrix, transposed where `transposed`).
unsafe fn store(rows: &[f32], stride: usize, (dst, transposed): (*mut f32, bool), (from, count, len): (usize, usize, usize), width: usize) {
    for (r, row) in rows.chunks(stride).take(count).enumerate() {
        let r = from + r;
        match transposed {
            false => std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(r * width), width),
            true => row[..width].iter().enumerate().for_each(|(e, &x)| *dst.add(e * len + r) = x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::tests::{operand, seen, weights, MASKS};
    use tttc_ir::BinaryOp;

    /// Every build this processor runs against attention's gradients computed directly in f64,
    /// under every mask of [`MASKS`], with sizes that fill no tile or block and with rows of one
    /// to five blocks of columns, the results stored as they are and transposed.
    #[test]
    fn every_build_matches_the_gradients_computed_directly() {
        for (tq, tk, d, dv) in [(131, 131, 19, 21), (150, 150, 64, 80)] {
            let [q, k, v, g] = [(tq, d), (tk, d), (tk, dv), (tq, dv)].map(|(rows, width)| operand(2 * rows * width, rows + width));
            for mask @ (causal, window) in MASKS {
                // Weights, log-sum-exp and rowsum(g ⊙ out) per row; then the adjoints.
                let (mut lse, mut row) = (vec![0f32; 2 * tq], vec![0f32; 2 * tq]);
                let (mut dq, mut dk, mut dvw) = (vec![0f64; 2 * tq * d], vec![0f64; 2 * tk * d], vec![0f64; 2 * tk * dv]);
                for b in 0..2 {
                    for i in 0..tq {
                        let (first, keys) = seen(mask, i, tk);
                        let (p, log_sum_exp) = weights(&q, &k, b * tq + i, b * tk + first, keys, d);
                        let gi = |c: usize| g[(b * tq + i) * dv + c] as f64;
                        let out = |c: usize| p.iter().enumerate().map(|(j, w)| w * v[(b * tk + first + j) * dv + c] as f64).sum::<f64>();
                        let centre: f64 = (0..dv).map(|c| gi(c) * out(c)).sum();
                        lse[b * tq + i] = log_sum_exp as f32;
                        row[b * tq + i] = centre as f32;
                        for (j, w) in p.iter().enumerate() {
                            let j = first + j;
                            let dpj: f64 = (0..dv).map(|c| gi(c) * v[(b * tk + j) * dv + c] as f64).sum();
                            let ds = w * (dpj - centre) / 3.0;
                            for e in 0..d {
                                dq[(b * tq + i) * d + e] += ds * k[(b * tk + j) * d + e] as f64;
                                dk[(b * tk + j) * d + e] += ds * q[(b * tq + i) * d + e] as f64;
                            }
                            (0..dv).for_each(|c| dvw[(b * tk + j) * dv + c] += w * gi(c));
                        }
                    }
                }
                // q, g and v as stored; kᵀ and vᵀ read through the strides of k and v.
                let rows = |w: usize, t: usize| Strides { batch_strides: vec![t * w], row_stride: w, col_stride: 1 };
                let columns = |w: usize, t: usize| Strides { batch_strides: vec![t * w], row_stride: 1, col_stride: w };
                let (qs, ks, vs, gs) = (rows(d, tq), columns(d, tk), columns(dv, tk), rows(dv, tq));
                for (simd, transposed) in Simd::available().into_iter().flat_map(|s| [(s, false), (s, true)]) {
                    let a = Backward {
                        q: (q.as_ptr(), &qs),
                        k: (k.as_ptr(), &ks),
                        v: (v.as_ptr(), &vs),
                        d_out: (g.as_ptr(), &gs),
                        lse: lse.as_ptr(),
                        row: row.as_ptr(),
                        shape: Shape { batch: &[2], tq, tk, d, dv, scale: Some((BinaryOp::Div, 3.0)), causal, window },
                        transposed: [transposed; 3],
                    };
                    let (mut gq, mut gk, mut gv) = (vec![f32::NAN; dq.len()], vec![f32::NAN; dk.len()], vec![f32::NAN; dvw.len()]);
                    // SAFETY: the operands hold their matrices at these strides; the results their elements.
                    unsafe { a.run_with([gq.as_mut_ptr(), gk.as_mut_ptr(), gv.as_mut_ptr()], simd) };
                    for (name, got, want, (rows, width)) in [("dq", &gq, &dq, (tq, d)), ("dk", &gk, &dk, (tk, d)), ("dv", &gv, &dvw, (tk, dv))] {
                        for (i, &w) in want.iter().enumerate() {
                            // Element (b, r, e) of the matrices, or of their transposes.
                            let (b, r, e) = (i / (rows * width), i / width % rows, i % width);
                            let o = got[if transposed { (b * width + e) * rows + r } else { i }];
                            assert!((o as f64 - w).abs() <= 1e-5 + 1e-4 * w.abs(), "mask {mask:?}, {simd:?}, {name}[{i}]: {o} against {w}");
                        }
                    }
                }
            }
        }
    }
}
