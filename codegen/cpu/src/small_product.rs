//! Small matrix products in AVX-512 registers: the mini-batch scans' products of a few rows
//! (`[16, 64] · [64, 256]`, `[16, 64] · [256, 64]ᵀ`), where `gemm`'s packing and blocking cost
//! as much as the multiplications. `c` is computed 32 columns at a time, two registers of 16 per
//! row, 8 rows at a time (16 rows of one register where 16 columns or fewer are left): per step
//! of `k`, two loads of `b`'s row and, per row, one broadcast element of `a` feeding two fused
//! multiply-adds. `b` is read in place when its rows are contiguous; read transposed (its
//! columns contiguous: a stored `[n, k]` matrix read as `k × n`), it is first transposed 16
//! columns at a time into a panel of `k × 32` (16 × 16 tiles transposed in registers), which
//! `gemm` does through a strided walk: the scans' `[16, 64] · [256, 64]ᵀ` ran there at a third
//! of the rate of the same product read in rows.

use crate::simd::Simd;

/// The deepest `k` a product here takes (its panel lives on the stack: 64 KiB).
const MAX_K: usize = 512;

/// Whether [`product`] takes a product of these sizes and `b` strides on this CPU (measured
/// against gemm on the scans' shapes): `b`'s rows or its columns contiguous; a few rows but not
/// too few (each 32 columns of `b` serve all of them: transposing them costs about what 8 rows'
/// products do); read in rows, a `k` of at most 128 (deeper, gemm's blocking of `k` keeps `b`
/// in the first-level cache and wins); transposed, a `k` the panel holds, but not 16 or fewer
/// columns of a deep `b` (gemm packs those cheaply); not so much work that one thread should
/// not run it alone.
pub(crate) fn takes(m: usize, k: usize, n: usize, (b_rs, b_cs): (usize, usize)) -> bool {
    let shape = if b_cs == 1 { (1..=64).contains(&m) && k <= 128 } else { b_rs == 1 && (8..=64).contains(&m) && k <= MAX_K && !(n <= 16 && k > 128) };
    shape && m * k * n <= 1 << 20 && Simd::best() == Simd::Avx512
}

