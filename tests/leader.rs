//! Leader election against the Kubernetes API stand-in: one holder at a time, take-over after
//! the Lease expires (on the candidate's own clock, whatever the skew), a released Lease handed
//! over at once, a holder whose API calls hang stepping down before its Lease expires; then two
//! agent binaries where exactly one writes the Secret and the portal entry, and the other takes
//! over when the first is killed.

mod common;

use common::process::AgentProcess;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::kube_api::KubeApi;
use token_agent::clock::Clock;
use token_agent::k8s::KubeContext;
use token_agent::leader::{Elector, LeaderElectionConfig};

const BIN: &str = env!("CARGO_BIN_EXE_token-agent");

async fn elector(api: &KubeApi, dir: &std::path::Path, name: &str, duration: Duration) -> Elector {
    elector_with(api, dir, name, duration, Clock::system()).await
}

async fn elector_with(
    api: &KubeApi,
    dir: &std::path::Path,
    name: &str,
    duration: Duration,
    clock: Clock,
) -> Elector {
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
        renew_deadline: None,
    };
    Elector::new(&lease, &kube, name.into(), clock)
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
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b sees the renewal"
    );

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
    let duration = Duration::from_secs(1);
    let mut candidates = Vec::new();
    for i in 0..5 {
        candidates.push(elector(&api, dir.path(), &format!("c{i}"), duration).await);
    }
    let puts_so_far = || {
        let store = api.store.lock().unwrap();
        store.log.iter().filter(|(m, _, _)| m == "PUT").count()
    };
    let holder = || {
        let lease = api.get("Lease", "team-a", "agents");
        lease.map(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
    };
    for round in 0..4 {
        // The others see the record, then it goes unrenewed for a lease duration (the holder
        // stays silent: a renewal would change what they watch). In the contest every one of
        // them finds it expired and writes with the same resourceVersion.
        let before = holder();
        for c in candidates
            .iter()
            .filter(|c| before.as_deref() != Some(c.identity()))
        {
            let _ = c.try_acquire_or_renew().await.unwrap();
        }
        tokio::time::sleep(duration + Duration::from_millis(100)).await;
        let silent = holder();
        let contenders: Vec<&Elector> = candidates
            .iter()
            .filter(|c| silent.as_deref() != Some(c.identity()))
            .collect();
        let puts = puts_so_far();
        let results =
            futures_util::future::join_all(contenders.iter().map(|c| c.try_acquire_or_renew()))
                .await;
        let winners: Vec<&str> = results
            .iter()
            .zip(&contenders)
            .filter(|(r, _)| *r.as_ref().unwrap())
            .map(|(_, c)| c.identity())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(
            puts_so_far() - puts,
            contenders.len(),
            "round {round}: every contender wrote, and all but one got 409"
        );
        assert_eq!(holder().as_deref(), Some(winners[0]));
    }
}

