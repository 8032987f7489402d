//! [`tttc_lower::math`]'s primitive instructions in PTX, so that the GPU computes every
//! elementwise op with the CPU's f32 operations in the CPU's order. Constants stay immediates.

use tttc_lower::math::{Emit, FloatCmp, FloatOp, FloatUn, IntOp, Shift};

use crate::build::Builder;
use crate::isa::*;

pub struct PtxMath<'a> {
    pub b: &'a mut Builder,
}

impl Emit for PtxMath<'_> {
    type F = Val;
    type I = Val;
    type B = Reg;

    fn c(&mut self, v: f32) -> Val {
        Val::F32(v)
    }

    fn ic(&mut self, v: i32) -> Val {
        Val::Int(v as i64)
    }

    fn fbin(&mut self, op: FloatOp, a: Val, b: Val) -> Val {
        let op = match op {
            FloatOp::Add => BinOp::Add,
            FloatOp::Sub => BinOp::Sub,
            FloatOp::Mul => BinOp::Mul,
            FloatOp::Div => BinOp::Div,
        };
        self.b.bin(op, Ty::F32, a, b).into()
    }

    fn fma(&mut self, a: Val, b: Val, c: Val) -> Val {
        self.b.fma(Ty::F32, a, b, c).into()
    }

    fn fun(&mut self, op: FloatUn, a: Val) -> Val {
        let op = match op {
            FloatUn::Neg => UnOp::Neg,
            FloatUn::Abs => UnOp::Abs,
            FloatUn::Sqrt => UnOp::Sqrt,
        };
        self.b.un(op, Ty::F32, a).into()
    }

    fn fcmp(&mut self, cmp: FloatCmp, a: Val, b: Val) -> Reg {
        let cmp = match cmp {
            FloatCmp::Lt => Cmp::Lt,
            FloatCmp::Gt => Cmp::Gt,
            FloatCmp::Ge => Cmp::Ge,
            FloatCmp::Eq => Cmp::Eq,
            FloatCmp::Unordered => Cmp::Nan,
        };
        self.b.setp(cmp, Ty::F32, a, b)
    }

    fn select(&mut self, cond: Reg, a: Val, b: Val) -> Val {
        self.b.selp(Ty::F32, cond, a, b).into()
    }

    fn bits(&mut self, x: Val) -> Val {
        match x {
            Val::F32(c) => Val::Int(c.to_bits() as i32 as i64),
            x => self.b.mov_as(Ty::B32, Class::R32, x).into(),
        }
    }

    fn from_bits(&mut self, i: Val) -> Val {
        match i {
            Val::Int(c) => Val::F32(f32::from_bits(c as u32)),
            i => self.b.mov_as(Ty::B32, Class::F32, i).into(),
        }
    }

    fn ibin(&mut self, op: IntOp, a: Val, b: Val) -> Val {
        let (op, ty) = match op {
            IntOp::Add => (BinOp::Add, Ty::S32),
            IntOp::Sub => (BinOp::Sub, Ty::S32),
            IntOp::And => (BinOp::And, Ty::B32),
            IntOp::Or => (BinOp::Or, Ty::B32),
        };
        self.b.bin(op, ty, a, b).into()
    }

    fn shift(&mut self, op: Shift, a: Val, by: u8) -> Val {
        let (op, ty) = match op {
            Shift::Left => (BinOp::Shl, Ty::B32),
            Shift::RightSigned => (BinOp::Shr, Ty::S32),
            Shift::RightUnsigned => (BinOp::Shr, Ty::U32),
        };
        self.b.bin(op, ty, a, Val::Int(by as i64)).into()
    }

    fn i_to_f(&mut self, i: Val) -> Val {
        self.b.cvt(Some(Round::Rn), Ty::F32, Ty::S32, i).into()
    }

    fn sin(&mut self, x: Val) -> Val {
        sin_cos(self.b, x, 0)
    }

    fn cos(&mut self, x: Val) -> Val {
        sin_cos(self.b, x, 1)
    }
}

/// sin x (`phase` 0) or cos x (`phase` 1) in f64, rounded once to f32: x = k·π/2 + r with
/// |r| ≤ π/4 (π/2 in two parts, exact for the k of any f32 angle below 2³⁰), then Taylor
/// polynomials in r good to f64 precision, and the quadrant k + phase picks ±sin r or ±cos r.
fn sin_cos(b: &mut Builder, x: Val, phase: i64) -> Val {
    let xd = b.cvt(None, Ty::F64, Ty::F32, x);
    let t = b.bin(BinOp::Mul, Ty::F64, xd, Val::F64(std::f64::consts::FRAC_2_PI));
    // Rounded to an integer by adding 1.5·2⁵²: k also sits in the sum's low bits.
    let magic = Val::F64(6_755_399_441_055_744.0);
    let shifted = b.bin(BinOp::Add, Ty::F64, t, magic);
    let k = b.bin(BinOp::Sub, Ty::F64, shifted, magic);
    let nk = b.un(UnOp::Neg, Ty::F64, k);
    // π/2 as hi + lo: hi its f64 value, lo the rest.
    let (hi, lo) = (std::f64::consts::FRAC_PI_2, 6.123_233_995_736_766e-17);
    let r = b.fma(Ty::F64, nk, Val::F64(hi), xd);
    let r = b.fma(Ty::F64, nk, Val::F64(lo), r);
    let r2 = b.bin(BinOp::Mul, Ty::F64, r, r);
    // sin r = r·(1 − r²/3! + r⁴/5! − …), cos r = 1 − r²/2! + r⁴/4! − …
    let series = |b: &mut Builder, first: u32| -> Reg {
        let terms: Vec<f64> = (0..8)
            .map(|j| {
                let n = first + 2 * j;
                let f: f64 = (1..=n).map(f64::from).product();
                if j % 2 == 0 {
                    1.0 / f
                } else {
                    -1.0 / f
                }
            })
            .collect();
        let mut acc = b.mov(Ty::F64, Val::F64(terms[7]));
        for &c in terms[..7].iter().rev() {
            acc = b.fma(Ty::F64, acc, r2, Val::F64(c));
        }
        acc
    };
    let s = series(b, 1);
    let s = b.bin(BinOp::Mul, Ty::F64, s, r);
    let c = series(b, 0);
    let bits = b.mov_as(Ty::B64, Class::R64, shifted);
    let q = b.bin(BinOp::Add, Ty::U64, bits, Val::Int(phase));
    let q = b.bin(BinOp::And, Ty::B64, q, Val::Int(3));
    // Quadrants 0..3: sin r, cos r, −sin r, −cos r.
    let odd = b.bin(BinOp::And, Ty::B64, q, Val::Int(1));
    let use_cos = b.setp(Cmp::Ne, Ty::U64, odd, Val::Int(0));
    let v = b.selp(Ty::F64, use_cos, c, s);
    let high = b.setp(Cmp::Ge, Ty::U64, q, Val::Int(2));
    let nv = b.un(UnOp::Neg, Ty::F64, v);
    let v = b.selp(Ty::F64, high, nv, v);
    b.cvt(Some(Round::Rn), Ty::F32, Ty::F64, v).into()
}
