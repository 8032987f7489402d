//! What tttc takes from a user's machine, safely: files and memory. Every file tttc reads goes
//! through [`read`]: only regular files (a FIFO would block, a device never ends), and never more
//! than the size the file can legitimately have. Every file it writes goes through [`Outputs`]
//! (`stage.rs`): staged beside its target and renamed into place with the command's other outputs
//! at the end, or not at all ([`write_atomic`]: one file on its own the same way). A folder that
//! must be complete at every instant (a training checkpoint) is replaced through [`swap`];
//! [`interrupt`] turns SIGINT and SIGTERM into a flag, so a job stops between such replacements.
//! Every large allocation is first estimated and checked against the budget ([`memory`]).

pub mod interrupt;
pub mod memory;
mod read;
mod stage;
pub mod swap;

pub use read::{human, read, read_text, Cap};
pub use stage::{write_atomic, Output, Outputs};
