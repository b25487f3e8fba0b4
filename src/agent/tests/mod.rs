//! Compiled only for tests: `#[cfg(test)] mod tests;` in agent/mod.rs.
//! The scheduler under paused time: a scripted source stands in for a real one.

mod adopt;
mod liveness;
mod places;
mod scripted;

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use self::scripted::Scripted;
use super::source_loop::{self, CLOCK_CHECK_PERIOD};
use super::state;
use super::*;
use crate::names::InstanceId;
use crate::source::FetchError;

const SEC: Duration = Duration::from_secs(1);

fn config(dir: &Path, names: &[&str]) -> Config {
    let sources: String = names
        .iter()
        .map(|n| format!("  - {{ name: {n}, kind: oauth2, token_url: 'http://127.0.0.1:9/t', auth: none, sinks: [ {{ file: {{ path: {n}.token }} }} ] }}\n"))
        .collect();
    let yaml = format!(
        "defaults:\n  refresh: {{ at: 80%, jitter: 10%, min_interval: 1s }}\n  retry: {{ initial: 1s, max: 8s }}\n  file: {{ dir: '{}' }}\nsources:\n{sources}",
        dir.display()
    );
    Config::parse(&yaml, Path::new("test.yaml")).unwrap()
}

fn agent(dir: &Path, scripts: &[Scripted]) -> (Agent, Clock) {
    let names: Vec<String> = (0..scripts.len()).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let clock = Clock::manual(SystemTime::now());
    let mut agent = Agent::build(&config(dir, &names), clock.clone()).unwrap();
    for (source, script) in agent.loops.iter_mut().zip(scripts) {
        source.source = Box::new(script.clone());
    }
    (agent, clock)
}

