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
//!
//! Blocks under the threshold (history of messages under 128 KiB) still come from the heaps,
//! and what evicted history and the copies of a publish free there is reused but stays in the
//! process: 60 kB messages grew RSS by 1.1–1.4 times the budget. So [`spawn_trimmer`] calls
//! `malloc_trim(0)` (which hands every free page of every arena back) on a blocking thread, at
//! most once every [`TRIM_INTERVAL`] and only once the embedded broker freed at least
//! [`trim_after`] bytes of history since the last trim; one trim of a heap holding 64 MiB of
//! history takes about a millisecond, 10 ms at the longest with 2,000 clients connected
//! (BENCHMARKS.md, "History memory vs budget"). Nothing runs per message: the task reads the
//! broker's counter of bytes freed once a second.

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

/// The trimmer looks at the bytes of history freed this often, and trims at most this often.
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes of history freed since the last trim that make the next one: an eighth of the
/// node's history budget (`limits.history_max_bytes`), between 64 KiB and 4 MiB. Past its
/// budget the broker frees a quarter of it at once, so a flood trims every second.
pub fn trim_after(history_max_bytes: usize) -> u64 {
    (history_max_bytes as u64 / 8).clamp(64 * 1024, 4 * 1024 * 1024)
}

/// Gives the free memory of glibc's heaps back to the system after history was freed (see
/// the module doc), for as long as `node` lives. Counts the trims
/// (`plexus_allocator_trims_total`) and shows how long the last and the longest took
/// (`plexus_allocator_trim_seconds`, `plexus_allocator_trim_max_seconds`). Nothing for a
/// broker that keeps history elsewhere (Redis), nor without glibc.
pub fn spawn_trimmer(node: &std::sync::Arc<plexus_core::node::Node>, after: u64) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Some(stats) = node.history_stats() else {
            return;
        };
        let node = std::sync::Arc::downgrade(node);
        tokio::spawn(async move {
            let mut last = stats.freed;
            let mut longest = std::time::Duration::ZERO;
            let mut tick = tokio::time::interval(TRIM_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(freed) = node.upgrade().and_then(|n| n.history_stats()) else {
                    return;
                };
                if freed.freed.saturating_sub(last) < after {
                    continue;
                }
                last = freed.freed;
                // malloc_trim walks every arena with its lock held: off the runtime's threads.
                let Ok(took) = tokio::task::spawn_blocking(|| {
                    let start = std::time::Instant::now();
                    // SAFETY: malloc_trim only returns free memory of malloc's own heaps.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    start.elapsed()
                })
                .await
                else {
                    return;
                };
                longest = longest.max(took);
                metrics::counter!("plexus_allocator_trims_total").increment(1);
                metrics::gauge!("plexus_allocator_trim_seconds").set(took.as_secs_f64());
                metrics::gauge!("plexus_allocator_trim_max_seconds").set(longest.as_secs_f64());
                tracing::debug!(took_us = took.as_micros() as u64, "malloc_trim");
            }
        });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (node, after);
}
