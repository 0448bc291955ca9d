//! Native TLS: wss:// and https:// on the same port with a throwaway certificate, reload on
//! SIGHUP without a restart, and the optional http → https redirect listener.

mod common;

use common::{free_port, http_raw, Server};
use plexus_client::{Client, ConnectOptions};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

struct Cert {
    pem: String,
    key: String,
}

fn self_signed() -> Cert {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    Cert {
        pem: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
    }
}

fn write_cert(dir: &std::path::Path, cert: &Cert) {
    std::fs::write(dir.join("cert.pem"), &cert.pem).unwrap();
    std::fs::write(dir.join("key.pem"), &cert.key).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("plexus-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn wss_client(
    s: &Server,
    host: &str,
    trusted_pem: &str,
) -> Result<Client, plexus_client::ClientError> {
    let url = format!("wss://{host}:{}/socket", s.port);
    let opts = ConnectOptions::new(url)
        .token(s.token("alice"))
        .tls_roots_pem(trusted_pem.as_bytes())?;
    Client::connect(opts).await
}

#[tokio::test]
async fn wss_and_https_on_one_port() {
    let dir = temp_dir("basic");
    let cert = self_signed();
    write_cert(&dir, &cert);
    let cfg = format!(
        "profile = \"dev\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let s = Server::start_with(Some(&cfg), &[]).await;
    let mut c = wss_client(&s, "localhost", &cert.pem)
        .await
        .expect("wss connect");
    assert!(c.join("room:tls", json!({})).await.unwrap().is_ok());
    assert!(c.heartbeat().await.unwrap().is_ok());
    // Plain HTTP on the TLS port gets nowhere.
    assert!(http_raw(s.port, "GET", "/health", &[], "").await.is_err());
    // A client that does not trust the certificate is refused by TLS.
    let other = self_signed();
    assert!(wss_client(&s, "localhost", &other.pem).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_clients() {
    let dir = temp_dir("reload");
    let first = self_signed();
    write_cert(&dir, &first);
    let cfg = format!(
        "profile = \"dev\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let s = Server::start_with(Some(&cfg), &[]).await;
    let mut before = wss_client(&s, "localhost", &first.pem).await.unwrap();
    before.join("room:reload", json!({})).await.unwrap();

    // A broken file is refused and the old certificate stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(wss_client(&s, "localhost", &first.pem).await.is_ok());
    assert!(s.log().contains("NOT reloaded"), "{}", s.log());

    let second = self_signed();
    write_cert(&dir, &second);
    Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if wss_client(&s, "localhost", &second.pem).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "new certificate not served after SIGHUP:\n{}", s.log());
    assert!(
        wss_client(&s, "localhost", &first.pem).await.is_err(),
        "old certificate still served"
    );
    // The connection made before the reload is untouched.
    assert!(before.heartbeat().await.unwrap().is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn plain_http_listener_redirects_to_https() {
    let dir = temp_dir("redirect");
    let cert = self_signed();
    write_cert(&dir, &cert);
    let redirect_port = free_port();
    let cfg = format!(
        "profile = \"dev\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nredirect_http = \"127.0.0.1:{redirect_port}\"\npublic_host = \"chat.example.test:8443\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let _s = Server::start_with(Some(&cfg), &[]).await;
    // The configured public host, never the request's Host.
    for host in [None, Some("evil.example")] {
        let headers: Vec<(&str, &str)> = host.into_iter().map(|h| ("Host", h)).collect();
        let (status, head, _) = http_raw(redirect_port, "GET", "/demo?x=1", &headers, "")
            .await
            .unwrap();
        assert_eq!(status, 308);
        assert!(
            head.contains("location: https://chat.example.test:8443/demo?x=1"),
            "{head}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTPS request over a fresh TLS connection with `config`; whether the handshake resumed
/// a session. Reading the answer also reads the session tickets the server sent after the
/// handshake, so the next connection with the same config can resume.
async fn https_get_resumed(
    port: u16,
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let resumed =
        tls.get_ref().1.handshake_kind() == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    resumed
}

#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() {
    use rustls_pki_types::pem::PemObject;
    let dir = temp_dir("resume");
    let cert = self_signed(); // rcgen's default key: ECDSA P-256
    write_cert(&dir, &cert);
    let cfg = format!(
        "profile = \"dev\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let s = Server::start_with(Some(&cfg), &[]).await;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    assert!(
        !https_get_resumed(s.port, config.clone()).await,
        "first handshake is a full one"
    );
    // Each returning connection resumes (with a ticket the previous one received).
    for _ in 0..3 {
        assert!(
            https_get_resumed(s.port, config.clone()).await,
            "a returning client resumes"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
