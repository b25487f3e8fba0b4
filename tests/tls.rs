//! HTTPS issuers: a private CA given as `ca_file`, mutual TLS with `client_cert` /
//! `client_key`, and proxies from the environment. The issuer is a real rustls server on
//! 127.0.0.1 with certificates made by rcgen for the test.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::pki::{Pki, https_issuer, https_server};
use common::{Mock, Reply};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::json;
use token_agent::agent::Agent;
use token_agent::clock::Clock;
use token_agent::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn once(dir: &Path, port: u16, http: &str) -> Result<(), String> {
    let yaml = format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: s\n    kind: oauth2\n    token_url: 'https://localhost:{port}/token'\n    auth: none\n    http: {http}\n    sinks: [ {{ file: {{ path: s.token }} }} ]\n",
        dir.display()
    );
    let config = Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let agent = Agent::build(&config, Clock::system()).map_err(|e| e.to_string())?;
    agent.once().await.remove(0).result
}

/// The error of a fetch from `url` whose certificate no configured CA vouches for: the
/// agent's own words, the URL, and rustls' reason (not any other failure).
fn assert_untrusted(err: &str, url: &str) {
    assert!(
        err.starts_with(&format!("fetch failed: TLS handshake with {url} failed"))
            && err.ends_with("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn private_ca_is_trusted_only_when_configured() {
    let pki = Pki::new();
    let server = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let port = https_issuer(&server, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());

    let err = once(dir.path(), port, "{}").await.unwrap_err();
    assert_untrusted(&err, &format!("https://localhost:{port}/token"));

    once(dir.path(), port, &format!("{{ ca_file: '{ca}' }}"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s.token")).unwrap(),
        "tls-token"
    );
}

#[tokio::test]
async fn every_http_kind_trusts_the_private_ca_and_only_it() {
    let pki = Pki::new();
    let server = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let json_port = https_issuer(&server, None).await;
    const XML: &str = "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>status</name><value><i4>0</i4></value></member><member><name>result</name><value><struct><member><name>aps_token</name><value><string>tls-token</string></value></member></struct></value></member></struct></value></param></params></methodResponse>";
    let xml_port = https_server(&server, None, "text/xml", XML).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());
    let kinds = [
        (
            "mindsphere",
            json_port,
            "base_url: 'https://localhost:{port}/api', client_id: c, client_secret: { env: PATH }, app_name: a, app_version: '1', host_tenant: h, user_tenant: u",
        ),
        (
            "odin_oa",
            xml_port,
            "url: 'https://localhost:{port}/RPC2', account_id: 1",
        ),
        ("http", json_port, "url: 'https://localhost:{port}/token'"),
    ];
    for (kind, port, fields) in kinds {
        for trusted in [false, true] {
            let sub = tempfile::tempdir().unwrap();
            let http = if trusted {
                format!("{{ ca_file: '{ca}' }}")
            } else {
                "{}".into()
            };
            let yaml = format!(
                "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - {{ name: s, kind: {kind}, http: {http}, {}, sinks: [ {{ file: {{ path: s.token }} }} ] }}\n",
                sub.path().display(),
                fields.replace("{port}", &port.to_string())
            );
            let config =
                Config::parse(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
            let result = Agent::build(&config, Clock::system())
                .unwrap()
                .once()
                .await
                .remove(0)
                .result;
            if trusted {
                result.unwrap_or_else(|e| panic!("{kind}: {e}"));
                assert_eq!(
                    std::fs::read_to_string(sub.path().join("s.token")).unwrap(),
                    "tls-token",
                    "{kind}"
                );
            } else {
                let err = result.unwrap_err();
                let path = match kind {
                    "mindsphere" => "/api/oauth/token",
                    "odin_oa" => "/RPC2",
                    _ => "/token",
                };
                assert_untrusted(&err, &format!("https://localhost:{port}{path}"));
            }
        }
    }
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let server = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let client = pki.leaf(&["token-agent"], ExtendedKeyUsagePurpose::ClientAuth);
    let port = https_issuer(&server, Some(pki.ca.der())).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());
    let cert = write(dir.path(), "tls.crt", &client.cert_pem);
    let key = write(dir.path(), "tls.key", &client.key_pem);

    let without = once(dir.path(), port, &format!("{{ ca_file: '{ca}' }}")).await;
    // TLS 1.3: the server's refusal arrives after the client finished its handshake.
    let err = without.unwrap_err();
    assert!(
        err.starts_with(&format!(
            "fetch failed: request to https://localhost:{port}/token failed"
        )) && err.ends_with("received fatal alert: CertificateRequired"),
        "the server demands a client certificate: {err}"
    );

    once(
        dir.path(),
        port,
        &format!("{{ ca_file: '{ca}', client_cert: '{cert}', client_key: '{key}' }}"),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s.token")).unwrap(),
        "tls-token"
    );
}

#[tokio::test]
async fn unusable_tls_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let err = once(dir.path(), 1, "{ ca_file: /nonexistent/ca.pem }")
        .await
        .unwrap_err();
    assert!(
        err.contains("source `s`: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
    let junk = write(dir.path(), "junk.pem", "not a certificate");
    let err = once(dir.path(), 1, &format!("{{ ca_file: '{junk}' }}"))
        .await
        .unwrap_err();
    assert!(err.contains("holds no usable PEM certificate"), "{err}");
}

/// The head of an HTTP request (up to the blank line), read byte by byte so that nothing
/// after it is consumed.
async fn read_head(client: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).await.ok()?;
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A minimal HTTP CONNECT proxy that sends every tunnel to 127.0.0.1:`target` and records
/// the CONNECT lines it saw.
async fn connect_proxy(target: u16) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                log.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_owned());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn https_proxy_from_the_environment_is_used() {
    let pki = Pki::new();
    let server = pki.leaf(&["idp.proxied.test"], ExtendedKeyUsagePurpose::ServerAuth);
    let issuer_port = https_issuer(&server, None).await;
    let (proxy_port, seen) = connect_proxy(issuer_port).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());
    let config = write(
        dir.path(),
        "c.yaml",
        &format!(
            "defaults: {{ file: {{ dir: '{}' }}, http: {{ ca_file: '{ca}' }} }}\nserver: {{ enabled: false }}\nsources:\n  - {{ name: s, kind: oauth2, token_url: 'https://idp.proxied.test:8443/token', auth: none, sinks: [ {{ file: {{ path: s.token }} }} ] }}\n",
            dir.path().display()
        ),
    );
    // A name that does not resolve: only the proxy can reach it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-agent"))
        .args(["once", "--config", &config])
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s.token")).unwrap(),
        "tls-token"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["CONNECT idp.proxied.test:8443 HTTP/1.1"]
    );
}

