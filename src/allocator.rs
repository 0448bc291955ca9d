//! Allocator settings, applied once at start before any other thread exists.
//!
//! glibc's malloc serves a block of at least `M_MMAP_THRESHOLD` (128 KiB) from a mapping of its
//! own, given back to the system when it is freed. But by default the threshold moves: the
//! first time such a block is freed, it rises to that block's size (up to 32 MiB), and from
//! then on big blocks come from the heaps and their per-thread arenas, where a freed block
//! stays in the process whenever anything above it is still in use. Big messages are exactly
//! that pattern: a 1 MB broadcast is copied a few times while it is decoded, encoded and
//! published (each copy freed at once), and the copy history retains sits between them. So
//! retained history of 64 MiB (`limits.history_max_bytes`) grew the process by 137 MiB and kept
//! it (BENCHMARKS.md, "History memory vs budget").
//!
//! Setting the threshold explicitly turns that adjustment off (mallopt(3)): every block of
//! 128 KiB or more keeps its own mapping, and memory freed by evicted history or a finished
//! publish goes back to the system. Small blocks (the fan-out hot path: frames of a few
//! hundred bytes, per-connection state) are not affected. The cost is an `mmap`/`munmap`
//! pair per big block, small next to copying and parsing that block.
//!
//! An operator's own `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` wins: glibc applied it
//! already and it is left alone. Other allocators and C libraries: nothing to do.

/// The threshold set: glibc's own default, made fixed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes glibc's mmap threshold (see the module doc), unless the environment set malloc
/// tunables. Call first thing in `main`, before any thread is spawned.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("GLIBC_TUNABLES").is_some();
        if !tuned {
            // SAFETY: mallopt only changes malloc's parameters; no other thread runs yet.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            }
        }
    }
}
