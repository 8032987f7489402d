//! The op vocabulary: small and general, so that every model family is spelled with the same ops.

use crate::graph::Graph;
use crate::types::{DType, Dim};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Silu,
    /// `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`
    GeluTanh,
    /// `log(1 + eˣ)`, and `x` itself above 20 (PyTorch's threshold).
    Softplus,
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    /// `1` where `x ≥ y`, else `0` (in the operands' type): masks for derivatives of max and relu.
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
}

/// An operation. Elementwise binary ops broadcast their operands NumPy-style.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// A scalar (shape `[]`) that broadcasts against anything.
    Const {
        value: f64,
        dtype: DType,
    },
    /// `[0, 1, …, len-1]`.
    Iota {
        len: Dim,
        dtype: DType,
    },
    Cast {
        to: DType,
    },
    Reduce {
        kind: ReduceKind,
        axis: usize,
        keepdim: bool,
    },
    /// `[…, M, K] × […, K, N] → […, M, N]`, batch dimensions broadcast.
    MatMul,
    Reshape {
        shape: Vec<Dim>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Broadcast {
        shape: Vec<Dim>,
    },
    /// Python-style bounds: a negative bound counts from the end; `end: None` is the end.
    Slice {
        axis: usize,
        start: i64,
        end: Option<i64>,
    },
    Concat {
        axis: usize,
    },
    /// Zero padding along one axis.
    Pad {
        axis: usize,
        before: usize,
        after: usize,
    },
    /// `table` indexed along `axis` by an i64 index tensor: the index's shape replaces that axis.
    Gather {
        axis: usize,
    },
    /// `out[index[s…], r…] += updates[s…, r…]` into zeros `[depth, r…]`: the adjoint of `gather`
    /// along axis 0. Operands: updates (f32, the index's shape followed by a row's), index (i64).
    ScatterAdd {
        depth: usize,
    },
    /// i64 `[…]` → f32 `[…, depth]`.
    OneHot {
        depth: usize,
    },
    /// Over the last two axes, entries above the diagonal (column > row) become `fill`; with a
    /// `window` W, also those W or more below it (row − column ≥ W: a key too far back for a
    /// sliding-window attention's query).
    TriMask {
        fill: f64,
        window: Option<usize>,
    },
    /// The identity, which no pass looks through or merges: a rematerialised computation starts
    /// from barriers so that it is not deduplicated with the original.
    Barrier,
    /// The identity, through which no gradient flows: a value that only keeps a computation in
    /// range (the maximum a log-sum-exp subtracts before exponentiating and adds back, whose
    /// derivative cancels), so the autodiff differentiates nothing through it.
    StopGradient,
    Scan(Box<Scan>),
    /// The gradient of a body's scalar output with respect to some of its arguments. Operands are
    /// the body's arguments; results are the gradients of arguments `wrt`, in that order. Passes
    /// expand it into explicit ops (reverse-mode autodiff) before anything executes it.
    Grad(Box<Grad>),
    /// A fused region: a sub-graph meant to execute as one kernel, its intermediate values not
    /// materialised. Operands are the body's arguments, results the body's outputs. The `fuse`
    /// pass builds them from runs of top-level nodes. The backends plan the body step by step:
    /// elementwise runs become kernels and, on the GPU, a product's epilogue is applied before
    /// its store (docs/passes.md, "What the backends do with regions").
    Fused(Box<Fused>),
}

/// Whether a transpose's `perm` swaps the last two axes and keeps the others (a matrix transpose,
/// batched), the one products can read as strides.
pub fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i)
}

