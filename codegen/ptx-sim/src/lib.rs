//! A PTX simulator: runs the kernels tttc emits on the CPU, with the semantics the PTX ISA gives
//! them, so that the GPU backend is checked on machines without a GPU.
//!
//! It executes every thread of every block ([`exec`]): registers and predicates, global memory
//! with bounds checks ([`memory`]), shared memory with data-race detection between barriers,
//! `bar.sync`, `shfl.sync` and `mma.sync` (m16n8k8 tf32 with the ISA's fragment layouts), the
//! special registers, and f32/f64/tf32 rounding as specified (correctly rounded `.rn`
//! arithmetic, one rounding for `fma`). An out-of-bounds access, a race, a divergent barrier or
//! collective, or an instruction outside the subset is an error naming the kernel, the thread
//! and the instruction. It is slow, and meant for test-size models.

pub mod device;
pub mod exec;
pub mod memory;

pub use device::SimDevice;
pub use exec::{launch, to_tf32, Counts, Dims};
pub use memory::Memory;