/// A forwarding proxy for plain `http`: records each request head and answers with a token.
async fn forward_proxy() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                log.lock().unwrap().push(head);
                let body = r#"{"access_token":"proxied-token","expires_in":3600}"#;
                let _ = client
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, seen)
}

/// `token-agent once` for one oauth2 source at `token_url`, with `env` set and every proxy
/// variable of the test's own environment removed.
async fn once_with_env(dir: &Path, token_url: &str, env: &[(&str, String)]) -> (bool, String) {
    let config = write(
        dir,
        "c.yaml",
        &format!(
            "defaults: {{ file: {{ dir: '{}' }}, http: {{ require_https: false }} }}\nserver: {{ enabled: false }}\nsources:\n  - {{ name: s, kind: oauth2, token_url: '{token_url}', auth: none, sinks: [ {{ file: {{ path: s.token }} }} ] }}\n",
            dir.display()
        ),
    );
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-agent"));
    command.args(["once", "--config", &config]);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        command.env_remove(var).env_remove(var.to_lowercase());
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn http_proxy_from_the_environment_gets_the_request_and_its_credentials() {
    let (proxy_port, seen) = forward_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    // A name that does not resolve: only the proxy can reach it.
    let (ok, stderr) = once_with_env(
        dir.path(),
        "http://idp.proxied.test:8080/token",
        &[(
            "HTTP_PROXY",
            format!("http://proxy-user:proxy%20pw@127.0.0.1:{proxy_port}"),
        )],
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s.token")).unwrap(),
        "proxied-token"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let head = &seen[0];
    assert!(
        head.starts_with("POST http://idp.proxied.test:8080/token HTTP/1.1\r\n"),
        "absolute form to the proxy: {head}"
    );
    // base64("proxy-user:proxy pw")
    assert!(
        head.contains("\r\nproxy-authorization: Basic cHJveHktdXNlcjpwcm94eSBwdw==\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nhost: idp.proxied.test:8080\r\n"),
        "{head}"
    );
    assert!(
        !stderr.contains("proxy pw") && !stderr.contains("proxy%20pw"),
        "{stderr}"
    );
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly_and_https_proxies_are_refused_by_name() {
    let pki = Pki::new();
    let server = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let issuer_port = https_issuer(&server, None).await;
    let (_held, dead) = common::refusing_addr();
    let direct = Mock::start(|_| {
        Reply::json(
            200,
            json!({"access_token": "direct-token", "expires_in": 3600}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Proxy variables pointing nowhere: only NO_PROXY lets the request through.
    let (ok, stderr) = once_with_env(
        dir.path(),
        &direct.url("/token"),
        &[
            ("HTTP_PROXY", format!("http://{dead}")),
            ("HTTPS_PROXY", format!("http://{dead}")),
            ("NO_PROXY", "127.0.0.1,localhost".into()),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("s.token")).unwrap(),
        "direct-token"
    );
    // An https:// proxy is not spoken to; the error names it without its credentials.
    let fresh = tempfile::tempdir().unwrap();
    let (ok, stderr) = once_with_env(
        fresh.path(),
        &format!("https://localhost:{issuer_port}/token"),
        &[("HTTPS_PROXY", "https://u:hidden@127.0.0.1:9".into())],
    )
    .await;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("proxy https://127.0.0.1:9 is not an http:// URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hidden"), "{stderr}");
}
