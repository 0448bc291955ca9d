//! Fan-out benchmark: N subscribers of one topic, one publisher at M messages/s through
//! `POST /api/broadcast`. Each payload carries its send time; every subscriber measures
//! publish→receive latency. Prints one JSON line.

use plexus_client::{Client, ConnectOptions};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Opts {
    pub url: String,
    pub http: String,
    pub secret: String,
    pub api_key: String,
    pub subs: usize,
    pub rate: u64,
    pub count: u64,
    pub topic: String,
    pub pid: u32,
    pub sources: String,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_owned();
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// One kept-alive HTTP/1.1 connection for publishing.
struct Publisher {
    stream: tokio::net::TcpStream,
    host: String,
    auth: String,
    buf: Vec<u8>,
}

impl Publisher {
    async fn connect(http: &str, api_key: &str) -> Result<Self, String> {
        let host = http
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Publisher {
            stream,
            host,
            auth: format!("Bearer {api_key}"),
            buf: vec![0; 4096],
        })
    }

    async fn publish(&mut self, body: &str) -> Result<(), String> {
        let req = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.auth,
            body.len()
        );
        self.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Read one response (headers + small JSON body).
        let mut got = Vec::new();
        loop {
            let n = self
                .stream
                .read(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("publisher connection closed".into());
            }
            got.extend_from_slice(&self.buf[..n]);
            if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if got.len() >= head_end + 4 + len {
                    if !head.starts_with("http/1.1 200") {
                        return Err(format!(
                            "publish failed: {}",
                            head.lines().next().unwrap_or("")
                        ));
                    }
                    return Ok(());
                }
            }
        }
    }
}

pub async fn run(o: Opts) -> Result<(), String> {
    let sources = crate::parse_sources(&o.sources)?;
    let issuer = plexus_core::auth::Issuer::hs256(o.secret.as_bytes());
    let rss0 = crate::rss_kib(o.pid).ok_or("cannot read server RSS")?;
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(samples::Samples::default());
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(o.subs.max(1));
    for i in 0..o.subs {
        let token = issuer
            .issue(&format!("fan-{i}"), &[], None, 3600)
            .map_err(|e| e.to_string())?;
        let opts = ConnectOptions::new(o.url.clone())
            .token(token)
            .source(SocketAddr::new(sources[i % sources.len()], 0));
        let topic = o.topic.clone();
        let received = received.clone();
        let latencies = latencies.clone();
        let ready = ready_tx.clone();
        let expect = o.count;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(opts).await.map_err(|e| e.to_string())?;
            c.join(&topic, serde_json::json!({}))
                .await
                .map_err(|e| e.to_string())?;
            let _ = ready.send(()).await;
            let mut got = 0;
            while got < expect {
                match c
                    .recv_event_timeout(&topic, "m", Duration::from_secs(15))
                    .await
                {
                    Ok(Some(m)) => {
                        got += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                        if let Some(raw) = m.payload.as_json() {
                            if let Some(t) = raw
                                .get()
                                .split("\"t\":")
                                .nth(1)
                                .and_then(|r| r.split([',', '}']).next())
                            {
                                if let Ok(sent) = t.trim().parse::<u64>() {
                                    latencies.push(now_us().saturating_sub(sent));
                                }
                            }
                        }
                    }
                    _ => break,
                }
            }
            Ok::<(), String>(())
        }));
    }
    drop(ready_tx);
    let mut joined = 0;
    while joined < o.subs {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => joined += 1,
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = crate::rss_kib(o.pid).unwrap_or(0);
    let cpu0 = cpu_ticks(o.pid);
    let mut publisher = Publisher::connect(&o.http, &o.api_key).await?;
    let started = Instant::now();
    let interval = Duration::from_micros(1_000_000 / o.rate.max(1));
    for seq in 0..o.count {
        let due = started + interval * seq as u32;
        tokio::time::sleep_until(due.into()).await;
        let body = format!(
            r#"{{"topic":"{}","event":"m","payload":{{"s":{seq},"t":{},"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}}"#,
            o.topic,
            now_us()
        );
        publisher.publish(&body).await?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let expected = o.count * joined as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(o.pid);
    let got = received.load(Ordering::Relaxed);
    let mut lat = latencies.take();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p) as usize).min(lat.len() - 1);
        (lat[i] as f64 / 100.0).round() / 10.0
    };
    for t in tasks {
        t.abort();
    }
    println!(
        "{}",
        serde_json::json!({
            "subscribers": joined,
            "rate": o.rate,
            "count": o.count,
            "delivered": got,
            "loss_pct": if expected > 0 { ((expected - got.min(expected)) as f64 * 1000.0 / expected as f64).round() / 10.0 } else { 0.0 },
            "delivered_per_s": (got as f64 / elapsed.max(publish_secs)).round(),
            "lat_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
            // clock ticks are 1/100 s: ticks / seconds = percent of one core
            "server_cpu_pct": ((cpu1 - cpu0) as f64 / elapsed).round(),
            "server_rss_kib": {"idle": rss0, "connected": rss1},
        })
    );
    Ok(())
}

/// A tiny lock-protected sample buffer (std Mutex; the benchmark is not the hot path).
mod samples {
    #[derive(Default)]
    pub struct Samples(std::sync::Mutex<Vec<u64>>);
    impl Samples {
        pub fn push(&self, v: u64) {
            if let Ok(mut s) = self.0.lock() {
                s.push(v);
            }
        }
        pub fn take(&self) -> Vec<u64> {
            self.0
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default()
        }
    }
}
