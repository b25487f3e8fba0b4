//! What each fuzz target checks, shared with `tests/fuzz_regressions.rs` (which replays the
//! inputs in `fuzz/regressions/<target>/` on every `cargo test`).
//!
//! Beyond "does not panic", every target checks what the agent relies on: a parsed token is
//! non-empty, printable and expires after it was issued; an error never repeats the token or
//! secret it was given.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use token_agent::config::Config;
use token_agent::error::Reason;
use token_agent::http::describe_error_body;
use token_agent::names::InstanceId;
use token_agent::source::mindsphere;
use token_agent::source::response::{self, ResponseFormat, ResponseMapping};
use token_agent::source::xmlrpc;
use token_agent::token::Token;

/// A fixed "now" so runs are reproducible.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

fn check_token(token: &Token) {
    let value = token.secret();
    assert!(!value.is_empty(), "empty token accepted");
    assert!(
        !value.chars().any(char::is_control),
        "token with control characters accepted"
    );
    assert!(
        token.expires_at > token.issued_at,
        "token expired on arrival accepted"
    );
}

/// The configuration parser: any text either parses or gives located errors.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            let _ = config.sources.len();
        }
        Err(errors) => {
            let shown = errors.to_string();
            assert!(
                !shown.is_empty(),
                "an empty error for a refused configuration"
            );
        }
    }
}

/// OAuth2 (and `http` kind) token answers, JSON and text, default and custom pointers.
pub fn oauth2_response(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut mapping: ResponseMapping = match serde_json::from_str("{}") {
        Ok(m) => m,
        Err(_) => return,
    };
    if selector & 1 == 1 {
        mapping.format = ResponseFormat::Text;
    }
    if selector & 2 == 2 {
        mapping.token = "/data/token".into();
        mapping.expires_in = "/data/ttl".into();
        mapping.expires_at = "/data/exp".into();
    }
    let ttl = (selector & 4 == 4).then(|| Duration::from_secs(600));
    match response::token_from_body(body, &mapping, ttl, now(), "http://127.0.0.1/token") {
        Ok(token) => check_token(&token),
        Err(e) => {
            let _ = e.reason();
            let _ = e.to_string();
        }
    }
    let _ = describe_error_body(body, &["fuzz-secret"])
        .inspect(|d| assert!(!d.contains("fuzz-secret"), "secret in an error description"));
}

/// MindSphere Token Management Service answers: single token, batch, `/userTenants` pages.
pub fn mindsphere_response(data: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let shown = "http://127.0.0.1/api/technicaltokenmanager/v3";
    if let Ok(token) = mindsphere::token_from(&answer, now(), shown) {
        check_token(&token);
    }
    let requested = ["t1", "t2", "t3"].map(|t| InstanceId::tenant(t).expect("a valid tenant id"));
    let outcomes = mindsphere::batch_outcomes(&answer, &requested, now(), shown);
    assert_eq!(outcomes.len(), requested.len(), "one outcome per tenant");
    for (tenant, outcome) in &outcomes {
        assert!(requested.contains(tenant));
        if let token_agent::source::InstanceOutcome::Fetched(token) = outcome {
            check_token(token);
        }
    }
    for page in [0, 1, usize::MAX] {
        if let Ok(listed) = mindsphere::tenant_page(&answer, page, shown) {
            assert!(
                !listed.ids.is_empty() || listed.last,
                "an empty page must end the listing"
            );
        }
    }
}

/// XML-RPC answers (Odin/APS) and calls (the test stand-in parses these).
pub fn xmlrpc_response(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Ok(value)) = xmlrpc::parse_response(text) {
        // A value read back survives a round trip through the writer.
        let written = xmlrpc::method_response(&value);
        let again = std::str::from_utf8(&written).expect("the writer emits UTF-8");
        assert!(
            matches!(xmlrpc::parse_response(again), Ok(Ok(v)) if v == value),
            "round trip changed the value"
        );
    }
    let _ = xmlrpc::parse_call(text);
}
