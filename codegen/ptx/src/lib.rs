//! tttc's GPU backend: PTX text for sm_80 and sm_90, emitted from a small typed representation.
//!
//! * [`isa`]: the instructions tttc emits, as values, and their printer.
//! * [`parse`]: the printed text read back (the simulator runs what the driver would load).
//! * [`build`]: a kernel builder with fresh registers, parameters and labels.
//! * [`kernels`]: one kernel per scheduled instruction, constant sizes as immediates and the
//!   others computed from the lengths a launch passes; matrix products on
//!   tensor cores at f32 accuracy (`gemm`: three tf32 `mma.sync` per step).
//! * `persistent`: a whole scan as one kernel, one block per lane (the TTT mini-batch loop per
//!   batch × head), the body's instructions one after another in the block.
//! * [`model`]: a whole model as kernels and the host program that launches them on a [`model::Device`].
//! * [`estimate`]: occupancy and roofline estimates for a GPU, from `ptxas`'s figures.
//! * [`ptxas`]: NVIDIA's assembler, when installed: each module assembled, its figures read.

pub mod build;
pub mod estimate;
mod gemm;
pub mod isa;
pub mod kernels;
mod math;
pub mod model;
mod parse;
mod persistent;
pub mod ptxas;

pub use parse::parse;

/// The GPU architectures every module is written for (and assembled for in CI).
pub const TARGETS: [&str; 2] = ["sm_80", "sm_90"];
