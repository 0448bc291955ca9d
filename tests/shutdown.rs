//! SIGTERM right after the server says it listens: it drains and exits 0, never dies by the
//! signal's default action (the handler is installed before the announcement). Before, a
//! SIGTERM in the moment between the announcement and the first wait killed the process (seen
//! about once in 20 runs of the webhook drain test under load).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn sigterm_right_after_the_announcement_drains_and_exits_0() {
    for round in 0..10 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PLEXUS_LISTEN", "127.0.0.1:0")
            .env("PLEXUS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plexus");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("the server exited before it listened")
                .expect("read stderr");
            if line.contains("listening on") {
                break;
            }
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        // Keep reading so the server never blocks on a full pipe while it drains.
        std::thread::spawn(move || for _ in lines {});
        let code = child.wait().expect("wait").code();
        assert_eq!(
            code,
            Some(0),
            "round {round}: killed by the signal instead of draining"
        );
    }
}
