//! The workspaces compiled code runs in, kept from call to call: a fresh allocation per call would
//! fault in every page again (and zeroing it would cost as much as a decoding step's copies).

use std::sync::Mutex;

/// A function's workspace: uninitialised bytes on 64-byte lines (every buffer in it is written
/// before it is read).
pub(crate) struct Workspace {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// The bytes are owned and used by one call at a time.
unsafe impl Send for Workspace {}

impl Workspace {
    fn new(bytes: usize) -> Workspace {
        let layout = std::alloc::Layout::from_size_align(bytes.max(64), 64).expect("a workspace size fits in memory");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Workspace { ptr, layout }
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Workspaces of finished calls, for the next ones (calls at once each take their own).
#[derive(Default)]
pub(crate) struct Workspaces(Mutex<Vec<Workspace>>);

impl Workspaces {
    /// A workspace of at least `bytes`: a spare one, or a new one an eighth larger (a decoding
    /// loop whose cache grows every step then reuses it for the steps after).
    pub(crate) fn take(&self, bytes: usize) -> Workspace {
        let mut spare = self.0.lock().expect("not poisoned");
        match spare.iter().position(|w| w.layout.size() >= bytes) {
            Some(at) => spare.swap_remove(at),
            None => {
                spare.clear();
                Workspace::new(bytes + bytes / 8)
            }
        }
    }

    /// Keeps `w` for a later call.
    pub(crate) fn give(&self, w: Workspace) {
        self.0.lock().expect("not poisoned").push(w);
    }
}
