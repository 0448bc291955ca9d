//! Unit tests of [`super`] (admission.rs).

use super::*;
use http::HeaderValue;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn forwarded_for_only_from_trusted_proxies() {
    let a = Admission::new(AdmissionConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ..Default::default()
    });
    let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
    assert_eq!(
        a.client_ip("10.0.0.1:5000".parse().unwrap(), &h),
        "1.2.3.4".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        a.client_ip("9.9.9.9:5000".parse().unwrap(), &h),
        "9.9.9.9".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        a.client_ip("10.0.0.1:5000".parse().unwrap(), &HeaderMap::new()),
        "10.0.0.1".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn forwarded_for_bytes_that_are_not_text_spoil_only_their_own_entry() {
    let a = Admission::new(AdmissionConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..AdmissionConfig::default()
    });
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\xff, 6.6.6.6").unwrap(),
    );
    // The proxy's entry (rightmost) is read; the client's unreadable one is never reached.
    assert_eq!(a.client_ip(peer, &h), "6.6.6.6".parse::<IpAddr>().unwrap());
    h.insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"6.6.6.6, \xff").unwrap(),
    );
    // An unreadable entry on the right: nothing left of it can be trusted; the peer.
    assert_eq!(a.client_ip(peer, &h), peer.ip());
}

#[test]
fn forwarded_for_entries_with_a_port_and_unreadable_ones() {
    let a = Admission::new(AdmissionConfig {
        trusted_proxies: vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.9.0.0/16".parse().unwrap(),
        ],
        ..Default::default()
    });
    let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    for (xff, client) in [
        ("6.6.6.6, 10.0.0.1:5555", "10.0.0.1"),
        ("6.6.6.6, [2001:db8::7]:5555", "2001:db8::7"),
        ("6.6.6.6, [2001:db8::7]", "2001:db8::7"),
        ("6.6.6.6, 1.2.3.4:80, 10.9.1.1:443", "1.2.3.4"),
        ("6.6.6.6, [::ffff:1.2.3.4]:80", "1.2.3.4"),
        // Unreadable: nothing left of it is believed, the peer is the client.
        ("6.6.6.6, unknown", "127.0.0.1"),
        ("6.6.6.6, 10.0.0.1:x", "127.0.0.1"),
        ("6.6.6.6, , 10.9.1.1", "127.0.0.1"),
        ("6.6.6.6, 1.2.3.4, 10.9.1.1", "1.2.3.4"),
    ] {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(xff));
        assert_eq!(a.client_ip(proxy, &h), ip(client), "{xff}");
    }
}

#[test]
fn ipv6_counts_per_slash_64() {
    let a = Admission::new(AdmissionConfig {
        max_connections_per_ip: 2,
        max_connections_per_user: 0,
        connect_rate_per_ip: 1.0,
        connect_burst_per_ip: 2,
        ..Default::default()
    });
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        address_key(ip("2001:db8:1:2:aaaa::1")),
        ip("2001:db8:1:2::")
    );
    assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));
    let p1 = a
        .acquire(ip("2001:db8:1:2::1"), &Identity::new("a"))
        .unwrap();
    assert_eq!(
        p1.ip(),
        ip("2001:db8:1:2::1"),
        "the permit keeps the address itself"
    );
    let _p2 = a
        .acquire(ip("2001:db8:1:2::2"), &Identity::new("b"))
        .unwrap();
    assert!(a
        .acquire(ip("2001:db8:1:2::3"), &Identity::new("c"))
        .is_err());
    assert!(a
        .acquire(ip("2001:db8:1:3::3"), &Identity::new("c"))
        .is_ok());
    drop(p1);
    assert!(a
        .acquire(ip("2001:db8:1:2::3"), &Identity::new("c"))
        .is_ok());
    assert!(a.check_rate(ip("2001:db8:1:2::1")).is_ok());
    assert!(a.check_rate(ip("2001:db8:1:2::2")).is_ok());
    assert_eq!(a.check_rate(ip("2001:db8:1:2::3")).unwrap_err().status, 429);
    assert!(a.check_rate(ip("2001:db8:1:3::1")).is_ok());
}

