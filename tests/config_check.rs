//! `plexus check --config FILE`: configuration mistakes that used to pass silently are refused
//! (shadowed rules, unknown pattern variables) or warned about (prod without rules), and a
//! good file is summarised — all without starting a server.

use std::process::Command;

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(config: &str, extra: &[&str]) -> Checked {
    let dir = std::env::temp_dir().join(format!(
        "plexus-check-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plexus.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

const SECRETS: &str = "jwt_secret = \"0123456789abcdef0123\"\napi_key = \"0123456789abcdef0123\"\n";

#[test]
fn a_rule_shadowed_by_an_earlier_pattern_is_refused_with_its_line() {
    let cfg = format!(
        "{SECRETS}\n[[channels]]\ntopic = \"room:*\"\n\n[[channels]]\ntopic = \"room:staff\"\njoin_roles = [\"staff\"]\n"
    );
    let c = check(&cfg, &[]);
    assert_eq!(c.code, Some(2), "{}{}", c.stdout, c.stderr);
    assert!(c.stderr.contains("never reached"), "{}", c.stderr);
    assert!(c.stderr.contains("line 7"), "{}", c.stderr);
    assert!(c.stderr.contains("\"room:*\""), "{}", c.stderr);
}

#[test]
fn an_unknown_pattern_variable_is_refused() {
    let c = check(
        &format!("{SECRETS}[[channels]]\ntopic = \"user:{{id}}\"\n"),
        &[],
    );
    assert_eq!(c.code, Some(2));
    assert!(
        c.stderr.contains("unknown variable \"{id}\""),
        "{}",
        c.stderr
    );
}

#[test]
fn prod_without_rules_is_a_warning_and_a_good_file_is_summarised() {
    let c = check(SECRETS, &[]);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(
        c.stdout.contains("warning: no [[channels]] rules"),
        "{}",
        c.stdout
    );
    let c = check(
        &format!("{SECRETS}[[channels]]\ntopic = \"room:staff\"\njoin_roles = [\"staff\"]\n[[channels]]\ntopic = \"room:*\"\n"),
        &["--listen", "localhost:4302"],
    );
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(c.stdout.contains("configuration ok"), "{}", c.stdout);
    assert!(c.stdout.contains("profile: prod"), "{}", c.stdout);
    assert!(
        c.stdout.contains(":4302"),
        "a host name is resolved: {}",
        c.stdout
    );
    assert!(c.stdout.contains("room:staff") && !c.stdout.contains("warning"));
}

#[test]
fn the_admin_console_is_off_in_prod_without_a_secret_and_a_short_one_is_refused() {
    let rules = "[[channels]]\ntopic = \"room:*\"\n";
    let c = check(&format!("{SECRETS}{rules}"), &[]);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(c.stdout.contains("admin console: off"), "{}", c.stdout);
    assert!(!c.stdout.contains("demo feed"), "{}", c.stdout);
    let c = check(&format!("{SECRETS}admin_secret = \"short\"\n{rules}"), &[]);
    assert_eq!(c.code, Some(2), "{}", c.stdout);
    assert!(c.stderr.contains("admin_secret"), "{}", c.stderr);
    let c = check(
        &format!("profile = \"dev\"\nadmin_secret = \"\"\n{rules}"),
        &[],
    );
    assert_eq!(
        c.code,
        Some(2),
        "an empty secret would open the console: {}",
        c.stdout
    );
    let c = check(
        &format!("{SECRETS}admin_secret = \"admin-0123456789abcdef\"\ndemo_feed = true\n{rules}"),
        &[],
    );
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(
        c.stdout.contains("admin console: on (/admin)"),
        "{}",
        c.stdout
    );
    assert!(c.stdout.contains("demo feed: on"), "{}", c.stdout);
}
