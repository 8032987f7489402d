//! Element types, dimensions and tensor types.
//!
//! A dimension is either a constant or a symbol plus a constant offset (`T`, `T-1`, `T+3`),
//! optionally divided (rounding up) by a chunk length: `T/16` is the number of chunks of 16 that
//! cover `T`, the length of a scan's per-iteration values.
//! Symbols (batch `B`, sequence `T`, a scan's chunk length `n`) stay open until run time, when the
//! interpreter binds them by matching argument types against the tensors it is given.

use std::collections::HashMap;
use std::fmt;

use anyhow::{bail, Result};

use crate::size::{Size, SizeEnv};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I64,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `⌈(sym + offset) / per⌉`, or the constant `offset` when there is no symbol (then `per` is 1).
/// `per` is 1 for an ordinary dimension; another value counts chunks (`T/16`), see [`Dim::chunks`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dim {
    pub sym: Option<String>,
    pub offset: i64,
    pub per: usize,
}

impl Dim {
    pub fn c(n: usize) -> Dim {
        Dim { sym: None, offset: n as i64, per: 1 }
    }

    pub fn sym(name: &str) -> Dim {
        Dim { sym: Some(name.to_string()), offset: 0, per: 1 }
    }

    /// The number of chunks of `per` elements that cover `self` (the last may be shorter):
    /// `⌈self / per⌉`, a constant for a constant, `T/16` for `T`. A dimension that already
    /// counts chunks cannot be divided again.
    pub fn chunks(&self, per: usize) -> Result<Dim> {
        if per == 0 {
            bail!("cannot cut {self} into chunks of 0");
        }
        if self.per != 1 {
            bail!("cannot cut {self} into chunks of {per}: it already counts chunks");
        }
        match self.sym {
            None => Ok(Dim::c((self.offset as usize).div_ceil(per))),
            Some(_) => Ok(Dim { per, ..self.clone() }),
        }
    }

    pub fn as_const(&self) -> Option<usize> {
        match self.sym {
            None => Some(self.offset as usize),
            Some(_) => None,
        }
    }

    pub fn is_one(&self) -> bool {
        self.as_const() == Some(1)
    }

    /// `self + k`; fails if a constant would become negative or the offset overflows, and for a
    /// chunk count (`T/16`) unless `k` is 0.
    pub fn plus(&self, k: i64) -> Result<Dim> {
        if k == 0 {
            return Ok(self.clone());
        }
        if self.per != 1 {
            bail!("cannot add {k} to the chunk count {self}");
        }
        let Some(offset) = self.offset.checked_add(k) else { bail!("dimension {self} + {k} overflows") };
        let d = Dim { sym: self.sym.clone(), offset, per: 1 };
        if d.sym.is_none() && d.offset < 0 {
            bail!("dimension {self} + {k} is negative");
        }
        Ok(d)
    }

    /// `self + other` where at most one of them is symbolic (and adding 0 is the only sum with a
    /// chunk count).
    pub fn add(&self, other: &Dim) -> Result<Dim> {
        match (&self.sym, &other.sym) {
            (Some(_), Some(_)) => bail!("cannot add symbolic dimensions {self} and {other}"),
            (None, _) => other.plus(self.offset),
            (_, None) => self.plus(other.offset),
        }
    }

    pub fn resolve(&self, env: &DimEnv) -> Result<usize> {
        let base = match &self.sym {
            None => 0,
            Some(s) => match env.get(s) {
                Some(v) => *v as i64,
                None => bail!("dimension symbol {s} is not bound"),
            },
        };
        let v = base + self.offset;
        if v < 0 {
            bail!("dimension {self} resolves to {v}");
        }
        if self.per == 0 {
            bail!("dimension {self} divides by 0");
        }
        Ok((v as usize).div_ceil(self.per))
    }
}

