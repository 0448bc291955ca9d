//! The live-data generator of the demo: a ticker of made-up prices and a few points moving on a
//! map, published to [`TOPIC`] once a second **through the HTTP API** (`POST /api/broadcast`
//! with the API key), as a backend would.
//!
//! The dev profile runs it inside the server (`demo_feed`, on by default in dev), publishing
//! only while the topic has subscribers, so an idle server publishes nothing. `plexus
//! demo-feed --url … --api-key …` runs it against any server.

use rand::Rng;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The topic the demo's live page joins.
pub const TOPIC: &str = "demo:live";
/// The event of each update.
pub const EVENT: &str = "update";
/// Time between two updates.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The generator's state: prices and point positions, each a random walk.
pub struct Generator {
    prices: Vec<(&'static str, f64)>,
    points: Vec<(String, f64, f64)>,
    seq: u64,
}

impl Default for Generator {
    fn default() -> Self {
        Generator {
            prices: vec![("PLX", 120.0), ("RUST", 88.0), ("PHX", 42.0), ("WSS", 17.5)],
            points: (1..=5)
                .map(|i| (format!("truck-{i}"), 0.2 * i as f64 - 0.1, 0.5))
                .collect(),
            seq: 0,
        }
    }
}

impl Generator {
    /// The next update's payload:
    /// `{"seq", "ticker": [{"symbol", "price", "change"}], "points": [{"id", "x", "y"}]}`
    /// with `x`, `y` in 0..1.
    pub fn next_update(&mut self) -> Value {
        let mut rng = rand::rng();
        self.seq += 1;
        let ticker: Vec<Value> = self
            .prices
            .iter_mut()
            .map(|(symbol, price)| {
                let change = (*price * rng.random_range(-0.02..0.02) * 100.0).round() / 100.0;
                *price = (*price + change).max(1.0);
                json!({ "symbol": symbol, "price": (*price * 100.0).round() / 100.0, "change": change })
            })
            .collect();
        let points: Vec<Value> = self
            .points
            .iter_mut()
            .map(|(id, x, y)| {
                *x = (*x + rng.random_range(-0.03..0.03)).clamp(0.02, 0.98);
                *y = (*y + rng.random_range(-0.03..0.03)).clamp(0.02, 0.98);
                json!({ "id": id, "x": (*x * 1000.0).round() / 1000.0, "y": (*y * 1000.0).round() / 1000.0 })
            })
            .collect();
        json!({ "seq": self.seq, "ticker": ticker, "points": points })
    }
}

/// Where the API is: `http://host:port` (plain HTTP only).
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub api_key: String,
}

impl Target {
    /// Parses `http://host:port[/]`.
    pub fn parse(url: &str, api_key: &str) -> Result<Self, String> {
        let host = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: give an http:// URL (the feed speaks plain HTTP)"))?
            .trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: give http://host:port"));
        }
        Ok(Target {
            host: host.to_owned(),
            api_key: api_key.to_owned(),
        })
    }

    /// `POST /api/broadcast` of one update; returns the HTTP status.
    pub async fn publish(&self, topic: &str, payload: &Value) -> Result<u16, String> {
        let body = json!({ "topic": topic, "event": EVENT, "payload": payload }).to_string();
        let request = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.api_key,
            body.len()
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(&self.host)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.host))?;
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = [0u8; 32];
            let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]);
            line.split(' ')
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| "no answer in time".to_owned())?
    }
}

/// Publishes an update every [`INTERVAL`] while `wanted()` says so; `count`: stop after that
/// many updates. Failures are logged once per burst and retried.
pub async fn run(target: Target, topic: &str, count: Option<u64>, wanted: impl Fn() -> bool) {
    let mut generator = Generator::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    let mut failing = false;
    loop {
        tick.tick().await;
        if !wanted() {
            continue;
        }
        let update = generator.next_update();
        match target.publish(topic, &update).await {
            Ok(200) => {
                failing = false;
                sent += 1;
                if count.is_some_and(|c| sent >= c) {
                    return;
                }
            }
            Ok(status) if !failing => {
                failing = true;
                tracing::warn!(status, topic, "demo feed: the API refused an update");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, topic, "demo feed: update not published");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn updates_move_and_stay_in_bounds() {
        let mut g = super::Generator::default();
        let a = g.next_update();
        let b = g.next_update();
        assert_eq!(b["seq"], 2);
        assert_eq!(a["ticker"].as_array().unwrap().len(), 4);
        for p in b["points"].as_array().unwrap() {
            let (x, y) = (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
            assert!((0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y));
        }
    }

    #[test]
    fn only_plain_http_targets() {
        assert!(super::Target::parse("http://127.0.0.1:4000/", "k").is_ok());
        assert!(super::Target::parse("https://x", "k").is_err());
        assert!(super::Target::parse("http://x/api", "k").is_err());
    }
}