/// A structured loop over a sequence axis, `chunk` elements at a time (the last chunk may be
/// shorter). Inputs: `carries` initial states, `seqs` sequences cut into chunks, then loop-invariant
/// values. The body takes the same three groups and returns the new carries followed by per-chunk
/// outputs; the scan returns the final carries followed by those outputs concatenated along `axis`.
/// In the body, the chunk axis of a sequence has a symbolic length (`1` when `chunk` is 1).
///
/// Per-iteration values (decided by types, with `chunk > 1`): a sequence whose body argument is
/// `1` along the axis is an *iteration sequence*, one element per chunk (outer length
/// `T/chunk`, see [`crate::Dim::chunks`]), iteration k reading element k; a per-chunk output that is
/// `1` along the axis is an *iteration output*, stacked to `T/chunk`. At least one sequence must be
/// an ordinary chunked one: it gives the length `T` and the chunk symbol.
///
/// With `reverse`, the chunks (the same boundaries: the first starts at 0, the last may be
/// shorter) are visited last to first, carries flowing from the last chunk to the first; outputs
/// still come out in sequence order.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    pub axis: usize,
    pub chunk: usize,
    pub carries: usize,
    pub seqs: usize,
    pub body: Graph,
    pub reverse: bool,
}

impl Scan {
    /// Whether operand `i` (a sequence: `carries ≤ i < carries + seqs`) is an iteration sequence:
    /// `chunk > 1` and its body argument is `1` along the axis.
    pub fn is_iteration_seq(&self, i: usize) -> bool {
        let along = |a: &crate::graph::Arg| self.body.types.get(a.value.index()).and_then(|t| t.shape.get(self.axis)).cloned();
        self.chunk > 1 && i >= self.carries && i - self.carries < self.seqs && self.body.args.get(i).and_then(along).is_some_and(|d| d.is_one())
    }
}

impl Scan {
    /// Whether per-chunk output `j` (counted after the carries) is an iteration output: `chunk > 1`
    /// and the body's output is `1` along the axis.
    pub fn is_iteration_output(&self, j: usize) -> bool {
        let along = |v: &crate::ValueId| self.body.types.get(v.index()).and_then(|t| t.shape.get(self.axis)).cloned();
        self.chunk > 1 && self.body.outputs.get(self.carries + j).and_then(|(_, v)| along(v)).is_some_and(|d| d.is_one())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Grad {
    pub wrt: Vec<usize>,
    pub body: Graph,
}

/// The body of a `fused` node: its arguments are the values the region reads from outside, its
/// outputs the values used after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    pub body: Graph,
}

impl Op {
    /// The nested graph of a `scan`, `grad` or `fused`.
    pub fn body(&self) -> Option<&Graph> {
        match self {
            Op::Scan(s) => Some(&s.body),
            Op::Grad(g) => Some(&g.body),
            Op::Fused(f) => Some(&f.body),
            _ => None,
        }
    }

    pub fn body_mut(&mut self) -> Option<&mut Graph> {
        match self {
            Op::Scan(s) => Some(&mut s.body),
            Op::Grad(g) => Some(&mut g.body),
            Op::Fused(f) => Some(&mut f.body),
            _ => None,
        }
    }

    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Rsqrt => "rsqrt",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Silu => "silu",
                UnaryOp::GeluTanh => "gelu_tanh",
                UnaryOp::Softplus => "softplus",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
                BinaryOp::Ge => "ge",
            },
            Op::Const { .. } => "const",
            Op::Iota { .. } => "iota",
            Op::Cast { .. } => "cast",
            Op::Reduce { kind, .. } => match kind {
                ReduceKind::Sum => "reduce_sum",
                ReduceKind::Mean => "reduce_mean",
                ReduceKind::Max => "reduce_max",
            },
            Op::MatMul => "matmul",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Broadcast { .. } => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Pad { .. } => "pad",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::OneHot { .. } => "one_hot",
            Op::TriMask { .. } => "tri_mask",
            Op::Barrier => "barrier",
            Op::StopGradient => "stop_gradient",
            Op::Scan(_) => "scan",
            Op::Grad(_) => "grad",
            Op::Fused(_) => "fused",
        }
    }

    pub const UNARY: [UnaryOp; 12] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::GeluTanh,
        UnaryOp::Softplus,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];
    pub const BINARY: [BinaryOp; 6] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Ge];
    pub const REDUCE: [ReduceKind; 3] = [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max];
}
