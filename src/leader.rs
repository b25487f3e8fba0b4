//! Leader election over a `coordination.k8s.io/v1` Lease, client-go's algorithm: the holder
//! renews `renewTime` every `renew_every`; a candidate takes the Lease over once it has seen
//! the same Lease record for `leaseDurationSeconds` of its *own* monotonic time (never by
//! comparing the holder's `renewTime` with its wall clock: clocks of two nodes differ); every
//! write is an update carrying the `resourceVersion` it read, so two candidates can never both
//! win (the second gets 409). A holder whose renewals do not succeed within `renew_deadline`
//! (shorter than the lease duration) steps down, even while its API call still hangs, so it has
//! stopped writing before anyone else can take over.
//!
//! Hand-written (≈150 lines) rather than a crate: `kube-leader-election` pins kube 4 (a second
//! kube in the binary), and `kube-lease-manager` takes the Lease with server-side apply
//! field-ownership conflicts, which needs `patch` and behaves differently from client-go.
//! This needs only `get`, `create` and `update` on `leases`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::k8s::KubeContext;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Lease name.
    #[serde(default = "default_lease")]
    pub lease: String,
    /// Lease namespace (default: the agent's own).
    pub namespace: Option<String>,
    /// How long a Lease holds without renewal.
    #[serde(default = "default_duration", with = "crate::de::duration")]
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    #[serde(default = "default_renew", with = "crate::de::duration")]
    pub renew_every: Duration,
    /// How long the holder keeps leading without a successful renewal (default: two thirds
    /// of `duration`, client-go's 10 s of 15 s).
    #[serde(default, with = "crate::de::duration")]
    pub renew_deadline: Option<Duration>,
}

fn default_lease() -> String {
    "token-agent".into()
}
fn default_duration() -> Duration {
    Duration::from_secs(15)
}
fn default_renew() -> Duration {
    Duration::from_secs(5)
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: false,
            lease: default_lease(),
            namespace: None,
            duration: default_duration(),
            renew_every: default_renew(),
            renew_deadline: None,
        }
    }
}

impl LeaderElectionConfig {
    /// `renew_deadline`, or its default: two thirds of `duration`, or halfway between
    /// `renew_every` and `duration` when that is not longer than `renew_every`.
    pub fn deadline(&self) -> Duration {
        self.renew_deadline.unwrap_or_else(|| {
            let two_thirds = self.duration * 2 / 3;
            if two_thirds > self.renew_every {
                two_thirds
            } else {
                (self.renew_every + self.duration) / 2
            }
        })
    }

    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.renew_every.is_zero() || self.renew_every >= self.duration {
            problems.push((
                "renew_every".into(),
                "must be greater than zero and shorter than `duration`".into(),
            ));
        }
        if self.deadline() <= self.renew_every || self.deadline() >= self.duration {
            problems.push((
                "renew_deadline".into(),
                format!(
                    "{:?} must be longer than `renew_every` and shorter than `duration`",
                    self.deadline()
                ),
            ));
        }
        if self.duration < Duration::from_secs(1) {
            problems.push(("duration".into(), "must be at least 1s".into()));
        }
        problems
    }
}

/// This replica's name in the Lease: `POD_NAME` (downward API) or the host name, plus a
/// random suffix so a restarted process never mistakes an old holder for itself.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "token-agent".into());
    format!("{base}-{:08x}", fastrand::u32(..))
}

fn micro(t: SystemTime) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .ok()
        .map(MicroTime)
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    deadline: Duration,
    clock: Clock,
    /// The Lease record as last seen, and when (monotonic): expiry counts from there.
    observed: Mutex<Option<(LeaseSpec, Instant)>>,
}

impl Elector {
    pub async fn new(
        config: &LeaderElectionConfig,
        kube: &KubeContext,
        identity: String,
        clock: Clock,
    ) -> Result<Elector, String> {
        let client = kube.client().await.map_err(|e| e.to_string())?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(Elector {
            api: Api::namespaced(client, &namespace),
            name: config.lease.clone(),
            identity,
            duration: config.duration,
            deadline: config.deadline(),
            clock,
            observed: Mutex::new(None),
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn spec(&self, now: SystemTime, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: acquired.or_else(|| micro(now)),
            renew_time: micro(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire, renew or observe. `Ok(true)` while this replica holds the Lease.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = self.clock.now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(now, spec.acquire_time.clone(), transitions)
        } else {
            if !holder.is_empty() && !self.expired(&spec) {
                return Ok(false);
            }
            self.spec(now, None, transitions.saturating_add(1))
        };
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `spec`, held by another replica, has gone unchanged for its lease duration
    /// since this candidate first saw it (client-go's observed time).
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let since = match &*observed {
            Some((seen, at)) if seen == spec => *at,
            _ => {
                *observed = Some((spec.clone(), now));
                now
            }
        };
        let seconds = spec.lease_duration_seconds.unwrap_or(0).max(0);
        now.duration_since(since) >= Duration::from_secs(seconds.unsigned_abs().into())
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let mine = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if mine {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.lease_duration_seconds = Some(1);
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }

    /// Runs rounds every `renew_every` and publishes leadership until `shutdown`. A holder
    /// whose renewals fail or hang for `renew_deadline` steps down: the round is cut off at
    /// that point, so a hung API call cannot keep it leading.
    pub async fn run(
        self,
        renew_every: Duration,
        leader: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // When the last successful round started: its renewTime is no earlier than that.
        let mut last_renewal: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let budget = last_renewal.map_or(self.deadline, |t| {
                (t + self.deadline).saturating_duration_since(started)
            });
            let still_leading =
                |last: Option<Instant>| last.is_some_and(|t| t.elapsed() < self.deadline);
            let leading = match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    last_renewal = Some(started);
                    true
                }
                Ok(Ok(false)) => false,
                Ok(Err(e)) => {
                    warn!(lease = %self.name, error = %e, "leader election round failed");
                    still_leading(last_renewal)
                }
                Err(_) => {
                    warn!(lease = %self.name, deadline = ?self.deadline, "leader election round hung past the renew deadline");
                    still_leading(last_renewal)
                }
            };
            if leading != *leader.borrow() {
                info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                let _ = leader.send(leading);
            }
            if !leading {
                last_renewal = None;
            }
            // A leader wakes no later than its deadline: the round then has no budget left and
            // steps down at once, rather than leading on through a whole `renew_every`.
            let wake = last_renewal.map_or(renew_every, |t| {
                renew_every.min((t + self.deadline).saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                _ = tokio::time::sleep(wake) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if *leader.borrow() {
            let _ = leader.send(false);
            self.release().await;
        }
    }
}
