//! Replays the fuzzers' regression inputs (`fuzz/regressions/<target>/`: every input a fuzz run
//! found to crash, plus the seed corpus) through the same checks the fuzz targets run, so a
//! fixed bug stays fixed without nightly or libFuzzer. How to fuzz: BENCHMARKS.md.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

/// Replays `fuzz/regressions/<target>`, `fuzz/seeds/<target>` and `extra` (relative to the
/// repository).
fn replay(target: &str, extra: &[&str], check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzz = root.join("fuzz");
    let dirs = [
        fuzz.join("regressions").join(target),
        fuzz.join("seeds").join(target),
    ]
    .into_iter()
    .chain(extra.iter().map(|d| root.join(d)));
    let mut replayed = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let input = std::fs::read(entry.path()).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(outcome.is_ok(), "{} fails", entry.path().display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs for {target}");
}

#[test]
fn config_inputs() {
    replay("config", &["examples"], harness::config);
}

#[test]
fn oauth2_response_inputs() {
    replay("oauth2_response", &[], harness::oauth2_response);
}

#[test]
fn mindsphere_response_inputs() {
    replay("mindsphere_response", &[], harness::mindsphere_response);
}

#[test]
fn xmlrpc_response_inputs() {
    replay("xmlrpc_response", &[], harness::xmlrpc_response);
}
