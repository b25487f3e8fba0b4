//! Test support, compiled only for tests (also included by `tests/common`): a test that cannot
//! run here says so where it will be seen.
//!
//! `cargo test` shows a passing test's output only when asked, so a skip printed to stderr goes
//! unnoticed. `scripts/test.sh` points `TOKEN_AGENT_SKIP_LOG` at a file and lists its lines
//! after the run.

use std::io::Write;

/// Skips `test` (see [`skipped`]) unless the variable `required` is set, which makes it a
/// failure: `.ci/run` sets `TOKEN_AGENT_REQUIRE_*` so that CI skips nothing.
pub fn skip_unless_required(required: &str, test: &str, why: &str) {
    assert!(
        std::env::var_os(required).is_none(),
        "{test}: {why}, and {required} is set"
    );
    skipped(test, why);
}

/// Records that `test` did not run and `why` (name the fix): on stderr, and appended to the
/// file `TOKEN_AGENT_SKIP_LOG` names, when it is set.
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    let Some(log) = std::env::var_os("TOKEN_AGENT_SKIP_LOG") else {
        return;
    };
    // One write of the whole line: tests skip in parallel, and O_APPEND keeps a single write
    // of a short line in one piece.
    let line = format!("{test}: {why}\n");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        eprintln!("cannot record the skip in TOKEN_AGENT_SKIP_LOG: {e}");
    }
}
