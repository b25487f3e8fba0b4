//! Crash safety: while the agent rotates a token every ~50 ms and is killed with SIGKILL at
//! random moments (then restarted), a reader hammering the files never sees a torn, empty,
//! missing, mismatched or older token, and never finds `s.token` behind `s.json` (sinks are
//! written in the order listed). Between runs the metadata never describes a token newer than
//! the file, and after a clean stop it describes exactly the file's token.
//!
//! `TOKEN_AGENT_TORTURE_KILLS` sets the number of kills (default 100; the documented long run
//! uses 1000).

mod common;

use common::SpawnGuarded;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mock, Reply};
use serde_json::json;
use token_agent::token::fingerprint;

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

/// How long one run may take to fetch its first token, however loaded the machine.
const FIRST_FETCH_WITHIN: Duration = Duration::from_secs(30);

/// A token that proves its own integrity: `v1.<n>.<payload>.<sha256(n.payload)>`.
fn make_token(n: u64) -> String {
    let payload = "x".repeat(1500 + (n as usize * 37) % 900);
    let body = format!("{n}.{payload}");
    format!("v1.{body}.{}", fingerprint(body.as_bytes()))
}

/// The token's number if it is whole, `None` if it is torn or foreign.
fn whole_token(t: &str) -> Option<u64> {
    let rest = t.strip_prefix("v1.")?;
    let (body, sum) = rest.rsplit_once('.')?;
    if fingerprint(body.as_bytes()) != sum {
        return None;
    }
    body.split_once('.')?.0.parse().ok()
}

/// The number of the token file `name` holds, if it is whole (for `s.json`: the document
/// parses, its expiry parses and its token is whole).
fn whole_file(name: &str, bytes: &[u8]) -> Option<u64> {
    if name != "s.json" {
        return whole_token(std::str::from_utf8(bytes).ok()?);
    }
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    humantime::parse_rfc3339(doc["expires_at"].as_str()?).ok()?;
    whole_token(doc["token"].as_str()?)
}

/// `Ok(n)` for the number of the token `<name>`'s metadata describes, `Err` with why not.
fn meta_names(dir: &Path, name: &str, issued: &Mutex<HashMap<String, u64>>) -> Result<u64, String> {
    let path = dir.join(format!(".{name}.meta.json"));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: torn ({e})", path.display()))?;
    assert_eq!(meta["source"], "s", "{}", path.display());
    let sha = meta["sha256"].as_str().unwrap_or_default();
    issued
        .lock()
        .unwrap()
        .get(sha)
        .copied()
        .ok_or_else(|| format!("{}: hash of no issued token", path.display()))
}

#[derive(Default)]
struct ReadStats {
    reads: AtomicU64,
    bad: AtomicU64,
    missing_after_first: AtomicU64,
    went_back: AtomicU64,
    token_behind_json: AtomicU64,
}

