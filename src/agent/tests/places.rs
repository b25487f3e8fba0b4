//! The run-time guard of `places.rs`: a tenant id never makes one sink overwrite another's.

use std::time::SystemTime;

use super::scripted::Scripted;
use super::{SEC, config, read, start};
use crate::agent::Agent;
use crate::clock::Clock;
use crate::kind::BoxFuture;
use crate::names::InstanceId;
use crate::source::{Fetch, FetchContext, FetchError, InstanceOutcome, Source};
use crate::token::Token;

/// A source listing fixed tenants, each with a token naming it.
struct Tenants(&'static [&'static str]);

impl Source for Tenants {
    fn fetch<'a>(&'a self, ctx: &'a FetchContext<'a>) -> BoxFuture<'a, Result<Fetch, FetchError>> {
        Box::pin(async move {
            let now = (ctx.now)();
            let instances = self.0.iter().map(|t| {
                let token = Token::new(
                    format!("tenant-{t}").into(),
                    "Bearer".into(),
                    now,
                    now + 600 * SEC,
                );
                let id = InstanceId::tenant(t).unwrap();
                (id, InstanceOutcome::Fetched(token))
            });
            Ok(Fetch {
                instances: instances.collect(),
                refused: Vec::new(),
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_tenant_id_never_overwrites_another_sinks_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), &["orders", "tenants"]);
    // What `validate` refuses (a tenant named `orders` writes orders.token), built directly
    // to reach the run-time guard behind it.
    if let crate::sink::SinkConfig::File(file) = &mut config.sources[1].sinks[0] {
        file.path = "{tenant}.token".into();
    }
    let clock = Clock::manual(SystemTime::now());
    let mut agent = Agent::build(&config, clock).unwrap();
    // The owner of orders.token writes after the tenant would have: only the registry of
    // places (not the file's metadata, which would name the tenant source by then) keeps it.
    agent.loops[0].source = Box::new(Scripted::new([(2 * SEC, Ok(600 * SEC))]));
    agent.loops[1].source = Box::new(Tenants(&["orders", "other"]));
    let view = agent.observability();
    let (stop, task) = start(agent);
    tokio::time::sleep(5 * SEC).await;
    assert_eq!(
        read(dir.path(), "orders.token"),
        "token-1",
        "not overwritten"
    );
    assert_eq!(read(dir.path(), "other.token"), "tenant-other");
    let metrics = view.metrics.encode();
    assert!(
        metrics.contains("reason=\"conflict\",sink=\"file:")
            && metrics.contains("source=\"tenants\"} "),
        "{metrics}"
    );
    let status = view.status.snapshot(view.clock.now());
    let tenants = status.iter().find(|s| s.name == "tenants").unwrap();
    assert!(!tenants.ready, "a tenant without its file is not ready");
    stop.send(true).unwrap();
    task.await.unwrap();
}
