//! What tttc takes from a user's machine, safely: files and memory. Every file tttc reads goes through [`read`]: only regular files (a FIFO
//! would block, a device never ends), and never more than the size the file can legitimately
//! have. Every file it writes goes through [`Outputs`] (`stage.rs`): staged beside its target and
//! renamed into place with the command's other outputs at the end, or not at all. Every large
//! allocation is first estimated and checked against the budget ([`memory`]).

pub mod memory;
mod read;
mod stage;

pub use read::{human, read, read_text, Cap};
pub use stage::{Output, Outputs};
