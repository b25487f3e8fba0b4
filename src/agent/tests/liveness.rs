//! `/healthz` from the scheduler's side: a fetch past its bound fails liveness, a wall-clock
//! step does not (both are measured on the monotonic clock), a panicked loop does until it is
//! restarted.

use std::time::Duration;

use super::scripted::Scripted;
use super::{SEC, agent, read, start};
use crate::observability::HEARTBEAT_PERIOD;

#[tokio::test(start_paused = true)]
async fn a_wall_clock_step_is_not_a_stuck_loop() {
    let dir = tempfile::tempdir().unwrap();
    let script = Scripted::new([(20 * SEC, Ok(100 * SEC))]);
    let (agent, clock) = agent(dir.path(), std::slice::from_ref(&script));
    let view = agent.observability();
    let (stop, task) = start(agent);
    tokio::time::sleep(5 * SEC).await;
    clock.jump(3_600_000); // NTP steps the wall clock an hour ahead mid-fetch
    assert_eq!(
        view.liveness(),
        Ok(()),
        "neither the heartbeat nor the fetch is late"
    );
    tokio::time::sleep(30 * SEC).await;
    assert_eq!(view.liveness(), Ok(()));
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_fetch_stuck_past_its_bound_fails_liveness() {
    let dir = tempfile::tempdir().unwrap();
    let script = Scripted::new([(1000 * SEC, Ok(100 * SEC))]);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let view = agent.observability();
    let (stop, task) = start(agent);
    let max_age = HEARTBEAT_PERIOD * 6;
    tokio::time::sleep(39 * SEC).await;
    assert_eq!(
        view.status.liveness(max_age),
        Ok(()),
        "a slow fetch within its bound is fine"
    );
    tokio::time::sleep(2 * SEC).await;
    let why = view.status.liveness(max_age).unwrap_err();
    assert_eq!(
        why,
        "source `s0`: fetch has been running for 41s (limit 40s)"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        view.status.liveness(Duration::MAX),
        Ok(()),
        "the mark goes with the cancelled fetch"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loop_is_reported_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let script = Scripted::new([
        (Duration::ZERO, Err("panic")),
        (Duration::ZERO, Ok(100 * SEC)),
    ]);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let view = agent.observability();
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC / 2).await;
    assert_eq!(
        view.liveness(),
        Err("source `s0`: its loop panicked (1 time(s)) and is not running".into())
    );
    let metrics = view.metrics.encode();
    assert!(
        metrics.contains("token_agent_refresh_failures_total{reason=\"panic\",source=\"s0\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(SEC).await; // restarted after 1 s
    assert_eq!(view.liveness(), Ok(()));
    assert_eq!(script.calls().len(), 2);
    assert_eq!(read(dir.path(), "s0.token"), "token-2");
    stop.send(true).unwrap();
    task.await.unwrap();
}
