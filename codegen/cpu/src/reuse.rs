//! Buffers kept from call to call by the thread that dropped them: a fresh allocation per call
//! faults its pages in again (at T = 512 that was a quarter of attention's time). All threads
//! together keep at most `BUDGET` bytes, outside the programs' memory estimates; past that,
//! longer calls fault their pages in, which their work then dwarfs.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static KEPT: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// The most bytes all threads keep.
const BUDGET: usize = 64 << 20;

/// The bytes kept now.
static KEPT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Floats kept, when dropped, for the dropping thread's next [`buffer`].
pub(crate) struct Buffer(Vec<f32>);

/// A buffer of `len` floats holding whatever an earlier use left in it (its users write every
/// element before reading it): the smallest this thread keeps that holds `len`, else a new one.
pub(crate) fn buffer(len: usize) -> Buffer {
    let kept = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let least = k.iter().map(Vec::capacity).filter(|&c| c >= len).min()?;
        let at = k.iter().position(|v| v.capacity() == least)?;
        let v = k.swap_remove(at);
        KEPT_BYTES.fetch_sub(bytes(&v), Ordering::Relaxed);
        Some(v)
    });
    let mut v = kept.unwrap_or_default();
    v.resize(len, 0.0);
    // Unit tests see stale values as NaN, so that a read before a write shows.
    #[cfg(test)]
    v.fill(f32::NAN);
    Buffer(v)
}

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * size_of::<f32>()
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let size = bytes(&v);
        if KEPT_BYTES.fetch_add(size, Ordering::Relaxed) + size > BUDGET {
            KEPT_BYTES.fetch_sub(size, Ordering::Relaxed);
            return;
        }
        // (A thread being torn down keeps nothing.)
        if KEPT.try_with(|k| k.borrow_mut().push(v)).is_err() {
            KEPT_BYTES.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

impl Deref for Buffer {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.0
    }
}
