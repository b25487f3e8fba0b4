//! A small OAuth2 issuer for `token-agent dev`: client credentials on 127.0.0.1, ES256-signed
//! JWT access tokens with a short lifetime, its public key at `/jwks`. A demo, not an IdP:
//! one client, keys in memory, gone when the process ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use tokio::net::TcpListener;

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot generate a signing key")]
    Key,
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(#[from] std::io::Error),
}

struct IssuerState {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    ttl: Duration,
    issued: AtomicU64,
}

/// A running issuer; it stops when its task is dropped with the runtime.
pub struct Issuer {
    pub addr: SocketAddr,
    state: Arc<IssuerState>,
}

impl Issuer {
    /// Starts on a random loopback port.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        ttl: Duration,
    ) -> Result<Issuer, IssuerError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| IssuerError::Key)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| IssuerError::Key)?;
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let kid = crate::token::fingerprint(key.public_key().as_ref())[..16].to_owned();
        let state = Arc::new(IssuerState {
            key,
            rng,
            kid,
            issuer: format!("http://{addr}"),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            ttl,
            issued: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/jwks", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Issuer { addr, state })
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::Relaxed)
    }

    /// The public key as a JWK set, for verifying what the issuer signed.
    pub fn jwks(&self) -> serde_json::Value {
        jwks_of(&self.state)
    }
}

fn jwks_of(state: &IssuerState) -> serde_json::Value {
    let point = state.key.public_key().as_ref(); // 0x04 || X || Y
    json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": state.kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]})
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Json<serde_json::Value> {
    Json(jwks_of(&state))
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Json<serde_json::Value> {
    Json(json!({
        "issuer": state.issuer,
        "token_endpoint": format!("{}/token", state.issuer),
        "jwks_uri": format!("{}/jwks", state.issuer),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// Client id and secret from `Authorization: Basic` (RFC 6749 form-encoded) or the body.
fn client_credentials(
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Basic "))
    {
        let decoded = String::from_utf8(STANDARD.decode(basic).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        return Some((decode(id)?, decode(secret)?));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    let authenticated = client_credentials(&headers, &form).is_some_and(|(id, secret)| {
        id == state.client_id
            && crate::token::fingerprint(secret.as_bytes())
                == crate::token::fingerprint(state.client_secret.as_bytes())
    });
    if !authenticated {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let n = state.issued.fetch_add(1, Ordering::Relaxed) + 1;
    let mut claims = json!({
        "iss": state.issuer, "sub": state.client_id, "client_id": state.client_id,
        "iat": now, "nbf": now, "exp": now + state.ttl.as_secs(), "jti": format!("dev-{n}"),
    });
    for key in ["scope", "audience", "resource"] {
        if let Some(v) = form.get(key) {
            claims[if key == "audience" || key == "resource" {
                "aud"
            } else {
                key
            }] = json!(v);
        }
    }
    let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": state.kid });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let Ok(signature) = state.key.sign(&state.rng, signing_input.as_bytes()) else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "signing failed",
        );
    };
    let jwt = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    let mut body =
        json!({ "access_token": jwt, "token_type": "Bearer", "expires_in": state.ttl.as_secs() });
    if let Some(scope) = form.get("scope") {
        body["scope"] = json!(scope);
    }
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
