//! Live reconfiguration of the `token-agent run` binary: a ConfigMap-style `..data` swap applies
//! the difference (the issuer's request counts prove an unchanged source is not fetched
//! again), every way an editor or a tool changes a file is one reload, an invalid file changes
//! nothing, and a fixed credential Secret ends a long backoff within seconds.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kubelet::ProjectedVolume;
use common::process::AgentProcess;
use common::{Mock, Reply, scrape as metrics, series_value as value};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

/// An issuer that hands out `<path>-<n>` tokens valid for an hour, counting requests per path.
async fn issuer() -> Mock {
    let counts: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    Mock::start(move |r| {
        let mut counts = counts.lock().unwrap();
        let n = counts.entry(r.path.clone()).or_default();
        *n += 1;
        let token = format!("{}-{n}", r.path.trim_start_matches('/'));
        Reply::json(200, json!({"access_token": token, "expires_in": 3600}))
    })
    .await
}

fn fetches(mock: &Mock, path: &str) -> usize {
    mock.requests().iter().filter(|r| r.path == path).count()
}

/// One oauth2 source named `name` fetching from `path` of `mock`, written to `<name>.token`.
fn source(mock: &Mock, name: &str, path: &str, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, kind: oauth2, token_url: '{}', auth: none{extra}, sinks: [ {{ file: {{ path: {name}.token }} }} ] }}\n",
        mock.url(path)
    )
}

fn config(tokens: &Path, sources: &[String]) -> String {
    format!(
        "defaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n{}",
        tokens.display(),
        sources.concat()
    )
}

fn start(config: &Path) -> AgentProcess {
    AgentProcess::start(Command::new(BIN).args(["run", "--config", &config.display().to_string()]))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits up to 20 s for `check`.
async fn wait_for(what: &str, agent: &AgentProcess, check: impl FnMut() -> bool) {
    agent.wait_until(what, Duration::from_secs(20), check).await;
}

/// Files in the token directory, hidden metadata included.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_applies_the_difference_and_fetches_only_what_changed() {
    let mock = issuer().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let keep = ", on_remove: keep";
    let first = config(
        &tokens,
        &[
            source(&mock, "same", "/same", ""),
            source(&mock, "changed", "/changed", ""),
            source(&mock, "removed", "/removed", ""),
            source(&mock, "kept", "/kept", keep),
        ],
    );
    let mut volume = ProjectedVolume::new(&dir.path().join("config"), &[("config.yaml", &first)]);
    let mut agent = start(&volume.path("config.yaml"));
    let base = agent.base_url().await;
    for name in ["same", "changed", "removed", "kept"] {
        let file = tokens.join(format!("{name}.token"));
        wait_for(&format!("{name}.token"), &agent, || file.exists()).await;
    }
    let hash_before = metrics(&base).await;

    // While the swap is applied, `changed.token` must never be missing or empty.
    let changed = tokens.join("changed.token");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, changed) = (stop.clone(), changed.clone());
        std::thread::spawn(move || {
            let mut gaps = 0;
            while !stop.load(Ordering::Relaxed) {
                gaps += usize::from(read(&changed).is_empty());
                std::thread::sleep(Duration::from_millis(2));
            }
            gaps
        })
    };
    // `same` is written differently (flow keys reordered) but means the same.
    let same_reordered = format!(
        "  - {{ sinks: [ {{ file: {{ path: same.token }} }} ], auth: none, token_url: '{}', kind: oauth2, name: same }}\n",
        mock.url("/same")
    );
    let second = config(
        &tokens,
        &[
            same_reordered,
            source(&mock, "changed", "/changed-v2", ""),
            source(&mock, "added", "/added", ""),
        ],
    );
    let swapped = Instant::now();
    volume.update(&[("config.yaml", &second)]);
    let added = tokens.join("added.token");
    wait_for("added.token", &agent, || added.exists()).await;
    let took = swapped.elapsed();
    wait_for("the changed source's new token", &agent, || {
        read(&changed) == "changed-v2-1"
    })
    .await;
    wait_for("removed.token deleted", &agent, || {
        !tokens.join("removed.token").exists()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        watcher.join().unwrap(),
        0,
        "changed.token went missing during the reload"
    );

    assert_eq!(
        fetches(&mock, "/same"),
        1,
        "the unchanged source was fetched again"
    );
    assert_eq!(fetches(&mock, "/changed"), 1);
    assert_eq!(fetches(&mock, "/changed-v2"), 1);
    assert_eq!(fetches(&mock, "/removed"), 1);
    assert_eq!(fetches(&mock, "/added"), 1);
    assert_eq!(read(&tokens.join("same.token")), "same-1");
    assert_eq!(
        listing(&tokens),
        [
            ".added.token.meta.json",
            ".changed.token.meta.json",
            ".kept.token.meta.json",
            ".same.token.meta.json",
            "added.token",
            "changed.token",
            "kept.token",
            "same.token",
        ],
        "the removed source's file and metadata are deleted, `on_remove: keep` is kept"
    );
    let after = metrics(&base).await;
    assert_eq!(
        value(
            &after,
            "token_agent_config_reloads_total{result=\"success\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(value(&after, "token_agent_sources"), 3.0);
    assert!(!after.contains("source=\"removed\""), "{after}");
    let info = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("token_agent_config_info{"))
            .map(str::to_owned)
    };
    assert!(info(&after).is_some() && info(&after) != info(&hash_before));
    let printed = agent.printed();
    assert!(
        printed.contains("configuration reloaded")
            && printed.contains("added=[\"added\"]")
            && printed.contains("changed=[\"changed\"]")
            && printed.contains("removed=[\"kept\", \"removed\"]")
            && printed.contains("unchanged=1"),
        "{printed}"
    );
    eprintln!("swap to the new source's first token: {took:?}");
    let (status, _) = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert!(status.success());
}

