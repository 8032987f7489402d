//! tttc's GPU backend: PTX text for sm_80 and sm_90, emitted from a small typed representation.
//!
//! * [`isa`]: the instructions tttc emits, as values, and their printer.
//! * [`parse`]: the printed text read back (the simulator runs what the driver would load).
//! * [`build`]: a kernel builder with fresh registers, parameters and labels.

pub mod build;
pub mod isa;
mod parse;

pub use parse::parse;
