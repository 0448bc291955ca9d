//! The load generator end to end against a real Plexus server process: worker processes
//! subscribe over Phoenix V2 with a JWT each, the coordinator publishes through the HTTP API,
//! every delivery is counted and timed, and `report` turns the result into a table. The `slow`
//! scenario names the rule that closed its stalled subscribers. The Pusher
//! adapter (the one that drives Sockudo) against Plexus in Pusher mode, publishing through
//! Pusher's signed HTTP API. Needs the server binary (`cargo build --bin plexus`, which
//! `scripts/test` runs first).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "load-test-secret-0123456789abcdef";
const KEY: &str = "load-test-key";
/// The Pusher app of the Pusher-mode server.
const PUSHER_APP: [&str; 3] = ["load-app", "load-pusher-key", "load-pusher-secret"];

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn plexus_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/plexus");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin plexus` first (scripts/test does)",
        bin.display()
    );
    bin
}

fn start() -> Server {
    start_with(&[])
}

fn start_with(env: &[(&str, &str)]) -> Server {
    start_limits(env, "")
}

/// A server with extra `[limits]` lines in its configuration.
fn start_limits(env: &[(&str, &str)], limits: &str) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let dir = std::env::temp_dir().join(format!("plexus-load-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("plexus.toml");
    std::fs::write(
        &config,
        format!("profile = \"dev\"\n[limits]\nmax_connections_per_ip = 0\nmax_connections_per_user = 0\nconnect_rate_per_ip = 0\n{limits}\n[[channels]]\ntopic = \"room:*\"\n"),
    )
    .expect("config");
    let child = Command::new(plexus_bin())
        .env("PLEXUS_CONFIG", &config)
        .env("PLEXUS_LISTEN", format!("127.0.0.1:{port}"))
        .env("PLEXUS_JWT_SECRET", SECRET)
        .env("PLEXUS_API_KEY", KEY)
        .env("PLEXUS_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start plexus");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "plexus did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port, dir }
}

fn load(s: &Server, secret: &str, extra: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let url = format!(
        "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0&token={{token}}",
        s.port
    );
    let mut args: Vec<String> = [
        "--target",
        "Plexus",
        "--proto",
        "phoenix",
        "--url",
        &url,
        "--secret",
        secret,
        "--api-key",
        KEY,
        "--topic",
        "room:load",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    run_load(s, args)
}

/// `plexus-bench load` with `args` and the server's address, pid and a results file.
fn run_load(s: &Server, mut args: Vec<String>) -> (bool, Vec<serde_json::Value>, String) {
    let out = s.dir.join("results.jsonl");
    let _ = std::fs::remove_file(&out);
    args.splice(
        0..0,
        [
            "load".to_owned(),
            "--publish-url".into(),
            format!("http://127.0.0.1:{}", s.port),
            "--pid".into(),
            s.child.id().to_string(),
            "--sources".into(),
            "127.0.0.2,127.0.0.3".into(),
            "--out".into(),
            out.display().to_string(),
        ],
    );
    let run = Command::new(env!("CARGO_BIN_EXE_plexus-bench"))
        .args(&args)
        .output()
        .expect("run plexus-bench");
    let lines = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        run.status.success(),
        lines,
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

#[test]
fn fixed_rate_fan_out_is_counted_and_reported() {
    let s = start();
    let (ok, lines, stderr) = load(
        &s,
        SECRET,
        &[
            "--scenario",
            "fixed",
            "--subs",
            "40",
            "--rate",
            "20",
            "--secs",
            "1",
            "--procs",
            "2",
        ],
    );
    assert!(ok, "plexus-bench failed: {stderr}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let r = &lines[0];
    assert_eq!(r["connect"]["ready"], 40, "{r}");
    let step = &r["best"];
    assert_eq!(step["published"], 20, "{r}");
    assert_eq!(step["expected"], 800, "{r}");
    assert_eq!(
        step["received"], 800,
        "every subscriber got every message: {r}"
    );
    assert_eq!(step["loss_pct"], 0.0);
    let p50 = step["lat_ms"]["p50"].as_f64().expect("latency measured");
    let max = step["lat_ms"]["max"].as_f64().expect("latency measured");
    assert!(p50 > 0.0 && p50 <= max && max < 5_000.0, "{r}");
    assert!(
        step["server_cpu_pct"].as_f64().is_some_and(|c| c > 0.0),
        "{r}"
    );

    // The report turns the line into the table between the markers, and the charts.
    let md = s.dir.join("BENCH.md");
    std::fs::write(
        &md,
        "# t\n\n<!-- bench-compare:start -->\nold\n<!-- bench-compare:end -->\ntail\n",
    )
    .expect("md");
    let svg = s.dir.join("svg");
    let report = Command::new(env!("CARGO_BIN_EXE_plexus-bench"))
        .args(["report", "--input"])
        .arg(s.dir.join("results.jsonl"))
        .arg("--markdown")
        .arg(&md)
        .arg("--svg-dir")
        .arg(&svg)
        .output()
        .expect("report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let text = std::fs::read_to_string(&md).expect("md");
    assert!(!text.contains("old") && text.ends_with("tail\n"), "{text}");
    assert!(text.contains("| Plexus | 40 × 20 | "), "{text}");
    let chart = std::fs::read_to_string(svg.join("efficiency.svg")).expect("chart");
    assert!(
        chart.starts_with("<svg") && chart.contains(">Plexus<"),
        "{chart}"
    );
}

#[test]
fn refused_subscribers_fail_the_run_with_the_reason() {
    let s = start();
    let (ok, lines, stderr) = load(
        &s,
        "not-the-server-secret-0123456789",
        &["--scenario", "connect", "--subs", "4", "--procs", "1"],
    );
    assert!(!ok, "a run where nobody could connect must fail");
    assert!(stderr.contains("no subscriber connected"), "{stderr}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["connect"]["failed"], 4, "{:?}", lines[0]);
    assert!(
        lines[0]["connect"]["first_error"]
            .as_str()
            .is_some_and(|e| e.contains("handshake")),
        "{:?}",
        lines[0]
    );
}

/// The arguments `scripts/bench-compare` gives the Pusher adapter (Sockudo and Plexus's Pusher
/// mode alike), with `secret` signing the publishes.
fn pusher_args(s: &Server, secret: &str, extra: &[&str]) -> Vec<String> {
    let [app, key, _] = PUSHER_APP;
    let url = format!(
        "ws://127.0.0.1:{}/app/{key}?protocol=7&client=plexus-bench&version=1",
        s.port
    );
    let mut args: Vec<String> = [
        "--target",
        "Plexus (Pusher mode)",
        "--proto",
        "pusher",
        "--url",
        &url,
        "--publish",
        "pusher",
        "--pusher-app",
        app,
        "--pusher-key",
        key,
        "--pusher-secret",
        secret,
        "--topic",
        "bench",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn the_pusher_adapter_drives_plexus_in_pusher_mode() {
    let [app, key, secret] = PUSHER_APP;
    let s = start_with(&[
        ("PLEXUS_PUSHER_APP_ID", app),
        ("PLEXUS_PUSHER_KEY", key),
        ("PLEXUS_PUSHER_SECRET", secret),
    ]);
    let fixed = [
        "--scenario",
        "fixed",
        "--subs",
        "40",
        "--rate",
        "20",
        "--secs",
        "1",
        "--procs",
        "2",
    ];
    // Subscribed over /app/{key}, published with Pusher's signed POST /apps/{id}/events.
    let (ok, lines, stderr) = run_load(&s, pusher_args(&s, secret, &fixed));
    assert!(ok, "plexus-bench failed: {stderr}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let r = &lines[0];
    assert_eq!(r["connect"]["ready"], 40, "{r}");
    assert_eq!(r["proto"], "pusher", "{r}");
    let step = &r["best"];
    assert_eq!(step["publish_failed"], 0, "{r}");
    assert_eq!(step["expected"], 800, "{r}");
    assert_eq!(
        step["received"], 800,
        "every subscriber got every message: {r}"
    );
    assert!(
        step["lat_ms"]["p50"].as_f64().is_some_and(|p| p > 0.0),
        "{r}"
    );

    // The report's Pusher section: its own markers and charts, the main tables left alone.
    let md = s.dir.join("BENCH.md");
    std::fs::write(
        &md,
        "<!-- bench-compare:start -->\nmain\n<!-- bench-compare:end -->\n\
         <!-- bench-compare:pusher:start -->\nold\n<!-- bench-compare:pusher:end -->\n",
    )
    .expect("md");
    let svg = s.dir.join("svg");
    let report = Command::new(env!("CARGO_BIN_EXE_plexus-bench"))
        .args(["report", "--section", "pusher", "--input"])
        .arg(s.dir.join("results.jsonl"))
        .arg("--markdown")
        .arg(&md)
        .arg("--svg-dir")
        .arg(&svg)
        .output()
        .expect("report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let text = std::fs::read_to_string(&md).expect("md");
    assert!(text.contains("\nmain\n") && !text.contains("old"), "{text}");
    assert!(
        text.contains("| Plexus (Pusher mode) | 40 × 20 | ")
            && text.contains("docs/bench/pusher-efficiency.svg"),
        "{text}"
    );
    assert!(svg.join("pusher-efficiency.svg").exists());

    // Publishes signed with another secret are refused (401) and counted as failures.
    let (_, lines, stderr) = run_load(&s, pusher_args(&s, "not-the-app-secret", &fixed));
    let step = &lines.first().expect("a result line")["steps"][0];
    assert_eq!(step["publish_failed"], 20, "{stderr} {step}");
    assert!(
        step["publish_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("HTTP 401")),
        "{step}"
    );
    assert_eq!(step["received"], 0, "{step}");
}

#[test]
fn the_slow_scenario_says_which_rule_closed_the_stalled_sockets() {
    // A 1 s write timeout: the two stalled subscribers' kernel buffers fill within a few
    // seconds at 3 MB/s each, then the blocked write times out long before 1,024 frames queue.
    let s = start_limits(&[], "write_timeout_secs = 1");
    let (ok, lines, stderr) = load(
        &s,
        SECRET,
        &[
            "--scenario",
            "slow",
            "--subs",
            "20",
            "--rate",
            "50",
            "--size",
            "60000",
            "--secs",
            "1",
            "--stall-secs",
            "9",
            "--procs",
            "1",
        ],
    );
    assert!(ok, "plexus-bench failed: {stderr}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let r = &lines[0];
    assert_eq!(r["stalled"], 2, "{r}");
    assert_eq!(r["stalled_closed_by_server"], 2, "{r}");
    // Dropped by the write timeout: no close frame, and the server's counters say so.
    assert_eq!(r["stalled_close_codes"]["none"], 2, "{r}");
    assert_eq!(r["server_closes_by_rule"]["write_timeout"], 2, "{r}");
    assert_eq!(r["server_closes_by_rule"]["outbox_bound"], 0, "{r}");
    assert_eq!(r["others_closed"], 0, "{r}");
}
