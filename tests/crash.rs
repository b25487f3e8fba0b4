//! Crash safety: while the agent rotates a token every ~50 ms and is killed with SIGKILL at
//! random moments (then restarted), a reader hammering the files never sees a torn, empty,
//! missing or mismatched token.
//!
//! `TOKEN_AGENT_TORTURE_KILLS` sets the number of kills (default 100; the documented long run
//! uses 1000).

mod common;

use common::SpawnGuarded;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Mock, Reply};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

/// A token that proves its own integrity: `v1.<n>.<payload>.<sha256(n.payload)>`.
fn make_token(n: u64) -> String {
    let payload = "x".repeat(1500 + (n as usize * 37) % 900);
    let body = format!("{n}.{payload}");
    format!(
        "v1.{body}.{}",
        token_agent::token::fingerprint(body.as_bytes())
    )
}

fn token_is_whole(t: &str) -> bool {
    let Some(rest) = t.strip_prefix("v1.") else {
        return false;
    };
    let Some((body, sum)) = rest.rsplit_once('.') else {
        return false;
    };
    token_agent::token::fingerprint(body.as_bytes()) == sum
}

#[derive(Default)]
struct ReadStats {
    reads: AtomicU64,
    bad: AtomicU64,
    missing_after_first: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotation_never_exposes_a_broken_token() {
    let kills: u32 = std::env::var("TOKEN_AGENT_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let counter = Arc::new(AtomicU64::new(0));
    let issued = counter.clone();
    let mock = Mock::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Reply::json(
            200,
            json!({"access_token": make_token(n), "expires_in": 0.1}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "defaults:\n  file: {{ dir: '{}' }}\n  refresh: {{ at: 50%, jitter: 0%, min_interval: 10ms }}\n  retry: {{ initial: 10ms, max: 50ms }}\nserver: {{ enabled: false }}\nsources:\n  - name: s\n    kind: oauth2\n    token_url: '{}'\n    auth: none\n    sinks:\n      - file: {{ path: s.token }}\n      - file: {{ path: s.json, format: json }}\n",
            tokens.display(),
            mock.url("/t")
        ),
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ReadStats::default());
    let reader = {
        let (stop, stats, tokens) = (stop.clone(), stats.clone(), tokens.clone());
        std::thread::spawn(move || {
            let mut seen = [false, false];
            while !stop.load(Ordering::Relaxed) {
                for (i, name) in ["s.token", "s.json"].iter().enumerate() {
                    match std::fs::read(tokens.join(name)) {
                        Ok(bytes) => {
                            seen[i] = true;
                            stats.reads.fetch_add(1, Ordering::Relaxed);
                            let text = String::from_utf8_lossy(&bytes);
                            let ok = if i == 0 {
                                token_is_whole(&text)
                            } else {
                                serde_json::from_str::<serde_json::Value>(&text)
                                    .ok()
                                    .is_some_and(|v| {
                                        v["token"].as_str().is_some_and(token_is_whole)
                                            && v["expires_at"].as_str().is_some_and(|e| {
                                                humantime::parse_rfc3339(e).is_ok()
                                            })
                                    })
                            };
                            if !ok {
                                stats.bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) if seen[i] => {
                            stats.missing_after_first.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            }
        })
    };

    let killer = tokio::task::spawn_blocking(move || {
        for _ in 0..kills {
            let mut child = Command::new(BIN)
                .args(["run", "--config", config.to_str().unwrap()])
                .stderr(Stdio::null())
                .spawn_guarded();
            // Let this run fetch at least one token (however slow the machine), then kill it at
            // a random moment of the following ~50 ms rotations.
            let before = issued.load(Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while issued.load(Ordering::SeqCst) == before && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..120)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        // One last clean run: leftovers of killed writes are swept on the first write.
        let mut child = Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn_guarded();
        std::thread::sleep(Duration::from_millis(300));
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    });
    let last = killer.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    let (reads, bad, missing) = (
        stats.reads.load(Ordering::Relaxed),
        stats.bad.load(Ordering::Relaxed),
        stats.missing_after_first.load(Ordering::Relaxed),
    );
    println!(
        "kills={kills} reads={reads} torn_or_mismatched={bad} missing={missing} tokens_issued={}",
        mock.requests().len()
    );
    assert_eq!(bad, 0, "torn or mismatched reads");
    assert_eq!(missing, 0, "the file vanished after it first appeared");
    assert!(reads > 1000, "the reader ran ({reads} reads)");
    assert!(
        mock.requests().len() as u32 >= kills,
        "every run fetched before it was killed"
    );
    assert_eq!(last.code(), Some(0));
    let leftovers: Vec<_> = std::fs::read_dir(&tokens)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
