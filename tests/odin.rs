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
use token_agent::source::xmlrpc::{self, Value};

fn xml(status: u16, value: &Value) -> Reply {
    let mut r = Reply::text(
        status,
        &String::from_utf8(xmlrpc::method_response(value)).unwrap(),
    );
    r.content_type = "text/xml";
    r
}

fn strukt(pairs: Vec<(&str, Value)>) -> Value {
    Value::Struct(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// The management node: accounts 1 and 4 exist; Basic auth when `auth` is set.
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
        if !r
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/xml"))
        {
            return Reply::text(400, "Content-Type must be text/xml");
        }
        let Ok((method, params)) = xmlrpc::parse_call(&String::from_utf8_lossy(&r.body)) else {
            let fault = strukt(vec![
                ("faultCode", Value::Int(-32700)),
                ("faultString", Value::Str("parse error".into())),
            ]);
            let body = String::from_utf8(xmlrpc::method_response(&fault))
                .unwrap()
                .replace("<params><param>", "<fault>")
                .replace("</param></params>", "</fault>");
            return Reply::text(200, &body);
        };
        if method != "pem.APS.getAccountToken" {
            let body = format!(
                "<?xml version=\"1.0\"?><methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32601</int></value></member><member><name>faultString</name><value><string>Method {method} not found</string></value></member></struct></value></fault></methodResponse>"
            );
            return Reply::text(200, &body);
        }
        let args = params.first();
        let account = args
            .and_then(|a| a.member("account_id"))
            .and_then(Value::as_int);
        let error = |message: String| {
            xml(
                200,
                &strukt(vec![
                    ("status", Value::Int(1)),
                    ("error_message", Value::Str(message)),
                    ("module_id", Value::Str("OpenAPI".into())),
                    ("extype_id", Value::Int(3001)),
                    ("properties", Value::Struct(Default::default())),
                ]),
            )
        };
        match account {
            None => error("Parameter account_id is required".into()),
            Some(id) if id != 1 && id != 4 => error(format!("Account #{id} does not exist")),
            Some(id) => {
                let n = issued.fetch_add(1, Ordering::SeqCst);
                let sub = args
                    .and_then(|a| a.member("subscription_id"))
                    .and_then(Value::as_int)
                    .unwrap_or(0);
                xml(
                    200,
                    &strukt(vec![
                        ("status", Value::Int(0)),
                        (
                            "result",
                            strukt(vec![
                                (
                                    "aps_token",
                                    Value::Str(format!("JEFFUy0xMjgtQ0-{id}-{sub}-{n}")),
                                ),
                                (
                                    "controller_uri",
                                    Value::Str("https://mn.example.com:6308/".into()),
                                ),
                            ]),
                        ),
                    ]),
                )
            }
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
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("<methodName>pem.APS.getAccountToken</methodName>"),
        "{body}"
    );
    assert!(
        body.contains("<member><name>account_id</name><value><i4>4</i4></value></member>"),
        "{body}"
    );
    assert!(
        body.contains("<member><name>subscription_id</name><value><i4>14</i4></value></member>"),
        "{body}"
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
    assert!(!String::from_utf8_lossy(&r.body).contains("subscription_id"));
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
            xml(200, &strukt(vec![("status", Value::Int(0))])),
            "status 0 without a `result`",
        ),
        (
            xml(
                200,
                &strukt(vec![("status", Value::Int(0)), ("result", strukt(vec![]))]),
            ),
            "no `result.aps_token`",
        ),
        (
            xml(200, &strukt(vec![("result", strukt(vec![]))])),
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
