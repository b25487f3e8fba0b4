//! Leader election against the Kubernetes API stand-in: one holder at a time, take-over after
//! the Lease expires, a released Lease handed over at once; then two agent binaries where
//! exactly one writes the Secret and the other takes over when the first is killed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kube_api::KubeApi;
use token_agent::clock::Clock;
use token_agent::k8s::KubeContext;
use token_agent::leader::{Elector, LeaderElectionConfig};

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

async fn elector(api: &KubeApi, dir: &std::path::Path, name: &str, duration: Duration) -> Elector {
    let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig(dir, "team-a")).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    token_agent::install_crypto_provider();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    let kube = KubeContext::with_client(kube::Client::try_from(config).unwrap());
    let lease = LeaderElectionConfig {
        enabled: true,
        lease: "agents".into(),
        namespace: None,
        duration,
        renew_every: duration / 4,
    };
    Elector::new(&lease, &kube, name.into(), Clock::system())
        .await
        .unwrap()
}

#[tokio::test]
async fn one_holder_takeover_after_expiry_and_release() {
    let api = KubeApi::start(&["team-a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = elector(&api, dir.path(), "a", Duration::from_secs(2)).await;
    let b = elector(&api, dir.path(), "b", Duration::from_secs(2)).await;
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the lease"
    );
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b sees it held");
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    let lease = api.get("Lease", "team-a", "agents").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);

    tokio::time::sleep(Duration::from_millis(2200)).await; // a stops renewing
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "b takes over an expired lease"
    );
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "a is no longer the holder"
    );
    let lease = api.get("Lease", "team-a", "agents").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    b.release().await;
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a released lease is taken at once"
    );
}

#[tokio::test]
async fn concurrent_candidates_never_both_win() {
    let api = KubeApi::start(&["team-a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut candidates = Vec::new();
    for i in 0..5 {
        candidates.push(elector(&api, dir.path(), &format!("c{i}"), Duration::from_secs(30)).await);
    }
    for round in 0..20 {
        let results =
            futures_util::future::join_all(candidates.iter().map(|c| c.try_acquire_or_renew()))
                .await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| *r.as_ref().unwrap())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let holder =
            api.get("Lease", "team-a", "agents").unwrap()["spec"]["holderIdentity"].clone();
        assert_eq!(holder, format!("c{}", winners[0]));
    }
}

fn spawn(config: &std::path::Path, kubeconfig: &std::path::Path, name: &str) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--leader-elect",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", name)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn leader_metric(port: u16) -> Option<bool> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with("token_agent_leader "))
        .map(|l| l.ends_with(" 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_one_writer_and_failover() {
    token_agent::install_crypto_provider();
    let api = KubeApi::start(&["team-a"]).await;
    let issuer = token_agent::dev::issuer::Issuer::start("c", "s", Duration::from_secs(600))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), "team-a");
    std::fs::write(dir.path().join("secret"), "s").unwrap();
    let ports = [0, 1].map(|_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let configs = ports.map(|port| {
        let path = dir.path().join(format!("config-{port}.yaml"));
        std::fs::write(
            &path,
            format!(
                "leader_election: {{ lease: agents, duration: 2s, renew_every: 500ms }}\nserver: {{ listen: '127.0.0.1:{port}' }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: {{ file: '{}' }}\n    sinks: [ {{ secret: {{ name: orders-token }} }} ]\n",
                issuer.token_url(),
                dir.path().join("secret").display()
            ),
        )
        .unwrap();
        path
    });
    let mut agents = [
        spawn(&configs[0], &kubeconfig, "agent-0"),
        spawn(&configs[1], &kubeconfig, "agent-1"),
    ];

    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let states = [leader_metric(ports[0]).await, leader_metric(ports[1]).await];
        if let [Some(a), Some(b)] = states {
            if a ^ b && api.get("Secret", "team-a", "orders-token").is_some() {
                break if a { 0 } else { 1 };
            }
            assert!(!(a && b), "two leaders at once");
        }
        assert!(
            Instant::now() < deadline,
            "no single leader emerged: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(issuer.issued(), 1, "only the leader fetched");
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", ports[1 - leader]))
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "a standing-by replica is ready"
    );
    assert!(ready.text().await.unwrap().contains("\"standby\":true"));

    agents[leader].kill().unwrap(); // SIGKILL: no release, the lease must expire
    agents[leader].wait().unwrap();
    let follower = 1 - leader;
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    while leader_metric(ports[follower]).await != Some(true) {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "take-over within the lease duration plus a renewal ({took:?})"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while issuer.issued() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new leader fetched and wrote"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &agents[follower].id().to_string()])
        .status()
        .unwrap();
    assert_eq!(agents[follower].wait().unwrap().code(), Some(0));
    let lease = api.get("Lease", "team-a", "agents").unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "a clean stop releases the lease: {lease}"
    );
}
