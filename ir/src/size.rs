//! Sizes a compiled program knows only when it is launched: integer polynomials in the
//! dimension symbols (`B`, `T`), whose atoms may also be a floor division or a remainder by a
//! constant (a scan's whole chunks `T/16` and its shorter last chunk `T%16`).
//!
//! A [`Size`] is `Copy`: a constant is held inline, any other size is an index into a table of
//! the expressions made so far (shared by every thread). Every expression is kept in one normal
//! form, so two sizes are equal exactly when their expressions are the same polynomial, and a
//! size whose expression is a constant is that constant.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{LazyLock, Mutex};

use anyhow::{bail, Result};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size(Repr);

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Repr {
    Const(i64),
    /// An index into [`TABLE`]: never a constant.
    Expr(u32),
}

/// A factor of a monomial.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Atom {
    Sym(String),
    /// `⌊size / divisor⌋` (sizes are never negative where these are taken).
    Div(Size, i64),
    /// `size mod divisor`.
    Rem(Size, i64),
}

impl Atom {
    /// What monomials sort their atoms by (a size has no numeric order to offer).
    fn key(&self) -> (u8, &str, Repr, i64) {
        match self {
            Atom::Sym(s) => (0, s, Repr::Const(0), 0),
            Atom::Div(x, d) => (1, "", x.0, *d),
            Atom::Rem(x, d) => (2, "", x.0, *d),
        }
    }
}

