//! `kind: odin_oa` against a mock Operations Automation OpenAPI written from seed 000 and
//! shared/vendor-apis.md §5: XML-RPC `pem.APS.getAccountToken` on /RPC2, optional Basic auth,
//! status structs (never HTTP errors) for application failures.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use common::{Mock, Recorded, Reply};
use token_agent::agent::{Agent, OnceOutcome};
use token_agent::clock::Clock;
use token_agent::config::Config;

// Requests and replies are literal XML, written from the XML-RPC specification and the
// seed, never with the agent's own `xmlrpc` module: a bug on both sides would cancel out.

/// `pem.APS.getAccountToken({account_id: 1})`, as the agent must send it.
const CALL_ACCOUNT_1: &str = r#"<?xml version="1.0" encoding="UTF-8"?><methodCall><methodName>pem.APS.getAccountToken</methodName><params><param><value><struct><member><name>account_id</name><value><i4>1</i4></value></member></struct></value></param></params></methodCall>"#;

/// `pem.APS.getAccountToken({account_id: 4, subscription_id: 14})`.
const CALL_ACCOUNT_4_SUBSCRIPTION_14: &str = r#"<?xml version="1.0" encoding="UTF-8"?><methodCall><methodName>pem.APS.getAccountToken</methodName><params><param><value><struct><member><name>account_id</name><value><i4>4</i4></value></member><member><name>subscription_id</name><value><i4>14</i4></value></member></struct></value></param></params></methodCall>"#;

/// `pem.APS.getAccountToken({account_id: 42})`: an account that does not exist.
const CALL_ACCOUNT_42: &str = r#"<?xml version="1.0" encoding="UTF-8"?><methodCall><methodName>pem.APS.getAccountToken</methodName><params><param><value><struct><member><name>account_id</name><value><i4>42</i4></value></member></struct></value></param></params></methodCall>"#;

/// A successful answer: status 0 and the token with its controller.
fn token_reply(token: &str) -> Reply {
    xml(&format!(
        r#"<?xml version="1.0"?>
<methodResponse>
  <params>
    <param>
      <value>
        <struct>
          <member><name>status</name><value><i4>0</i4></value></member>
          <member>
            <name>result</name>
            <value>
              <struct>
                <member><name>aps_token</name><value><string>{token}</string></value></member>
                <member><name>controller_uri</name><value>https://mn.example.com:6308/</value></member>
              </struct>
            </value>
          </member>
        </struct>
      </value>
    </param>
  </params>
</methodResponse>"#
    ))
}

/// An application error: HTTP 200 with a non-zero status struct (vendor-apis.md §5).
const NO_SUCH_ACCOUNT: &str = r#"<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>status</name><value><int>1</int></value></member><member><name>error_message</name><value><string>Account #42 does not exist</string></value></member><member><name>module_id</name><value><string>OpenAPI</string></value></member><member><name>extype_id</name><value><int>3001</int></value></member><member><name>properties</name><value><struct></struct></value></member></struct></value></param></params></methodResponse>"#;

/// What an XML-RPC server answers a request it cannot parse.
const PARSE_ERROR: &str = r#"<?xml version="1.0"?><methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32700</int></value></member><member><name>faultString</name><value><string>parse error. not well formed</string></value></member></struct></value></fault></methodResponse>"#;

fn xml(body: &str) -> Reply {
    let mut r = Reply::text(200, body);
    r.content_type = "text/xml";
    r
}

/// The management node: accounts 1 and 4 (subscription 14) exist, 42 does not; Basic auth
/// when `auth` is set. Any other request body is not what the agent should send: a fault.
fn operations_automation(
    auth: Option<(&'static str, &'static str)>,
) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    let issued = AtomicUsize::new(0);
    move |r: &Recorded| {
        if r.method != "POST" || r.path != "/RPC2" {
            return Reply::text(404, "Not Found");
        }
        if let Some((user, pass)) = auth
            && r.basic_raw() != Some((user.into(), pass.into()))
        {
            return Reply::text(401, "Unauthorized");
        }
        if r.header("content-type") != Some("text/xml") {
            return Reply::text(400, "Content-Type must be text/xml");
        }
        let n = issued.fetch_add(1, Ordering::SeqCst);
        match std::str::from_utf8(&r.body) {
            Ok(CALL_ACCOUNT_1) => token_reply(&format!("JEFFUy0xMjgtQ0-1-0-{n}")),
            Ok(CALL_ACCOUNT_4_SUBSCRIPTION_14) => token_reply(&format!("JEFFUy0xMjgtQ0-4-14-{n}")),
            Ok(CALL_ACCOUNT_42) => xml(NO_SUCH_ACCOUNT),
            _ => xml(PARSE_ERROR),
        }
    }
}