/// Waits until the agent counted `n` successful reloads, then makes sure no other follows.
async fn reloads_settle_at(agent: &AgentProcess, base: &str, success: f64, failure: f64) {
    let series = |r: &str| format!("token_agent_config_reloads_total{{result=\"{r}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(base).await;
        let got = (value(&m, &series("success")), value(&m, &series("failure")));
        if got == (success, failure) {
            break;
        }
        assert!(
            Instant::now() < deadline && got.0 <= success && got.1 <= failure,
            "reloads (success, failure) = {got:?}, expected ({success}, {failure}):\n{}",
            agent.printed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the quiet time: a second reload for the same change would show by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = metrics(base).await;
    assert_eq!(
        (value(&m, &series("success")), value(&m, &series("failure"))),
        (success, failure),
        "{}",
        agent.printed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_file_is_changed_is_one_reload_and_an_invalid_one_changes_nothing() {
    let mock = issuer().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let path = dir.path().join("config.yaml");
    let with = |names: &[&str]| {
        let sources: Vec<String> = names
            .iter()
            .map(|n| source(&mock, n, &format!("/{n}"), ""))
            .collect();
        config(&tokens, &sources)
    };
    std::fs::write(&path, with(&["a"])).unwrap();
    let mut agent = start(&path);
    let base = agent.base_url().await;
    let has = |name: &str| tokens.join(format!("{name}.token")).exists();
    wait_for("a.token", &agent, || has("a")).await;
    reloads_settle_at(&agent, &base, 0.0, 0.0).await;

    // An editor: write a temporary file, rename it over the configuration.
    let temp = dir.path().join(".config.yaml.swp");
    std::fs::write(&temp, with(&["a", "b"])).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    wait_for("b.token", &agent, || has("b")).await;
    reloads_settle_at(&agent, &base, 1.0, 0.0).await;

    // In place (truncate and write).
    std::fs::write(&path, with(&["a", "b", "c"])).unwrap();
    wait_for("c.token", &agent, || has("c")).await;
    reloads_settle_at(&agent, &base, 2.0, 0.0).await;

    // Deleted, then created again.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&path, with(&["a", "b", "c", "d"])).unwrap();
    wait_for("d.token", &agent, || has("d")).await;
    reloads_settle_at(&agent, &base, 3.0, 0.0).await;

    // A burst of 20 different writes, 20 ms apart: one reload, of the last.
    for i in 0..20 {
        let text = format!("# write {i}\n{}", with(&["a", "b", "c", "d", "e"]));
        std::fs::write(&path, text).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("e.token", &agent, || has("e")).await;
    reloads_settle_at(&agent, &base, 4.0, 0.0).await;

    // Invalid: nothing changes, the error names file, line and column, metrics say so.
    let before = metrics(&base).await;
    let invalid = with(&["a", "b"]).replace("auth: none", "auth: none, colour: blue");
    std::fs::write(&path, invalid).unwrap();
    reloads_settle_at(&agent, &base, 4.0, 1.0).await;
    let after = metrics(&base).await;
    let info = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("token_agent_config_info{"))
            .map(str::to_owned)
    };
    assert_eq!(info(&after), info(&before), "the hash in force changed");
    assert_eq!(
        value(
            &after,
            "token_agent_config_last_reload_success_timestamp_seconds"
        ),
        value(
            &before,
            "token_agent_config_last_reload_success_timestamp_seconds"
        )
    );
    assert_eq!(
        value(&after, "token_agent_config_last_reload_successful"),
        0.0
    );
    for name in ["a", "b", "c", "d", "e"] {
        assert!(
            has(name),
            "{name}.token was removed by an invalid configuration"
        );
    }
    token_agent::install_crypto_provider();
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let printed = agent.printed();
    let located = format!(
        "{}:4:81: sources[0].colour: unknown field `colour`",
        path.display()
    );
    assert!(printed.contains(&located), "no `{located}` in:\n{printed}");
    assert!(
        printed.contains("the running one stays in force"),
        "{printed}"
    );

    // Valid again; a setting that cannot change live is reported and left alone.
    let valid = with(&["a", "b"]).replace("listen: '127.0.0.1:0'", "listen: '127.0.0.1:1'");
    std::fs::write(&path, valid).unwrap();
    reloads_settle_at(&agent, &base, 5.0, 1.0).await;
    assert_eq!(
        value(
            &metrics(&base).await,
            "token_agent_config_last_reload_successful"
        ),
        1.0
    );
    assert!(!has("c") && has("a") && has("b"));
    let printed = agent.printed();
    assert!(
        printed.contains("setting=\"server\"") && printed.contains("applies at the next restart"),
        "{printed}"
    );

    // SIGHUP reloads even an unchanged file (and changes nothing).
    let pid = agent.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    reloads_settle_at(&agent, &base, 6.0, 1.0).await;
    assert_eq!(
        fetches(&mock, "/a"),
        1,
        "a reload fetched an unchanged source"
    );
    assert!(agent.printed().contains("SIGHUP received"));
    let (status, _) = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_secret_fixed_during_a_long_backoff_is_used_within_seconds() {
    let mock = Mock::start(|r| {
        if r.form_value("client_secret").as_deref() == Some("right") {
            Reply::json(200, json!({"access_token": "tok", "expires_in": 3600}))
        } else {
            Reply::json(401, json!({"error": "invalid_client"}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let mut secret =
        ProjectedVolume::new(&dir.path().join("secret"), &[("client-secret", "wrong")]);
    let path = dir.path().join("config.yaml");
    let source = format!(
        "  - name: s\n    kind: oauth2\n    token_url: '{}'\n    client_id: app\n    client_secret: {{ file: '{}' }}\n    auth: post\n    retry: {{ initial: 5m, max: 5m }}\n    sinks: [ {{ file: {{ path: s.token }} }} ]\n",
        mock.url("/token"),
        secret.path("client-secret").display()
    );
    std::fs::write(&path, config(&tokens, &[source])).unwrap();
    let agent = start(&path);
    wait_for("the first, refused fetch", &agent, || {
        mock.requests().len() == 1
    })
    .await;
    // Well inside the 5-minute backoff.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fixed = Instant::now();
    secret.update(&[("client-secret", "right")]);
    let file = tokens.join("s.token");
    wait_for("the token", &agent, || file.exists()).await;
    let took = fixed.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: the backoff was not cut short"
    );
    assert_eq!(mock.requests().len(), 2, "one refused fetch, one good one");
    assert!(agent.printed().contains("a credential file changed"));
    eprintln!("Secret fixed to token written: {took:?}");
}
