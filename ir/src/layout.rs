//! Shapes and strides of dense row-major tensors: what the interpreter and every backend's
//! lowering compute element offsets with.

use anyhow::{bail, ensure, Result};

use crate::{ReduceKind, Size};

/// A length or stride: known (`usize`, the interpreter's) or a [`Size`] (a schedule's).
pub trait Extent: Copy + PartialEq + std::fmt::Debug + std::ops::Mul<Output = Self> + std::iter::Product + From<usize> {}

impl Extent for usize {}
impl Extent for Size {}

/// The NumPy broadcast of two shapes.
pub fn broadcast_shape<E: Extent>(a: &[E], b: &[E]) -> Result<Vec<E>> {
    let r = a.len().max(b.len());
    let one = E::from(1);
    (0..r)
        .map(|i| {
            let da = (i + a.len()).checked_sub(r).map(|j| a[j]).unwrap_or(one);
            let db = (i + b.len()).checked_sub(r).map(|j| b[j]).unwrap_or(one);
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (x, y) if x == one => Ok(y),
                (x, y) if y == one => Ok(x),
                (x, y) => bail!("cannot broadcast {a:?} with {b:?} ({x:?} vs {y:?})"),
            }
        })
        .collect()
}

/// Row-major strides (in elements) of a contiguous tensor of `shape`.
pub fn contiguous_strides<E: Extent>(shape: &[E]) -> Vec<E> {
    let mut s = vec![E::from(1); shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides that read a tensor of shape `from` as if it had shape `to` (0 along broadcast axes).
pub fn broadcast_strides<E: Extent>(from: &[E], to: &[E]) -> Result<Vec<E>> {
    broadcast_strides_of(from, &contiguous_strides(from), to)
}

/// [`broadcast_strides`] of a tensor of shape `from` laid out with `strides`.
pub fn broadcast_strides_of<E: Extent>(from: &[E], strides: &[E], to: &[E]) -> Result<Vec<E>> {
    ensure!(from.len() <= to.len(), "cannot broadcast {from:?} to {to:?}");
    let lead = to.len() - from.len();
    let mut s = vec![E::from(0); to.len()];
    for i in 0..from.len() {
        if from[i] == to[lead + i] {
            s[lead + i] = strides[i];
        } else {
            ensure!(from[i] == E::from(1), "cannot broadcast {from:?} to {to:?}");
        }
    }
    Ok(s)
}

/// A shape as `[outer, len, inner]` around `axis`.
pub fn split_at_axis<E: Extent>(shape: &[E], axis: usize) -> (E, E, E) {
    (shape[..axis].iter().copied().product(), shape[axis], shape[axis + 1..].iter().copied().product())
}

/// A reduction's `[outer, len, inner]` view of `shape` around `axis`, and its result's shape;
/// an error for a max or mean over an empty axis.
pub fn reduction<E: Extent>(shape: &[E], kind: ReduceKind, axis: usize, keepdim: bool) -> Result<(E, E, E, Vec<E>)> {
    ensure!(axis < shape.len(), "reduction axis {axis} out of range for shape {shape:?}");
    let (outer, len, inner) = split_at_axis(shape, axis);
    ensure!(len != E::from(0) || kind == ReduceKind::Sum, "reduction over an empty axis");
    let mut out = shape.to_vec();
    if keepdim {
        out[axis] = E::from(1);
    } else {
        out.remove(axis);
    }
    Ok((outer, len, inner, out))
}
