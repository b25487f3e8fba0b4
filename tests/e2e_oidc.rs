//! End to end against a real OAuth2 server: npm `oidc-provider` (installed by `.ci/run` into
//! tests/oidc) on 127.0.0.1. The binary fetches with client_secret_basic and
//! client_secret_post, and the test verifies the RS256 signature of the JWT it wrote against
//! the server's JWKS, and its claims.
//!
//! Without `tests/oidc/node_modules` the test says so and passes, unless
//! `TOKEN_AGENT_REQUIRE_OIDC=1` (set by `.ci/run`) makes that a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");
const OIDC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
const RESOURCE: &str = "https://api.e2e.test";
/// Characters that RFC 6749 §2.3.1 form-encoding must carry through Basic auth intact.
const SECRET: &str = "s3cr/t+%:x y";

struct Provider {
    child: Child,
    port: u16,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(auth_method: &str) -> Option<Provider> {
    if !Path::new(OIDC_DIR)
        .join("node_modules/oidc-provider")
        .exists()
    {
        common::skipped::skip_unless_required(
            "TOKEN_AGENT_REQUIRE_OIDC",
            &format!("e2e_oidc ({auth_method})"),
            "tests/oidc/node_modules is missing: run `npm ci` in tests/oidc",
        );
        return None;
    }
    let mut child = Command::new("node")
        .arg("server.mjs")
        .current_dir(OIDC_DIR)
        .env("OIDC_PORT", "0")
        .env("OIDC_CLIENT_SECRET", SECRET)
        .env("OIDC_AUTH_METHOD", auth_method)
        .env("OIDC_TTL", "60")
        .env("OIDC_RESOURCE", RESOURCE)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node is installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .parse()
        .unwrap();
    Some(Provider { child, port })
}

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

/// Verifies `jwt` (RS256) against `jwks` with ring and returns its header and claims.
fn verify(jwt: &str, jwks: &Value) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    let header: Value = serde_json::from_slice(&b64(parts[0])).unwrap();
    let claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("signing key in JWKS");
    let public = ring::signature::RsaPublicKeyComponents {
        n: b64(key["n"].as_str().unwrap()),
        e: b64(key["e"].as_str().unwrap()),
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    public
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &b64(parts[2]),
        )
        .expect("signature verifies against the server's JWKS");
    // The check can fail: a flipped byte in the payload must not verify.
    let tampered = format!("{}.{}x", parts[0], parts[1]);
    assert!(
        public
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                tampered.as_bytes(),
                &b64(parts[2])
            )
            .is_err()
    );
    (header, claims)
}

async fn fetch_jwks(port: u16) -> Value {
    token_agent::install_crypto_provider();
    reqwest::get(format!("http://127.0.0.1:{port}/jwks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn run_once_against(auth_method: &str, auth: &str) {
    let Some(provider) = start_provider(auth_method) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ enabled: false }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: http://127.0.0.1:{}/token\n    client_id: e2e-client\n    client_secret: {{ file: '{}' }}\n    auth: {auth}\n    scope: orders.read\n    resource: {RESOURCE}\n    sinks:\n      - file: {{ path: orders.token }}\n      - file: {{ path: orders.json, format: json }}\n",
            dir.path().join("tokens").display(),
            provider.port,
            secret.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let jwt = std::fs::read_to_string(dir.path().join("tokens/orders.token")).unwrap();
    let (header, claims) = verify(&jwt, &fetch_jwks(provider.port).await);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["iss"], format!("http://127.0.0.1:{}", provider.port));
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["client_id"], "e2e-client");
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );

    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokens/orders.json")).unwrap())
            .unwrap();
    assert_eq!(doc["token"], jwt.as_str());
    let expires = humantime::parse_rfc3339(doc["expires_at"].as_str().unwrap()).unwrap();
    let exp =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims["exp"].as_u64().unwrap());
    let skew = expires.duration_since(exp).unwrap_or_else(|e| e.duration());
    assert!(
        skew.as_secs() <= 2,
        "expiry written ({expires:?}) matches the JWT exp ({exp:?})"
    );
}

#[tokio::test]
async fn client_secret_basic_against_oidc_provider() {
    run_once_against("client_secret_basic", "basic").await;
}

#[tokio::test]
async fn client_secret_post_against_oidc_provider() {
    run_once_against("client_secret_post", "post").await;
}

#[tokio::test]
async fn wrong_secret_is_a_clear_401() {
    let Some(provider) = start_provider("client_secret_basic") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ enabled: false }}\nsources:\n  - {{ name: o, kind: oauth2, token_url: 'http://127.0.0.1:{}/token', client_id: e2e-client, client_secret: {{ env: WRONG }}, sinks: [ {{ file: {{ path: o.token }} }} ] }}\n",
            dir.path().display(),
            provider.port
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["once", "--config", config.to_str().unwrap()])
        .env("WRONG", "not-the-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HTTP 401: invalid_client: client authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret"));
}