fn start(agent: Agent) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    (tx, tokio::spawn(agent.run(rx)))
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn offsets(calls: &[SystemTime]) -> Vec<f64> {
    calls
        .iter()
        .map(|c| c.duration_since(calls[0]).unwrap().as_secs_f64())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn refreshes_between_70_and_80_percent_of_the_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let script = Scripted::new([
        (Duration::ZERO, Ok(100 * SEC)),
        (Duration::ZERO, Ok(100 * SEC)),
        (Duration::ZERO, Ok(100 * SEC)),
    ]);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let view = agent.observability();
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC).await;
    assert_eq!(read(dir.path(), "s0.token"), "token-1");
    assert!(view.status.all_required_ready(view.clock.now()));
    tokio::time::sleep(68 * SEC).await;
    assert_eq!(
        script.calls().len(),
        1,
        "no refresh before 70% of the lifetime"
    );
    tokio::time::sleep(12 * SEC).await;
    assert_eq!(script.calls().len(), 2, "refreshed by 80% of the lifetime");
    assert_eq!(read(dir.path(), "s0.token"), "token-2");
    let gap = offsets(&script.calls())[1];
    assert!((70.0..=80.0).contains(&gap), "refresh after {gap}s");
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_and_keep_the_last_good_token_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = vec![(Duration::ZERO, Ok(60 * SEC))];
    steps.extend((0..20).map(|_| (Duration::ZERO, Err("idp down"))));
    let script = Scripted::new(steps);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let view = agent.observability();
    let (stop, task) = start(agent);
    tokio::time::sleep(50 * SEC).await;
    // First refresh attempt happened between 42 s and 48 s, and failed.
    assert!(script.calls().len() >= 2);
    assert_eq!(
        read(dir.path(), "s0.token"),
        "token-1",
        "the last good token stays in place"
    );
    assert!(
        view.status.all_required_ready(view.clock.now()),
        "still ready while the token is valid"
    );
    tokio::time::sleep(20 * SEC).await;
    let now = view.clock.now();
    assert!(
        !view.status.all_required_ready(now),
        "not ready once the token has expired"
    );
    assert_eq!(
        view.status.snapshot(now)[0].last_error_reason,
        Some("http_5xx")
    );
    assert_eq!(
        read(dir.path(), "s0.token"),
        "token-1",
        "an expired token is not deleted"
    );
    let at = offsets(&script.calls());
    let gaps: Vec<f64> = at.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
    for (gap, full) in gaps.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
        assert!(
            *gap >= full * 0.75 - 1e-6 && *gap <= full + 1e-6,
            "gaps {gaps:?}"
        );
    }
    assert!(gaps.len() >= 3, "gaps {gaps:?}");
    stop.send(true).unwrap();
    task.await.unwrap();
    let metrics = view.metrics.encode();
    assert!(
        metrics.contains("token_agent_refresh_failures_total{reason=\"http_5xx\",source=\"s0\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("token_agent_token_valid{source=\"s0\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_a_success() {
    let dir = tempfile::tempdir().unwrap();
    let fail = (Duration::ZERO, Err("down"));
    let script = Scripted::new([fail, fail, fail, (Duration::ZERO, Ok(1000 * SEC)), fail]);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let (stop, task) = start(agent);
    tokio::time::sleep(9 * SEC).await;
    assert_eq!(
        script.calls().len(),
        4,
        "three failures (1 s, 2 s, 4 s backoff) then a success"
    );
    assert_eq!(read(dir.path(), "s0.token"), "token-4");
    tokio::time::sleep(900 * SEC).await;
    let at = offsets(&script.calls());
    assert!(at.len() >= 6, "{at:?}");
    assert!(
        (700.0..=800.0).contains(&(at[4] - at[3])),
        "refresh at 70-80% of the lifetime: {at:?}"
    );
    assert!(
        at[5] - at[4] <= 1.0 + 1e-6,
        "first retry after the success waits the initial delay again: {at:?}"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_clock_that_jumps_backwards_forces_a_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let script = Scripted::new([
        (Duration::ZERO, Ok(3600 * SEC)),
        (Duration::ZERO, Ok(3600 * SEC)),
    ]);
    let (agent, clock) = agent(dir.path(), std::slice::from_ref(&script));
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC).await;
    clock.jump(-600_000);
    tokio::time::sleep(CLOCK_CHECK_PERIOD + SEC).await;
    assert_eq!(script.calls().len(), 2);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_does_not_delay_another() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Scripted::new([(3000 * SEC, Ok(100 * SEC))]);
    let fast = Scripted::new([(Duration::ZERO, Ok(100 * SEC))]);
    let (agent, _) = agent(dir.path(), &[slow, fast]);
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC).await;
    assert_eq!(read(dir.path(), "s1.token"), "token-1");
    assert_eq!(read(dir.path(), "s0.token"), "");
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_sink_is_retried_without_fetching_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("s0.token")).unwrap(); // a directory where the file goes
    let script = Scripted::new([(Duration::ZERO, Ok(1000 * SEC))]);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let view = agent.observability();
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC / 2).await;
    assert!(
        !view.status.all_required_ready(view.clock.now()),
        "not ready while a sink lacks the token"
    );
    std::fs::remove_dir(dir.path().join("s0.token")).unwrap();
    tokio::time::sleep(5 * SEC).await;
    assert_eq!(read(dir.path(), "s0.token"), "token-1");
    assert_eq!(script.calls().len(), 1, "the token was not fetched again");
    assert!(view.status.all_required_ready(view.clock.now()));
    assert!(view.metrics.encode().contains("reason=\"not_a_file\""));
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// Every source is one task, alive for the agent's lifetime: its idle state must stay
/// small (10 000 sources × 3 KiB was a quarter of the agent's memory).
#[test]
fn an_idle_source_loop_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = agent(dir.path(), &[Scripted::default()]);
    let (_tx, rx) = watch::channel(source_loop::Stop::No);
    let run = agent.loops[0].run(&agent.context, rx);
    assert!(size_of_val(&run) <= 1024, "{} bytes", size_of_val(&run));
}

