//! Tests of `[pusher]` and Pusher webhooks in the configuration.

use super::*;

#[test]
fn pusher_needs_app_id_key_and_secret_together() {
    let c = parse_str(PROD, &Env::default(), None, None).unwrap();
    assert!(c.pusher.is_none());
    let env = Env {
        pusher_app_id: Some("1".into()),
        pusher_key: Some("app-key".into()),
        pusher_secret: Some("app-secret-0123456789".into()),
        ..Env::default()
    };
    let c = parse_str(PROD, &env, None, None).unwrap();
    let app = c.pusher.unwrap();
    assert_eq!((app.app_id.as_str(), app.key.as_str()), ("1", "app-key"));
    assert!(!format!("{app:?}").contains("app-secret"));
    let partial = Env {
        pusher_secret: None,
        ..env.clone()
    };
    let e = parse_str(PROD, &partial, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("PLEXUS_PUSHER_SECRET"), "{e}");
    let file = format!("{PROD}[pusher]\napp_id = \"1\"\nkey = \"k\"\nsecret = \"short\"\n");
    let e = parse_str(&file, &Env::default(), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pusher.secret") && e.contains("16"), "{e}");
}

#[test]
fn pusher_webhooks_need_pusher_mode_and_know_pusher_s_event_names() {
    let app = Env {
        pusher_app_id: Some("1".into()),
        pusher_key: Some("app-key".into()),
        pusher_secret: Some("app-secret-0123456789".into()),
        ..Env::default()
    };
    let c = parse_str(PROD, &app, None, None).unwrap();
    assert!(c.pusher_webhooks.is_none());
    let env = Env {
        pusher_webhook_url: Some("http://127.0.0.1:9/pusher".into()),
        ..app.clone()
    };
    let w = parse_str(PROD, &env, None, None)
        .unwrap()
        .pusher_webhooks
        .unwrap();
    assert_eq!(w.url, "http://127.0.0.1:9/pusher");
    assert_eq!(w.events, plexus_core::pusher::webhooks::all_events());
    // `[webhooks]`' numbers tune this sink too; no hook secret is needed (the app's signs).
    let file = format!("{PROD}[webhooks]\nbatch_max = 7\n[pusher]\nwebhook_events = [\"member_added\", \"cache_miss\"]\n");
    let w = parse_str(&file, &env, None, None)
        .unwrap()
        .pusher_webhooks
        .unwrap();
    assert_eq!(w.batch_max, 7);
    use plexus_core::webhooks::EventKind;
    assert!(w.events.contains(EventKind::PresenceJoin) && w.events.contains(EventKind::CacheMiss));
    assert!(!w.events.contains(EventKind::ChannelOccupied));
    let bad = Env {
        pusher_webhook_events: Some("member_added,presence_join".into()),
        ..env.clone()
    };
    let e = parse_str(PROD, &bad, None, None).unwrap_err().to_string();
    assert!(
        e.contains("presence_join") && e.contains("member_added"),
        "{e}"
    );
    let not_http = Env {
        pusher_webhook_url: Some("ftp://x".into()),
        ..app.clone()
    };
    let e = parse_str(PROD, &not_http, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pusher.webhook_url"), "{e}");
    let no_app = Env {
        pusher_webhook_url: Some("http://127.0.0.1:9/pusher".into()),
        ..Env::default()
    };
    let e = parse_str(PROD, &no_app, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Pusher mode"), "{e}");
}
