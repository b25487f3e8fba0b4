//! The `api_portal` sink against a mock webMethods API-Portal written from seed 004: POST then
//! PUT with the stored id, the id surviving restarts, 404 → create again, DELETE on revoke and
//! for removed sinks, errors, rendered properties, and no token or password in any output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Mock;
use common::api_portal::{PATH, Portal, methods};
use common::process::AgentProcess;
use token_agent::agent::Agent;
use token_agent::clock::Clock;
use token_agent::config::Config;
use token_agent::dev::issuer::Issuer;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

struct Setup {
    dir: tempfile::TempDir,
    issuer: Issuer,
    portal: Portal,
    mock: Mock,
}

async fn setup(ttl: u64) -> Setup {
    let portal = Portal::default();
    let mock = portal.start().await;
    let issuer = Issuer::start("c", "issuer-s3cret", Duration::from_secs(ttl))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "issuer-s3cret").unwrap();
    std::fs::write(dir.path().join("portal-password"), "appr0ver-pw").unwrap();
    Setup {
        dir,
        issuer,
        portal,
        mock,
    }
}

impl Setup {
    fn config(&self, sources: &[&str], password_file: &str) -> PathBuf {
        let source = |name: &str| {
            format!(
                "  - name: {name}\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: {{ file: '{}' }}\n    sinks:\n      - file: {{ path: {name}.token }}\n      - api_portal:\n          url: 'http://{}'\n          username: approver\n          password: {{ file: '{}' }}\n          user: 4ee9c60c-c32e-3615-83c4-5dc6822c45de\n          properties:\n            - {{ key: applicationName, value: Weather App }}\n            - {{ key: Access Token Type, value: API Key }}\n            - {{ key: x-Api-Key, value: '{{{{ token }}}}' }}\n            - {{ key: How To Use, value: 'send it as a {{{{ token_type }}}} token ({{{{ source }}}})' }}\n            - {{ key: Expiration Date, value: \"{{{{ expires_at | date('%d-%m-%Y') }}}}\" }}\n",
                self.issuer.token_url(),
                self.dir.path().join("client-secret").display(),
                self.mock.addr,
                self.dir.path().join(password_file).display()
            )
        };
        let body: String = sources.iter().map(|s| source(s)).collect();
        let path = self.dir.path().join("config.yaml");
        std::fs::write(
            &path,
            format!(
                "state_dir: '{}'\ndefaults:\n  file: {{ dir: '{}' }}\n  refresh: {{ min_interval: 100ms }}\n  retry: {{ initial: 100ms, max: 300ms }}\nserver: {{ enabled: false }}\nsources:\n{body}",
                self.dir.path().join("state").display(),
                self.dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        path
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("tokens/{name}.token")))
            .unwrap_or_default()
    }