fn config(dir: &Path, url: &str, extra: &str) -> Config {
    let yaml = format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: aps\n    kind: odin_oa\n    url: '{url}'\n{extra}    sinks:\n      - file: {{ path: aps.token }}\n      - file: {{ path: aps.json, format: json }}\n",
        dir.display()
    );
    Config::parse(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

async fn once(config: &Config) -> OnceOutcome {
    Agent::build(config, Clock::system())
        .unwrap()
        .once()
        .await
        .remove(0)
}

#[tokio::test]
async fn fetches_an_account_token_over_xml_rpc() {
    let mock = Mock::start(operations_automation(None)).await;
    let dir = tempfile::tempdir().unwrap();
    once(&config(
        dir.path(),
        &mock.url("/RPC2"),
        "    account_id: 4\n    subscription_id: 14\n",
    ))
    .await
    .result
    .unwrap();

    let r = &mock.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/RPC2"));
    assert_eq!(r.header("content-type"), Some("text/xml"));
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        CALL_ACCOUNT_4_SUBSCRIPTION_14
    );

    assert_eq!(
        std::fs::read_to_string(dir.path().join("aps.token")).unwrap(),
        "JEFFUy0xMjgtQ0-4-14-0"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("aps.json")).unwrap()).unwrap();
    assert_eq!(doc["controller_uri"], "https://mn.example.com:6308/");
    assert_eq!(doc["token_type"], "APS-Token");
    let left = common::seconds_left(&doc);
    assert!((890..=900).contains(&left), "default ttl 15m: {left}");
}

#[tokio::test]
async fn defaults_path_and_omits_an_unset_subscription() {
    let mock = Mock::start(operations_automation(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let bare = format!("http://{}", mock.addr); // no path: /RPC2 is used
    once(&config(
        dir.path(),
        &bare,
        "    account_id: 1\n    ttl: 20m\n",
    ))
    .await
    .result
    .unwrap();
    let r = &mock.requests()[0];
    assert_eq!(r.path, "/RPC2");
    assert_eq!(String::from_utf8_lossy(&r.body), CALL_ACCOUNT_1);
}

#[tokio::test]
async fn basic_auth_is_sent_and_a_401_is_reported() {
    let mock = Mock::start(operations_automation(Some(("openapi", "p&ss<w>")))).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = creds.path().join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let (user, pass, bad) = (
        file("user", "openapi"),
        file("pass", "p&ss<w>"),
        file("bad", "wrong"),
    );
    let extra = format!(
        "    account_id: 1\n    username: {{ file: '{user}' }}\n    password: {{ file: '{pass}' }}\n"
    );
    once(&config(dir.path(), &mock.url("/RPC2"), &extra))
        .await
        .result
        .unwrap();
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("openapi:p&ss<w>")
    );
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some(want.as_str())
    );

    let extra = extra.replace(&pass, &bad);
    let fresh = tempfile::tempdir().unwrap(); // no token on disk to reuse
    let err = once(&config(fresh.path(), &mock.url("/RPC2"), &extra))
        .await
        .result
        .unwrap_err();
    assert!(err.contains("answered HTTP 401"), "{err}");
    assert!(!err.contains("wrong"));
}

#[tokio::test]
async fn status_errors_and_faults_surface_their_fields() {
    let mock = Mock::start(operations_automation(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = once(&config(
        dir.path(),
        &mock.url("/RPC2"),
        "    account_id: 42\n",
    ))
    .await
    .result
    .unwrap_err();
    assert!(
        err.contains(
            "refused: status 1: Account #42 does not exist (module_id OpenAPI, extype_id 3001)"
        ),
        "{err}"
    );
    assert!(!dir.path().join("aps.token").exists());
}

#[tokio::test]
async fn malformed_answers_are_invalid_responses() {
    let fault = "<?xml version=\"1.0\"?><methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32601</int></value></member><member><name>faultString</name><value><string>Method not found</string></value></member></struct></value></fault></methodResponse>";
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::text(200, "<html>login</html>"),
            "expected <methodResponse>",
        ),
        (Reply::text(200, "<methodResponse><params>"), "unbalanced"),
        (
            Reply::text(200, fault),
            "refused: fault -32601: Method not found",
        ),
        (
            xml(
                r#"<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>status</name><value><i4>0</i4></value></member></struct></value></param></params></methodResponse>"#,
            ),
            "status 0 without a `result`",
        ),
        (
            xml(
                r#"<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>status</name><value><i4>0</i4></value></member><member><name>result</name><value><struct></struct></value></member></struct></value></param></params></methodResponse>"#,
            ),
            "no `result.aps_token`",
        ),
        (
            xml(
                r#"<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>result</name><value><struct></struct></value></member></struct></value></param></params></methodResponse>"#,
            ),
            "no integer `status`",
        ),
        (Reply::text(502, "Bad Gateway"), "answered HTTP 502"),
    ];
    for (reply, want) in cases {
        let mock = Mock::start(move |_| reply.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let err = once(&config(
            dir.path(),
            &mock.url("/RPC2"),
            "    account_id: 1\n",
        ))
        .await
        .result
        .unwrap_err();
        assert!(err.contains(want), "want `{want}` in `{err}`");
    }
}

#[test]
fn validate_catches_missing_and_contradictory_fields() {
    let cases = [
        (
            "    account_id: 1\n    username: u\n",
            "sources[0].password: username and password go together",
        ),
        ("    account_id: 0\n", "sources[0].account_id: must be 1"),
        (
            "    account_id: 1\n    ttl: 5s\n",
            "sources[0].ttl: must be at least 10s",
        ),
        (
            "    account_id: 1\n    password: hunter2\n    username: u\n",
            "sources[0].password: credential written in the config",
        ),
        ("    subscription_id: 3\n", "missing field `account_id`"),
    ];
    for (extra, want) in cases {
        let yaml = format!(
            "sources:\n  - name: aps\n    kind: odin_oa\n    url: https://mn:8440/RPC2\n{extra}    sinks: [ {{ file: {{ path: a }} }} ]\n"
        );
        let err = Config::parse(&yaml, Path::new("o.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want `{want}` in:\n{err}");
    }
}