/// `c[m×n] = a[m×k] · b[k×n]`, or with `added` `c += added · a · b`: `c` row-major, `a`'s element
/// `(i, kk)` at `i·a_rs + kk·a_cs`, `b`'s `(kk, j)` at `kk·b_rs + j·b_cs`. Only where [`takes`]
/// says so.
///
/// # Safety
/// The pointers hold what the sizes and strides address; `c` does not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    c: *mut f32,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    m: usize,
    k: usize,
    n: usize,
    added: Option<f32>,
) {
    assert!(takes(m, k, n, (b_rs, b_cs)), "a small product of {m}×{k} · {k}×{n} (b strides {b_rs}, {b_cs}) on a CPU or at sizes it does not take");
    #[cfg(target_arch = "x86_64")]
    avx512::product(c, a, (a_rs, a_cs), b, (b_rs, b_cs), m, k, n, added);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::MAX_K;

    /// Columns per panel: two registers per row of `c`, so that each broadcast element of `a`
    /// feeds two multiply-adds (one would leave the loads, not the arithmetic, the bound).
    const WIDE: usize = 32;

    #[repr(align(64))]
    struct Panel([f32; MAX_K * WIDE]);

    // A tile's 16 rows are stored whole, past `k` when it is not a multiple of 16.
    const _: () = assert!(MAX_K.is_multiple_of(16));

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        c: *mut f32,
        a: *const f32,
        (a_rs, a_cs): (usize, usize),
        b: *const f32,
        (b_rs, b_cs): (usize, usize),
        m: usize,
        k: usize,
        n: usize,
        added: Option<f32>,
    ) {
        // Every element a product reads from the panel is packed first.
        let mut panel = std::mem::MaybeUninit::<Panel>::uninit();
        let panel = std::ptr::addr_of_mut!((*panel.as_mut_ptr()).0).cast::<f32>();
        let a = Lhs { at: a, row_stride: a_rs, col_stride: a_cs };
        for j0 in (0..n).step_by(WIDE) {
            let width = (n - j0).min(WIDE);
            let columns = [lanes(width.min(16)), lanes(width.saturating_sub(16))];
            let rhs = if b_cs == 1 {
                Rhs { at: b.add(j0), row_stride: b_rs, columns }
            } else {
                for half in 0..width.div_ceil(16) {
                    let j = j0 + 16 * half;
                    pack(panel.add(16 * half), b.add(j * b_cs), b_cs, k, (n - j).min(16));
                }
                Rhs { at: panel, row_stride: WIDE, columns }
            };
            let c = Out { at: c.add(j0), row_stride: n, added };
            if width > 16 {
                blocks::<2>(&c, &a, &rhs, m, k);
            } else {
                blocks::<1>(&c, &a, &rhs, m, k);
            }
        }
    }

    /// The left operand: element `(i, kk)` at `at + i·row_stride + kk·col_stride`.
    struct Lhs {
        at: *const f32,
        row_stride: usize,
        col_stride: usize,
    }

    /// Where the sums go: row `i` at `at + i·row_stride`, stored, or with `added` added to what
    /// is there times it.
    struct Out {
        at: *mut f32,
        row_stride: usize,
        added: Option<f32>,
    }

    /// Up to 32 columns (those of `columns`, 16 per register) of the right operand, row `kk` at
    /// `at + kk·row_stride`.
    struct Rhs {
        at: *const f32,
        row_stride: usize,
        columns: [__mmask16; 2],
    }

    /// All `m` rows of `c`'s `V` registers of columns: blocks of 16 rows (8 with two registers
    /// per row: their sums and the right operand's row fill 17 or 18 of the 32), then the rest
    /// by powers of two.
    #[target_feature(enable = "avx512f")]
    unsafe fn blocks<const V: usize>(c: &Out, a: &Lhs, rhs: &Rhs, m: usize, k: usize) {
        let mut i = 0;
        let most = if V == 1 { 16 } else { 8 };
        while m - i >= most {
            if V == 1 {
                rows::<16, V>(c, a, i, rhs, k);
            } else {
                rows::<8, V>(c, a, i, rhs, k);
            }
            i += most;
        }
        for_rest::<8, V>(&mut i, m, c, a, rhs, k);
        for_rest::<4, V>(&mut i, m, c, a, rhs, k);
        for_rest::<2, V>(&mut i, m, c, a, rhs, k);
        for_rest::<1, V>(&mut i, m, c, a, rhs, k);
    }

    /// One block of `R` rows from row `*i` when at least that many are left.
    #[target_feature(enable = "avx512f")]
    unsafe fn for_rest<const R: usize, const V: usize>(i: &mut usize, m: usize, c: &Out, a: &Lhs, rhs: &Rhs, k: usize) {
        if m - *i >= R {
            rows::<R, V>(c, a, *i, rhs, k);
            *i += R;
        }
    }

    /// The first `width` of 16 lanes.
    fn lanes(width: usize) -> __mmask16 {
        ((1u32 << width) - 1) as __mmask16
    }

    /// `R` rows of `c` from row `first` (the columns of `rhs`, `V` registers of them) from `R`
    /// rows of `a` times `rhs`.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, const V: usize>(c: &Out, a: &Lhs, first: usize, rhs: &Rhs, k: usize) {
        let mut sums = [[_mm512_setzero_ps(); V]; R];
        let a_at = a.at.add(first * a.row_stride);
        for kk in 0..k {
            let row = rhs.at.add(kk * rhs.row_stride);
            let b: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(rhs.columns[v], row.add(16 * v)));
            for (r, sum) in sums.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a_at.add(r * a.row_stride + kk * a.col_stride));
                for (sum, b) in sum.iter_mut().zip(&b) {
                    *sum = _mm512_fmadd_ps(x, *b, *sum);
                }
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            for (v, sum) in sum.iter().enumerate() {
                let at = c.at.add((first + r) * c.row_stride + 16 * v);
                let value = match c.added {
                    None => *sum,
                    Some(times) => _mm512_fmadd_ps(_mm512_set1_ps(times), *sum, _mm512_maskz_loadu_ps(rhs.columns[v], at)),
                };
                _mm512_mask_storeu_ps(at, rhs.columns[v], value);
            }
        }
    }

    /// `panel[kk·WIDE + j] = b[kk + j·b_cs]` for `j < width` (0 from there to 16), `kk < k`.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack(panel: *mut f32, b: *const f32, b_cs: usize, k: usize, width: usize) {
        // Whole tiles of 16 loads and 16 stores (no loop bounded by `width` or the depth left),
        // so that the tile stays in registers: masked loads read nothing past `b` (their lanes
        // off do not fault) and the panel has room for the rows past `k`, zero.
        for k0 in (0..k).step_by(16) {
            let depth = lanes((k - k0).min(16));
            let mut tile = [_mm512_setzero_ps(); 16];
            for (j, row) in tile.iter_mut().enumerate() {
                let present = if j < width { depth } else { 0 };
                *row = _mm512_maskz_loadu_ps(present, b.wrapping_add(j * b_cs + k0));
            }
            transpose(&mut tile);
            for (kk, row) in tile.iter().enumerate() {
                _mm512_store_ps(panel.add((k0 + kk) * WIDE), *row);
            }
        }
    }

    /// A 16 × 16 tile transposed in registers: pairs of 32-bit elements interleaved, then pairs
    /// of 64-bit ones, which leaves each 128-bit lane holding four rows of one column; then the
    /// lanes gathered in two rounds of shuffles.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4q + col] holds, in lane L, column 4L + col of rows 4q..4q + 4.
        let mut u = [_mm512_setzero_ps(); 16];
        let (lo, hi) = (
            |x: __m512, y: __m512| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),
            |x: __m512, y: __m512| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),
        );
        for q in 0..4 {
            u[4 * q] = lo(t[4 * q], t[4 * q + 2]);
            u[4 * q + 1] = hi(t[4 * q], t[4 * q + 2]);
            u[4 * q + 2] = lo(t[4 * q + 1], t[4 * q + 3]);
            u[4 * q + 3] = hi(t[4 * q + 1], t[4 * q + 3]);
        }
        for col in 0..4 {
            let (even_a, odd_a) = (_mm512_shuffle_f32x4::<0x88>(u[col], u[4 + col]), _mm512_shuffle_f32x4::<0xdd>(u[col], u[4 + col]));
            let (even_b, odd_b) = (_mm512_shuffle_f32x4::<0x88>(u[8 + col], u[12 + col]), _mm512_shuffle_f32x4::<0xdd>(u[8 + col], u[12 + col]));
            r[col] = _mm512_shuffle_f32x4::<0x88>(even_a, even_b);
            r[8 + col] = _mm512_shuffle_f32x4::<0xdd>(even_a, even_b);
            r[4 + col] = _mm512_shuffle_f32x4::<0x88>(odd_a, odd_b);
            r[12 + col] = _mm512_shuffle_f32x4::<0xdd>(odd_a, odd_b);
        }
    }
}

