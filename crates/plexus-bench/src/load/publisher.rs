//! The coordinator's publisher: a pool of kept-alive HTTP/1.1 connections, each sending one
//! request at a time, fed at a fixed rate. A payload is stamped with the time it was *due*, not
//! the time a connection got to it, so a publisher or server that falls behind shows up in the
//! latencies instead of hiding (no coordinated omission).

use super::adapter::{payload, Publish};
use crate::http::Conn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: std::sync::Mutex<Option<String>>,
}

pub struct Pool {
    lanes: Vec<mpsc::Sender<(String, String)>>,
    pub counts: Arc<Counts>,
    next: usize,
}

impl Pool {
    pub async fn open(
        addr: SocketAddr,
        how: Publish,
        size: usize,
        lanes: usize,
    ) -> Result<Pool, String> {
        let counts = Arc::new(Counts::default());
        let mut senders = Vec::new();
        for _ in 0..lanes.max(1) {
            let mut conn = Conn::open(addr, None).await?;
            let (tx, mut rx) = mpsc::channel::<(String, String)>(4096);
            let (how, counts) = (how.clone(), counts.clone());
            tokio::spawn(async move {
                while let Some((topic, body)) = rx.recv().await {
                    let req = how.request(&topic, "m", &body);
                    let headers: Vec<(&str, &str)> =
                        req.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let mut r = conn.request("POST", &req.path, &headers, &req.body).await;
                    if r.is_err() {
                        // A server may close a kept-alive connection between requests
                        // (Sockudo does): reconnect and send the request once more.
                        if let Ok(c) = Conn::open(addr, None).await {
                            conn = c;
                            r = conn.request("POST", &req.path, &headers, &req.body).await;
                        }
                    }
                    let failure = match r {
                        Ok(resp) if (200..300).contains(&resp.status) => None,
                        Ok(resp) => Some(format!(
                            "HTTP {}: {}",
                            resp.status,
                            String::from_utf8_lossy(&resp.body)
                                .chars()
                                .take(200)
                                .collect::<String>()
                        )),
                        Err(e) => Some(e),
                    };
                    match failure {
                        None => {
                            counts.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(e) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = counts.first_error.lock() {
                                f.get_or_insert(e);
                            }
                            if let Ok(c) = Conn::open(addr, None).await {
                                conn = c;
                            }
                        }
                    }
                }
            });
            senders.push(tx);
        }
        let _ = size;
        Ok(Pool {
            lanes: senders,
            counts,
            next: 0,
        })
    }

    /// Publishes `count` messages at `rate`/s; `topic(seq)` picks each one's topic. Returns the
    /// seconds the publishing took and each topic's message count.
    pub async fn run(
        &mut self,
        rate: f64,
        count: u64,
        size: usize,
        mut topic: impl FnMut(u64) -> String,
    ) -> (f64, Vec<String>) {
        let started = Instant::now();
        let wall0 = super::worker::now_us();
        let mut topics = Vec::with_capacity(count as usize);
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while seq < count {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
            while seq < due {
                let t = wall0 + (seq as f64 * 1e6 / rate) as u64;
                let tp = topic(seq);
                let body = payload(seq, t, size);
                let lane = &self.lanes[self.next % self.lanes.len()];
                self.next += 1;
                if lane.send((tp.clone(), body)).await.is_err() {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                topics.push(tp);
                seq += 1;
            }
        }
        (started.elapsed().as_secs_f64(), topics)
    }
}
