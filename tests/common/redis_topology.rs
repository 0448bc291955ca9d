//! Redis Cluster and Sentinel topologies of real `redis-server` processes for the integration
//! tests: [`RedisCluster`] (3 primaries + 3 replicas) and [`RedisSentinel`] (1 primary,
//! 1 replica, 3 sentinels). Each process runs in its own temporary directory and is killed
//! (and its directory removed) on drop. The fixtures talk to Redis over a minimal RESP client
//! ([`call`], [`pipeline`], [`cluster_call`]), so tests need no Redis client library.
//!
//! Waits that can last seconds (`start`, `wait_promoted`, `move_slot`, `wait_failover`) are
//! `async` and sleep with tokio between polls; single commands block for a few milliseconds.

pub mod cluster;
pub mod sentinel;

// Not every test binary that includes `common` uses them.
#[allow(unused_imports)]
pub use cluster::{ClusterNode, RedisCluster};
#[allow(unused_imports)]
pub use sentinel::RedisSentinel;

use super::free_port;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One RESP2 reply that is not an error (errors are the `Err` of [`call`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Nil,
    Int(i64),
    Text(String),
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a string or integer reply; an array's items joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Reply::Nil => String::new(),
            Reply::Int(i) => i.to_string(),
            Reply::Text(s) => s.clone(),
            Reply::Array(items) => items.iter().map(Reply::text).collect::<Vec<_>>().join("\n"),
        }
    }

    /// The integer of an integer reply (or of a string holding one), else `None`.
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The items of an array reply (empty for anything else).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(items) => items,
            _ => &[],
        }
    }
}

/// Sends one command to `127.0.0.1:port` on a fresh connection. `Err` holds a Redis error
/// reply (`MOVED 12 127.0.0.1:7001`, `ERR ...`) or a connection failure.
pub fn call(port: u16, args: &[&str]) -> Result<Reply, String> {
    pipeline(port, &[args])?
        .pop()
        .unwrap_or_else(|| Err("no reply".into()))
}

/// Sends several commands on one connection (`ASKING` then the command, say) and returns each
/// reply; the outer `Err` is a connection failure.
pub fn pipeline(port: u16, cmds: &[&[&str]]) -> Result<Vec<Result<Reply, String>>, String> {
    let io = |e: std::io::Error| format!("127.0.0.1:{port}: {e}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut out = Vec::new();
    for args in cmds {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    stream.write_all(&out).map_err(io)?;
    let mut reader = BufReader::new(stream);
    cmds.iter().map(|_| read_reply(&mut reader)).collect()
}

/// Reads one reply: `Ok(Err(text))` for a Redis error, `Err` for a broken connection.
fn read_reply(r: &mut impl BufRead) -> Result<Result<Reply, String>, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = match (line.get(..1), line.get(1..)) {
        (Some(k), Some(rest)) => (k, rest),
        _ => return Err("connection closed".into()),
    };
    let number = || -> Result<i64, String> {
        rest.parse()
            .map_err(|_| format!("bad RESP length/integer: {line}"))
    };
    Ok(Ok(match kind {
        "+" => Reply::Text(rest.to_owned()),
        "-" => return Ok(Err(rest.to_owned())),
        ":" => Reply::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Nil,
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                buf.truncate(n);
                Reply::Text(String::from_utf8_lossy(&buf).into_owned())
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Nil,
            Ok(n) => {
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    match read_reply(r)? {
                        Ok(item) => items.push(item),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Reply::Array(items)
            }
        },
        _ => return Err(format!("not RESP: {line}")),
    }))
}

/// Sends a keyed command to a cluster starting at `port`, following `MOVED` and `ASK`
/// redirections (at most 5) the way a cluster client does.
pub fn cluster_call(port: u16, args: &[&str]) -> Result<Reply, String> {
    let mut port = port;
    let mut asking = false;
    for _ in 0..5 {
        let reply = if asking {
            pipeline(port, &[&["ASKING"], args])?
                .pop()
                .unwrap_or_else(|| Err("no reply".into()))
        } else {
            call(port, args)
        };
        let err = match reply {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let target = err.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        match (err.split(' ').next(), target) {
            (Some("MOVED"), Some(p)) => (port, asking) = (p, false),
            (Some("ASK"), Some(p)) => (port, asking) = (p, true),
            _ => return Err(err),
        }
    }
    Err(format!("too many redirections for {args:?}"))
}

/// `INFO <section>` as `field -> value`.
pub fn info(port: u16, section: &str) -> Result<HashMap<String, String>, String> {
    let text = call(port, &["INFO", section])?.text();
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// `INFO commandstats` of one process: calls per command (`set`, `spublish`,
/// `cluster|nodes`, ...). The fixtures' own polling (`cluster|nodes`, `info`, `ping`, `role`)
/// counts too: reset just before the measured work.
pub fn commandstats(port: u16) -> Result<HashMap<String, u64>, String> {
    let text = call(port, &["INFO", "commandstats"])?.text();
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .filter_map(|(cmd, fields)| {
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((cmd.to_owned(), calls))
        })
        .collect())
}

/// The first element of `ROLE`: `master`, `slave` or `sentinel`.
pub fn role(port: u16) -> Result<String, String> {
    Ok(call(port, &["ROLE"])?
        .items()
        .first()
        .map(Reply::text)
        .unwrap_or_default())
}

/// Options every data node gets: loopback only, no persistence, immediate diskless full
/// syncs (the default waits 5 s for more replicas before starting one).
fn data_node_args(dir: &Path, port: u16) -> Vec<String> {
    let dir_s = dir.display().to_string();
    let log = dir.join("redis.log").display().to_string();
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir_s,
        "--logfile",
        &log,
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One `redis-server` process (data node or sentinel) in its own temporary directory.
struct Proc {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    /// Starts a process on free ports: `build(dir, port, bus_port)` writes any config file
    /// into `dir` and returns the `redis-server` arguments. A port taken between `free_port`
    /// and the bind is retried with fresh ports.
    fn start(kind: &str, build: impl Fn(&Path, u16, u16) -> Vec<String>) -> Proc {
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("plexus-redis-{}-{kind}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create a temporary directory");
            let args = build(&dir, port, free_port());
            let mut p = Proc {
                port,
                dir,
                args,
                child: None,
            };
            match p.spawn() {
                Ok(()) => return p,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server ({kind}) did not start:\n{last_log}");
    }

    /// (Re)starts the process with its arguments and waits until it answers `PING`; `Err`
    /// holds its log if it exited or stayed silent for 10 s.
    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if call(self.port, &["PING"]).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                self.kill9();
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process's log file (`redis.log` or `sentinel.log`), for failure messages.
    fn log(&self) -> String {
        ["redis.log", "sentinel.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with `what`
/// and the last `Err` (a description of the state seen).
async fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) if Instant::now() > deadline => {
                panic!("{what}: not within {timeout:?}; last state:\n{state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl super::RedisUrl for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
}

impl super::RedisUrl for RedisSentinel {
    fn url(&self) -> String {
        RedisSentinel::url(self)
    }
}
