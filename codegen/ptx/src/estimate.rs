//! Performance estimates without a GPU: each kernel's occupancy from `ptxas`'s register and
//! shared-memory figures, and its time from a roofline over its FLOPs and bytes, with a floor
//! per launch and, for a persistent scan kernel, a latency chain (its serial steps). Estimates,
//! not measurements: the peak figures and per-step costs are stated in [`Gpu`].

use crate::model::Work;
use crate::ptxas::Figures;

/// A GPU's limits and peaks, and the costs the estimate assumes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Gpu {
    pub name: &'static str,
    pub sms: u32,
    /// Dense f32 FMA throughput (CUDA cores).
    pub fp32_flops: f64,
    /// Dense tf32 tensor-core throughput; tttc's products run three tf32 products per f32 one.
    pub tf32_flops: f64,
    pub hbm_bytes_per_s: f64,
    pub regs_per_sm: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub shared_bytes_per_sm: u32,
    /// Shared memory the driver reserves per block.
    pub shared_reserved_per_block: u32,
    /// The least time one launch takes, back to back on a stream (launch rate, not latency).
    pub seconds_per_launch: f64,
    /// The time of one step of a persistent kernel's serial chain: a body instruction's loads
    /// from L2, its arithmetic and the barrier after it.
    pub seconds_per_serial_step: f64,
}

/// H100 SXM5 (80 GB): the public datasheet's peaks (67 TFLOP/s f32, 495 TFLOP/s dense tf32,
/// 3.35 TB/s HBM3, 132 SMs) and the CUDA occupancy limits of compute capability 9.0.
pub const H100_SXM: Gpu = Gpu {
    name: "H100 SXM5",
    sms: 132,
    fp32_flops: 67.0e12,
    tf32_flops: 494.7e12,
    hbm_bytes_per_s: 3.35e12,
    regs_per_sm: 65_536,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    shared_bytes_per_sm: 228 * 1024,
    shared_reserved_per_block: 1024,
    seconds_per_launch: 2.0e-6,
    seconds_per_serial_step: 0.5e-6,
};

/// One kernel's estimate over one forward pass.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelEstimate {
    /// Blocks of this kernel one SM holds at once, and the fraction of the SM's warp slots they fill.
    pub blocks_per_sm: u32,
    pub occupancy: f64,
    pub seconds: f64,
    /// What bounds it: "compute", "memory", "launches" or "latency".
    pub bound: &'static str,
}

impl Gpu {
    /// Blocks of `threads` threads using `registers` each and `shared` bytes per block that fit
    /// on one SM, and the resulting occupancy (active warps / 64).
    pub fn occupancy(&self, threads: u32, registers: u32, shared: u32) -> (u32, f64) {
        let warps = threads.div_ceil(32);
        // Registers are allocated per warp in units of 256.
        let regs_per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
        let by_regs = self.regs_per_sm / (regs_per_warp * warps).max(1);
        let by_threads = self.max_threads_per_sm / (warps * 32).max(1);
        let by_shared = if shared == 0 { u32::MAX } else { self.shared_bytes_per_sm / (shared + self.shared_reserved_per_block) };
        let blocks = by_regs.min(by_threads).min(by_shared).min(self.max_blocks_per_sm);
        (blocks, (blocks * warps) as f64 / (self.max_threads_per_sm / 32) as f64)
    }

    /// A kernel's time in one forward pass: per launch, the largest of its compute time, its
    /// memory time (both at the fraction of the GPU its grid can fill), the launch floor and its
    /// latency chain (times the waves of blocks the grid needs).
    pub fn kernel(&self, work: &Work, grid_blocks: u64, threads: u32, figures: &Figures, tensor_cores: bool) -> KernelEstimate {
        let (blocks_per_sm, occupancy) = self.occupancy(threads, figures.registers, figures.shared_bytes);
        if work.launches == 0 {
            // Only launched at other lengths (a scan's shorter last chunk, at lengths with none).
            return KernelEstimate { blocks_per_sm, occupancy, seconds: 0.0, bound: "launches" };
        }
        let launches = work.launches as f64;
        let grid_blocks = grid_blocks.max(1);
        // The share of the SMs one launch keeps busy.
        let filled = (grid_blocks as f64 / self.sms as f64).min(1.0);
        let waves = (grid_blocks as f64 / (self.sms as f64 * blocks_per_sm.max(1) as f64)).ceil().max(1.0);
        let peak = if tensor_cores { self.tf32_flops / 3.0 } else { self.fp32_flops };
        let candidates = [
            ("compute", work.flops as f64 / launches / (peak * filled)),
            ("memory", work.bytes as f64 / launches / (self.hbm_bytes_per_s * filled)),
            ("launches", self.seconds_per_launch),
            // Blocks beyond what the SMs hold at once run in further waves, each the whole chain.
            ("latency", work.serial_steps as f64 / launches * self.seconds_per_serial_step * waves),
        ];
        let (bound, per_launch) = candidates.into_iter().fold(("launches", 0.0), |best, c| if c.1 > best.1 { c } else { best });
        KernelEstimate { blocks_per_sm, occupancy, seconds: per_launch * launches, bound }
    }
}
