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

/// The configuration parser: any text either parses or is refused with errors that each say
/// where (a line and column inside the text, or a field path), and the answer is a function
/// of the text alone: parsing it again gives the same configuration, warnings or errors.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    let again = Config::parse(text, file);
    match Config::parse(text, file) {
        Ok(config) => {
            let again = again.expect("a configuration that parsed once parses again");
            assert_eq!(
                format!("{config:?}"),
                format!("{again:?}"),
                "parsed differently"
            );
            assert_eq!(config.warnings(), again.warnings(), "warned differently");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without an error");
            let lines = text.lines().count().max(1);
            for e in &errors.0 {
                assert!(
                    e.position.is_some() || !e.path.is_empty(),
                    "an error without a location: {e}"
                );
                if let Some(p) = e.position {
                    assert!(
                        p.line >= 1 && p.line <= lines + 1 && p.column >= 1,
                        "{e}: outside the {lines}-line text"
                    );
                }
                assert!(!e.message.trim().is_empty(), "an error without a message");
                assert_eq!(e.file, file, "{e}");
            }
            let Err(again) = again else {
                panic!("a refused configuration parsed the second time");
            };
            assert_eq!(errors.to_string(), again.to_string(), "refused differently");
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
    if let Some(described) = describe_error_body(body, &[SECRET]) {
        for form in SECRET_FORMS {
            assert!(!described.contains(form), "secret ({form}) in: {described}");
        }
    }
}

/// The credential the `oauth2_response` target hands the scrubber; seeds carry it in every
/// form an issuer may echo it in.
pub const SECRET: &str = "fuzz/secret+1";

/// [`SECRET`] as it is, base64 (standard, URL-safe, unpadded), URL-encoded (`+`, `%20`) and
/// JSON-escaped with `\/`, and inside a Basic credential, `base64(client:SECRET)`.
pub const SECRET_FORMS: [&str; 6] = [
    "fuzz/secret+1",
    "ZnV6ei9zZWNyZXQrMQ==",
    "ZnV6ei9zZWNyZXQrMQ",
    "fuzz%2Fsecret%2B1",
    "fuzz\\/secret+1",
    "Y2xpZW50OmZ1enovc2VjcmV0KzE=",
];

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
