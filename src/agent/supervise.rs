//! Source loops that panic are restarted, and seen: a bug in one source (or in a library it
//! calls) must not silently stop its refreshes while `/healthz` says all is well.
//!
//! A panicked loop counts under `token_agent_refresh_failures_total{reason="panic"}` and makes
//! `/healthz` 503 (naming the source) until it runs again, after 1, 2, 4, 8, 16 s. After
//! [`MAX_RESTARTS`] restarts, the next panic leaves it down and `/healthz` stays 503, so the
//! kubelet restarts the agent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tracing::error;

use super::source_loop::SourceLoop;
use super::{LOG_TARGET, LoopContext};

/// Restarts of one source's loop; the panic after the last one leaves it down.
const MAX_RESTARTS: u32 = 5;

/// The source loops among the agent's tasks, by task id, and how often each panicked.
#[derive(Default)]
pub(super) struct Supervisor {
    running: HashMap<Id, Arc<SourceLoop>>,
    panics: HashMap<String, u32>,
}

impl Supervisor {
    /// Starts `source`'s loop after `delay`.
    pub fn start(
        &mut self,
        tasks: &mut JoinSet<()>,
        source: Arc<SourceLoop>,
        context: &Arc<LoopContext>,
        mut shutdown: watch::Receiver<bool>,
        delay: Duration,
    ) {
        let (context, running) = (context.clone(), source.clone());
        let handle = tasks.spawn(async move {
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            let status = &context.observability.status;
            status.update(&running.name, |s| s.panicked = None);
            running.run(&context, shutdown).await;
        });
        self.running.insert(handle.id(), source);
    }

    /// A task of the agent ended with `outcome`: a panicked source loop is reported and
    /// restarted; anything else is logged.
    pub fn ended(
        &mut self,
        outcome: Result<(Id, ()), tokio::task::JoinError>,
        tasks: &mut JoinSet<()>,
        context: &Arc<LoopContext>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let error = match outcome {
            Ok((id, ())) => {
                self.running.remove(&id);
                return;
            }
            Err(e) => e,
        };
        let Some(source) = self.running.remove(&error.id()) else {
            error!(target: LOG_TARGET, error = %error, "an agent task ended abnormally");
            return;
        };
        if !error.is_panic() {
            return; // cancelled: the agent is stopping
        }
        let panics = self.panics.entry(source.name.clone()).or_default();
        *panics += 1;
        let view = &context.observability;
        view.metrics.count_failure(&source.name, "panic");
        view.status
            .update(&source.name, |s| s.panicked = Some(*panics));
        if *panics > MAX_RESTARTS {
            error!(target: LOG_TARGET, source = %source.name, panics = *panics, "the source loop panicked again; leaving it down (/healthz reports it)");
            return;
        }
        let delay = Duration::from_secs(1 << (*panics - 1));
        error!(target: LOG_TARGET, source = %source.name, panics = *panics, restart_in = ?delay, "the source loop panicked; restarting it");
        self.start(tasks, source, context, shutdown.clone(), delay);
    }
}
