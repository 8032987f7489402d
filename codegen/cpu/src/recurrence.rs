//! Mamba's selective scan in one pass ([`Instr::Recurrence`](tttc_lower::schedule::Instr)):
//! per sequence and block of `LANES` channels, the block's state (`N` vectors of `LANES`
//! channels) stays in registers and L1 from the first position to the last; at each position
//! every state element decays by `exp(Δ·A)`, computed there, takes in `Δu·b`, and the channels'
//! output `y = h · c` is summed in the same pass. Run op by op, each position was a few steps over the
//! whole `[D, N]` state, its decays materialised in memory. Blocks are the unit of work, taken
//! by whichever thread is free. The code is compiled three times: for AVX-512 (blocks of 16
//! channels), for AVX2 with FMA (8), and for the baseline (8); a run takes the widest the
//! processor has.

use tttc_lower::math;

use crate::exec::Shared;
use crate::scalar::Scalar;
use crate::simd::Simd;

/// How many positions ahead a block's loads of Δ and Δu are prefetched.
const AHEAD: usize = 8;

/// The operands of one selective scan, every buffer contiguous (see
/// [`RecurrenceInstr`](tttc_lower::schedule::RecurrenceInstr) for the shapes).
#[derive(Clone, Copy)]
pub struct Recurrence {
    pub state: *const f32,
    pub dt: *const f32,
    pub du: *const f32,
    pub b: *const f32,
    pub c: *const f32,
    pub a: *const f32,
    pub batch: usize,
    pub len: usize,
    pub width: usize,
    pub states: usize,
}

impl Recurrence {
    /// Writes `y` (`batch × len × width`) and the state after the last position
    /// (`batch × width × states`).
    ///
    /// # Safety
    /// Every pointer holds its operand's elements; `y` and `final_state` overlap no operand.
    pub unsafe fn run(&self, y: *mut f32, final_state: *mut f32) {
        self.run_with(y, final_state, Simd::best())
    }

