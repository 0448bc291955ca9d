//! A latency histogram many tasks record into at once without a lock: log-linear buckets
//! (32 per power of two, ~3 % wide) of atomic counters, from 1 µs to ~73 minutes. Workers send
//! it to the coordinator as sparse `[bucket, count]` pairs, where histograms are merged and read.

use std::sync::atomic::{AtomicU64, Ordering};

const SUB: u32 = 32; // buckets per power of two
const LINEAR: u64 = 64; // values below are their own bucket
const BUCKETS: usize = (LINEAR as usize) + (32 - 6) * SUB as usize;

/// Bucket of a value in microseconds.
fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let v = v.min(u32::MAX as u64);
    let e = 63 - v.leading_zeros(); // ≥ 6
    let sub = (v >> (e - 5)) & (SUB as u64 - 1);
    LINEAR as usize + ((e - 6) * SUB) as usize + sub as usize
}

/// The middle of a bucket, in microseconds.
fn value(b: usize) -> u64 {
    if b < LINEAR as usize {
        return b as u64;
    }
    let i = b - LINEAR as usize;
    let e = (i / SUB as usize) as u32 + 6;
    let sub = (i % SUB as usize) as u64;
    let lo = (1u64 << e) + (sub << (e - 5));
    lo + (1u64 << (e - 5)) / 2
}

pub struct Histogram(Box<[AtomicU64]>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram((0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.0[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts and zeroes them: `[bucket, count]` for non-empty buckets.
    pub fn take(&self) -> Vec<[u64; 2]> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.swap(0, Ordering::Relaxed);
                (n > 0).then_some([i as u64, n])
            })
            .collect()
    }
}

/// Merged counts on the coordinator's side.
#[derive(Default, Clone)]
pub struct Merged(Vec<u64>);

impl Merged {
    pub fn add(&mut self, sparse: &[[u64; 2]]) {
        if self.0.is_empty() {
            self.0 = vec![0; BUCKETS];
        }
        for [b, n] in sparse {
            if let Some(slot) = self.0.get_mut(*b as usize) {
                *slot += n;
            }
        }
    }

    pub fn add_merged(&mut self, other: &Merged) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0 = vec![0; BUCKETS];
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The value (ms, one decimal) below which a fraction `q` of the samples lie.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((value(b) as f64 / 100.0).round() / 10.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_within_three_percent() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            63,
            64,
            65,
            100,
            1_000,
            12_345,
            250_000,
            10_000_000,
            4_000_000_000,
        ] {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
            let mid = value(b) as f64;
            assert!(
                (mid - v as f64).abs() <= (v as f64 * 0.031).max(1.0),
                "{v} -> {mid}"
            );
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_of_a_merged_histogram() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000); // 1 ms .. 1 s
        }
        let mut m = Merged::default();
        m.add(&h.take());
        assert_eq!(m.count(), 1000);
        let p50 = m.quantile_ms(0.5).unwrap_or(0.0);
        let p99 = m.quantile_ms(0.99).unwrap_or(0.0);
        assert!((485.0..=515.0).contains(&p50), "{p50}");
        assert!((960.0..=1020.0).contains(&p99), "{p99}");
        assert!(h.take().is_empty(), "take zeroes");
    }
}
