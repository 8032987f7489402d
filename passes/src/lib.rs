//! IR-to-IR passes and the pass manager.

pub mod attention;
mod autodiff;
mod dce;
mod dual_form;
mod fuse;
mod hoist;
mod merge_scans;
mod simplify;
mod sink_transposes;
mod split;

pub use autodiff::{expand_grads, gradient_graph, gradient_graph_wrt, gradients_only, vector_jacobian_product, ADJOINT};
pub use dce::{dead_code_elimination, keep_outputs};
pub use dual_form::{derive_with_report, DualFormReport};
pub use fuse::{fuse, fuse_with_report, FuseReport};
pub use hoist::{hoist_invariants, Hoisted};
pub use merge_scans::merge_reverse_scans;
pub use simplify::simplify;
pub use sink_transposes::sink_transposes;
pub use split::{split_at, Split, SAVED};
pub mod cost;
mod manager;

pub use manager::{compile, count_nodes, differentiable, pass_names, pipeline, run_passes, run_passes_observed, run_pipeline, Pass, PassResult, Rewrite};