    fn state_files(&self) -> Vec<PathBuf> {
        let dir = self.dir.path().join("state/api-portal");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .flat_map(|s| {
                        std::fs::read_dir(s.path())
                            .unwrap()
                            .flatten()
                            .map(|f| f.path())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `token-agent revoke --config CONFIG --source SOURCE`.
async fn revoke(config: &Path, source: &str) -> std::process::Output {
    let config = config.to_str().unwrap();
    let args = ["revoke", "--config", config, "--source", source];
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn once(config: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(config).unwrap();
    let config = Config::parse(&text, config).unwrap_or_else(|e| panic!("{e}"));
    let outcomes = Agent::build(&config, Clock::system()).unwrap().once().await;
    outcomes.into_iter().try_for_each(|o| o.result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_then_renews_with_the_stored_id_and_renders_every_property() {
    let s = setup(2).await;
    let config = s.config(&["weather"], "portal-password");
    let text = std::fs::read_to_string(&config).unwrap();
    let agent = Agent::build(&Config::parse(&text, &config).unwrap(), Clock::system()).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(rx));
    let deadline = Instant::now() + Duration::from_secs(15);
    while methods(&s.mock).iter().filter(|(m, _)| m == "PUT").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "renewals: {:?}",
            methods(&s.mock)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();

    let calls = methods(&s.mock);
    assert_eq!(calls[0], ("POST".into(), PATH.into()));
    let entries = s.portal.entries.lock().unwrap().clone();
    assert_eq!(entries.len(), 1, "one entry, renewed in place: {calls:?}");
    let id = entries.keys().next().unwrap().clone();
    assert!(
        calls[1..]
            .iter()
            .all(|c| *c == ("PUT".into(), format!("{PATH}/{id}"))),
        "{calls:?}"
    );
    let first = &s.mock.requests()[0];
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.json()["user"], "4ee9c60c-c32e-3615-83c4-5dc6822c45de");
    let (_, props) = &entries[&id];
    assert_eq!(props["applicationName"], "Weather App");
    assert_eq!(props["Access Token Type"], "API Key");
    assert_eq!(
        props["x-Api-Key"],
        s.token("weather"),
        "the portal holds the current token"
    );
    assert_eq!(props["How To Use"], "send it as a Bearer token (weather)");
    let today = jiff::Timestamp::now().strftime("%d-%m-%Y").to_string();
    let tomorrow = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24))
        .strftime("%d-%m-%Y")
        .to_string();
    assert!(
        props["Expiration Date"] == today || props["Expiration Date"] == tomorrow,
        "{}",
        props["Expiration Date"]
    );
}

#[tokio::test]
async fn a_restart_reuses_the_id_and_a_lost_entry_is_created_again() {
    let s = setup(600).await;
    let config = s.config(&["weather"], "portal-password");
    once(&config).await.unwrap();
    assert_eq!(s.state_files().len(), 1);
    // A new process: the token on disk is reused and the portal entry renewed, not duplicated.
    once(&config).await.unwrap();
    let calls: Vec<String> = methods(&s.mock).into_iter().map(|(m, _)| m).collect();
    assert_eq!(calls, ["POST", "PUT"]);
    assert_eq!(s.portal.entries.lock().unwrap().len(), 1);

    // The portal loses the entry: PUT answers 404, the agent creates it again and keeps the new id.
    s.portal.entries.lock().unwrap().clear();
    once(&config).await.unwrap();
    let calls: Vec<String> = methods(&s.mock).into_iter().map(|(m, _)| m).collect();
    assert_eq!(calls, ["POST", "PUT", "PUT", "POST"]);
    let new_id = s
        .portal
        .entries
        .lock()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let state = std::fs::read_to_string(&s.state_files()[0]).unwrap();
    assert!(state.contains(&new_id), "{state}");
}

#[tokio::test]
async fn revoke_and_removed_sinks_delete_only_recorded_ids() {
    let s = setup(600).await;
    let config = s.config(&["weather", "maps"], "portal-password");
    once(&config).await.unwrap();
    assert_eq!(s.portal.entries.lock().unwrap().len(), 2);
    // Someone else's entry in the same portal is never touched.
    s.portal
        .entries
        .lock()
        .unwrap()
        .insert("not-ours".into(), ("x".into(), Default::default()));

    let out = revoke(&config, "weather").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revoked 1 API-Portal entry of source `weather`"
    );
    assert_eq!(
        s.portal.entries.lock().unwrap().len(),
        2,
        "maps and not-ours remain"
    );
    let out = revoke(&config, "weather").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revoked 0 API-Portal entries of source `weather`"
    );
    let out = revoke(&config, "nope").await;
    assert_eq!(out.status.code(), Some(1));

    // `maps` is removed from the config: its entry is deleted when the agent starts.
    once(&config).await.unwrap(); // weather again (new entry)
    let config = s.config(&["weather"], "portal-password");
    let text = std::fs::read_to_string(&config).unwrap();
    let agent = Agent::build(&Config::parse(&text, &config).unwrap(), Clock::system()).unwrap();
    agent.revoke_orphans().await;
    let deletes: Vec<String> = methods(&s.mock)
        .into_iter()
        .filter(|(m, _)| m == "DELETE")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    let left: Vec<String> = s.portal.entries.lock().unwrap().keys().cloned().collect();
    assert_eq!(left.len(), 2, "weather's new entry and not-ours: {left:?}");
    assert!(left.contains(&"not-ours".to_owned()));
    assert_eq!(s.state_files().len(), 1);
}

#[tokio::test]
async fn errors_are_clear_and_the_file_sink_goes_on() {
    let s = setup(600).await;
    std::fs::write(s.dir.path().join("wrong-password"), "wrong").unwrap();
    let config = s.config(&["weather"], "wrong-password");
    let err = once(&config).await.unwrap_err();
    assert!(err.contains("sinks could not be written"), "{err}");
    assert!(
        !s.token("weather").is_empty(),
        "the file sink was written anyway"
    );
    assert!(
        s.state_files().is_empty(),
        "no id without a successful POST"
    );

    let fresh = setup(600).await;
    fresh
        .portal
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let config = fresh.config(&["weather"], "portal-password");
    let mut agent = AgentProcess::start(
        Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "trace"),
    );
    // Until the portal has refused three attempts: the first one and two retries are logged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while methods(&fresh.mock)
        .iter()
        .filter(|(m, _)| m == "POST")
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not retry the portal:\n{}",
            agent.printed()
        );
        if let Some(status) = agent.try_wait().unwrap() {
            panic!("the agent exited ({status}):\n{}", agent.printed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, logs) = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("answered HTTP 500: Internal Server Error"),
        "the portal's message is logged"
    );
    let token = fresh.token("weather");
    assert!(!token.is_empty());
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("approver:appr0ver-pw");
    for needle in [token.as_str(), "appr0ver-pw", "issuer-s3cret", &basic] {
        assert!(!logs.contains(needle), "{needle} leaked into the logs");
    }
}

