//! IR-to-IR passes.

mod dce;

pub use dce::{dead_code_elimination, keep_outputs};
