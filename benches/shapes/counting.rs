//! A counting global allocator: counts the allocations the current thread makes while
//! counting is on, and nothing else (other threads, e.g. other tests, are never counted).
//!
//! Included with `#[path]` by the `alloc_report` bench and the `allocations` test; the
//! including crate gets the `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;

/// What was allocated while counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub(crate) allocs: u64,
    /// Bytes those calls asked for (a `realloc` counts its new size).
    pub(crate) bytes: u64,
}

thread_local! {
    // `const` initialisers and no destructors: no lazy initialisation, so reading them
    // from inside the allocator cannot allocate or recurse.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the current thread's allocations while counting is on.
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

impl Counting {
    fn record(size: usize) {
        // `try_with`: the thread-locals may be gone while the thread shuts down.
        let _ = COUNTING.try_with(|counting| {
            if counting.get() {
                ALLOCS.with(|n| n.set(n.get() + 1));
                BYTES.with(|n| n.set(n.get() + size as u64));
            }
        });
    }
}

// The only unsafe code of the tests crate: a `GlobalAlloc` impl must be `unsafe`. Every
// method forwards to `System` with the caller's arguments, under the caller's contract.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::record(layout.size());
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::record(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::record(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Awaits `future`, counting the current thread's allocations while it runs. On a
/// current_thread runtime that includes the tasks it spawns, which run on this thread.
pub(crate) async fn count<F: Future>(future: F) -> (F::Output, Counts) {
    ALLOCS.with(|n| n.set(0));
    BYTES.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let output = future.await;
    COUNTING.with(|c| c.set(false));
    let counts = Counts {
        allocs: ALLOCS.with(Cell::get),
        bytes: BYTES.with(Cell::get),
    };
    (output, counts)
}
