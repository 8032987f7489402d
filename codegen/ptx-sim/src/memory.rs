//! Device memory as the simulator sees it: allocations at distinct addresses with unmapped gaps
//! between them, so that an access past an allocation's end is caught rather than landing in
//! its neighbour.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// Where allocations start, and the unmapped bytes kept after each.
const FIRST: u64 = 0x1_0000_0000;
const GAP: u64 = 4096;
const ALIGN: u64 = 256;

#[derive(Default)]
pub struct Memory {
    allocs: BTreeMap<u64, Vec<u8>>,
    next: u64,
}

impl Memory {
    pub fn new() -> Memory {
        Memory { allocs: BTreeMap::new(), next: FIRST }
    }

    /// A zeroed allocation of `bytes` bytes (256-byte aligned, as `cuMemAlloc` guarantees).
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let at = self.next.max(FIRST);
        self.allocs.insert(at, vec![0; bytes]);
        self.next = (at + bytes as u64 + GAP).div_ceil(ALIGN) * ALIGN;
        at
    }

    pub fn free(&mut self, ptr: u64) {
        self.allocs.remove(&ptr);
    }

    /// The allocation holding `[addr, addr + len)` and the offset of `addr` in it.
    fn find(&self, addr: u64, len: usize) -> Option<(u64, usize)> {
        let (&base, bytes) = self.allocs.range(..=addr).next_back()?;
        let off = (addr - base) as usize;
        (off + len <= bytes.len()).then_some((base, off))
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<&[u8]> {
        match self.find(addr, len) {
            Some((base, off)) => Ok(&self.allocs[&base][off..off + len]),
            None => bail!("{len} bytes at 0x{addr:x} are outside every allocation"),
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        match self.find(addr, data.len()) {
            Some((base, off)) => {
                self.allocs.get_mut(&base).expect("found above")[off..off + data.len()].copy_from_slice(data);
                Ok(())
            }
            None => bail!("{} bytes at 0x{addr:x} are outside every allocation", data.len()),
        }
    }

    /// Bytes allocated and not freed.
    pub fn allocated(&self) -> usize {
        self.allocs.values().map(Vec::len).sum()
    }
}
