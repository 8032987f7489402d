//! Lifting an extracted index-notation term back into IR ops: Σ over a product of two sides
//! becomes a (batched) matmul, other Σ a `reduce_sum`, products and sums broadcasting elementwise
//! ops, indicators a `tri_mask`; transposes and reshapes line the axes up.

use anyhow::{bail, ensure, Context, Result};
use egg::{Id, RecExpr};
use tttc_ir::{BinaryOp, Dim, Graph, ReduceKind, UnaryOp, ValueId};

use super::ix::{leaf_number, Ix};
use super::lower::{Axis, Leaf};

/// A lifted value and the atom each of its axes holds (`None`: a size-1 axis).
#[derive(Clone, Debug)]
struct Lifted {
    v: ValueId,
    axes: Vec<Option<u32>>,
}

pub struct Lifter<'a> {
    pub g: &'a mut Graph,
    pub atoms: &'a [Dim],
    pub leaves: &'a [Leaf],
    /// The new graph's value for each value of the lowered graph.
    pub value: &'a dyn Fn(ValueId) -> Result<ValueId>,
}

impl Lifter<'_> {
    /// Lifts `expr` and shapes it as the root it replaces: `axes` per dimension of `shape`.
    pub fn lift_root(&mut self, expr: &RecExpr<Ix>, axes: &[Axis], shape: &[Dim]) -> Result<ValueId> {
        let root = Id::from(expr.as_ref().len() - 1);
        let l = self.lift(expr, root)?;
        let target: Vec<Option<u32>> = axes
            .iter()
            .flat_map(|a| match a {
                Axis::Atoms(x) => x.iter().map(|&i| Some(i)).collect(),
                _ => vec![None],
            })
            .collect();
        let v = self.arrange(&l, &target)?.v;
        let lifted = &self.g.ty(v).shape;
        if lifted == shape {
            return Ok(v);
        }
        // A term that is constant along some of the root's axes (a sum that starts at zero, say)
        // is lifted with those axes of length 1.
        if lifted.len() == shape.len() && lifted.iter().zip(shape).all(|(l, s)| l == s || l.is_one()) {
            return self.g.broadcast(v, shape.to_vec());
        }
        self.g.reshape(v, shape.to_vec())
    }

    fn lift(&mut self, expr: &RecExpr<Ix>, id: Id) -> Result<Lifted> {
        match &expr[id] {
            Ix::Sym(s) => self.leaf(leaf_number(s).with_context(|| format!("{s} is not a leaf"))?),
            Ix::Neg(x) => {
                let l = self.lift(expr, *x)?;
                Ok(Lifted { v: self.g.unary(UnaryOp::Neg, l.v)?, axes: l.axes })
            }
            Ix::Add([a, b]) => {
                // x + (−y) is a subtraction.
                if let Ix::Neg(y) = &expr[*b] {
                    let (x, y) = (self.lift(expr, *a)?, self.lift(expr, *y)?);
                    return self.combine(&x, &y, BinaryOp::Sub);
                }
                if let Ix::Neg(x) = &expr[*a] {
                    let (y, x) = (self.lift(expr, *b)?, self.lift(expr, *x)?);
                    return self.combine(&y, &x, BinaryOp::Sub);
                }
                let (x, y) = (self.lift(expr, *a)?, self.lift(expr, *b)?);
                self.combine(&x, &y, BinaryOp::Add)
            }
            Ix::Mul(fs) => {
                let lifted: Vec<Lifted> = fs.iter().map(|&f| self.lift(expr, f)).collect::<Result<_>>()?;
                self.product(lifted)
            }
            Ix::Sum([k, body]) => {
                let Ix::Sym(ks) = &expr[*k] else { bail!("Σ over a non-index") };
                let k: u32 = ks.as_str().strip_prefix('i').and_then(|n| n.parse().ok()).context("Σ index")?;
                let factors: Vec<Lifted> = match &expr[*body] {
                    Ix::Mul(fs) => fs.iter().map(|&f| self.lift(expr, f)).collect::<Result<_>>()?,
                    _ => vec![self.lift(expr, *body)?],
                };
                let (mut with, without): (Vec<Lifted>, Vec<Lifted>) = factors.into_iter().partition(|l| l.axes.contains(&Some(k)));
                ensure!(!with.is_empty(), "Σ over index {k} that no factor mentions");
                // Multiply factors with the same indices elementwise, and else the pair with the
                // fewest indices together, down to the two sides of a matmul.
                while with.len() > 2 || (with.len() == 2 && same_indices(&with[0], &with[1])) {
                    let (i, j) = cheapest_pair(&with, self.atoms);
                    let y = with.remove(j);
                    let x = with.remove(i);
                    with.push(self.combine(&x, &y, BinaryOp::Mul)?);
                }
                let contracted = if with.len() == 1 {
                    let l = with.pop().unwrap();
                    let pos = l.axes.iter().position(|a| *a == Some(k)).unwrap();
                    let v = self.g.reduce(ReduceKind::Sum, l.v, pos as i64, false)?;
                    let mut axes = l.axes;
                    axes.remove(pos);
                    Lifted { v, axes }
                } else {
                    let b = with.pop().unwrap();
                    let a = with.pop().unwrap();
                    self.contract(&a, &b, k)?
                };
                let mut all = without;
                all.push(contracted);
                self.product(all)
            }
        }
    }

    fn product(&mut self, factors: Vec<Lifted>) -> Result<Lifted> {
        let mut it = factors.into_iter();
        let mut acc = it.next().context("empty product")?;
        for f in it {
            acc = self.combine(&acc, &f, BinaryOp::Mul)?;
        }
        Ok(acc)
    }

    fn leaf(&mut self, k: usize) -> Result<Lifted> {
        match &self.leaves[k] {
            Leaf::Lower { row, col } => {
                let shape = vec![self.atoms[*row as usize].clone(), self.atoms[*col as usize].clone()];
                let one = self.g.scalar(1.0)?;
                let ones = self.g.broadcast(one, shape)?;
                Ok(Lifted { v: self.g.tri_mask(ones, 0.0)?, axes: vec![Some(*row), Some(*col)] })
            }
            Leaf::Value(value, axes) => {
                let mut v = (self.value)(*value)?;
                for (i, a) in axes.iter().enumerate() {
                    if *a == Axis::Last {
                        v = self.g.slice(v, i as i64, -1, None)?;
                    }
                }
                let mut shape = Vec::new();
                let mut out = Vec::new();
                for (a, d) in axes.iter().zip(self.g.ty(v).shape.clone()) {
                    match a {
                        Axis::Atoms(x) => {
                            for &i in x {
                                ensure!(!out.contains(&Some(i)), "leaf reads index {i} twice");
                                shape.push(self.atoms[i as usize].clone());
                                out.push(Some(i));
                            }
                        }
                        _ => {
                            shape.push(d);
                            out.push(None);
                        }
                    }
                }
                if self.g.ty(v).shape != shape {
                    v = self.g.reshape(v, shape)?;
                }
                Ok(Lifted { v, axes: out })
            }
        }
    }

    /// An elementwise op of two lifted values, broadcast over the union of their atoms.
    fn combine(&mut self, x: &Lifted, y: &Lifted, op: BinaryOp) -> Result<Lifted> {
        let mut target: Vec<Option<u32>> = x.axes.iter().filter(|a| a.is_some()).cloned().collect();
        for a in y.axes.iter().filter(|a| a.is_some()) {
            if !target.contains(a) {
                target.push(*a);
            }
        }
        let (xa, ya) = (self.arrange(x, &target)?, self.arrange(y, &target)?);
        Ok(Lifted { v: self.g.binary(op, xa.v, ya.v)?, axes: target })
    }

    /// `Σ_k a·b` as a matmul: atoms of both sides are batch axes, one atom only in `a` is M (the
    /// others become batch axes that `b` broadcasts over), one only in `b` is N, likewise.
    fn contract(&mut self, a: &Lifted, b: &Lifted, k: u32) -> Result<Lifted> {
        let atoms = |l: &Lifted| -> Vec<u32> { l.axes.iter().flatten().copied().filter(|&i| i != k).collect() };
        let (sa, sb) = (atoms(a), atoms(b));
        let shared: Vec<u32> = sa.iter().copied().filter(|i| sb.contains(i)).collect();
        let mut only_a: Vec<u32> = sa.iter().copied().filter(|i| !sb.contains(i)).collect();
        let mut only_b: Vec<u32> = sb.iter().copied().filter(|i| !sa.contains(i)).collect();
        let (m, n) = (only_a.pop(), only_b.pop());
        let some = |v: &[u32]| v.iter().map(|&i| Some(i)).collect::<Vec<_>>();
        let ones = |n: usize| vec![None; n];
        let mut ta = some(&shared);
        ta.extend(some(&only_a));
        ta.extend(ones(only_b.len()));
        ta.extend([m, Some(k)]);
        let mut tb = some(&shared);
        tb.extend(ones(only_a.len()));
        tb.extend(some(&only_b));
        tb.extend([Some(k), n]);
        let (xa, xb) = (self.arrange(a, &ta)?, self.arrange(b, &tb)?);
        let v = self.g.matmul(xa.v, xb.v)?;
        let mut axes = some(&shared);
        axes.extend(some(&only_a));
        axes.extend(some(&only_b));
        axes.extend([m, n]);
        Ok(Lifted { v, axes })
    }

    /// `l` with its axes in the order of `target` (`None` slots and atoms `l` lacks are size 1).
    fn arrange(&mut self, l: &Lifted, target: &[Option<u32>]) -> Result<Lifted> {
        let mine: Vec<u32> = l.axes.iter().flatten().copied().collect();
        for a in &mine {
            ensure!(target.contains(&Some(*a)), "index {a} has no place among {target:?}");
        }
        let mut v = l.v;
        // Drop size-1 axes, put the atoms in target order, then insert the size-1 axes wanted.
        if mine.len() != l.axes.len() {
            let shape: Vec<Dim> = mine.iter().map(|&i| self.atoms[i as usize].clone()).collect();
            v = self.g.reshape(v, shape)?;
        }
        let mut order: Vec<u32> = mine.clone();
        order.sort_by_key(|a| target.iter().position(|t| *t == Some(*a)));
        if order != mine {
            let perm: Vec<usize> = order.iter().map(|a| mine.iter().position(|m| m == a).unwrap()).collect();
            v = self.g.transpose(v, &perm)?;
        }
        let axes: Vec<Option<u32>> = target.iter().map(|t| t.filter(|a| mine.contains(a))).collect();
        let shape: Vec<Dim> = axes.iter().map(|a| a.map_or(Dim::c(1), |i| self.atoms[i as usize].clone())).collect();
        if self.g.ty(v).shape != shape {
            v = self.g.reshape(v, shape)?;
        }
        Ok(Lifted { v, axes })
    }
}

