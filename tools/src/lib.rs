//! What tttc does around running a model: training (`train`), benchmarks against the peers
//! (`bench`), loss curves (`plot`) and comparisons of training runs (`compare`). Kept apart from
//! `tttc-runtime` so that a program that only runs models does not build plotting or progress bars.

pub mod bench;
pub mod compare;
pub mod plot;
pub mod train;

pub use train::{train, OptionChoices, TrainOptions, TrainRequest, TrainSummary};
