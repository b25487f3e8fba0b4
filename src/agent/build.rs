//! Building the loop of one source from its configuration: the runnable source, its sinks and
//! the places they write, its series and status. Used at start and by every reload.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::Notify;

use super::source_loop::{LoopSink, SinkPlace, SourceLoop};
use super::{AgentBuildError, FETCH_GRACE};
use crate::config::{Config, SourceConfig};
use crate::http::HttpClients;
use crate::k8s::KubeContext;
use crate::notifier::Notifier;
use crate::observability::Observability;
use crate::sink::{SinkContext, TENANT, place};
use crate::source::{BuildContext, Source};
use crate::status::SourceEntry;

/// What every loop is built with; settings that only change at a restart (`state_dir`, leader
/// election) come from the configuration the agent started with.
pub(super) struct Builder<'a> {
    pub view: &'a Observability,
    pub clients: &'a HttpClients,
    pub kube: &'a KubeContext,
    pub state_dir: &'a Path,
    pub election: bool,
}

impl Builder<'_> {
    /// The loop of `s`, a source of `config`. `adopt`: whether it may reuse a token an earlier
    /// run left in its sinks (at start; a source a reload added or changed fetches anew).
    /// Registers nothing: see [`Builder::register`].
    pub fn source_loop(
        &self,
        config: &Config,
        s: &SourceConfig,
        adopt: bool,
    ) -> Result<SourceLoop, AgentBuildError> {
        let failed = |error| AgentBuildError {
            source_name: s.name.clone(),
            error,
        };
        let http = s.http.resolve(&config.defaults.http);
        let kind = s.spec.kind();
        let source: Box<dyn Source> = kind
            .build(&BuildContext {
                http: &http,
                clients: self.clients,
                kube: self.kube,
            })
            .map_err(failed)?;
        let ctx = SinkContext {
            file: &config.defaults.file,
            kube: self.kube,
            state_dir: self.state_dir,
            http: &http,
            clients: self.clients,
        };
        let mut sinks = Vec::with_capacity(s.sinks.len());
        for entry in &s.sinks {
            let sink = entry.kind().build(&s.name, &ctx).map_err(failed)?;
            let target = entry.kind().target(&config.defaults.file.dir);
            let place = match target.map(|(_, target)| place(&target)) {
                Some(place) if place.contains(TENANT) => SinkPlace::PerTenant(place.into()),
                Some(place) => SinkPlace::Named(place.into()),
                None => SinkPlace::None,
            };
            let label = sink.label();
            sinks.push(LoopSink { sink, label, place });
        }
        let notifier = match s.notify.is_empty() {
            true => None,
            false => {
                let client = Notifier::needs_http(&s.notify)
                    .then(|| self.clients.get(&http))
                    .transpose()
                    .map_err(|e| failed(e.into()))?;
                Some(Arc::new(Notifier::new(s.notify.clone(), client)))
            }
        };
        let labels: Vec<String> = sinks.iter().map(|s| s.label.clone()).collect();
        Ok(SourceLoop {
            name: s.name.clone(),
            metrics: self
                .view
                .metrics
                .series_for(&s.name, s.spec.name(), &labels),
            status: SourceEntry::new(&s.name, s.required),
            source,
            sinks,
            refresh: s.refresh.resolve(&config.defaults.refresh),
            retry: s.retry.resolve(&config.defaults.retry),
            fetch_limit: kind.fetch_bound(http.timeout) + FETCH_GRACE,
            remove_gone: kind.removes_gone_instances(),
            needs_leader: self.election && s.sinks.iter().any(|k| k.kind().needs_leader()),
            adopt,
            print: s.print.clone(),
            on_remove: s.on_remove,
            credentials_changed: Notify::new(),
            notifier,
        })
    }

    /// Makes `source` visible: its series in `/metrics` (replacing those of an earlier version
    /// of the source) and, unless it is a new version of a running source whose status stands
    /// until the new loop reports, its line in `/readyz`.
    pub fn register(&self, source: &Arc<SourceLoop>, replaces: bool) {
        self.view.metrics.publish_series(source.metrics.clone());
        if replaces {
            self.view.status.replace(&source.status);
        } else {
            self.view.status.register(&source.status);
        }
    }
}