    /// [`Recurrence::run`] in the instructions of `simd` (which the processor has).
    unsafe fn run_with(&self, y: *mut f32, final_state: *mut f32, simd: Simd) {
        use rayon::prelude::*;
        let lanes = if simd == Simd::Avx512 { 16 } else { 8 };
        let blocks = self.width.div_ceil(lanes);
        let (this, y, final_state) = (Shared(*self), Shared(y), Shared(final_state));
        (0..self.batch * blocks).into_par_iter().for_each(|w| {
            let (s, channel) = (w / blocks, (w % blocks) * lanes);
            let (y, final_state) = (y.get(), final_state.get());
            match simd {
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => this.get().block_avx512(s, channel, y, final_state),
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => this.get().block_avx2(s, channel, y, final_state),
                _ => this.get().block::<8>(s, channel, y, final_state),
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&self, s: usize, channel: usize, y: *mut f32, final_state: *mut f32) {
        self.block::<8>(s, channel, y, final_state)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block_avx512(&self, s: usize, channel: usize, y: *mut f32, final_state: *mut f32) {
        self.block::<16>(s, channel, y, final_state)
    }

    /// Channels `channel..` (up to `LANES`: one vector of them) of sequence `s`. Lanes past the
    /// last channel run with Δ, Δu and A zero and are never stored.
    #[inline(always)]
    unsafe fn block<const LANES: usize>(&self, s: usize, channel: usize, y: *mut f32, final_state: *mut f32) {
        let (len, width, n) = (self.len, self.width, self.states);
        let lanes = LANES.min(width - channel);
        // The state, A and the decays by state index, each a vector of the block's channels.
        let mut h = vec![[0f32; LANES]; n];
        let mut a = vec![[0f32; LANES]; n];
        let mut decay = vec![[0f32; LANES]; n];
        for l in 0..lanes {
            let at = (s * width + channel + l) * n;
            for k in 0..n {
                h[k][l] = *self.state.add(at + k);
                a[k][l] = *self.a.add((channel + l) * n + k);
            }
        }
        let mut e = Scalar;
        for t in 0..len {
            let row = (s * len + t) * width + channel;
            // A whole block's channels as one vector each (copied lane by lane, the compiler
            // called memcpy at every position).
            let load = |x: *const f32| {
                if lanes == LANES {
                    *(x.add(row) as *const [f32; LANES])
                } else {
                    lanewise(|l| if l < lanes { *x.add(row + l) } else { 0.0 })
                }
            };
            let (dt, du) = (load(self.dt), load(self.du));
            // Consecutive positions' channels are a row (`width` floats) apart, too far apart for
            // the hardware to prefetch: ask for the rows a few positions ahead.
            #[cfg(target_arch = "x86_64")]
            if t + AHEAD < len {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.dt.add(row + AHEAD * width) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(self.du.add(row + AHEAD * width) as *const i8);
            }
            // In the body's order: exp(Δ·A)·h + Δu·b, then y's sum over the states.
            // The largest decay exponent, in two vectors of lanes (the even and the odd states)
            // so that the maxima's chain is half as long.
            let mut peak = [[f32::NEG_INFINITY; LANES]; 2];
            for (d, ak) in decay.iter_mut().zip(&a) {
                *d = lanewise(|l| dt[l] * ak[l]);
                peak = [lanewise(|l| if d[l] > peak[1][l] { d[l] } else { peak[1][l] }), peak[0]];
            }
            // The exponent is ≤ 0 where Δ ≥ 0 and A ≤ 0 (Mamba's: a softplus and −exp), and the
            // shorter exp equal to the general one there. One loop over all the decays: the
            // compiler vectorises it.
            let exps = decay.as_flattened_mut();
            if peak.as_flattened().iter().any(|&p| p > 0.0) {
                exps.iter_mut().for_each(|d| *d = math::exp(&mut e, *d));
            } else {
                exps.iter_mut().for_each(|d| *d = math::exp_nonpositive(&mut e, *d));
            }
            let at = (s * len + t) * n;
            let mut out = [0f32; LANES];
            for (k, (hk, dk)) in h.iter_mut().zip(&decay).enumerate() {
                let (bk, ck) = (*self.b.add(at + k), *self.c.add(at + k));
                *hk = lanewise(|l| dk[l] * hk[l] + du[l] * bk);
                out = lanewise(|l| out[l] + hk[l] * ck);
            }
            if lanes == LANES {
                *(y.add(row) as *mut [f32; LANES]) = out;
            } else {
                out.iter().enumerate().take(lanes).for_each(|(l, &o)| *y.add(row + l) = o);
            }
        }
        for l in 0..lanes {
            let at = (s * width + channel + l) * n;
            for (k, hk) in h.iter().enumerate() {
                *final_state.add(at + k) = hk[l];
            }
        }
    }
}

/// A vector of the block's channels, lane by lane (straight-line code the compiler turns into
/// vector instructions).
#[inline(always)]
fn lanewise<T, const LANES: usize>(f: impl FnMut(usize) -> T) -> [T; LANES] {
    std::array::from_fn(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::tests::operand;

    /// A decay exponent past f32's range (Δ·A = 100, in one lane of a partial block, at each
    /// state in turn) gives exp's infinity, where the shorter exp for exponents ≤ 0 would not:
    /// the position's rising decays are found.
    #[test]
    fn a_decay_past_the_range_gives_infinity() {
        let (width, states) = (20, 3);
        for rising in 0..states {
            let a: Vec<f32> = (0..width * states).map(|i| if i == 17 * states + rising { 100.0 } else { -1.0 }).collect();
            let (state, dt, du, b, c) = (vec![1.0; width * states], vec![1.0; width], vec![0.0; width], vec![0.0; states], vec![1.0; states]);
            let r = Recurrence {
                state: state.as_ptr(),
                dt: dt.as_ptr(),
                du: du.as_ptr(),
                b: b.as_ptr(),
                c: c.as_ptr(),
                a: a.as_ptr(),
                batch: 1,
                len: 1,
                width,
                states,
            };
            for simd in Simd::available() {
                let (mut y, mut last) = (vec![f32::NAN; width], vec![f32::NAN; width * states]);
                // SAFETY: every operand holds its elements; `y` and `last` theirs.
                unsafe { r.run_with(y.as_mut_ptr(), last.as_mut_ptr(), simd) };
                for (channel, &got) in y.iter().enumerate() {
                    let want = if channel == 17 { f32::INFINITY } else { 3.0 * (-1f32).exp() };
                    assert!(got == want || (got - want).abs() <= 1e-6, "{simd:?}, state {rising}, channel {channel}: {got} against {want}");
                }
            }
        }
    }

    /// Every build this processor runs against the recurrence computed directly in f64, over
    /// channels that fill no whole block (37: 16 + 16 + 5, or 8 · 4 + 5), decays that rise (Δ·A
    /// above 0 somewhere) and ones that do not.
    #[test]
    fn every_build_matches_the_recurrence_computed_directly() {
        let (batch, len, width, states) = (2, 13, 37, 5);
        let (state, du, b, c) =
            (operand(batch * width * states, 1), operand(batch * len * width, 2), operand(batch * len * states, 3), operand(batch * len * states, 4));
        let dt: Vec<f32> = operand(batch * len * width, 5).iter().map(|x| 0.5 + 0.5 * x).collect();
        for rising in [false, true] {
            // A ≤ 0 as Mamba's is; a few positive entries make some decays rise.
            let a: Vec<f32> = operand(width * states, 6).iter().enumerate().map(|(i, x)| if rising && i % 7 == 0 { 0.3 } else { -1.0 - x.abs() }).collect();
            let (mut want_y, mut want_state) = (vec![0f64; batch * len * width], vec![0f64; batch * width * states]);
            for s in 0..batch {
                for ch in 0..width {
                    let mut h: Vec<f64> = (0..states).map(|k| state[(s * width + ch) * states + k] as f64).collect();
                    for t in 0..len {
                        let row = (s * len + t) * width + ch;
                        let mut y = 0.0;
                        for (k, hk) in h.iter_mut().enumerate() {
                            let at = (s * len + t) * states + k;
                            *hk = (dt[row] as f64 * a[ch * states + k] as f64).exp() * *hk + du[row] as f64 * b[at] as f64;
                            y += *hk * c[at] as f64;
                        }
                        want_y[row] = y;
                    }
                    for (k, hk) in h.iter().enumerate() {
                        want_state[(s * width + ch) * states + k] = *hk;
                    }
                }
            }
            let r =
                Recurrence { state: state.as_ptr(), dt: dt.as_ptr(), du: du.as_ptr(), b: b.as_ptr(), c: c.as_ptr(), a: a.as_ptr(), batch, len, width, states };
            for simd in Simd::available() {
                let (mut y, mut last) = (vec![f32::NAN; batch * len * width], vec![f32::NAN; batch * width * states]);
                // SAFETY: every operand holds its elements; `y` and `last` theirs.
                unsafe { r.run_with(y.as_mut_ptr(), last.as_mut_ptr(), simd) };
                for (name, got, want) in [("y", &y, &want_y), ("state", &last, &want_state)] {
                    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                        assert!((g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "rising {rising}, {simd:?}, {name}[{i}]: {g} against {w}");
                    }
                }
            }
        }
    }
}