fn atom_set(l: &Lifted) -> Vec<u32> {
    l.axes.iter().flatten().copied().collect()
}

fn same_indices(x: &Lifted, y: &Lifted) -> bool {
    let (mut a, mut b) = (atom_set(x), atom_set(y));
    a.sort();
    b.sort();
    a == b
}

/// Whether one value's indices are all among the other's.
fn nested(x: &Lifted, y: &Lifted) -> bool {
    let (a, b) = (atom_set(x), atom_set(y));
    a.iter().all(|i| b.contains(i)) || b.iter().all(|i| a.contains(i))
}

/// The pair of factors whose elementwise product has the fewest elements (nested pairs first).
fn cheapest_pair(fs: &[Lifted], atoms: &[Dim]) -> (usize, usize) {
    let size = |i: &u32| atoms[*i as usize].as_const().unwrap_or(1 << 16) as f64;
    let mut best = (0, 1, f64::INFINITY);
    for i in 0..fs.len() {
        for j in i + 1..fs.len() {
            let mut union = atom_set(&fs[i]);
            union.extend(atom_set(&fs[j]).into_iter().filter(|a| !atom_set(&fs[i]).contains(a)));
            let cost = union.iter().map(size).product::<f64>() * if nested(&fs[i], &fs[j]) { 0.5 } else { 1.0 };
            if cost < best.2 {
                best = (i, j, cost);
            }
        }
    }
    (best.0, best.1)
}
