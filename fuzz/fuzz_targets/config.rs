//! The configuration loader (`plexus::config::parse_str`: TOML text, resolved like a config
//! file by `config::load`, reading no file).
//!
//! Arbitrary UTF-8, resolved with the file's default profile (prod) and with `--profile dev`:
//! never panics, every error has a message, and an accepted configuration keeps the loader's
//! promises: dev listens on loopback only; prod has a JWT secret (or keys) of at least 16
//! characters and an API key of at least 16, none generated, and an admin secret (if any) of
//! at least 16; limits are sane
//! (max_message_bytes >= 1024, non-negative rates, timeouts >= 1 s).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::config::{parse_str, Env, Profile};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for flag_profile in [None, Some("dev")] {
        match parse_str(text, &Env::default(), None, flag_profile) {
            Ok(c) => {
                if flag_profile == Some("dev") {
                    assert_eq!(c.profile, Profile::Dev);
                }
                match c.profile {
                    Profile::Dev => {
                        assert!(c.listen.ip().is_loopback(), "dev on {}", c.listen);
                        if let Some(r) = c.http_redirect {
                            assert!(r.ip().is_loopback(), "dev redirect on {r}");
                        }
                    }
                    Profile::Prod => {
                        assert!(!c.jwt_secret_generated && !c.api_key_generated);
                        assert!(c.api_key.len() >= 16);
                        assert!(c.jwt_secret.is_empty() || c.jwt_secret.len() >= 16);
                        assert!(c.admin_secret.as_ref().is_none_or(|s| s.len() >= 16));
                    }
                }
                assert!(!c.verifier.keys().is_empty());
                assert!(c.admin_secret.as_ref().is_none_or(|s| !s.is_empty()));
                let l = &c.limits;
                assert!(l.max_message_bytes >= 1024);
                assert!(l.messages_per_second >= 0.0, "{}", l.messages_per_second);
                assert!(c.admission.connect_rate_per_ip >= 0.0);
                for t in [
                    l.idle_timeout,
                    l.write_timeout,
                    l.longpoll_window,
                    c.http_header_timeout,
                ] {
                    assert!(t >= Duration::from_secs(1));
                }
                assert!(c.source.is_none());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
