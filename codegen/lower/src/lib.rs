//! From a graph (after the pass pipeline) to what a backend emits, without knowing the backend.
//!
//! * [`plan`]: runs of elementwise ops of one shape become kernels ([`elementwise`]), products,
//!   reductions and scans become steps (fused regions are planned as the ops they hold); scans
//!   whose lanes stay apart can be split over threads ([`lanes`]); attention's softmax between
//!   two products can be one step ([`attention`]), and so can Mamba's selective scan
//!   ([`recurrence`]) and a softmax cross-entropy's row statistics and its backward
//!   ([`cross_entropy`]).
//! * [`schedule`]: a plan with every shape a `Size` (known, or computed from the lengths a
//!   program is launched with), as straight-line instructions over buffers with fixed workspace
//!   offsets; what every backend runs or emits.
//! * [`math`]: the elementwise ops (polynomial `exp`, `log`, `tanh`) written once against each
//!   backend's primitive instructions.

pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod lanes;
pub mod math;
pub mod plan;
pub mod recurrence;
pub mod schedule;