#[cfg(test)]
mod tests {
    /// `c` from `product` with `b`'s rows (`transposed`: its columns) `k + 5` apart and `a`'s
    /// rows `k + 3` apart, against the sums in f64 within the bound of `k` rounded steps
    /// (wrong indices miss it by the sums' scale), and nothing written past `c`.
    fn check(m: usize, k: usize, n: usize, transposed: bool) {
        check_added(m, k, n, transposed, None);
    }

    /// The same, with the product stored (`added` `None`: `c` starts as NaN) or added to `c`'s
    /// values times `added`.
    fn check_added(m: usize, k: usize, n: usize, transposed: bool, added: Option<f32>) {
        let (a_rs, b_ld) = (k + 3, if transposed { k + 5 } else { n + 5 });
        let b_strides = if transposed { (1, b_ld) } else { (b_ld, 1) };
        let a: Vec<f32> = (0..m * a_rs).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 251.0).collect();
        let b: Vec<f32> = (0..k.max(n) * b_ld).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 313.0).collect();
        let before: Vec<f32> = (0..m * n).map(|i| if added.is_some() { ((i * 31 % 101) as f32 - 50.0) / 7.0 } else { f32::NAN }).collect();
        let mut c = before.clone();
        c.push(7.0);
        assert!(super::takes(m, k, n, b_strides), "{m}×{k}·{k}×{n} not taken");
        unsafe { super::product(c.as_mut_ptr(), a.as_ptr(), (a_rs, 1), b.as_ptr(), b_strides, m, k, n, added) };
        assert_eq!(c[m * n], 7.0, "written past c");
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|kk| a[i * a_rs + kk] as f64 * b[kk * b_strides.0 + j * b_strides.1] as f64);
                let (sum, scale) = terms.fold((0.0, 0.0), |(s, t), x| (s + x, t + x.abs()));
                let (want, scale) = match added {
                    None => (sum, scale),
                    Some(times) => (before[i * n + j] as f64 + times as f64 * sum, scale + before[i * n + j].abs() as f64),
                };
                let (got, steps) = (c[i * n + j] as f64, k + usize::from(added.is_some()));
                assert!(
                    (got - want).abs() <= steps as f64 * f32::EPSILON as f64 * scale,
                    "{m}×{k}·{k}×{n} (transposed {transposed}, added {added:?}) at ({i}, {j}): {got} against {want}"
                );
            }
        }
    }

    /// Shapes with every remainder of rows (blocks of 16, 8, 4, 2, 1 at once), of columns and of
    /// depth past a whole tile, `b` read in rows and transposed. On a CPU without AVX-512 it
    /// checks that nothing is taken.
    #[test]
    fn small_products_match_the_sums() {
        if crate::simd::Simd::best() != crate::simd::Simd::Avx512 {
            assert!(!super::takes(16, 64, 64, (64, 1)));
            return;
        }
        for (m, k, n) in [(16, 64, 256), (31, 37, 21), (8, 1, 1), (15, 16, 16), (64, 17, 33), (9, 128, 40)] {
            check(m, k, n, true);
            check(m, k, n, false);
        }
        // Added to what `c` holds: a weight's update `W − a·b` in place.
        for (m, k, n) in [(64, 16, 256), (31, 37, 21), (9, 5, 7)] {
            check_added(m, k, n, false, Some(-1.0));
            check_added(m, k, n, true, Some(1.0));
        }
        check(16, 256, 64, true);
        check(9, 512, 17, true);
        check(1, 16, 64, false);
        check(3, 5, 7, false);
        for (m, k, n, b) in [
            (7, 64, 64, (1, 64)),
            (1, 64, 64, (1, 64)),
            (65, 64, 64, (64, 1)),
            (16, 513, 16, (1, 513)),
            (16, 129, 16, (16, 1)),
            (16, 256, 16, (1, 256)),
            (64, 512, 64, (1, 512)),
            (16, 16, 16, (2, 32)),
        ] {
            assert!(!super::takes(m, k, n, b), "{m}×{k}·{k}×{n} with b strides {b:?} taken");
        }
        // `a` read transposed too (its column stride not 1).
        let (m, k, n) = (13, 20, 19);
        let a: Vec<f32> = (0..k * m).map(|i| i as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| 1.0 - i as f32 / 90.0).collect();
        let mut c = vec![0.0f32; m * n];
        unsafe { super::product(c.as_mut_ptr(), a.as_ptr(), (1, m), b.as_ptr(), (1, k), m, k, n, None) };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|kk| a[kk * m + i] as f64 * b[j * k + kk] as f64).sum();
                assert!((c[i * n + j] as f64 - want).abs() <= 1e-5, "a transposed at ({i}, {j})");
            }
        }
    }
}
