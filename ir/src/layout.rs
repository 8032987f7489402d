//! Shapes and strides of dense row-major tensors: what the interpreter and every backend's
//! lowering compute element offsets with.

use anyhow::{bail, ensure, Result};

use crate::ReduceKind;

/// The NumPy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = (i + a.len()).checked_sub(r).map(|j| a[j]).unwrap_or(1);
            let db = (i + b.len()).checked_sub(r).map(|j| b[j]).unwrap_or(1);
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                (x, y) => bail!("cannot broadcast {a:?} with {b:?} ({x} vs {y})"),
            }
        })
        .collect()
}

/// Row-major strides (in elements) of a contiguous tensor of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides that read a tensor of shape `from` as if it had shape `to` (0 along broadcast axes).
pub fn broadcast_strides(from: &[usize], to: &[usize]) -> Result<Vec<usize>> {
    ensure!(from.len() <= to.len(), "cannot broadcast {from:?} to {to:?}");
    let lead = to.len() - from.len();
    let fs = contiguous_strides(from);
    let mut s = vec![0; to.len()];
    for i in 0..from.len() {
        if from[i] == to[lead + i] {
            s[lead + i] = fs[i];
        } else {
            ensure!(from[i] == 1, "cannot broadcast {from:?} to {to:?}");
        }
    }
    Ok(s)
}

/// A shape as `[outer, len, inner]` around `axis`.
pub fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// A reduction's `[outer, len, inner]` view of `shape` around `axis`, and its result's shape;
/// an error for a max or mean over an empty axis.
pub fn reduction(shape: &[usize], kind: ReduceKind, axis: usize, keepdim: bool) -> Result<(usize, usize, usize, Vec<usize>)> {
    ensure!(axis < shape.len(), "reduction axis {axis} out of range for shape {shape:?}");
    let (outer, len, inner) = split_at_axis(shape, axis);
    ensure!(len > 0 || kind == ReduceKind::Sum, "reduction over an empty axis");
    let mut out = shape.to_vec();
    if keepdim {
        out[axis] = 1;
    } else {
        out.remove(axis);
    }
    Ok((outer, len, inner, out))
}
