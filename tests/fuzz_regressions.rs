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

/// The seeds reach every assertion: some configurations parse and some are refused, and some
/// error bodies carry the secret (in each of its forms) that the scrub check looks for.
#[test]
fn the_seeds_exercise_every_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let read = |target: &str| -> Vec<Vec<u8>> {
        let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(root.join(target))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        inputs.sort();
        inputs
    };
    let configs = read("config");
    let parse = |c: &Vec<u8>| {
        token_agent::config::Config::parse(std::str::from_utf8(c).unwrap(), Path::new("s.yaml"))
    };
    assert!(configs.iter().any(|c| parse(c).is_ok()), "no seed parses");
    assert!(configs.iter().filter(|c| parse(c).is_err()).count() >= 5);

    let mut found = std::collections::BTreeSet::new();
    for input in read("oauth2_response") {
        let body = &input[1..];
        let text = String::from_utf8_lossy(body);
        let carried: Vec<&str> = harness::SECRET_FORMS
            .into_iter()
            .filter(|f| text.contains(f))
            .collect();
        if !carried.is_empty() {
            let described = token_agent::http::describe_error_body(body, &[harness::SECRET]);
            assert!(described.is_some(), "{text}: never reaches the scrub check");
            found.extend(carried);
        }
    }
    for form in harness::SECRET_FORMS {
        assert!(found.contains(form), "no seed carries the secret as {form}");
    }
}
