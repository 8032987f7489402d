//! Element types, dimensions and tensor types.
//!
//! A dimension is either a constant or a symbol plus a constant offset (`T`, `T-1`, `T+3`).
//! Symbols (batch `B`, sequence `T`, a scan's chunk length `n`) stay open until run time, when the
//! interpreter binds them by matching argument types against the tensors it is given.

use std::collections::HashMap;
use std::fmt;

use anyhow::{bail, Result};

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
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `sym + offset`, or the constant `offset` when there is no symbol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dim {
    pub sym: Option<String>,
    pub offset: i64,
}

impl Dim {
    pub fn c(n: usize) -> Dim {
        Dim { sym: None, offset: n as i64 }
    }

    pub fn sym(name: &str) -> Dim {
        Dim { sym: Some(name.to_string()), offset: 0 }
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

    /// `self + k`; fails if a constant would become negative or the offset overflows.
    pub fn plus(&self, k: i64) -> Result<Dim> {
        let Some(offset) = self.offset.checked_add(k) else { bail!("dimension {self} + {k} overflows") };
        let d = Dim { sym: self.sym.clone(), offset };
        if d.sym.is_none() && d.offset < 0 {
            bail!("dimension {self} + {k} is negative");
        }
        Ok(d)
    }

    /// `self + other` where at most one of them is symbolic.
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
        Ok(v as usize)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.sym, self.offset) {
            (None, n) => write!(f, "{n}"),
            (Some(s), 0) => write!(f, "{s}"),
            (Some(s), n) if n > 0 => write!(f, "{s}+{n}"),
            (Some(s), n) => write!(f, "{s}{n}"),
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

    /// Binds the symbols of `self` to a concrete shape, checking everything already known.
    pub fn bind(&self, shape: &[usize], env: &mut DimEnv) -> Result<()> {
        if shape.len() != self.rank() {
            bail!("expected rank {} ({self}), got shape {shape:?}", self.rank());
        }
        for (d, &n) in self.shape.iter().zip(shape) {
            match &d.sym {
                None => {
                    if d.offset as usize != n {
                        bail!("expected {self}, got shape {shape:?}");
                    }
                }
                Some(s) => {
                    let v = n as i64 - d.offset;
                    match env.get(s) {
                        Some(&old) if old as i64 != v => {
                            bail!("expected {self} with {s} = {old}, got shape {shape:?}")
                        }
                        _ if v < 0 => bail!("expected {self}, got shape {shape:?}"),
                        _ => {
                            env.insert(s.clone(), v as usize);
                        }
                    }
                }
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
