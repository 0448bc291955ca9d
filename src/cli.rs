//! Command-line interface: `plexus serve` (the default), `plexus check`, `plexus token` and
//! `plexus demo-feed`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Plexus: a self-hosted real-time server speaking the Phoenix Channels V2 protocol.
///
/// Run without arguments to start the server with the embedded in-memory default on
/// 127.0.0.1:4000 in the dev profile. Every setting can also come from a TOML file
/// (--config or PLEXUS_CONFIG) and from PLEXUS_* environment variables; see
/// docs/configuration.md.
#[derive(Parser, Debug)]
#[command(name = "plexus", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Validate the configuration (file and PLEXUS_* environment) without starting: prints
    /// what the server would run with and every warning; exits 2 on an error.
    Check(ServeArgs),
    /// Print a JWT signed with the configured secret, for clients and tests.
    Token(TokenArgs),
    /// Publish the demo's live data (a ticker and moving points) to a server through its HTTP
    /// API, once a second (the dev profile runs this inside the server by itself).
    DemoFeed(DemoFeedArgs),
}

#[derive(Args, Debug)]
pub struct DemoFeedArgs {
    /// The server's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    pub url: String,

    /// The server's API key.
    #[arg(long, env = "PLEXUS_API_KEY", hide_env_values = true)]
    pub api_key: String,

    /// The topic to publish to (the live page joins demo:live).
    #[arg(long, default_value = "demo:live")]
    pub topic: String,

    /// Stop after this many updates (default: run until stopped).
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML configuration file. Giving one selects the "prod" profile unless the file or
    /// PLEXUS_PROFILE says otherwise.
    #[arg(long, short = 'c', env = "PLEXUS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on, host:port (overrides env PLEXUS_LISTEN and the file).
    // No clap `env` here: `config::Env` reads PLEXUS_LISTEN, so that the flag can beat it.
    #[arg(long)]
    pub listen: Option<String>,

    /// "dev" (open token endpoint, loopback only) or "prod" (overrides env PLEXUS_PROFILE
    /// and the file).
    // No clap `env` here: `config::Env` reads PLEXUS_PROFILE.
    #[arg(long)]
    pub profile: Option<String>,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// User id (the sub claim).
    #[arg(long)]
    pub sub: String,

    /// A role to put in the roles claim; repeat for several.
    #[arg(long = "role")]
    pub roles: Vec<String>,

    /// Display name (the name claim), shown to other users in presence.
    #[arg(long)]
    pub name: Option<String>,

    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,

    /// The iss claim (required by a server that sets auth.issuer).
    #[arg(long)]
    pub iss: Option<String>,

    /// The aud claim (required by a server that sets auth.audience).
    #[arg(long)]
    pub aud: Option<String>,

    /// Configuration file to read jwt_secret from (env PLEXUS_CONFIG).
    #[arg(long, short = 'c', env = "PLEXUS_CONFIG")]
    pub config: Option<PathBuf>,

    /// HS256 secret to sign with; defaults to jwt_secret from the config file or
    /// PLEXUS_JWT_SECRET.
    #[arg(long, env = "PLEXUS_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn listen_and_profile_are_flags_only_and_help_names_their_env() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        for (flag, var) in [("listen", "PLEXUS_LISTEN"), ("profile", "PLEXUS_PROFILE")] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == flag).unwrap();
            assert!(
                arg.get_env().is_none(),
                "--{flag} must not read {var} itself"
            );
            assert!(
                arg.get_help().unwrap().to_string().contains(var),
                "--{flag} help"
            );
        }
    }
}
