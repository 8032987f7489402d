//! Elementwise kernels as every backend sees them: a run of elementwise ops of one shape (what
//! the planner collects), and how a launch walks that shape in rows.

use anyhow::{ensure, Result};
use tttc_ir::layout::broadcast_strides;
use tttc_ir::{BinaryOp, Size, UnaryOp};

/// One value of a kernel, in evaluation order: operands refer to earlier entries.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// The kernel's `i`-th input.
    Input(usize),
    Const(f32),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
}

/// What a kernel computes: its values, which inputs are splats and which values it stores.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    pub exprs: Vec<Expr>,
    /// Per input: read one float for the whole row (`true`) or one per element.
    pub splat: Vec<bool>,
    /// The entries of `exprs` stored, in output order.
    pub outputs: Vec<usize>,
}

impl KernelSpec {
    /// Operations per element (a transcendental counts as 20), to decide whether to split a
    /// launch over threads.
    pub fn ops_per_element(&self) -> usize {
        let cost = |e: &Expr| match e {
            Expr::Unary(u, _) if !matches!(u, UnaryOp::Neg | UnaryOp::Sqrt) => 20,
            Expr::Unary(..) | Expr::Binary(..) => 1,
            Expr::Input(_) | Expr::Const(_) => 0,
        };
        self.exprs.iter().map(cost).sum::<usize>().max(1)
    }
}

/// How a kernel walks a shape: rows of `n` elements, the innermost axes along which every
/// contiguous input advances by one element per element and every splat input not at all (axes
/// of length 1 always merge), so that rows are as long as the broadcasts allow; `rows` rows per
/// call along the axis just outside, each input advancing by its `row_strides`; the `outer` axes
/// before that walked by the caller with each input's broadcast `strides`.
pub struct RowLayout {
    pub n: Size,
    pub rows: Size,
    pub outer: usize,
    pub strides: Vec<Vec<Size>>,
    pub row_strides: Vec<Size>,
}

pub fn row_layout(shape: &[Size], in_shapes: &[&[Size]], splat: &[bool]) -> Result<RowLayout> {
    let strides: Vec<Vec<Size>> = in_shapes.iter().map(|s| broadcast_strides(s, shape)).collect::<Result<_>>()?;
    let mut inner = shape.len();
    let mut n = Size::ONE;
    while inner > 0 {
        let d = inner - 1;
        let merges = shape[d].is_one() || strides.iter().zip(splat).all(|(s, &sp)| if sp { s[d].is_zero() } else { s[d] == n });
        if !merges {
            break;
        }
        n *= shape[d];
        inner = d;
    }
    ensure!(inner < shape.len() || shape.is_empty(), "kernel inputs {in_shapes:?} do not broadcast to {shape:?} as compiled");
    let (outer, rows, row_strides) = if inner == 0 {
        (0, Size::ONE, vec![Size::ZERO; strides.len()])
    } else {
        (inner - 1, shape[inner - 1], strides.iter().map(|s| s[inner - 1]).collect())
    };
    Ok(RowLayout { n, rows, outer, strides, row_strides })
}
