//! Mamba's selective scan in one pass ([`Instr::Recurrence`](tttc_lower::schedule::Instr)):
//! per sequence and block of `LANES` channels, the block's state (`N` vectors of `LANES`
//! channels) stays in registers and L1 from the first position to the last; at each position
//! every state element decays by `exp(Δ·A)`, computed there, takes in `Δu·b`, and the channels'
//! output `y = h · c` is summed in the same pass. Run op by op, each position was a few steps over the
//! whole `[D, N]` state, its decays materialised in memory. Blocks are the unit of work, taken
//! by whichever thread is free. The code is compiled twice: for AVX2 with FMA where the
//! processor has them, and for the baseline.

use tttc_lower::math;

use crate::exec::Shared;
use crate::scalar::Scalar;

/// Channels per block: one 256-bit vector.
const LANES: usize = 8;

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
        use rayon::prelude::*;
        let fast = crate::attention::avx2_fma();
        let blocks = self.width.div_ceil(LANES);
        let (this, y, final_state) = (Shared(*self), Shared(y), Shared(final_state));
        (0..self.batch * blocks).into_par_iter().for_each(|w| {
            let (s, channel) = (w / blocks, (w % blocks) * LANES);
            #[cfg(target_arch = "x86_64")]
            if fast {
                return this.get().block_avx2(s, channel, y.get(), final_state.get());
            }
            this.get().block(s, channel, y.get(), final_state.get());
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&self, s: usize, channel: usize, y: *mut f32, final_state: *mut f32) {
        self.block(s, channel, y, final_state)
    }

    /// Channels `channel..` (up to `LANES`) of sequence `s`. Lanes past the last channel run
    /// with Δ, Δu and A zero and are never stored.
    #[inline(always)]
    unsafe fn block(&self, s: usize, channel: usize, y: *mut f32, final_state: *mut f32) {
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
            let (mut dt, mut du) = ([0f32; LANES], [0f32; LANES]);
            for l in 0..lanes {
                dt[l] = *self.dt.add(row + l);
                du[l] = *self.du.add(row + l);
            }
            // In the body's order: exp(Δ·A)·h + Δu·b, then y's sum over the states.
            let mut rising = [false; LANES];
            for (d, ak) in decay.iter_mut().zip(&a) {
                *d = lanewise(|l| dt[l] * ak[l]);
                rising = lanewise(|l| rising[l] | (d[l] > 0.0));
            }
            // The exponent is ≤ 0 where Δ ≥ 0 and A ≤ 0 (Mamba's: a softplus and −exp), and the
            // shorter exp equal to the general one there. One loop over all the decays: the
            // compiler vectorises it.
            let exps = decay.as_flattened_mut();
            if rising.contains(&true) {
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
            for (l, &o) in out.iter().enumerate().take(lanes) {
                *y.add(row + l) = o;
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
fn lanewise<T>(f: impl FnMut(usize) -> T) -> [T; LANES] {
    std::array::from_fn(f)
}
