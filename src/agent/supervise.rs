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

use super::source_loop::{SourceLoop, Stop};
use super::{LOG_TARGET, LoopContext};

/// Restarts of one source's loop; the panic after the last one leaves it down.
const MAX_RESTARTS: u32 = 5;

/// The source loops the agent runs, by name, with how to stop each; which task runs which; and
/// how often each panicked.
#[derive(Default)]
pub(super) struct Supervisor {
    members: HashMap<String, Member>,
    running: HashMap<Id, Arc<SourceLoop>>,
    panics: HashMap<String, u32>,
    /// The agent is shutting down: every loop was told to stop.
    stopping: bool,
}

/// A source the agent runs, and the switch that stops its loop.
pub(super) struct Member {
    pub source: Arc<SourceLoop>,
    stop: watch::Sender<Stop>,
}

impl Supervisor {
    /// Adds `source` and starts its loop.
    pub fn add(
        &mut self,
        tasks: &mut JoinSet<()>,
        source: Arc<SourceLoop>,
        context: &Arc<LoopContext>,
    ) {
        let stop = watch::Sender::new(Stop::No);
        let receiver = stop.subscribe();
        self.panics.remove(&source.name);
        let name = source.name.clone();
        self.members.insert(
            name,
            Member {
                source: source.clone(),
                stop,
            },
        );
        self.start(tasks, source, context, receiver, Duration::ZERO);
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Takes `name` out and tells its loop to stop as `how`; returns a sender whose
    /// `closed()` resolves once the loop (and its retiring) has ended.
    pub fn remove(&mut self, name: &str, how: Stop) -> Option<watch::Sender<Stop>> {
        let member = self.members.remove(name)?;
        member.stop.send_replace(how);
        Some(member.stop)
    }

    /// Stops every loop, leaving outputs in place (shutdown).
    pub fn stop_all(&mut self) {
        self.stopping = true;
        for member in self.members.values() {
            member.stop.send_replace(Stop::Keep);
        }
    }

    /// Starts `source`'s loop after `delay`.
    fn start(
        &mut self,
        tasks: &mut JoinSet<()>,
        source: Arc<SourceLoop>,
        context: &Arc<LoopContext>,
        mut stop: watch::Receiver<Stop>,
        delay: Duration,
    ) {
        let (context, running) = (context.clone(), source.clone());
        let handle = tasks.spawn(async move {
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(Stop::is_set) => return,
                }
            }
            let status = &context.observability.status;
            status.update(&running.name, |s| s.panicked = None);
            running.run(&context, stop).await;
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
        // A loop a reload replaced or removed meanwhile is not restarted.
        let Some(member) = self
            .members
            .get(&source.name)
            .filter(|m| Arc::ptr_eq(&m.source, &source))
        else {
            return;
        };
        let stop = member.stop.subscribe();
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
        self.start(tasks, source, context, stop, delay);
    }
}
