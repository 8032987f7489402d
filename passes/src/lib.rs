//! IR-to-IR passes and the pass manager.

mod autodiff;
mod dce;

pub use autodiff::expand_grads;
pub use dce::{dead_code_elimination, keep_outputs};
