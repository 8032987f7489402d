//! tttc's graph IR: typed tensor values with static (or symbolic) shapes, a small general op
//! vocabulary with a structured scan, a text format, a verifier and the reference interpreter.

mod graph;
mod infer;
pub mod interp;
pub mod layout;
mod op;
pub mod size;
mod tensor;
pub mod text;
mod types;
mod verify;

pub use graph::{Arg, ArgKind, Graph, Node, ValueId};
pub use infer::infer;
pub use interp::{run, Precision};
pub use op::{swaps_last_two, BinaryOp, Fused, Grad, Op, ReduceKind, Scan, UnaryOp};
pub use size::{Size, SizeEnv};
pub use tensor::{Data, Tensor, TensorView};
pub use types::{DType, Dim, DimEnv, Type};
pub use verify::verify;