#[test]
fn validate_requires_the_mandatory_properties() {
    let yaml = "sources:\n  - name: s\n    kind: oauth2\n    token_url: https://x/t\n    auth: none\n    sinks:\n      - api_portal: { url: 'http://portal:18101', username: u, password: { env: P }, user: x, properties: [ { key: x-Api-Key, value: '{{ tokn }}' } ] }\n";
    let err = Config::parse(yaml, Path::new("p.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sources[0].sinks[0].api_portal.properties: API-Portal requires a `applicationName` property"), "{err}");
    assert!(
        err.contains("API-Portal requires a `Access Token Type` property"),
        "{err}"
    );
    assert!(
        err.contains("sources[0].sinks[0].api_portal.properties[0].value:"),
        "{err}"
    );
    let inline = yaml.replace("password: { env: P }", "password: hunter2");
    let err = Config::parse(&inline, Path::new("p.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api_portal.password: credential written in the config"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_state_files_never_cause_a_delete() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(600).await;
    let config = s.config(&["weather"], "portal-password");
    once(&config).await.unwrap();
    let victim = "victim-entry";
    s.portal.entries.lock().unwrap().insert(
        victim.into(),
        (
            "4ee9c60c-c32e-3615-83c4-5dc6822c45de".into(),
            Default::default(),
        ),
    );
    let portal = format!("http://{}", s.mock.addr);
    let plant = |dir: &Path, name: &str, user: &str, mode: u32, padding: usize| {
        let dir = dir.join("api-portal/gone");
        std::fs::create_dir_all(&dir).unwrap();
        let state = serde_json::json!({"source": "gone", "instance": "", "portal": portal, "user": user, "token_id": victim, "padding": "x".repeat(padding)});
        let path = dir.join(name);
        std::fs::write(&path, state.to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let ours = "4ee9c60c-c32e-3615-83c4-5dc6822c45de";
    let state = s.dir.path().join("state");
    // Each would have been deleted with the configured sink's credentials before.
    plant(&state, "writable-by-others.json", ours, 0o666, 0);
    plant(&state, "oversized.json", ours, 0o600, 5000);
    plant(&state, "another-user.json", "another-portal-user", 0o600, 0);
    if rustix::process::geteuid().is_root() {
        let path = plant(&state, "foreign-owner.json", ours, 0o600, 0);
        std::os::unix::fs::chown(&path, Some(4321), None).unwrap();
    } else {
        common::skipped::skip_unless_required(
            "TOKEN_AGENT_REQUIRE_MOUNT",
            "api_portal: a state file another user owns",
            "chown needs root (the other planted files are checked)",
        );
    }
    // The token directory, where the state directory used to be by default.
    plant(
        &s.dir.path().join("tokens/.token-agent"),
        "_-x.json",
        ours,
        0o600,
        0,
    );

    let text = std::fs::read_to_string(&config).unwrap();
    let explicit = Config::parse(&text, &config).unwrap();
    Agent::build(&explicit, Clock::system())
        .unwrap()
        .revoke_orphans()
        .await;
    // Without `state_dir`, the default lies outside the token directory.
    let default = Config::parse(
        &text.replace(&format!("state_dir: '{}'\n", state.display()), ""),
        &config,
    )
    .unwrap();
    assert!(
        !default.state_dir().starts_with(s.dir.path()),
        "{:?}",
        default.state_dir()
    );
    Agent::build(&default, Clock::system())
        .unwrap()
        .revoke_orphans()
        .await;

    let deletes: Vec<_> = methods(&s.mock)
        .into_iter()
        .filter(|(m, _)| m == "DELETE")
        .collect();
    assert!(deletes.is_empty(), "{deletes:?}");
    assert!(s.portal.entries.lock().unwrap().contains_key(victim));
    // The sink's own state file is still believed: a revoke deletes its entry.
    let out = revoke(&config, "weather").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "revoked 1 API-Portal entry of source `weather`",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/healthz` stays alive while the clean-up of removed sinks' entries waits on a portal that
/// never answers: the heartbeat starts first and the clean-up runs beside the sources.
#[tokio::test(start_paused = true)]
async fn an_unreachable_portal_at_start_does_not_hold_liveness_back() {
    use std::os::unix::fs::PermissionsExt;
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hung.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = hung.incoming().collect(); // accepts, never answers
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let user = "u-1";
    for n in 0..3 {
        let state = dir.path().join("state/api-portal/gone");
        std::fs::create_dir_all(&state).unwrap();
        let path = state.join(format!("t{n}.json"));
        let record = serde_json::json!({"source": "gone", "instance": format!("t{n}"), "portal": format!("http://{addr}"), "user": user, "token_id": format!("id-{n}")});
        std::fs::write(&path, record.to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(dir.path().join("password"), "pw").unwrap();
    let yaml = format!(
        "state_dir: '{}'\ndefaults: {{ file: {{ dir: '{}' }} }}\nsources:\n  - name: weather\n    kind: oauth2\n    token_url: 'http://127.0.0.1:9/t'\n    auth: none\n    http: {{ timeout: 30s }}\n    sinks:\n      - api_portal: {{ url: 'http://{addr}', username: approver, password: {{ file: '{}' }}, user: {user}, properties: [ {{ key: applicationName, value: A }}, {{ key: Access Token Type, value: API Key }} ] }}\n",
        dir.path().join("state").display(),
        dir.path().join("tokens").display(),
        dir.path().join("password").display(),
    );
    let config = Config::parse(&yaml, Path::new("c.yaml")).unwrap();
    let agent = Agent::build(&config, Clock::system()).unwrap();
    let view = agent.observability();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(rx));
    // Three DELETEs of 30 s each: 90 s of clean-up, three times the heartbeat's allowance.
    for second in 0..100 {
        assert_eq!(view.liveness(), Ok(()), "at {second} s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn an_unwritable_state_dir_stops_the_agent_before_any_portal_entry() {
    let s = setup(600).await;
    let config = s.config(&["weather"], "portal-password");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("state_dir: '{}'", s.dir.path().join("state").display()),
        "state_dir: '/dev/null/state'",
    );
    let parsed = Config::parse(&text, &config).unwrap();
    let err = match Agent::build(&parsed, Clock::system()) {
        Ok(_) => panic!("built with an unwritable state_dir"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("source `weather`: state_dir /dev/null/state is not writable"),
        "{err}"
    );
    assert!(
        methods(&s.mock).is_empty(),
        "nothing was sent to the portal"
    );
}

/// The mock is as strict as seed 004: a path that only starts like the API, or a property
/// that is not `{ key, value }`, is refused rather than served or dropped.
#[tokio::test]
async fn the_portal_mock_refuses_what_the_portal_would() {
    let portal = Portal::default();
    let mock = portal.start().await;
    token_agent::install_crypto_provider();
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        client
            .request(method, format!("http://{}{path}", mock.addr))
            .basic_auth("approver", Some("appr0ver-pw"))
            .json(&body)
            .send()
    };
    let good = serde_json::json!({"user": "u", "propertyList": [
        {"key": "applicationName", "value": "A"}, {"key": "Access Token Type", "value": "API Key"}]});
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            send(reqwest::Method::POST, PATH, good.clone())
                .await
                .unwrap()
        ),
        200
    );
    let other = format!("{PATH}X");
    assert_eq!(
        status(
            send(reqwest::Method::POST, &other, good.clone())
                .await
                .unwrap()
        ),
        404
    );
    let nested = format!("{PATH}/a/b");
    assert_eq!(
        status(
            send(reqwest::Method::PUT, &nested, good.clone())
                .await
                .unwrap()
        ),
        404
    );
    let mut malformed = good.clone();
    malformed["propertyList"][1] = serde_json::json!({"key": "Access Token Type", "value": 5});
    assert_eq!(
        status(send(reqwest::Method::POST, PATH, malformed).await.unwrap()),
        400
    );
    assert_eq!(portal.entries.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_source_deletes_its_entry_and_leaves_the_rest_alone() {
    let s = setup(600).await;
    let both = s.config(&["weather", "maps"], "portal-password");
    let parse =
        |path: &Path| Config::parse_live(&std::fs::read_to_string(path).unwrap(), path).unwrap();
    let agent = Agent::build(&parse(&both), Clock::system()).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (reloads, requests) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(agent.run_with_reloads(rx, requests));
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.portal.entries.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", methods(&s.mock));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = methods(&s.mock).len();
    let one = s.config(&["weather"], "portal-password");
    let (reply, outcome) = tokio::sync::oneshot::channel();
    reloads
        .send(token_agent::agent::Reload {
            config: parse(&one),
            reply,
        })
        .await
        .unwrap();
    let outcome = outcome.await.unwrap().unwrap();
    assert_eq!(
        (outcome.removed, outcome.unchanged),
        (vec!["maps".to_owned()], 1)
    );
    let calls = methods(&s.mock)[before..].to_vec();
    assert_eq!(
        calls.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        ["DELETE"],
        "one DELETE, for the removed source's entry; the kept source is not touched: {calls:?}"
    );
    assert_eq!(s.portal.entries.lock().unwrap().len(), 1);
    stop.send(true).unwrap();
    task.await.unwrap();
}
