//! Small matrix products whose right operand is read transposed (`c = a · b` with `b`'s columns
//! contiguous: a stored `[n, k]` matrix read as `k × n`), in AVX-512. `gemm` packs such an
//! operand through a strided walk, which in products this small costs more than the
//! multiplications: the mini-batch scans' `[16, 64] · [256, 64]ᵀ` ran at a third of the rate of
//! the same product read in rows. Here `b` is transposed 16 columns at a time into a panel of
//! `k × 16` (16 × 16 tiles transposed in registers), which the rows of `a` then multiply, 16 rows
//! at a time, each row's sums in one register: per step of `k` one load of the panel and, per
//! row, one broadcast element of `a` and one fused multiply-add.

/// The deepest `k` a product here takes (its panel lives on the stack: 32 KiB).
const MAX_K: usize = 512;

/// Whether [`product`] takes a product of these sizes on this CPU: a few rows but not too few
/// (each panel of `b` serves all of them: transposing it costs about what 8 rows' products do,
/// and gemm's own packing pays off over many), a `k` its panel holds, and not so much work that
/// one thread should not run it alone.
pub(crate) fn takes(m: usize, k: usize, n: usize) -> bool {
    (8..=64).contains(&m) && k <= MAX_K && m * k * n <= 1 << 20 && avx512()
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `c[m×n] = a[m×k] · b[k×n]`: `c` row-major, `a`'s element `(i, kk)` at `i·a_rs + kk·a_cs`,
/// `b`'s `(kk, j)` at `kk + j·b_cs`. Only where [`takes`] says so.
///
/// # Safety
/// The pointers hold what the sizes and strides address; `c` does not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(c: *mut f32, a: *const f32, (a_rs, a_cs): (usize, usize), b: *const f32, b_cs: usize, m: usize, k: usize, n: usize) {
    assert!(takes(m, k, n), "a transposed product of {m}×{k} · {k}×{n} on a CPU or at sizes it does not take");
    #[cfg(target_arch = "x86_64")]
    avx512::product(c, a, (a_rs, a_cs), b, b_cs, m, k, n);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::MAX_K;

    #[repr(align(64))]
    struct Panel([f32; MAX_K * 16]);

    // A tile's 16 rows are stored whole, past `k` when it is not a multiple of 16.
    const _: () = assert!(MAX_K.is_multiple_of(16));

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(c: *mut f32, a: *const f32, (a_rs, a_cs): (usize, usize), b: *const f32, b_cs: usize, m: usize, k: usize, n: usize) {
        // Every element a product reads is packed first.
        let mut panel = std::mem::MaybeUninit::<Panel>::uninit();
        let panel = std::ptr::addr_of_mut!((*panel.as_mut_ptr()).0).cast::<f32>();
        for j0 in (0..n).step_by(16) {
            let width = (n - j0).min(16);
            pack(panel, b.add(j0 * b_cs), b_cs, k, width);
            let columns = lanes(width);
            let mut i = 0;
            // Blocks of 16 rows, then the rest by powers of two.
            while m - i >= 16 {
                rows::<16>(c.add(i * n + j0), n, a.add(i * a_rs), (a_rs, a_cs), panel, k, columns);
                i += 16;
            }
            for_rest::<8>(&mut i, m, c.add(j0), n, a, (a_rs, a_cs), panel, k, columns);
            for_rest::<4>(&mut i, m, c.add(j0), n, a, (a_rs, a_cs), panel, k, columns);
            for_rest::<2>(&mut i, m, c.add(j0), n, a, (a_rs, a_cs), panel, k, columns);
            for_rest::<1>(&mut i, m, c.add(j0), n, a, (a_rs, a_cs), panel, k, columns);
        }
    }

    /// One block of `R` rows from row `*i` when at least that many are left.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn for_rest<const R: usize>(
        i: &mut usize,
        m: usize,
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        (a_rs, a_cs): (usize, usize),
        panel: *const f32,
        k: usize,
        columns: __mmask16,
    ) {
        if m - *i >= R {
            rows::<R>(c.add(*i * ldc), ldc, a.add(*i * a_rs), (a_rs, a_cs), panel, k, columns);
            *i += R;
        }
    }

    /// The first `width` of 16 lanes.
    fn lanes(width: usize) -> __mmask16 {
        ((1u32 << width) - 1) as __mmask16
    }

    /// `R` rows of `c` (the lanes of `columns`) from `R` rows of `a` times the panel.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(c: *mut f32, ldc: usize, a: *const f32, (a_rs, a_cs): (usize, usize), panel: *const f32, k: usize, columns: __mmask16) {
        let mut sums = [_mm512_setzero_ps(); R];
        for kk in 0..k {
            let b = _mm512_load_ps(panel.add(kk * 16));
            for (r, sum) in sums.iter_mut().enumerate() {
                *sum = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * a_rs + kk * a_cs)), b, *sum);
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * ldc), columns, *sum);
        }
    }

    /// `panel[kk·16 + j] = b[kk + j·b_cs]` for `j < width` (0 beyond), `kk < k`.
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
                _mm512_store_ps(panel.add((k0 + kk) * 16), *row);
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
    /// Against the product summed in f64, over shapes with every remainder of rows (16, 8, 4,
    /// 2, 1 at once), columns and depth past a whole tile, and operands with padded strides.
    /// On a CPU without AVX-512 it checks that nothing is taken.
    #[test]
    fn transposed_products_match_the_sums() {
        if !super::avx512() {
            assert!(!super::takes(16, 64, 64));
            return;
        }
        for (m, k, n) in [(1, 64, 64), (7, 64, 64), (65, 64, 64), (16, 513, 16), (64, 512, 64)] {
            assert!(!super::takes(m, k, n), "{m}×{k}·{k}×{n} taken");
        }
        for (m, k, n) in [(16, 64, 256), (16, 256, 64), (31, 37, 21), (8, 1, 1), (15, 16, 16), (64, 17, 33), (9, 512, 2)] {
            let (a_rs, b_cs) = (k + 3, k + 5);
            let a: Vec<f32> = (0..m * a_rs).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 251.0).collect();
            let b: Vec<f32> = (0..n * b_cs).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 313.0).collect();
            let mut c = vec![f32::NAN; m * n + 1];
            c[m * n] = 7.0;
            assert!(super::takes(m, k, n));
            unsafe { super::product(c.as_mut_ptr(), a.as_ptr(), (a_rs, 1), b.as_ptr(), b_cs, m, k, n) };
            assert_eq!(c[m * n], 7.0, "written past c");
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|kk| a[i * a_rs + kk] as f64 * b[j * b_cs + kk] as f64).sum();
                    let scale: f64 = (0..k).map(|kk| (a[i * a_rs + kk] as f64 * b[j * b_cs + kk] as f64).abs()).sum();
                    let got = c[i * n + j] as f64;
                    // Within the bound of k rounded steps (wrong indices miss it by the scale).
                    assert!((got - want).abs() <= k as f64 * f32::EPSILON as f64 * scale, "{m}×{k}·{k}×{n} at ({i}, {j}): {got} against {want}");
                }
            }
        }
        // `a` read transposed too (its column stride not 1).
        let (m, k, n) = (13, 20, 19);
        let a: Vec<f32> = (0..k * m).map(|i| i as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| 1.0 - i as f32 / 90.0).collect();
        let mut c = vec![0.0f32; m * n];
        unsafe { super::product(c.as_mut_ptr(), a.as_ptr(), (1, m), b.as_ptr(), k, m, k, n) };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|kk| a[kk * m + i] as f64 * b[j * k + kk] as f64).sum();
                assert!((c[i * n + j] as f64 - want).abs() <= 1e-5, "a transposed at ({i}, {j})");
            }
        }
    }
}
