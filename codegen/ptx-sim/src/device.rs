//! The simulator as a [`Device`]: a module's text parsed once, launches executed on [`Memory`].

use anyhow::{Context, Result};
use tttc_ptx::isa::Module;
use tttc_ptx::model::Device;

use crate::exec::{launch, Counts, Dims};
use crate::memory::Memory;

pub struct SimDevice {
    module: Module,
    pub memory: Memory,
    /// Over every launch so far.
    pub counts: Counts,
}

impl SimDevice {
    /// Loads a module from its PTX text, as the CUDA driver would.
    pub fn load(ptx: &str) -> Result<SimDevice> {
        let module = tttc_ptx::parse(ptx).context("parsing the PTX module")?;
        Ok(SimDevice { module, memory: Memory::new(), counts: Counts::default() })
    }
}

impl Device for SimDevice {
    fn alloc(&mut self, bytes: usize) -> Result<u64> {
        Ok(self.memory.alloc(bytes))
    }

    fn free(&mut self, ptr: u64) {
        self.memory.free(ptr);
    }

    fn upload(&mut self, ptr: u64, bytes: &[u8]) -> Result<()> {
        self.memory.write(ptr, bytes)
    }

    fn download(&mut self, ptr: u64, len: usize) -> Result<Vec<u8>> {
        Ok(self.memory.read(ptr, len)?.to_vec())
    }

    fn launch(&mut self, kernel: usize, grid: [u32; 3], block: [u32; 3], params: &[u64]) -> Result<()> {
        let k = self.module.kernels.get(kernel).with_context(|| format!("the module has no kernel {kernel}"))?;
        let c = launch(k, Dims { grid, block }, params, &mut self.memory)?;
        self.counts.instructions += c.instructions;
        self.counts.mma += c.mma;
        self.counts.barriers += c.barriers;
        Ok(())
    }
}
