//! `/healthz` from the scheduler's side: a fetch past its bound fails liveness, a wall-clock
//! step does not (both are measured on the monotonic clock).

use std::time::Duration;

use super::scripted::Scripted;
use super::{SEC, agent, start};
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
