//! The binary against a stateful Kubernetes API stand-in, through a kubeconfig: the agent
//! writes a Secret, a refresh updates it, an injected 403 leaves the previous value in place
//! (while the file sink goes on), and it recovers once allowed again; a live reload deletes
//! only the Secrets this agent created.

mod common;

use common::process::AgentProcess;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use common::kube_api::KubeApi;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

fn secret_token(api: &KubeApi) -> Option<(String, u64)> {
    let s = api.get("Secret", "team-a", "orders-token")?;
    let token = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["token"].as_str()?)
        .ok()?;
    let version = s["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
    Some((String::from_utf8(token).ok()?, version))
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API stand-in (namespace `team-a`), an issuer (client `c`, its secret in the file
/// `client-secret`) and a directory holding the kubeconfig.
struct Setup {
    api: KubeApi,
    issuer: token_agent::dev::issuer::Issuer,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Setup {
    async fn start(token_lifetime: Duration) -> Setup {
        let api = KubeApi::start(&["team-a"]).await;
        let issuer = token_agent::dev::issuer::Issuer::start("c", "issuer-secret", token_lifetime)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path(), "team-a");
        std::fs::write(dir.path().join("client-secret"), "issuer-secret").unwrap();
        Setup {
            api,
            issuer,
            dir,
            kubeconfig,
        }
    }

    /// `config.yaml` with one oauth2 source `orders` against the issuer: `top` is YAML for the
    /// top level (after `defaults.file.dir`), `sinks` the source's sink list.
    fn config(&self, top: &str, sinks: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("config.yaml");
        std::fs::write(
            &path,
            format!(
                "defaults:\n  file: {{ dir: '{}' }}\n{top}sources:\n  - name: orders\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: {{ file: '{}' }}\n    sinks: {sinks}\n",
                self.dir.path().join("tokens").display(),
                self.issuer.token_url(),
                self.dir.path().join("client-secret").display()
            ),
        )
        .unwrap();
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_a_secret_current_and_survives_a_403() {
    let setup = Setup::start(Duration::from_secs(2)).await;
    let config = setup.config(
        "  retry: { initial: 100ms, max: 300ms }\n  refresh: { min_interval: 100ms }\nserver: { listen: '127.0.0.1:0' }\n",
        "[ { secret: { name: orders-token, keys: { expires_at: expires-at } } }, { file: { path: orders.token } } ]",
    );
    let Setup {
        api,
        dir,
        kubeconfig,
        ..
    } = &setup;
    let mut child = AgentProcess::start(
        Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info"),
    );
    let base = child.base_url().await;
    let file =
        || std::fs::read_to_string(dir.path().join("tokens/orders.token")).unwrap_or_default();

    until("the Secret", || {
        secret_token(api).is_some_and(|(t, _)| t == file())
    })
    .await;
    let (first, v1) = secret_token(api).unwrap();
    let secret = api.get("Secret", "team-a", "orders-token").unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "token-agent"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["token-agent.io/source"],
        "orders"
    );
    assert!(secret["data"]["expires-at"].is_string());
    let calls = |method: &str| -> Vec<(String, String, String)> {
        let store = api.store.lock().unwrap();
        let log = store.log.iter().filter(|(m, _, _)| m == method);
        log.cloned().collect()
    };
    // The first write looks, then creates (never adopts); later ones apply.
    assert_eq!(calls("GET").len(), 1, "{:?}", calls("GET"));
    let creates = calls("POST");
    assert!(
        creates[0].2.contains("fieldManager=token-agent"),
        "{creates:?}"
    );

    until("a refresh to reach the Secret", || {
        secret_token(api).is_some_and(|(t, v)| t != first && v > v1)
    })
    .await;
    let applies = calls("PATCH");
    assert!(
        applies[0].2.contains("fieldManager=token-agent") && applies[0].2.contains("force=true"),
        "{applies:?}"
    );
    assert_eq!(calls("GET").len(), 1, "one look per Secret since start");

    api.forbid_secrets.store(true, Ordering::SeqCst);
    // A write the server accepted just before the flag may still land: take the Secret's
    // value once a 403 has been answered. Then the Secret is written before the file within
    // one delivery, so wait for a token that is neither the Secret's nor the file's at this
    // moment: that one met the 403.
    let requests = || api.store.lock().unwrap().log.len();
    let asked = requests();
    // The agent writes one request at a time: a request after the flag means the one before
    // it has been answered (and stored).
    until("a Secret write after the 403 flag", || requests() > asked).await;
    let (frozen, _) = secret_token(api).unwrap();
    let file_then = file();
    until("the file to move on without the Secret", || {
        let f = file();
        !f.is_empty() && f != frozen && f != file_then
    })
    .await;
    assert_eq!(
        secret_token(api).unwrap().0,
        frozen,
        "a 403 leaves the previous value in place"
    );
    token_agent::install_crypto_provider();
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("token_agent_sink_failures_total{reason=\"forbidden\",sink=\"secret:(own namespace)/orders-token\",source=\"orders\"}"),
        "{metrics}"
    );
    // The failure is counted during the delivery and the status published after it: poll
    // rather than catch the moment in between (a refresh that began before the 403 could
    // also have landed in both sinks).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16();
        if ready == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready while the Secret lags"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        secret_token(api).unwrap().0,
        frozen,
        "still the value from before the 403"
    );

    api.forbid_secrets.store(false, Ordering::SeqCst);
    until("recovery", || {
        secret_token(api).is_some_and(|(t, _)| t == file())
    })
    .await;

    let (status, logs) = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("needs `get`, `create` and `patch` on `secrets` in namespace `team-a`"),
        "{logs}"
    );
}

