//! A full disk and a read-only volume, for real: a small tmpfs mounted for the test.
//! The old token stays intact, the failure is counted with its reason, and the agent recovers
//! by itself once space (or write access) returns.
//!
//! Needs root (mount). Without it the test says so and passes, unless
//! `TOKEN_AGENT_REQUIRE_MOUNT=1` (set by `.ci/run`) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Mock, Reply};
use serde_json::json;
use token_agent::agent::Agent;
use token_agent::clock::Clock;
use token_agent::config::Config;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(at.to_owned()))
    }

    fn remount(&self, mode: &str) {
        assert!(
            Command::new("mount")
                .args(["-o", &format!("remount,{mode}")])
                .arg(&self.0)
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
        .output();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_and_read_only_volume_keep_the_old_token_and_recover() {
    let base = tempfile::tempdir().unwrap();
    let Some(volume) = Tmpfs::mount(&base.path().join("vol"), "256k") else {
        common::skipped::skip_unless_required(
            "TOKEN_AGENT_REQUIRE_MOUNT",
            "volume::full_disk_and_read_only_volume_keep_the_old_token_and_recover",
            "cannot mount a tmpfs here (needs root)",
        );
        return;
    };
    let n = std::sync::Arc::new(AtomicU64::new(0));
    let counter = n.clone();
    let mock = Mock::start(move |_| {
        let i = counter.fetch_add(1, Ordering::SeqCst);
        Reply::json(
            200,
            json!({"access_token": format!("tok-{i}-{}", "x".repeat(8000)), "expires_in": 30}),
        )
    })
    .await;
    let yaml = format!(
        "defaults:\n  file: {{ dir: '{}' }}\n  refresh: {{ at: 1%, jitter: 0%, min_interval: 100ms }}\n  retry: {{ initial: 50ms, max: 200ms }}\nsources:\n  - {{ name: s, kind: oauth2, token_url: '{}', auth: none, sinks: [ {{ file: {{ path: s.token }} }} ] }}\n",
        volume.0.display(),
        mock.url("/t")
    );
    let config = Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let agent = Agent::build(&config, Clock::system()).unwrap();
    let view = agent.observability();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(rx));
    let token_path = volume.0.join("s.token");
    let read = || std::fs::read_to_string(&token_path).unwrap_or_default();
    eventually("first token", || read().starts_with("tok-")).await;

    // Disk full: every later write fails; the file keeps a complete old token.
    let filler = fill(&volume.0);
    let before = read();
    eventually("a no_space failure", || {
        view.metrics.encode().contains("reason=\"no_space\"")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = read();
    assert!(
        during.starts_with("tok-") && during.len() == before.len() && during == before,
        "old token intact"
    );
    std::fs::remove_file(&filler).unwrap();
    eventually("recovery after space returns", || {
        read() != during && read().starts_with("tok-")
    })
    .await;
    eventually("ready again", || {
        view.status.all_required_ready(view.clock.now())
    })
    .await;

    // Read-only volume: the same promise.
    volume.remount("ro");
    let frozen = read();
    eventually("a read_only failure", || {
        view.metrics.encode().contains("reason=\"read_only\"")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(), frozen, "old token intact on a read-only volume");
    volume.remount("rw");
    eventually("recovery after the volume is writable", || {
        read() != frozen && read().starts_with("tok-")
    })
    .await;

    stop.send(true).unwrap();
    task.await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&volume.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "failed writes leave no temporary files: {leftovers:?}"
    );
}