/// Reads `s.json` then `s.token` in a tight loop and counts every broken promise.
fn hammer(tokens: &Path, stop: &AtomicBool, stats: &ReadStats) {
    let mut seen: [Option<u64>; 2] = [None, None];
    while !stop.load(Ordering::Relaxed) {
        let mut now: [Option<u64>; 2] = [None, None];
        for (i, name) in ["s.json", "s.token"].iter().enumerate() {
            match std::fs::read(tokens.join(name)) {
                Ok(bytes) => {
                    stats.reads.fetch_add(1, Ordering::Relaxed);
                    let n = whole_file(name, &bytes);
                    match n {
                        None => {
                            stats.bad.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(n) if seen[i].is_some_and(|before| n < before) => {
                            stats.went_back.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(n) => seen[i] = Some(n),
                    }
                    now[i] = n;
                }
                Err(_) if seen[i].is_some() => {
                    stats.missing_after_first.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        if let [Some(json), Some(token)] = now
            && token < json
        {
            stats.token_behind_json.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotation_never_exposes_a_broken_token() {
    let kills: u32 = std::env::var("TOKEN_AGENT_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let counter = Arc::new(AtomicU64::new(0));
    let issued_count = counter.clone();
    // Every token handed out, by its SHA-256 (what the metadata records).
    let issued = Arc::new(Mutex::new(HashMap::new()));
    let by_hash = issued.clone();
    let mock = Mock::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let token = make_token(n);
        by_hash
            .lock()
            .unwrap()
            .insert(fingerprint(token.as_bytes()), n);
        Reply::json(200, json!({"access_token": token, "expires_in": 0.1}))
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
        std::thread::spawn(move || hammer(&tokens, &stop, &stats))
    };

    let (at_rest, files) = (issued.clone(), tokens.clone());
    let killer = tokio::task::spawn_blocking(move || {
        let start = || {
            Command::new(BIN)
                .args(["run", "--config", config.to_str().unwrap()])
                .stderr(Stdio::null())
                .spawn_guarded()
        };
        // Waits until the mock has issued `more` tokens since `before`; fails the run if not.
        let await_fetches = |run: &str, before: u64, more: u64| {
            let deadline = Instant::now() + FIRST_FETCH_WITHIN;
            while issued_count.load(Ordering::SeqCst) < before + more {
                assert!(
                    Instant::now() < deadline,
                    "{run} issued no request within {FIRST_FETCH_WITHIN:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let mut behind_after_kill = 0;
        let mut written_before = [false, false];
        for run in 0..kills {
            let before = issued_count.load(Ordering::SeqCst);
            let mut child = start();
            // Let this run fetch at least one token, then kill it at a random moment of the
            // following ~50 ms rotations.
            await_fetches(&format!("run {run}"), before, 1);
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..120)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // At rest, each file's metadata describes its token, or (killed between the two
            // renames) an older one: never a newer one, never torn, never a stranger's.
            for (i, name) in ["s.token", "s.json"].into_iter().enumerate() {
                let Ok(bytes) = std::fs::read(files.join(name)) else {
                    assert!(!written_before[i], "run {run}: {name} vanished");
                    continue; // no run has written it yet
                };
                let on_disk = whole_file(name, &bytes)
                    .unwrap_or_else(|| panic!("run {run}: {name} is broken at rest"));
                match meta_names(&files, name, &at_rest) {
                    Ok(m) if m == on_disk => {}
                    Ok(m) if m < on_disk => behind_after_kill += 1,
                    Ok(m) => panic!("run {run}: {name} holds #{on_disk}, its metadata #{m}"),
                    // Only the file's very first write can leave it without metadata.
                    Err(_) if !written_before[i] => behind_after_kill += 1,
                    Err(e) => panic!("run {run}: {e}"),
                }
                written_before[i] = true;
            }
        }
        // One last clean run: it fetches (and so writes) twice, then stops on SIGTERM.
        let before = issued_count.load(Ordering::SeqCst);
        let mut child = start();
        await_fetches("the clean run", before, 2);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        (child.wait().unwrap(), behind_after_kill)
    });
    let (last, behind_after_kill) = killer.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    let s = &stats;
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "kills={kills} reads={} torn={} missing={} went_back={} token_behind_json={} metadata_behind_after_kill={behind_after_kill} tokens_issued={}",
        count(&s.reads),
        count(&s.bad),
        count(&s.missing_after_first),
        count(&s.went_back),
        count(&s.token_behind_json),
        mock.requests().len()
    );
    assert_eq!(count(&s.bad), 0, "torn or mismatched reads");
    assert_eq!(
        count(&s.missing_after_first),
        0,
        "a file vanished after it first appeared"
    );
    assert_eq!(count(&s.went_back), 0, "a file went back to an older token");
    assert_eq!(count(&s.token_behind_json), 0, "s.token behind s.json");
    assert!(
        count(&s.reads) > 1000,
        "the reader ran ({} reads)",
        count(&s.reads)
    );
    assert_eq!(last.code(), Some(0));
    for name in ["s.token", "s.json"] {
        let on_disk = whole_file(name, &std::fs::read(tokens.join(name)).unwrap());
        assert_eq!(
            meta_names(&tokens, name, &issued).ok(),
            on_disk,
            "after a clean stop the metadata describes {name}'s token"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&tokens)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