#[test]
fn origins() {
    let a = Admission::new(AdmissionConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        ..Default::default()
    });
    assert!(a.check_origin(&headers(&[])).is_ok());
    assert!(a
        .check_origin(&headers(&[("origin", "https://app.example.com")]))
        .is_ok());
    assert!(a
        .check_origin(&headers(&[
            ("origin", "https://plexus.io"),
            ("host", "plexus.io")
        ]))
        .is_ok());
    assert_eq!(
        a.check_origin(&headers(&[("origin", "https://evil.example")]))
            .unwrap_err()
            .status,
        403
    );
    assert!(a
        .check_origin(&headers(&[("origin", "http://localhost:3000")]))
        .is_err());
    let dev = Admission::new(AdmissionConfig {
        allow_loopback_origins: true,
        ..Default::default()
    });
    assert!(dev
        .check_origin(&headers(&[("origin", "http://localhost:3000")]))
        .is_ok());
    assert!(dev
        .check_origin(&headers(&[("origin", "http://127.0.0.1:5173")]))
        .is_ok());
    assert!(dev
        .check_origin(&headers(&[("origin", "http://[::1]:8080")]))
        .is_ok());
    assert!(dev
        .check_origin(&headers(&[("origin", "http://localhost.evil.example")]))
        .is_err());
}

#[test]
fn caps_are_released_on_drop() {
    let a = Admission::new(AdmissionConfig {
        max_connections_per_ip: 2,
        max_connections_per_user: 1,
        ..Default::default()
    });
    let ip: IpAddr = "1.2.3.4".parse().unwrap();
    let p1 = a.acquire(ip, &Identity::new("alice")).unwrap();
    assert_eq!(
        a.acquire(ip, &Identity::new("alice")).unwrap_err().status,
        429
    );
    let p2 = a.acquire(ip, &Identity::new("bob")).unwrap();
    assert!(a.acquire(ip, &Identity::new("carol")).is_err());
    drop(p1);
    drop(p2);
    assert!(a.acquire(ip, &Identity::new("alice")).is_ok());
}

#[test]
fn connect_rate() {
    let a = Admission::new(AdmissionConfig {
        connect_rate_per_ip: 1.0,
        connect_burst_per_ip: 3,
        ..Default::default()
    });
    let ip: IpAddr = "1.2.3.4".parse().unwrap();
    for _ in 0..3 {
        assert!(a.check_rate(ip).is_ok());
    }
    assert_eq!(a.check_rate(ip).unwrap_err().status, 429);
    assert!(a.check_rate("5.6.7.8".parse().unwrap()).is_ok());
}

#[test]
fn users_are_counted_only_with_a_per_user_cap() {
    let ip: IpAddr = "1.2.3.4".parse().unwrap();
    let uncapped = Admission::new(AdmissionConfig {
        max_connections_per_ip: 0,
        max_connections_per_user: 0,
        ..Default::default()
    });
    let permits: Vec<_> = (0..3)
        .map(|_| uncapped.acquire(ip, &Identity::new("alice")).unwrap())
        .collect();
    assert_eq!(uncapped.user_connections("alice"), 0, "no per-user entry");
    drop(permits);
    let capped = Admission::new(AdmissionConfig {
        max_connections_per_ip: 0,
        max_connections_per_user: 2,
        ..Default::default()
    });
    let p1 = capped.acquire(ip, &Identity::new("alice")).unwrap();
    let p2 = capped.acquire(ip, &Identity::new("alice")).unwrap();
    assert_eq!(capped.user_connections("alice"), 2);
    assert_eq!(
        capped
            .acquire(ip, &Identity::new("alice"))
            .unwrap_err()
            .status,
        429
    );
    drop(p1);
    assert_eq!(capped.user_connections("alice"), 1);
    drop(p2);
    assert_eq!(capped.user_connections("alice"), 0);
}
