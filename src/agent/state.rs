//! What one source loop knows between two wake-ups: the tokens it holds (per instance) and
//! where each has been delivered, what is still to be removed, and when to act next.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::instances::Instances;
use crate::config::{RefreshPolicy, RetryPolicy};
use crate::names::InstanceId;
use crate::notifier::Announcer;
use crate::schedule::{Backoff, refresh_delay};
use crate::token::Token;

/// One token of a source (the only one, or a tenant's) and where it has been delivered.
pub(super) struct Instance {
    pub token: Token,
    /// `delivered[i]`: sink `i` holds this token.
    pub delivered: Vec<bool>,
    pub refresh_at: SystemTime,
    /// The app is still to be told about this token, once every sink holds it.
    pub announce: Announce,
}

/// Whether a token is news to the app (`notify:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Announce {
    /// Told already, or nothing to tell.
    Done,
    /// Fetched by this run.
    New,
    /// Left by an earlier run and reused: only actions with `on_start: true` hear of it.
    Adopted,
}

pub(super) struct LoopState {
    pub instances: Instances<Instance>,
    /// A fetch has listed the instances (until then an empty set means "unknown").
    pub listed: bool,
    /// Outputs of instances that went away, still to be removed: (instance, sink index).
    pub removals: Vec<(InstanceId, usize)>,
    pub next_fetch: SystemTime,
    pub next_sink_retry: SystemTime,
    pub fetch_backoff: Backoff,
    pub sink_backoff: Backoff,
    /// Where changes go to be told to the app, when the source has notify actions (`run` only).
    pub announcer: Option<Announcer>,
    /// How many sinks the source has (each instance tracks delivery to each).
    sinks: usize,
}

impl LoopState {
    /// A fresh state, holding `adopted` (a token an earlier run left) if there is one.
    pub fn new(
        sinks: usize,
        refresh: &RefreshPolicy,
        retry: RetryPolicy,
        adopted: Option<Token>,
        now: SystemTime,
    ) -> Self {
        let mut state = LoopState {
            instances: Instances::default(),
            listed: false,
            removals: Vec::new(),
            next_fetch: now,
            next_sink_retry: now,
            fetch_backoff: Backoff::new(retry),
            sink_backoff: Backoff::new(retry),
            announcer: None,
            sinks,
        };
        if let Some(token) = adopted {
            state.next_fetch = now + refresh_delay(refresh, &token, now, fastrand::f64());
            state.insert(InstanceId::single(), token, state.next_fetch);
            for instance in state.instances.values_mut() {
                instance.announce = Announce::Adopted;
            }
            state.listed = true;
        }
        state
    }

    pub fn insert(&mut self, key: InstanceId, token: Token, refresh_at: SystemTime) {
        // An issuer that hands out the same token again (same value and expiry) changes
        // nothing the sinks hold: keep what was delivered instead of rewriting it.
        if let Some(held) = self.instances.get_mut(key.as_str())
            && held.token.same_value(&token)
            && held.token.expires_at == token.expires_at
            && held.token.token_type == token.token_type
            && held.token.metadata == token.metadata
        {
            held.refresh_at = refresh_at;
            return;
        }
        let delivered = vec![false; self.sinks];
        self.instances.insert(
            key,
            Instance {
                token,
                delivered,
                refresh_at,
                announce: Announce::New,
            },
        );
    }

    /// Instances whose token is not due before the next `min_interval`.
    pub fn not_due(&self, now: SystemTime, policy: &RefreshPolicy) -> BTreeSet<InstanceId> {
        self.instances
            .iter()
            .filter(|(_, i)| i.refresh_at > now + policy.min_interval)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn earliest_expiry(&self) -> Option<SystemTime> {
        self.instances.values().map(|i| i.token.expires_at).min()
    }

    /// Some sink still lacks a valid token, or a removal is pending.
    pub fn pending_sinks(&self, now: SystemTime) -> bool {
        !self.removals.is_empty()
            || self
                .instances
                .values()
                .any(|i| !i.token.is_expired(now) && i.delivered.iter().any(|d| !d))
    }

    /// Every instance has an unexpired token in every sink.
    pub fn valid(&self, now: SystemTime) -> bool {
        self.listed
            && self.removals.is_empty()
            && self
                .instances
                .values()
                .all(|i| !i.token.is_expired(now) && i.delivered.iter().all(|d| *d))
    }
}