#[tokio::test]
async fn a_candidate_with_a_skewed_clock_neither_steals_a_live_lease_nor_waits_on_a_dead_one() {
    let api = KubeApi::start(&["team-a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let duration = Duration::from_secs(1);
    let hour = Duration::from_secs(3600);
    let holder = elector(&api, dir.path(), "holder", duration).await;
    let ahead = elector_with(
        &api,
        dir.path(),
        "ahead",
        duration,
        Clock::manual(SystemTime::now() + hour),
    )
    .await;
    let behind = elector_with(
        &api,
        dir.path(),
        "behind",
        duration,
        Clock::manual(SystemTime::now() - hour),
    )
    .await;
    assert!(holder.try_acquire_or_renew().await.unwrap());
    // The holder renews every 250 ms for 2 s (two lease durations): its renewTime is an hour
    // in the past for one candidate, and an hour in the future for the other.
    for _ in 0..8 {
        assert!(
            !ahead.try_acquire_or_renew().await.unwrap(),
            "a clock an hour ahead stole a live lease"
        );
        assert!(!behind.try_acquire_or_renew().await.unwrap());
        assert!(
            holder.try_acquire_or_renew().await.unwrap(),
            "the holder keeps it"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The holder dies. The clock an hour behind sees a renewTime an hour in its future, yet
    // takes over once the record has not changed for a lease duration of its own time.
    assert!(!behind.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(duration + Duration::from_millis(200)).await;
    assert!(
        behind.try_acquire_or_renew().await.unwrap(),
        "a clock an hour behind waited on a dead lease"
    );
}

#[tokio::test]
async fn a_leader_whose_api_calls_hang_steps_down_before_its_lease_expires() {
    let api = KubeApi::start(&["team-a"]).await;
    let dir = tempfile::tempdir().unwrap();
    // A renew deadline of 4 s (2/3 of the lease): 2 s of margin before the lease could expire,
    // for a loaded machine. The loop ticks every 200 ms.
    let duration = Duration::from_secs(6);
    let a = elector(&api, dir.path(), "a", duration).await;
    let (leader, mut leading) = tokio::sync::watch::channel(false);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(a.run(Duration::from_millis(200), leader, shutdown));
    tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l))
        .await
        .expect("a leads")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // a renewal or two
    let renewed =
        api.get("Lease", "team-a", "agents").unwrap()["metadata"]["resourceVersion"].clone();
    api.hang_leases.store(true, Ordering::SeqCst);
    let hung_at = Instant::now();
    // The renewal whose write succeeded last started before `hung_at`; any other replica
    // waits `duration` from when it saw that write. Stepping down must come before.
    tokio::time::timeout(duration, leading.wait_for(|l| !*l))
        .await
        .expect("still leading after the lease duration while its API calls hang")
        .unwrap();
    let stepped_down = hung_at.elapsed();
    assert!(stepped_down < duration, "{stepped_down:?}");
    assert_eq!(
        api.get("Lease", "team-a", "agents").unwrap()["metadata"]["resourceVersion"],
        renewed,
        "no renewal got through while hung"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_an_api_portal_sink_create_one_portal_entry() {
    let Replicas {
        api: _,
        issuer,
        dir,
        kubeconfig,
    } = Replicas::start().await;
    let portal = common::api_portal::Portal::default();
    let mock = portal.start().await;
    std::fs::write(dir.path().join("portal-password"), "appr0ver-pw").unwrap();
    let configs = [0, 1].map(|replica| {
        // Each replica has its own pod: its own token and state directories.
        let path = dir.path().join(format!("config-{replica}.yaml"));
        std::fs::write(
            &path,
            format!(
                "leader_election: {{ lease: agents, duration: 2s, renew_every: 500ms }}\nstate_dir: '{}'\ndefaults: {{ file: {{ dir: '{}' }} }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: {{ file: '{}' }}\n    sinks:\n      - file: {{ path: orders.token }}\n      - api_portal: {{ url: 'http://{}', username: approver, password: {{ file: '{}' }}, user: u-1, properties: [ {{ key: applicationName, value: App }}, {{ key: Access Token Type, value: API Key }}, {{ key: x-Api-Key, value: '{{{{ token }}}}' }} ] }}\n",
                dir.path().join(format!("state-{replica}")).display(),
                dir.path().join(format!("tokens-{replica}")).display(),
                issuer.token_url(),
                dir.path().join("secret").display(),
                mock.addr,
                dir.path().join("portal-password").display()
            ),
        )
        .unwrap();
        path
    });
    let mut agents = [
        spawn(&configs[0], &kubeconfig, "agent-0"),
        spawn(&configs[1], &kubeconfig, "agent-1"),
    ];
    let bases = [agents[0].base_url().await, agents[1].base_url().await];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = [
            leader_metric(&bases[0]).await,
            leader_metric(&bases[1]).await,
        ];
        if matches!(states, [Some(a), Some(b)] if a ^ b)
            && !portal.entries.lock().unwrap().is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no portal entry: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both replicas have been running for a while: a follower that wrote would have by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        portal.entries.lock().unwrap().len(),
        1,
        "one entry, from the leader"
    );
    assert_eq!(issuer.issued(), 1, "only the leader fetched");
    drop(agents);
}

/// What two agent replicas share: the API stand-in, an issuer (client `c`, secret `s` in the
/// file `secret`) and a directory with the kubeconfig.
struct Replicas {
    api: KubeApi,
    issuer: token_agent::dev::issuer::Issuer,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Replicas {
    async fn start() -> Replicas {
        token_agent::install_crypto_provider();
        let api = KubeApi::start(&["team-a"]).await;
        let issuer = token_agent::dev::issuer::Issuer::start("c", "s", Duration::from_secs(600))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path(), "team-a");
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        Replicas {
            api,
            issuer,
            dir,
            kubeconfig,
        }
    }
}

fn spawn(config: &std::path::Path, kubeconfig: &std::path::Path, name: &str) -> AgentProcess {
    AgentProcess::start(
        Command::new(BIN)
            .args([
                "run",
                "--leader-elect",
                "--config",
                config.to_str().unwrap(),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name),
    )
}

async fn leader_metric(base: &str) -> Option<bool> {
    let body = reqwest::get(format!("{base}/metrics"))
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
    let Replicas {
        api,
        issuer,
        dir,
        kubeconfig,
    } = Replicas::start().await;
    let configs = [0, 1].map(|replica| {
        let path = dir.path().join(format!("config-{replica}.yaml"));
        std::fs::write(
            &path,
            format!(
                "leader_election: {{ lease: agents, duration: 2s, renew_every: 500ms }}\nserver: {{ listen: '127.0.0.1:0' }}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    client_secret: {{ file: '{}' }}\n    sinks: [ {{ secret: {{ name: orders-token }} }} ]\n",
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
    let bases = [agents[0].base_url().await, agents[1].base_url().await];

    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let states = [
            leader_metric(&bases[0]).await,
            leader_metric(&bases[1]).await,
        ];
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
    let ready = reqwest::get(format!("{}/readyz", bases[1 - leader]))
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_metric(&bases[follower]).await != Some(true) {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed_at.elapsed();
    // The lease (2 s) plus a renewal (0.5 s) on an idle machine; the bound leaves room for a
    // loaded one and still fails a follower that waits for anything but the lease.
    assert!(
        took < Duration::from_secs(12),
        "take-over within a few lease durations ({took:?})"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while issuer.issued() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new leader fetched and wrote"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let [first, second] = agents;
    let survivor = if follower == 0 { first } else { second };
    let (status, printed) = tokio::task::spawn_blocking(move || survivor.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{printed}");
    let lease = api.get("Lease", "team-a", "agents").unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "a clean stop releases the lease: {lease}"
    );
}
