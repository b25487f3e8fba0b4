//! Handing tokens to sinks: every valid token to every sink that lacks it, the removal of
//! what gone instances left, a backoff when a sink fails, and where the source stands after.

use std::time::{Duration, SystemTime};

use super::LoopContext;
use super::places::Owner;
use super::report::{InstanceRemoval, Published, SinkRetired, SinkWrite};
use super::source_loop::LoopSink;
use super::source_loop::{SinkPlace, SourceLoop};
use super::state::{Announce, Instance, LoopState};
use crate::names::InstanceId;
use crate::notifier::Change;

/// Longest a sink write may take before the loop counts as stuck (see `/healthz`).
const SINK_WRITE_LIMIT: Duration = Duration::from_secs(60);

impl SourceLoop {
    /// Writes every valid token to every sink that lacks it, and removes the outputs of
    /// instances that went away. A failed sink is retried later without fetching again.
    pub(super) async fn deliver(
        &self,
        context: &LoopContext,
        state: &mut LoopState,
        now: SystemTime,
    ) {
        let report = self.reporter(context);
        let mut failed = false;
        let mut news = News::default();
        // What changed is gathered only for a source with `notify:` actions (finding a
        // sink's file builds a path: a cost on every refresh otherwise).
        let announcing = state.announcer.is_some();
        for (key, instance) in state
            .instances
            .iter_mut()
            .filter(|(_, i)| !i.token.is_expired(now))
        {
            for (index, to) in self.sinks.iter().enumerate() {
                if instance.delivered[index] {
                    continue;
                }
                let started = tokio::time::Instant::now();
                let claimed = to
                    .place_of(key)
                    .map(|place| context.places.claim(&place, &self.owner(index)));
                let result = match claimed {
                    Some(Err(taken)) => Err(taken.into()),
                    _ => {
                        let _busy = report.busy("sink write", SINK_WRITE_LIMIT);
                        to.sink.write(&instance.token, key).await
                    }
                };
                instance.delivered[index] = result.is_ok();
                failed |= result.is_err();
                report.emit(SinkWrite {
                    index,
                    label: &to.label,
                    instance: key,
                    took: started.elapsed(),
                    result: &result,
                });
            }
            // In place in every sink: now, and only now, the app may hear of it.
            if instance.announce != Announce::Done && instance.delivered.iter().all(|d| *d) {
                if announcing {
                    news.add(key, instance, &self.sinks);
                }
                instance.announce = Announce::Done;
            }
        }
        if let (Some(announcer), Some(change)) = (&state.announcer, news.change) {
            announcer.announce(change);
        }
        let mut still = Vec::new();
        for (key, index) in std::mem::take(&mut state.removals) {
            let to = &self.sinks[index];
            let result = to.sink.remove(&key).await;
            report.emit(InstanceRemoval {
                label: &to.label,
                instance: &key,
                result: &result,
            });
            if let (Ok(()), Some(place)) = (&result, to.place_of(&key)) {
                context.places.release(&place, &self.owner(index));
            }
            if result.is_err() {
                failed = true;
                still.push((key, index));
            }
        }
        state.removals = still;
        if failed {
            state.next_sink_retry = now + state.sink_backoff.next_delay(fastrand::f64());
        } else {
            state.sink_backoff.reset();
        }
    }

    /// A reload removed the sinks at `indexes` (or the whole source): each removes what it
    /// wrote for the instances the loop knew, by its own rules, and gives its places up. A
    /// single-token source that never got a token still retires its one instance (a file an
    /// earlier run left).
    pub(super) async fn retire(&self, context: &LoopContext, state: &LoopState, indexes: &[usize]) {
        let report = self.reporter(context);
        let mut instances: Vec<InstanceId> = state.instances.keys().cloned().collect();
        let per_tenant = |s: &LoopSink| matches!(s.place, SinkPlace::PerTenant(_));
        if instances.is_empty() && !self.sinks.iter().any(per_tenant) {
            instances.push(InstanceId::single());
        }
        for &index in indexes {
            let Some(to) = self.sinks.get(index) else {
                continue;
            };
            let result = to.sink.retire(&instances).await;
            report.emit(SinkRetired {
                label: &to.label,
                instances: instances.len(),
                result: &result,
            });
            for instance in &instances {
                if let Some(place) = to.place_of(instance) {
                    context.places.release(&place, &self.owner(index));
                }
            }
        }
    }

    /// Sink `index` of this source, as a place owner.
    pub(super) fn owner(&self, index: usize) -> Owner {
        Owner {
            source: self.name.clone(),
            sink: index,
        }
    }

    /// Publishes where the source stands: valid or not, until when, next fetch.
    pub(super) fn publish(&self, context: &LoopContext, state: &LoopState, now: SystemTime) {
        self.reporter(context).emit(Published {
            valid: state.valid(now),
            expires_at: state.earliest_expiry(),
            next_refresh: state.next_fetch,
        });
    }
}

/// The token changes of one delivery round, as one notification: a batch of tenants is one.
#[derive(Default)]
struct News {
    change: Option<Change>,
}

impl News {
    fn add(&mut self, key: &InstanceId, instance: &Instance, sinks: &[LoopSink]) {
        let adopted = instance.announce == Announce::Adopted;
        let expires_at = instance.token.expires_at;
        self.change = Some(match self.change.take() {
            None => Change {
                expires_at,
                file: sinks.iter().find_map(|s| s.sink.file_of(key)),
                adopted,
            },
            // Several instances: no one file; reused only if all were.
            Some(c) => Change {
                expires_at: c.expires_at.min(expires_at),
                file: None,
                adopted: c.adopted && adopted,
            },
        });
    }
}