#[tokio::test(start_paused = true)]
async fn the_same_token_again_is_not_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut script = Scripted::new((0..10).map(|_| (Duration::ZERO, Ok(SEC))));
    let (mut agent, clock) = agent(dir.path(), &[Scripted::default()]);
    script.same_token_until = Some(clock.now() + 100 * SEC);
    agent.loops[0].source = Box::new(script.clone());
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC).await;
    let inode = || {
        std::fs::metadata(dir.path().join("s0.token"))
            .unwrap()
            .ino()
    };
    let first = inode();
    tokio::time::sleep(97 * SEC).await;
    assert!(script.calls().len() >= 3, "{:?}", script.calls());
    assert_eq!(read(dir.path(), "s0.token"), "token-same");
    assert_eq!(inode(), first, "the file was not replaced");
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn warm_restart_reuses_a_valid_token_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let first = Scripted::new([(Duration::ZERO, Ok(1000 * SEC))]);
    let (agent1, _) = agent(dir.path(), std::slice::from_ref(&first));
    let (stop, task) = start(agent1);
    tokio::time::sleep(SEC).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    let second = Scripted::new([(Duration::ZERO, Ok(1000 * SEC))]);
    let (agent2, _) = agent(dir.path(), std::slice::from_ref(&second));
    let view = agent2.observability();
    let (stop, task) = start(agent2);
    tokio::time::sleep(SEC).await;
    assert_eq!(
        second.calls().len(),
        0,
        "no fetch: the token on disk is still valid"
    );
    assert_eq!(read(dir.path(), "s0.token"), "token-1");
    assert!(view.status.all_required_ready(view.clock.now()));
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_fetches_caps_fetches_across_sources() {
    let dir = tempfile::tempdir().unwrap();
    let slow = || Scripted::new([(10 * SEC, Ok(1000 * SEC))]);
    let scripts = [slow(), slow(), slow()];
    let names = ["s0", "s1", "s2"];
    let mut one_at_a_time = config(dir.path(), &names);
    one_at_a_time.max_concurrent_fetches = 1;
    let mut agent = Agent::build(&one_at_a_time, Clock::manual(SystemTime::now())).unwrap();
    for (source, script) in agent.loops.iter_mut().zip(&scripts) {
        source.source = Box::new(script.clone());
    }
    let (stop, task) = start(agent);
    tokio::time::sleep(31 * SEC).await;
    let mut starts: Vec<SystemTime> = scripts.iter().flat_map(|s| s.calls()).collect();
    starts.sort();
    let at = offsets(&starts);
    assert_eq!(at.len(), 3);
    assert!(
        (at[1] - 10.0).abs() < 0.01 && (at[2] - 20.0).abs() < 0.01,
        "one fetch at a time: {at:?}"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn once_reports_each_source() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Scripted::new([(Duration::ZERO, Ok(100 * SEC))]);
    let bad = Scripted::new([(Duration::ZERO, Err("nope"))]);
    let (agent, _) = agent(dir.path(), &[ok, bad]);
    let outcomes = agent.once().await;
    assert!(outcomes[0].result.is_ok());
    let err = outcomes[1].result.as_ref().unwrap_err();
    assert!(err.contains("HTTP 503") && err.contains("nope"), "{err}");
    assert_eq!(read(dir.path(), "s0.token"), "token-1");
}

/// A tenant list of hostile ids (control characters, huge) reaches `once` output and logs
/// only escaped and bounded.
#[tokio::test(start_paused = true)]
async fn hostile_tenant_ids_reach_the_output_escaped_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = agent(dir.path(), &[Scripted::default()]);
    let source = &agent.loops[0];
    let mut state =
        state::LoopState::new(1, &source.refresh, source.retry, None, SystemTime::now());
    let hostile = |i: usize| format!("\u{1b}[2J{i}\n{}", "x".repeat(10_000));
    let fetch = crate::source::Fetch {
        instances: Vec::new(),
        refused: (0..500)
            .map(|i| {
                let message = InstanceId::tenant(&hostile(i)).unwrap_err();
                (
                    crate::names::shown(&hostile(i)),
                    FetchError::invalid("u", message),
                )
            })
            .collect(),
    };
    let summary = source
        .apply(&agent.context, &mut state, Ok(fetch), Duration::ZERO)
        .unwrap();
    assert!(!summary.chars().any(char::is_control), "{summary:?}");
    assert!(summary.len() < 2_000, "{} bytes", summary.len());
    assert!(summary.starts_with("500 instance(s) failed: "), "{summary}");
}
