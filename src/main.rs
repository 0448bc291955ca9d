//! The `plexus` binary: parses the command line and runs the server, or the `check`, `token`
//! or `demo-feed` command.
//! Everything else is in the `plexus` library (`src/lib.rs`): `cli` (flags) → `config`
//! (file + env) → `server` (wiring, TLS, drain) → `routes` (one module per endpoint group).

use clap::Parser;
use plexus::cli::{Cli, Command, DemoFeedArgs, ServeArgs, TokenArgs};
use plexus::{config, server};
use std::process::ExitCode;

fn main() -> ExitCode {
    plexus::allocator::configure();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Check(args)) => check(args),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::DemoFeed(args)) => demo_feed(args),
        None => serve(cli.serve),
    }
}

/// Logs to stderr, filtered by `PLEXUS_LOG` (default `info`); `PLEXUS_LOG_FORMAT=json` writes
/// one JSON object per line (for log shippers) instead of text.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLEXUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    if std::env::var("PLEXUS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Loads the configuration from the flags, `PLEXUS_*` and the file.
fn load_config(args: &ServeArgs) -> Result<config::Config, config::ConfigError> {
    config::load(
        args.config.as_deref(),
        &config::Env::from_process(),
        args.listen.as_deref(),
        args.profile.as_deref(),
    )
}

/// `plexus check`: loads the configuration as `serve` would, and says what it found.
fn check(args: ServeArgs) -> ExitCode {
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("plexus check: {e}");
            return ExitCode::from(2);
        }
    };
    let source = cfg
        .source
        .as_ref()
        .map_or("no file".to_owned(), |p| p.display().to_string());
    println!("configuration ok ({source})");
    println!("  profile: {}", cfg.profile.name());
    println!(
        "  listen: {}{}",
        cfg.listen,
        if cfg.tls.is_some() { " (TLS)" } else { "" }
    );
    println!(
        "  broker: {}",
        if cfg.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    );
    println!("  channel rules: {}", cfg.policy.rules().len());
    for rule in cfg.policy.rules() {
        println!("    {}", rule.topic);
    }
    if cfg.supabase {
        println!("  supabase channels: on");
    }
    for url in &cfg.jwks_urls {
        println!("  JWKS URL (fetched at start, not now): {url}");
    }
    println!(
        "  admin console: {}",
        if cfg.admin_secret.is_some() {
            "on (/admin)"
        } else {
            "off (no admin_secret)"
        }
    );
    println!(
        "  demo pages: {}",
        if cfg.demo {
            "on (/, /demo/*)"
        } else {
            "off (demo = false)"
        }
    );
    if cfg.demo_feed {
        println!("  demo feed: on (demo:live)");
    }
    for w in &cfg.warnings {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging();
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("plexus: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plexus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("plexus: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `plexus demo-feed`: the demo's live data, published through a server's HTTP API.
fn demo_feed(args: DemoFeedArgs) -> ExitCode {
    init_logging();
    let target = match plexus::demo::feed::Target::parse(&args.url, &args.api_key) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("plexus demo-feed: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plexus demo-feed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(url = %args.url, topic = %args.topic, "demo feed: publishing an update every second");
    rt.block_on(plexus::demo::feed::run(
        target,
        &args.topic,
        args.count,
        || true,
    ));
    ExitCode::SUCCESS
}

fn token(args: TokenArgs) -> ExitCode {
    let secret = match config::token_secret(args.config.as_deref(), args.secret.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plexus token: {e}");
            return ExitCode::from(2);
        }
    };
    let ttl = match humantime::parse_duration(&args.ttl) {
        Ok(d) if d.as_secs() > 0 => d.as_secs(),
        _ => {
            eprintln!(
                "plexus token: invalid --ttl {:?}: use e.g. 30m, 1h, 7d",
                args.ttl
            );
            return ExitCode::from(2);
        }
    };
    let issuer = plexus_core::auth::Issuer::hs256(secret.as_bytes());
    let now = plexus_core::auth::unix_now();
    let claims = plexus_core::auth::Claims {
        sub: args.sub.clone(),
        roles: args.roles.clone(),
        name: args.name.clone(),
        exp: now.saturating_add(ttl),
        iat: Some(now),
        iss: args.iss.clone(),
        aud: args.aud.clone(),
    };
    match issuer.issue_claims(&claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plexus token: {e}");
            ExitCode::FAILURE
        }
    }
}
