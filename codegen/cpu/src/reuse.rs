//! Buffers each thread keeps from call to call: a fresh allocation per call faults its pages in
//! again (at T = 512 that was a quarter of attention's time). A thread keeps up to `KEEP` bytes;
//! past that, longer calls fault their pages in, which their work then dwarfs.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static KEPT: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// The most bytes a thread keeps.
const KEEP: usize = 32 << 20;

/// Floats kept, when dropped, for the dropping thread's next [`buffer`].
pub(crate) struct Buffer(Vec<f32>);

/// A buffer of `len` floats holding whatever an earlier use left in it (its users write every
/// element before reading it): the smallest kept one that holds `len`, else the largest, grown.
pub(crate) fn buffer(len: usize) -> Buffer {
    let kept = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let at = match k.iter().map(Vec::capacity).filter(|&c| c >= len).min() {
            Some(least) => k.iter().position(|v| v.capacity() == least),
            None => (0..k.len()).max_by_key(|&i| k[i].capacity()),
        };
        at.map(|at| k.swap_remove(at))
    });
    Buffer(match kept {
        Some(mut v) => {
            v.resize(len, 0.0);
            v
        }
        None => vec![0.0; len],
    })
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            let kept: usize = k.iter().map(Vec::capacity).sum();
            if (kept + v.capacity()) * size_of::<f32>() <= KEEP {
                k.push(v);
            }
        })
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
