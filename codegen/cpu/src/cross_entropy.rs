//! A softmax cross-entropy row by row ([`Instr::CrossEntropy`] and its backward,
//! `tttc_lower::cross_entropy`): a row of logits (the vocabulary, 128 KB at 32000) is read from
//! memory once per step and walked again from cache, and the exponentials and the one-hot
//! targets are never stored.
//!
//! [`Instr::CrossEntropy`]: tttc_lower::schedule::Instr::CrossEntropy

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::attention::exp_from;
use crate::simd::Simd;

/// Lanes of the partial sums (a 512-bit vector).
const LANES: usize = 16;

/// Rows of `depth` logits `x` and their targets.
pub(crate) struct Logits<'a> {
    pub x: &'a [f32],
    pub target: &'a [i64],
    pub depth: usize,
}

impl Logits<'_> {
    /// Each row's maximum, sum of `exp(x − max)` and logit at its target.
    pub(crate) fn statistics(&self, max: &mut [f32], sum: &mut [f32], picked: &mut [f32]) -> Result<()> {
        self.check()?;
        let simd = Simd::best();
        let rows = self.x.par_chunks(self.depth).zip(max).zip(sum).zip(picked).zip(self.target);
        rows.with_min_len(self.min_rows()).for_each(|((((x, m), s), p), &t)| {
            *m = crate::exec::max(x);
            *s = exps_sum(simd, x, *m);
            *p = x[t as usize];
        });
        Ok(())
    }

    /// `d = a·one_hot(target) + c·exp(x − shift)`, `a`, `c` and `shift` one per row.
    pub(crate) fn backward(&self, d: &mut [f32], shift: &[f32], a: &[f32], c: &[f32]) -> Result<()> {
        self.check()?;
        let simd = Simd::best();
        let rows = d.par_chunks_mut(self.depth).zip(self.x.par_chunks(self.depth)).zip(shift).zip(a).zip(c).zip(self.target);
        rows.with_min_len(self.min_rows()).for_each(|(((((d, x), &m), &a), &c), &t)| {
            scaled_exps(simd, d, x, m, c);
            d[t as usize] += a;
        });
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let depth = self.depth;
        if let Some(t) = self.target.iter().find(|&&t| t < 0 || t as usize >= depth) {
            bail!("index {t} out of range for depth {depth}");
        }
        Ok(())
    }

    /// Rows per thread's share at least: a row is too little work to hand to a thread alone.
    fn min_rows(&self) -> usize {
        (1usize << 15).div_ceil(self.depth)
    }
}

/// `Σ exp(x − m)`, in the widest instructions this processor has.
fn exps_sum(simd: Simd, x: &[f32], m: f32) -> f32 {
    match simd {
        // SAFETY: `Simd::best` found the features each build enables.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { exps_sum_avx512(x, m) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { exps_sum_avx2(x, m) },
        _ => exps_sum_in(x, m),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exps_sum_avx512(x: &[f32], m: f32) -> f32 {
    exps_sum_in(x, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exps_sum_avx2(x: &[f32], m: f32) -> f32 {
    exps_sum_in(x, m)
}

#[inline(always)]
fn exps_sum_in(x: &[f32], m: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut rows = x.chunks_exact(LANES);
    for v in rows.by_ref() {
        v.iter().zip(&mut sums).for_each(|(&x, s)| *s += exp_from(x, m));
    }
    let tail = rows.remainder().iter().fold(0.0, |s, &x| s + exp_from(x, m));
    sums.iter().sum::<f32>() + tail
}

/// `d = c·exp(x − m)`, in the widest instructions this processor has.
fn scaled_exps(simd: Simd, d: &mut [f32], x: &[f32], m: f32, c: f32) {
    match simd {
        // SAFETY: `Simd::best` found the features each build enables.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { scaled_exps_avx512(d, x, m, c) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { scaled_exps_avx2(d, x, m, c) },
        _ => scaled_exps_in(d, x, m, c),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn scaled_exps_avx512(d: &mut [f32], x: &[f32], m: f32, c: f32) {
    scaled_exps_in(d, x, m, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scaled_exps_avx2(d: &mut [f32], x: &[f32], m: f32, c: f32) {
    scaled_exps_in(d, x, m, c)
}

#[inline(always)]
fn scaled_exps_in(d: &mut [f32], x: &[f32], m: f32, c: f32) {
    d.iter_mut().zip(x).for_each(|(d, &x)| *d = c * exp_from(x, m));
}