fn once(config: &std::path::Path, kubeconfig: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["once", "--config", config.to_str().unwrap()])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_token_requests_a_service_account_token() {
    let api = KubeApi::start(&["team-a", "builds"]).await;
    api.store.lock().unwrap().objects.insert(
        ("ServiceAccount".into(), "builds".into(), "builder".into()),
        serde_json::json!({"metadata": {"name": "builder"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), "team-a");
    let write = |sa: &str, expiration: &str| {
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            format!(
                "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ enabled: false }}\nsources:\n  - name: builder\n    kind: kubernetes_token\n    service_account: {sa}\n    namespace: builds\n    audiences: [vault, https://registry.example.com]\n    expiration: {expiration}\n    sinks: [ {{ file: {{ path: builder.token }} }}, {{ file: {{ path: builder.json, format: json }} }} ]\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        path
    };
    let out = once(&write("builder", "2h"), &kubeconfig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(dir.path().join("tokens/builder.token")).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["aud"],
        serde_json::json!(["vault", "https://registry.example.com"]),
        "audiences were requested"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:builds:builder");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokens/builder.json")).unwrap())
            .unwrap();
    let left = common::seconds_left(&doc);
    assert!(
        (7190..=7200).contains(&left),
        "expiry from status.expirationTimestamp: {left}"
    );
    let log = api.store.lock().unwrap().log.clone();
    assert!(
        log.iter().any(|(m, p, _)| m == "POST"
            && p == "/api/v1/namespaces/builds/serviceaccounts/builder/token"),
        "{log:?}"
    );

    std::fs::remove_dir_all(dir.path().join("tokens")).unwrap();
    let out = once(&write("nobody", "1h"), &kubeconfig);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("answered HTTP 404: serviceaccounts \"nobody\" not found"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args([
            "validate",
            "--config",
            write("builder", "5m").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("sources[0].expiration: must be at least 10m")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_agent_did_not_create_is_never_taken_over() {
    let setup = Setup::start(Duration::from_secs(60)).await;
    let config = setup.config(
        "server: { enabled: false }\n",
        "[ { secret: { name: orders-token } } ]",
    );
    let Setup {
        api, kubeconfig, ..
    } = &setup;
    let theirs = base64::engine::general_purpose::STANDARD.encode("theirs");
    for (labels, annotations) in [
        (serde_json::json!({}), serde_json::json!({})),
        (
            serde_json::json!({"app.kubernetes.io/managed-by": "token-agent"}),
            serde_json::json!({"token-agent.io/source": "payments"}),
        ),
    ] {
        let foreign = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orders-token", "namespace": "team-a", "uid": "u-theirs", "resourceVersion": "7", "labels": labels, "annotations": annotations}, "data": {"token": theirs}});
        let key = (
            "Secret".to_owned(),
            "team-a".to_owned(),
            "orders-token".to_owned(),
        );
        api.store
            .lock()
            .unwrap()
            .objects
            .insert(key, foreign.clone());
        let out = once(&config, kubeconfig);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("secret team-a/orders-token exists and token-agent did not create it for source `orders`"),
            "{stderr}"
        );
        assert_eq!(
            api.get("Secret", "team-a", "orders-token"),
            Some(foreign),
            "nothing changed"
        );
    }
    // Once the foreign Secret is gone, the agent creates its own.
    api.store.lock().unwrap().objects.clear();
    let out = once(&config, kubeconfig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = api.get("Secret", "team-a", "orders-token").unwrap();
    assert_eq!(
        ours["metadata"]["annotations"]["token-agent.io/source"],
        "orders"
    );
}

/// An issuer that hands out the same token again (same value, same expiry) costs no API call:
/// the Secret is created once, patched once when the token does change, and left alone
/// otherwise, however often the agent refreshes (every 200 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_token_makes_no_kubernetes_api_call() {
    let api = KubeApi::start(&["team-a"]).await;
    let rotated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exp = common::unix_now() + 3600;
    let (first, second) = (
        common::fake_jwt(serde_json::json!({"exp": exp, "v": 1})),
        common::fake_jwt(serde_json::json!({"exp": exp, "v": 2})),
    );
    let issuer = {
        let (rotated, first, second) = (rotated.clone(), first.clone(), second.clone());
        common::Mock::start(move |_| {
            // No expires_in: the expiry is the JWT's, identical on every answer.
            let token = if rotated.load(Ordering::SeqCst) {
                &second
            } else {
                &first
            };
            common::Reply::json(200, serde_json::json!({"access_token": token}))
        })
        .await
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), "team-a");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults:\n  file: {{ dir: '{}' }}\n  refresh: {{ min_interval: 100ms, max_interval: 200ms }}\nserver: {{ enabled: false }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: '{}'\n    auth: none\n    sinks:\n      - secret: {{ name: orders-token }}\n      - file: {{ path: orders.token }}\n",
            dir.path().join("tokens").display(),
            issuer.url("/t"),
        ),
    )
    .unwrap();
    let child = AgentProcess::start(
        Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("KUBECONFIG", &kubeconfig),
    );
    let secret_calls = || -> Vec<String> {
        api.store
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(_, path, _)| path.contains("/secrets"))
            .map(|(method, _, _)| method.clone())
            .collect()
    };
    let fetched = |n: usize| {
        let issuer = &issuer;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while issuer.requests().len() < n {
                assert!(Instant::now() < deadline, "fewer than {n} fetches");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    fetched(8).await;
    until("the Secret", || {
        secret_token(&api).is_some_and(|(t, _)| t == first)
    })
    .await;
    assert_eq!(secret_calls(), ["GET", "POST"], "8 fetches of one token");

    rotated.store(true, Ordering::SeqCst);
    until("the new token in the Secret", || {
        secret_token(&api).is_some_and(|(t, _)| t == second)
    })
    .await;
    let now = issuer.requests().len();
    fetched(now + 8).await;
    assert_eq!(
        secret_calls(),
        ["GET", "POST", "PATCH"],
        "one change, one write"
    );
    let (status, printed) = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{printed}");
}

/// A live reload that removes sources cleans up by the Secret sink's own rule: the Secret
/// this agent created is deleted; one it never created (it refused to take it over) and one
/// of a source marked `on_remove: keep` stay. The reload comes from the file watch, as it
/// would from a ConfigMap update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_deletes_only_the_secrets_this_agent_created() {
    let setup = Setup::start(Duration::from_secs(600)).await;
    let Setup {
        api,
        issuer,
        dir,
        kubeconfig,
    } = &setup;
    let config = dir.path().join("config.yaml");
    let write_config = |sources: &[(&str, &str)]| {
        let mut text = "server: { enabled: false }\nsources:\n".to_owned();
        for (name, extra) in sources {
            text += &format!(
                "  - name: {name}\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: {{ file: '{}' }}\n    sinks: [ {{ secret: {{ name: {name}-token }} }} ]\n{extra}",
                issuer.token_url(),
                dir.path().join("client-secret").display()
            );
        }
        // Write and rename, as an editor does: the watcher sees one complete file.
        let staged = dir.path().join(".config.yaml.swp");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &config).unwrap();
    };
    let theirs = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "billing-token", "namespace": "team-a", "uid": "u-theirs", "resourceVersion": "7"}, "data": {"token": base64::engine::general_purpose::STANDARD.encode("theirs")}});
    api.store.lock().unwrap().objects.insert(
        (
            "Secret".to_owned(),
            "team-a".to_owned(),
            "billing-token".to_owned(),
        ),
        theirs.clone(),
    );
    write_config(&[
        ("orders", ""),
        ("billing", ""),
        ("audit", "    on_remove: keep\n"),
    ]);
    let child = AgentProcess::start(
        Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info"),
    );
    let secret = |name: &str| api.get("Secret", "team-a", name);
    let ours = |name: &str| {
        secret(name).is_some_and(|s| {
            s["metadata"]["annotations"]["token-agent.io/source"] == name.trim_end_matches("-token")
        })
    };
    child
        .wait_until("orders and audit Secrets", Duration::from_secs(20), || {
            ours("orders-token") && ours("audit-token")
        })
        .await;
    child
        .wait_until(
            "the refusal of billing-token",
            Duration::from_secs(20),
            || {
                child
                    .printed()
                    .contains("billing-token exists and token-agent did not create it")
            },
        )
        .await;
    let audit = secret("audit-token");

    write_config(&[("payments", "")]);
    // Stopped sources are retired before an added one starts.
    child
        .wait_until("the added source's Secret", Duration::from_secs(20), || {
            ours("payments-token")
        })
        .await;
    assert_eq!(
        secret("orders-token"),
        None,
        "created by this agent: deleted"
    );
    assert_eq!(secret("billing-token"), Some(theirs), "not ours: untouched");
    assert_eq!(secret("audit-token"), audit, "on_remove: keep");
    let deletes: Vec<_> = api
        .store
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(method, _, _)| method == "DELETE")
        .cloned()
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(
        deletes[0].1.ends_with("/secrets/orders-token"),
        "{deletes:?}"
    );
    let (status, logs) = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("removed"), "{logs}");
}