impl Dim {
    /// The size `self` stands for with its symbol bound in `env` (a chunk count rounds up).
    pub fn size(&self, env: &SizeEnv) -> Result<Size> {
        let base = match &self.sym {
            None => Size::ZERO,
            Some(s) => match env.get(s) {
                Some(v) => *v,
                None => bail!("dimension symbol {s} is not bound"),
            },
        };
        let v = base + Size::int(self.offset);
        if v.constant().is_some_and(|c| c < 0) {
            bail!("dimension {self} resolves to {v}");
        }
        Ok(if self.per == 1 { v } else { v.div_ceil(self.per) })
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.sym, self.offset, self.per) {
            (None, n, 1) => write!(f, "{n}"),
            (None, n, p) => write!(f, "{n}/{p}"),
            (Some(s), 0, 1) => write!(f, "{s}"),
            (Some(s), n, 1) if n > 0 => write!(f, "{s}+{n}"),
            (Some(s), n, 1) => write!(f, "{s}{n}"),
            (Some(s), 0, p) => write!(f, "{s}/{p}"),
            (Some(s), n, p) if n > 0 => write!(f, "({s}+{n})/{p}"),
            (Some(s), n, p) => write!(f, "({s}{n})/{p}"),
        }
    }
}

/// Values bound to dimension symbols while a graph runs.
pub type DimEnv = HashMap<String, usize>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl Type {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Type {
        Type { dtype, shape }
    }

    pub fn f32(shape: &[usize]) -> Type {
        Type::new(DType::F32, shape.iter().map(|&n| Dim::c(n)).collect())
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn resolve(&self, env: &DimEnv) -> Result<Vec<usize>> {
        self.shape.iter().map(|d| d.resolve(env)).collect()
    }

    /// Binds the symbols of `self` to a concrete shape, checking everything already known. A chunk
    /// count (`T/16`) binds nothing: its symbol must be bound already (by an ordinary dimension of
    /// this type or an earlier binding), and its length is checked.
    pub fn bind(&self, shape: &[usize], env: &mut DimEnv) -> Result<()> {
        let mut sizes = crate::size::known(env);
        let shape: Vec<Size> = shape.iter().map(|&n| Size::of(n)).collect();
        self.bind_sizes(&shape, &mut sizes)?;
        for (k, v) in sizes {
            env.insert(k, v.known().expect("known lengths bind known values"));
        }
        Ok(())
    }
}

impl Type {
    pub fn sizes(&self, env: &SizeEnv) -> Result<Vec<Size>> {
        self.shape.iter().map(|d| d.size(env)).collect()
    }

    /// [`Type::bind`] for sizes: binds the symbols of `self` to `shape`, checking what is known.
    /// A chunk count binds nothing and is checked where both sides are constants.
    pub fn bind_sizes(&self, shape: &[Size], env: &mut SizeEnv) -> Result<()> {
        if shape.len() != self.rank() {
            bail!("expected rank {} ({self}), got shape {shape:?}", self.rank());
        }
        let (counts, plain): (Vec<_>, Vec<_>) = self.shape.iter().zip(shape).partition(|(d, _)| d.per != 1);
        for (d, &n) in plain {
            match &d.sym {
                None if n != Size::int(d.offset) => bail!("expected {self}, got shape {shape:?}"),
                None => {}
                Some(s) => {
                    let v = n - Size::int(d.offset);
                    match env.get(s) {
                        Some(&old) if old != v => bail!("expected {self} with {s} = {old}, got shape {shape:?}"),
                        _ if v.constant().is_some_and(|c| c < 0) => bail!("expected {self}, got shape {shape:?}"),
                        _ => {
                            env.insert(s.clone(), v);
                        }
                    }
                }
            }
        }
        for (d, &n) in counts {
            if let Some(s) = d.sym.as_ref().filter(|s| !env.contains_key(*s)) {
                bail!("expected {self}: the chunk count {d} cannot bind its symbol {s}, which is not bound");
            }
            let want = d.size(env)?;
            if want.constant().is_some() && n.constant().is_some() && want != n {
                bail!("expected {self} with {d} = {want}, got shape {shape:?}");
            }
        }
        Ok(())
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
