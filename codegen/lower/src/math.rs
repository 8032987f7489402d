//! The elementwise math every backend emits, written once against [`Emit`]: each unary and
//! binary op as the interpreter defines it, with polynomial `exp`, `log` and `tanh` (Cephes-style
//! range reductions, accurate to a few ulp). A backend supplies the primitive instructions (a
//! Cranelift builder for the CPU, a PTX builder for the GPU), so both compute the same f32
//! operations in the same order. `sin` and `cos` are the backend's own (the rotary angles).

use tttc_ir::{BinaryOp, UnaryOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatUn {
    Neg,
    Abs,
    Sqrt,
}

/// Float comparisons; `Unordered` is true when either operand is NaN, the others are false then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatCmp {
    Lt,
    Gt,
    Ge,
    Eq,
    Unordered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOp {
    Add,
    Sub,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shift {
    Left,
    /// Arithmetic (sign-filling).
    RightSigned,
    RightUnsigned,
}

/// The primitive f32 and i32 instructions of a backend: `F` a float value, `I` a 32-bit integer
/// with as many lanes, `B` a comparison's result.
pub trait Emit {
    type F: Copy;
    type I: Copy;
    type B: Copy;

    fn c(&mut self, v: f32) -> Self::F;
    fn ic(&mut self, v: i32) -> Self::I;
    /// Correctly rounded (`+ − × ÷`).
    fn fbin(&mut self, op: FloatOp, a: Self::F, b: Self::F) -> Self::F;
    /// `a·b + c` with one rounding.
    fn fma(&mut self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn fun(&mut self, op: FloatUn, a: Self::F) -> Self::F;
    fn fcmp(&mut self, cmp: FloatCmp, a: Self::F, b: Self::F) -> Self::B;
    /// `cond ? a : b`.
    fn select(&mut self, cond: Self::B, a: Self::F, b: Self::F) -> Self::F;
    fn bits(&mut self, x: Self::F) -> Self::I;
    #[allow(clippy::wrong_self_convention)] // `self` is the builder that emits the instruction
    fn from_bits(&mut self, i: Self::I) -> Self::F;
    fn ibin(&mut self, op: IntOp, a: Self::I, b: Self::I) -> Self::I;
    fn shift(&mut self, op: Shift, a: Self::I, by: u8) -> Self::I;
    /// A signed integer converted to the nearest float.
    fn i_to_f(&mut self, i: Self::I) -> Self::F;
    fn sin(&mut self, x: Self::F) -> Self::F;
    fn cos(&mut self, x: Self::F) -> Self::F;

    fn add(&mut self, a: Self::F, b: Self::F) -> Self::F {
        self.fbin(FloatOp::Add, a, b)
    }

    fn sub(&mut self, a: Self::F, b: Self::F) -> Self::F {
        self.fbin(FloatOp::Sub, a, b)
    }

    fn mul(&mut self, a: Self::F, b: Self::F) -> Self::F {
        self.fbin(FloatOp::Mul, a, b)
    }

    fn div(&mut self, a: Self::F, b: Self::F) -> Self::F {
        self.fbin(FloatOp::Div, a, b)
    }

    fn neg(&mut self, a: Self::F) -> Self::F {
        self.fun(FloatUn::Neg, a)
    }
}

/// Horner: `((c0·x + c1)·x + c2)…`.
#[inline(always)]
fn poly<E: Emit>(e: &mut E, x: E::F, coeffs: &[f32]) -> E::F {
    let mut acc = e.c(coeffs[0]);
    for &k in &coeffs[1..] {
        let kv = e.c(k);
        acc = e.fma(acc, x, kv);
    }
    acc
}

pub fn binary<E: Emit>(e: &mut E, op: BinaryOp, x: E::F, y: E::F) -> E::F {
    match op {
        BinaryOp::Add => e.add(x, y),
        BinaryOp::Sub => e.sub(x, y),
        BinaryOp::Mul => e.mul(x, y),
        BinaryOp::Div => e.div(x, y),
        // As the interpreter: y when y > x, else x (NaN in y loses).
        BinaryOp::Max => {
            let gt = e.fcmp(FloatCmp::Gt, y, x);
            e.select(gt, y, x)
        }
        BinaryOp::Ge => {
            let ge = e.fcmp(FloatCmp::Ge, x, y);
            let (one, zero) = (e.c(1.0), e.c(0.0));
            e.select(ge, one, zero)
        }
    }
}

pub fn unary<E: Emit>(e: &mut E, u: UnaryOp, x: E::F) -> E::F {
    match u {
        UnaryOp::Neg => e.neg(x),
        UnaryOp::Exp => exp(e, x),
        UnaryOp::Log => log(e, x),
        UnaryOp::Sqrt => e.fun(FloatUn::Sqrt, x),
        UnaryOp::Rsqrt => {
            let s = e.fun(FloatUn::Sqrt, x);
            let one = e.c(1.0);
            e.div(one, s)
        }
        UnaryOp::Tanh => tanh(e, x),
        UnaryOp::Sigmoid => {
            let one = e.c(1.0);
            let d = one_plus_exp_neg(e, x);
            e.div(one, d)
        }
        UnaryOp::Silu => {
            let d = one_plus_exp_neg(e, x);
            e.div(x, d)
        }
        UnaryOp::GeluTanh => {
            // ½x(1 + tanh u) = x·σ(2u) = x / (1 + e^{−2u}), u = √(2/π)(x + 0.044715x³): one
            // exponential instead of tanh's two branches, and no cancellation in 1 + tanh u for
            // negative x.
            let c = (2.0f64 / std::f64::consts::PI).sqrt();
            let x2 = e.mul(x, x);
            let (a, b) = (e.c((-2.0 * c * 0.044715) as f32), e.c((-2.0 * c) as f32));
            let slope = e.fma(x2, a, b);
            let minus_2u = e.mul(slope, x);
            let ex = exp(e, minus_2u);
            let one = e.c(1.0);
            let d = e.add(one, ex);
            e.div(x, d)
        }
        UnaryOp::Softplus => {
            // x above 20, else log(1 + eˣ).
            let ex = exp(e, x);
            let one = e.c(1.0);
            let s = e.add(one, ex);
            let l = log(e, s);
            let twenty = e.c(20.0);
            let big = e.fcmp(FloatCmp::Gt, x, twenty);
            e.select(big, x, l)
        }
        UnaryOp::Sin => e.sin(x),
        UnaryOp::Cos => e.cos(x),
    }
}

fn one_plus_exp_neg<E: Emit>(e: &mut E, x: E::F) -> E::F {
    let nx = e.neg(x);
    let ex = exp(e, nx);
    let one = e.c(1.0);
    e.add(one, ex)
}

/// eˣ: x = n·ln2 + r with |r| ≤ ½ln2, eʳ by a degree-7 polynomial, 2ⁿ built in the exponent
/// bits. Below −87.3 the result is 0, above 88.7 it is +∞. (Inlined: a native loop calling it
/// is vectorised only then.)
#[inline(always)]
pub fn exp<E: Emit>(e: &mut E, x: E::F) -> E::F {
    let (lo, hi) = (e.c(-87.33654), e.c(88.72283));
    let below = e.fcmp(FloatCmp::Lt, x, lo);
    let xc = e.select(below, lo, x);
    let above = e.fcmp(FloatCmp::Gt, x, hi);
    let xc = e.select(above, hi, xc);
    let (p, n) = exp_reduced(e, xc);
    // 2ⁿ as two factors 2^⌊n/2⌋ · 2^(n−⌊n/2⌋): n ∈ [−126, 128] after the clamp, beyond one
    // factor's exponent range at the top.
    let half_n = e.shift(Shift::RightSigned, n, 1);
    let rest = e.ibin(IntOp::Sub, n, half_n);
    let s1 = pow2(e, half_n);
    let s2 = pow2(e, rest);
    let p = e.mul(p, s1);
    let y = e.mul(p, s2);
    let zero = e.c(0.0);
    let y = e.select(below, zero, y);
    let inf = e.c(f32::INFINITY);
    let y = e.select(above, inf, y);
    // NaN in, NaN out.
    let nan = e.fcmp(FloatCmp::Unordered, x, x);
    e.select(nan, x, y)
}

/// eˣ for x ≤ 0 or NaN (a softmax's scores less their maximum), equal to [`exp`] there with
/// fewer steps: nothing to clamp above, and 2ⁿ for n ∈ [−126, 0] is one factor (the product by a
/// power of two is exact either way).
#[inline(always)]
pub fn exp_nonpositive<E: Emit>(e: &mut E, x: E::F) -> E::F {
    let lo = e.c(-87.33654);
    let below = e.fcmp(FloatCmp::Lt, x, lo);
    let xc = e.select(below, lo, x);
    let (p, n) = exp_reduced(e, xc);
    let s = pow2(e, n);
    let y = e.mul(p, s);
    let zero = e.c(0.0);
    e.select(below, zero, y)
}

/// For x within exp's range: eʳ and n (as an integer) with x = n·ln2 + r, |r| ≤ ½ln2.
#[inline(always)]
fn exp_reduced<E: Emit>(e: &mut E, x: E::F) -> (E::F, E::I) {
    let log2e = e.c(std::f32::consts::LOG2_E);
    let t = e.mul(x, log2e);
    // n = round(t) by adding 1.5·2²³: the sum's low mantissa bits are n, as an integer too.
    let magic = e.c(12_582_912.0);
    let k = e.add(t, magic);
    let n = e.sub(k, magic);
    let (ln2_hi, ln2_lo) = (e.c(-0.693_359_4), e.c(2.121_944_4e-4));
    let r = e.fma(n, ln2_hi, x);
    let r = e.fma(n, ln2_lo, r);
    let p = poly(e, r, &[1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5]);
    let r2 = e.mul(r, r);
    let p = e.fma(p, r2, r);
    let one = e.c(1.0);
    let p = e.add(p, one);
    let kb = e.bits(k);
    let magic_bits = e.ic(0x4B40_0000);
    (p, e.ibin(IntOp::Sub, kb, magic_bits))
}

/// 2ᵉ for an integer e ∈ [−126, 127].
#[inline(always)]
fn pow2<E: Emit>(e: &mut E, n: E::I) -> E::F {
    let bias = e.ic(127);
    let biased = e.ibin(IntOp::Add, n, bias);
    let bits = e.shift(Shift::Left, biased, 23);
    e.from_bits(bits)
}

/// ln x for x > 0: x = m·2ᵉ with m ∈ [√½, √2), ln(m) = f − f²/2 + f³·P(f) for f = m − 1.
/// ln 0 = −∞; a negative x gives NaN.
pub fn log<E: Emit>(e: &mut E, x: E::F) -> E::F {
    // Subnormals first scaled into the normal range by 2²³.
    let tiny = e.c(f32::MIN_POSITIVE);
    let is_tiny = e.fcmp(FloatCmp::Lt, x, tiny);
    let scale = e.c(8_388_608.0);
    let scaled = e.mul(x, scale);
    let xs = e.select(is_tiny, scaled, x);
    let bits = e.bits(xs);
    let ex = e.shift(Shift::RightUnsigned, bits, 23);
    let mask = e.ic(0xff);
    let ex = e.ibin(IntOp::And, ex, mask);
    let bias = e.ic(127);
    let ex = e.ibin(IntOp::Sub, ex, bias);
    let mant_mask = e.ic(0x007f_ffff);
    let m = e.ibin(IntOp::And, bits, mant_mask);
    let one_bits = e.ic(0x3f80_0000);
    let m = e.ibin(IntOp::Or, m, one_bits);
    let m = e.from_bits(m); // [1, 2)
    let ef = e.i_to_f(ex);
    let (shift, none) = (e.c(23.0), e.c(0.0));
    let shift = e.select(is_tiny, shift, none);
    let ef = e.sub(ef, shift);
    // Into [√½, √2): halve m and bump e when m > √2.
    let sqrt2 = e.c(std::f32::consts::SQRT_2);
    let big = e.fcmp(FloatCmp::Gt, m, sqrt2);
    let half = e.c(0.5);
    let mh = e.mul(m, half);
    let m = e.select(big, mh, m);
    let one = e.c(1.0);
    let e1 = e.add(ef, one);
    let ef = e.select(big, e1, ef);
    let f = e.sub(m, one);
    let z = e.mul(f, f);
    let p = poly(
        e,
        f,
        &[7.037_683_6e-2, -1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_5e-1, -2.499_999_4e-1, 3.333_333e-1],
    );
    let y = e.mul(p, f);
    let y = e.mul(y, z);
    let c1 = e.c(-2.121_944_4e-4);
    let y = e.fma(ef, c1, y);
    let mhalf = e.c(-0.5);
    let y = e.fma(z, mhalf, y);
    let r = e.add(f, y);
    let c2 = e.c(0.693_359_4);
    let r = e.fma(ef, c2, r);
    // Special cases: 0 → −∞, negative → NaN, +∞ → +∞, NaN → NaN.
    let zero = e.c(0.0);
    let is_zero = e.fcmp(FloatCmp::Eq, x, zero);
    let ninf = e.c(f32::NEG_INFINITY);
    let r = e.select(is_zero, ninf, r);
    let neg = e.fcmp(FloatCmp::Lt, x, zero);
    let nan = e.c(f32::NAN);
    let r = e.select(neg, nan, r);
    let inf = e.c(f32::INFINITY);
    let is_inf = e.fcmp(FloatCmp::Eq, x, inf);
    let r = e.select(is_inf, inf, r);
    let unordered = e.fcmp(FloatCmp::Unordered, x, x);
    e.select(unordered, x, r)
}

/// tanh x: an odd polynomial for |x| < 0.625, else sign(x)·(1 − 2/(e^{2|x|} + 1)).
pub fn tanh<E: Emit>(e: &mut E, x: E::F) -> E::F {
    let ax = e.fun(FloatUn::Abs, x);
    let two = e.c(2.0);
    let a2 = e.mul(ax, two);
    let ex = exp(e, a2);
    let one = e.c(1.0);
    let d = e.add(ex, one);
    let q = e.div(two, d);
    let big = e.sub(one, q);
    let neg_big = e.neg(big);
    let zero = e.c(0.0);
    let negative = e.fcmp(FloatCmp::Lt, x, zero);
    let big = e.select(negative, neg_big, big);
    let s = e.mul(x, x);
    let p = poly(e, s, &[-5.704_988_7e-3, 2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1]);
    let p = e.mul(p, s);
    let small = e.fma(p, x, x);
    let cut = e.c(0.625);
    let is_small = e.fcmp(FloatCmp::Lt, ax, cut);
    e.select(is_small, small, big)
}
