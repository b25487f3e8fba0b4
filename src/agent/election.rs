//! Leader election for the agent: the task that keeps trying for the Lease and publishes
//! leadership, and the gate a source loop waits at while another replica holds it.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info};

use super::report::{Resumed, StandingBy};
use super::source_loop::{SourceLoop, Stop};
use super::{LOG_TARGET, LoopContext};
use crate::k8s::KubeContext;
use crate::leader::{self, Elector, LeaderElectionConfig};

/// Runs leader election until `shutdown`, publishing leadership to the source loops and the
/// `token_agent_leader` metric. Without a Kubernetes client it keeps trying, as a follower.
pub(super) async fn elect(
    config: LeaderElectionConfig,
    kube: KubeContext,
    context: Arc<LoopContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let view = context.observability.clone();
    let identity = leader::identity();
    let elector = loop {
        match Elector::new(&config, &kube, identity.clone(), view.clock.clone()).await {
            Ok(e) => break e,
            Err(e) => {
                error!(target: LOG_TARGET, error = %e, "leader election cannot start; standing by");
                tokio::select! {
                    _ = tokio::time::sleep(config.renew_every) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    };
    info!(target: LOG_TARGET, identity = %elector.identity(), lease = %config.lease, "leader election started");
    let (tx, mut rx) = (context.leader.clone(), context.leader.subscribe());
    let mirrored = view.clone();
    let mirror = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            mirrored.metrics.set_leader(*rx.borrow());
        }
    });
    elector.run(config.renew_every, tx, shutdown).await;
    view.metrics.set_leader(false);
    mirror.abort();
}

impl SourceLoop {
    /// Waits while another replica holds the Lease. False when shut down meanwhile.
    pub(super) async fn wait_for_leadership(
        &self,
        context: &LoopContext,
        leader: &mut watch::Receiver<bool>,
        stop: &mut watch::Receiver<Stop>,
    ) -> bool {
        let report = self.reporter(context);
        report.emit(StandingBy);
        tokio::select! {
            _ = leader.wait_for(|l| *l) => {}
            _ = stop.wait_for(Stop::is_set) => return false,
        }
        report.emit(Resumed);
        true
    }
}