impl Ord for Atom {
    fn cmp(&self, o: &Atom) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl PartialOrd for Atom {
    fn partial_cmp(&self, o: &Atom) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Coefficients by monomial (its atoms sorted, a power repeating its atom); none is zero.
type Poly = BTreeMap<Vec<Atom>, i64>;

#[derive(Default)]
struct Table {
    polys: Vec<Poly>,
    index: HashMap<Poly, u32>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

impl Size {
    pub const ZERO: Size = Size(Repr::Const(0));
    pub const ONE: Size = Size(Repr::Const(1));

    pub const fn int(c: i64) -> Size {
        Size(Repr::Const(c))
    }

    pub const fn of(n: usize) -> Size {
        Size(Repr::Const(n as i64))
    }

    pub fn sym(name: &str) -> Size {
        Size::atom(Atom::Sym(name.to_string()))
    }

    fn atom(a: Atom) -> Size {
        Size::from_poly([(vec![a], 1)].into_iter().collect())
    }

    fn from_poly(mut p: Poly) -> Size {
        p.retain(|_, c| *c != 0);
        if p.is_empty() {
            return Size::ZERO;
        }
        if let Some(c) = p.get(&Vec::new()).filter(|_| p.len() == 1) {
            return Size(Repr::Const(*c));
        }
        let mut t = TABLE.lock().expect("the size table is never poisoned");
        if let Some(&i) = t.index.get(&p) {
            return Size(Repr::Expr(i));
        }
        let i = u32::try_from(t.polys.len()).expect("fewer than 2^32 distinct sizes");
        t.polys.push(p.clone());
        t.index.insert(p, i);
        Size(Repr::Expr(i))
    }

    /// The polynomial: (coefficient, atoms) per monomial, the constant term (no atoms) first.
    pub fn terms(self) -> Vec<(i64, Vec<Atom>)> {
        self.poly().into_iter().map(|(m, c)| (c, m)).collect()
    }

    fn poly(self) -> Poly {
        match self.0 {
            Repr::Const(0) => Poly::new(),
            Repr::Const(c) => [(Vec::new(), c)].into_iter().collect(),
            Repr::Expr(i) => TABLE.lock().expect("the size table is never poisoned").polys[i as usize].clone(),
        }
    }

    /// The value, when it does not depend on a symbol.
    pub fn constant(self) -> Option<i64> {
        match self.0 {
            Repr::Const(c) => Some(c),
            Repr::Expr(_) => None,
        }
    }

    /// The value, when it does not depend on a symbol and is not negative.
    pub fn known(self) -> Option<usize> {
        self.constant().and_then(|c| usize::try_from(c).ok())
    }

    /// The value of a size that a program scheduled at known sizes holds.
    pub fn fixed(self) -> usize {
        self.known().unwrap_or_else(|| panic!("size {self} is not known: this program was scheduled for symbolic sizes"))
    }

    pub fn is_one(self) -> bool {
        self == Size::ONE
    }

    pub fn is_zero(self) -> bool {
        self == Size::ZERO
    }

    /// `⌊self / d⌋`.
    pub fn div_floor(self, d: usize) -> Size {
        let d = d as i64;
        match self.0 {
            Repr::Const(c) => Size(Repr::Const(c.div_euclid(d))),
            Repr::Expr(_) => {
                let p = self.poly();
                if p.values().all(|c| c % d == 0) {
                    Size::from_poly(p.into_iter().map(|(m, c)| (m, c / d)).collect())
                } else {
                    Size::atom(Atom::Div(self, d))
                }
            }
        }
    }

    /// `⌈self / d⌉`.
    pub fn div_ceil(self, d: usize) -> Size {
        (self + Size::of(d - 1)).div_floor(d)
    }

    /// `self mod d`.
    pub fn modulo(self, d: usize) -> Size {
        let d = d as i64;
        match self.0 {
            Repr::Const(c) => Size(Repr::Const(c.rem_euclid(d))),
            Repr::Expr(_) if self.poly().values().all(|c| c % d == 0) => Size::ZERO,
            Repr::Expr(_) => Size::atom(Atom::Rem(self, d)),
        }
    }

    /// `self / d` when every coefficient divides exactly.
    pub fn div_exact(self, d: usize) -> Option<Size> {
        let p = self.poly();
        p.values().all(|c| c % d as i64 == 0).then(|| Size::from_poly(p.into_iter().map(|(m, c)| (m, c / d as i64)).collect()))
    }

    /// The value with every symbol given by `value`.
    pub fn eval(self, value: &dyn Fn(&str) -> Option<i64>) -> Result<i64> {
        let mut total = 0i64;
        for (m, c) in self.poly() {
            let mut term = c;
            for a in &m {
                let v = match a {
                    Atom::Sym(s) => match value(s) {
                        Some(v) => v,
                        None => bail!("size symbol {s} is not bound"),
                    },
                    Atom::Div(x, d) => x.eval(value)?.div_euclid(*d),
                    Atom::Rem(x, d) => x.eval(value)?.rem_euclid(*d),
                };
                term = term.checked_mul(v).ok_or_else(|| anyhow::anyhow!("size {self} overflows"))?;
            }
            total = total.checked_add(term).ok_or_else(|| anyhow::anyhow!("size {self} overflows"))?;
        }
        Ok(total)
    }

    /// The least and greatest values over symbols in the ranges `range` gives (inclusive):
    /// interval arithmetic, so the greatest is an upper bound that may not be reached.
    pub fn range(self, range: &dyn Fn(&str) -> Option<(i64, i64)>) -> Result<(i64, i64)> {
        let mut total = (0i64, 0i64);
        for (m, c) in self.poly() {
            let mut term = (c, c);
            for a in &m {
                let (lo, hi) = match a {
                    Atom::Sym(s) => match range(s) {
                        Some(r) => r,
                        None => bail!("size symbol {s} has no range"),
                    },
                    Atom::Div(x, d) => {
                        let (lo, hi) = x.range(range)?;
                        (lo.div_euclid(*d), hi.div_euclid(*d))
                    }
                    Atom::Rem(x, d) => {
                        let (lo, hi) = x.range(range)?;
                        if hi - lo < *d && lo.rem_euclid(*d) <= hi.rem_euclid(*d) {
                            (lo.rem_euclid(*d), hi.rem_euclid(*d))
                        } else {
                            (0, d - 1)
                        }
                    }
                };
                let corners = [term.0 * lo, term.0 * hi, term.1 * lo, term.1 * hi];
                term = (*corners.iter().min().expect("four"), *corners.iter().max().expect("four"));
            }
            total = (total.0 + term.0, total.1 + term.1);
        }
        Ok(total)
    }
}

impl From<usize> for Size {
    fn from(n: usize) -> Size {
        Size::of(n)
    }
}

/// The product of two polynomials, in normal form once zero terms are dropped.
fn poly_product(p: Poly, q: Poly) -> Poly {
    let mut r = Poly::new();
    for (ma, ca) in &p {
        for (mb, cb) in &q {
            let mut m: Vec<Atom> = ma.iter().chain(mb).cloned().collect();
            m.sort();
            *r.entry(m).or_insert(0) += ca * cb;
        }
    }
    r
}

fn combine(a: Size, b: Size, f: impl Fn(Poly, Poly) -> Poly) -> Size {
    Size::from_poly(f(a.poly(), b.poly()))
}

impl std::ops::Add for Size {
    type Output = Size;
    fn add(self, o: Size) -> Size {
        match (self.0, o.0) {
            (Repr::Const(a), Repr::Const(b)) => Size(Repr::Const(a + b)),
            _ => combine(self, o, |mut p, q| {
                for (m, c) in q {
                    *p.entry(m).or_insert(0) += c;
                }
                p
            }),
        }
    }
}

impl std::ops::Neg for Size {
    type Output = Size;
    fn neg(self) -> Size {
        match self.0 {
            Repr::Const(a) => Size(Repr::Const(-a)),
            Repr::Expr(_) => Size::from_poly(self.poly().into_iter().map(|(m, c)| (m, -c)).collect()),
        }
    }
}

impl std::ops::Sub for Size {
    type Output = Size;
    fn sub(self, o: Size) -> Size {
        self + -o
    }
}

impl std::ops::Mul for Size {
    type Output = Size;
    fn mul(self, o: Size) -> Size {
        match (self.0, o.0) {
            (Repr::Const(a), Repr::Const(b)) => Size(Repr::Const(a * b)),
            _ => combine(self, o, poly_product),
        }
    }
}

macro_rules! with_usize {
    ($($tr:ident $f:ident),*) => {$(
        impl std::ops::$tr<usize> for Size {
            type Output = Size;
            fn $f(self, o: usize) -> Size {
                std::ops::$tr::$f(self, Size::of(o))
            }
        }
        impl std::ops::$tr<Size> for usize {
            type Output = Size;
            fn $f(self, o: Size) -> Size {
                std::ops::$tr::$f(Size::of(self), o)
            }
        }
    )*};
}
with_usize!(Add add, Sub sub, Mul mul);

macro_rules! assign_ops {
    ($($tr:ident $f:ident $op:ident $g:ident),*) => {$(
        impl<T> std::ops::$tr<T> for Size where Size: std::ops::$op<T, Output = Size> {
            fn $f(&mut self, o: T) {
                *self = std::ops::$op::$g(*self, o);
            }
        }
    )*};
}
assign_ops!(AddAssign add_assign Add add, SubAssign sub_assign Sub sub, MulAssign mul_assign Mul mul);

impl std::iter::Sum for Size {
    fn sum<I: Iterator<Item = Size>>(it: I) -> Size {
        it.fold(Size::ZERO, |a, b| a + b)
    }
}

impl<'a> std::iter::Sum<&'a Size> for Size {
    fn sum<I: Iterator<Item = &'a Size>>(it: I) -> Size {
        it.copied().sum()
    }
}

impl std::iter::Product for Size {
    fn product<I: Iterator<Item = Size>>(it: I) -> Size {
        it.fold(Size::ONE, |a, b| a * b)
    }
}

impl<'a> std::iter::Product<&'a Size> for Size {
    fn product<I: Iterator<Item = &'a Size>>(it: I) -> Size {
        it.copied().product()
    }
}

impl PartialEq<usize> for Size {
    fn eq(&self, o: &usize) -> bool {
        self.known() == Some(*o)
    }
}

/// As a C expression (`16*T`, `(T+15)/16`, `T%16`): integer division and remainder of
/// non-negative values, as the compiled code computes them.
/// A known size as a number, any other as its C expression (`"T"`, `"((T+15)/16)"`): how
/// manifests and programs written for integrators give sizes.
impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.constant() {
            Some(c) => s.serialize_i64(c),
            None => s.collect_str(self),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Repr::Const(c) = self.0 {
            return write!(f, "{c}");
        }
        let mut first = true;
        for (c, m) in self.terms().into_iter().rev() {
            let sign = if c < 0 { "-" } else { "+" };
            if !first {
                f.write_str(sign)?;
            } else if c < 0 {
                f.write_str("-")?;
            }
            first = false;
            let mut parts: Vec<String> = if c.abs() != 1 || m.is_empty() { vec![c.abs().to_string()] } else { Vec::new() };
            for a in &m {
                parts.push(match a {
                    Atom::Sym(s) => s.clone(),
                    Atom::Div(x, d) => format!("({}/{d})", operand(*x)),
                    Atom::Rem(x, d) => format!("({}%{d})", operand(*x)),
                });
            }
            f.write_str(&parts.join("*"))?;
        }
        Ok(())
    }
}

