//! Leader election over a `coordination.k8s.io/v1` Lease, client-go's algorithm: the holder
//! renews `renewTime` every `renew_every`; a candidate takes the Lease over once
//! `renewTime + leaseDurationSeconds` has passed; every write is an update carrying the
//! `resourceVersion` it read, so two candidates can never both win (the second gets 409).
//!
//! Hand-written (≈150 lines) rather than a crate: `kube-leader-election` pins kube 4 (a second
//! kube in the binary), and `kube-lease-manager` takes the Lease with server-side apply
//! field-ownership conflicts, which needs `patch` and behaves differently from client-go.
//! This needs only `get`, `create` and `update` on `leases`.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use tokio::sync::watch;
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
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    #[serde(default = "default_renew", with = "humantime_serde")]
    pub renew_every: Duration,
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
        }
    }
}

impl LeaderElectionConfig {
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.renew_every.is_zero() || self.renew_every >= self.duration {
            problems.push((
                "renew_every".into(),
                "must be greater than zero and shorter than `duration`".into(),
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

fn system(t: &MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    clock: Clock,
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
            clock,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn spec(&self, now: SystemTime, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
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
            let held_for =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|r| system(r) + held_for <= now);
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            self.spec(now, None, transitions + 1)
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
    /// that cannot renew for `duration` steps down on its own.
    pub async fn run(
        self,
        renew_every: Duration,
        leader: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last_renewal: Option<SystemTime> = None;
        loop {
            let now = self.clock.now();
            let leading = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Some(now);
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "leader election round failed");
                    last_renewal
                        .is_some_and(|t| now.duration_since(t).unwrap_or_default() < self.duration)
                }
            };
            if leading != *leader.borrow() {
                info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                let _ = leader.send(leading);
            }
            if !leading {
                last_renewal = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if *leader.borrow() {
            let _ = leader.send(false);
            self.release().await;
        }
    }
}
