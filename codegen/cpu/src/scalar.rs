//! [`tttc_lower::math`] on one f32 at a time, for native loops that compute elementwise math
//! themselves (attention's exponentials): the same operations in the same order as the generated
//! kernels. Inlined into a loop over a slice in a function compiled for AVX2 and FMA, the
//! compiler vectorises it (see `attention.rs`).

use tttc_lower::math::{Emit, FloatCmp, FloatOp, FloatUn, IntOp, Shift};

/// The emitter: each primitive as Rust's own operation.
pub struct Scalar;

impl Emit for Scalar {
    type F = f32;
    type I = i32;
    type B = bool;

    #[inline(always)]
    fn c(&mut self, v: f32) -> f32 {
        v
    }

    #[inline(always)]
    fn ic(&mut self, v: i32) -> i32 {
        v
    }

    #[inline(always)]
    fn fbin(&mut self, op: FloatOp, a: f32, b: f32) -> f32 {
        match op {
            FloatOp::Add => a + b,
            FloatOp::Sub => a - b,
            FloatOp::Mul => a * b,
            FloatOp::Div => a / b,
        }
    }

    #[inline(always)]
    fn fma(&mut self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn fun(&mut self, op: FloatUn, a: f32) -> f32 {
        match op {
            FloatUn::Neg => -a,
            FloatUn::Abs => a.abs(),
            FloatUn::Sqrt => a.sqrt(),
        }
    }

    #[inline(always)]
    fn fcmp(&mut self, cmp: FloatCmp, a: f32, b: f32) -> bool {
        match cmp {
            FloatCmp::Lt => a < b,
            FloatCmp::Gt => a > b,
            FloatCmp::Ge => a >= b,
            FloatCmp::Eq => a == b,
            FloatCmp::Unordered => a.is_nan() || b.is_nan(),
        }
    }

    #[inline(always)]
    fn select(&mut self, cond: bool, a: f32, b: f32) -> f32 {
        if cond {
            a
        } else {
            b
        }
    }

    #[inline(always)]
    fn bits(&mut self, x: f32) -> i32 {
        x.to_bits() as i32
    }

    #[inline(always)]
    fn from_bits(&mut self, i: i32) -> f32 {
        f32::from_bits(i as u32)
    }

    #[inline(always)]
    fn ibin(&mut self, op: IntOp, a: i32, b: i32) -> i32 {
        match op {
            IntOp::Add => a.wrapping_add(b),
            IntOp::Sub => a.wrapping_sub(b),
            IntOp::And => a & b,
            IntOp::Or => a | b,
        }
    }

    #[inline(always)]
    fn shift(&mut self, op: Shift, a: i32, by: u8) -> i32 {
        match op {
            Shift::Left => a.wrapping_shl(by.into()),
            Shift::RightSigned => a >> by,
            Shift::RightUnsigned => ((a as u32) >> by) as i32,
        }
    }

    #[inline(always)]
    fn i_to_f(&mut self, i: i32) -> f32 {
        i as f32
    }

    fn sin(&mut self, x: f32) -> f32 {
        x.sin()
    }

    fn cos(&mut self, x: f32) -> f32 {
        x.cos()
    }
}
