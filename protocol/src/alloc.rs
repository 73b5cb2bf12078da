//! A global allocator guard for the broker binary.
//!
//! The `kafka-protocol` crate sizes `Vec::with_capacity(n)` by array counts read off the wire
//! before any element is read. A 12-byte request can ask for hundreds of GB; the allocation fails
//! and Rust aborts the process (no panic to catch). [`GuardedAlloc`] serves every allocation of
//! [`LARGE_ALLOC_MIN`] bytes or more with an anonymous `mmap(MAP_NORESERVE)`: address space, not
//! memory. Pages are only backed when written, so a bogus capacity costs nothing and the decode
//! then fails cleanly on the missing elements; a real large buffer works as usual. Smaller
//! allocations go to the system allocator untouched.
//!
//! This is what stands between a hostile count and an abort, so the broker's fuzz test drives
//! exactly that path. It does not help under `vm.overcommit_memory=2` (strict accounting), where
//! the kernel refuses even NORESERVE mappings; the broker warns at start in that case.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped with `MAP_NORESERVE`.
pub const LARGE_ALLOC_MIN: usize = 64 << 20;
const PAGE: usize = 4096;

/// See the module comment. Install with `#[global_allocator]` in a binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedAlloc;

fn large(layout: &Layout) -> bool {
    layout.size() >= LARGE_ALLOC_MIN && layout.align() <= PAGE
}

// SAFETY: large blocks come from mmap (page-aligned, so any alignment up to a page is met) and
// are returned with munmap of the same length; everything else is delegated to `System` with
// the caller's layout, as GlobalAlloc requires.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(&layout) {
            // SAFETY: anonymous private mapping; no file or existing memory involved.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            return p.cast();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if large(&layout) {
            // SAFETY: `ptr` came from our mmap of `layout.size()` bytes.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `layout` describes `ptr` and `new_size` is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !large(&layout) && !large(&new_layout) {
            // SAFETY: both sides are System's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the smaller of the two sizes, free the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