/// `x` as the left operand of `/` or `%`.
fn operand(x: Size) -> String {
    match x.terms().as_slice() {
        [(1, m)] if m.len() == 1 => x.to_string(),
        _ => format!("({x})"),
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Sizes bound to dimension symbols while a graph is scheduled.
pub type SizeEnv = HashMap<String, Size>;

/// The sizes of the values `env` binds.
pub fn known(env: &crate::DimEnv) -> SizeEnv {
    env.iter().map(|(k, &v)| (k.clone(), Size::of(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: i64) -> impl Fn(&str) -> Option<i64> {
        move |s| match s {
            "T" => Some(t),
            "B" => Some(3),
            _ => None,
        }
    }

    #[test]
    fn equal_polynomials_are_equal_sizes() {
        let (b, t) = (Size::sym("B"), Size::sym("T"));
        assert_eq!(b * t * 4 + t, t * (b * 4 + 1));
        assert_eq!((t + 3) - 3, t);
        assert_eq!(t - t, Size::ZERO);
        assert_eq!((b * 2 + 1) * (b * 2 + 1) - b * b * 4 - b * 4, Size::ONE);
        assert_ne!(b * t, b + t);
        assert_eq!([b, t, Size::of(12)].iter().product::<Size>(), t * b * 12);
    }

    #[test]
    fn chunks_of_a_symbolic_length() {
        let t = Size::sym("T");
        let (whole, rest) = (t.div_floor(16), t.modulo(16));
        for n in [1, 15, 16, 17, 2048, 2049] {
            assert_eq!((whole * 16 + rest).eval(&at(n)).unwrap(), n);
            assert_eq!(t.div_ceil(16).eval(&at(n)).unwrap(), n.div_euclid(16) + i64::from(n % 16 != 0));
        }
        assert_eq!((t * 32).div_floor(16), t * 2);
        assert_eq!((t * 32).modulo(16), Size::ZERO);
        assert_eq!((t * 6).div_exact(3), Some(t * 2));
        assert_eq!((t * 6 + 1).div_exact(3), None);
    }

    #[test]
    fn ranges_bound_every_value() {
        let t = Size::sym("T");
        let range = |s: &str| (s == "T").then_some((1, 2048));
        assert_eq!((t * 12 - 1).range(&range).unwrap(), (11, 24575));
        assert_eq!(t.modulo(16).range(&range).unwrap(), (0, 15));
        assert_eq!(t.div_floor(16).range(&range).unwrap(), (0, 128));
        assert!(Size::sym("B").range(&range).is_err());
    }

    #[test]
    fn displayed_as_c() {
        let (b, t) = (Size::sym("B"), Size::sym("T"));
        assert_eq!((b * t * 768).to_string(), "768*B*T");
        assert_eq!((t - 1).to_string(), "T-1");
        assert_eq!((t.div_ceil(16) * 2).to_string(), "2*((T+15)/16)");
        assert_eq!(Size::of(7).to_string(), "7");
        assert_eq!(t.modulo(16).to_string(), "(T%16)");
        assert_eq!((Size::ZERO - t).to_string(), "-T");
    }
}
