//! `token-agent webhook`, the binary, end to end. The test plays the API server (it sends
//! AdmissionReviews over TLS, trusting only what the webhook published in its
//! MutatingWebhookConfiguration, and keeps objects in the stateful stand-in) and the kubelet
//! (it mounts the Secret the webhook wrote as a volume, and starts the injected agent container
//! from the patched pod spec with Docker, probing it as the spec says).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::docker::{Container, docker_ok, image};
use common::kube_api::KubeApi;
use common::kubelet::ProjectedVolume;
use common::pki::Pki;
use common::process::AgentProcess;
use common::{Mock, Reply};
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAMESPACE: &str = "token-agent";
const SERVICE: &str = "token-agent-injector";
const SERVER_NAME: &str = "token-agent-injector.token-agent.svc";

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

struct Webhook {
    process: AgentProcess,
    https: SocketAddr,
    metrics: SocketAddr,
}

/// Starts the webhook and reads the addresses it bound from its log.
async fn start_webhook(args: &[&str], env: &[(&str, &str)]) -> Webhook {
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-agent"));
    command
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--namespace", NAMESPACE])
        .args(args)
        .env_remove("KUBECONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let process = AgentProcess::start(&mut command);
    let line = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = process
                .printed()
                .lines()
                .find(|l| l.contains("webhook serving /mutate"))
            {
                break line.to_owned();
            }
            assert!(Instant::now() < deadline, "{}", process.printed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let field = |key: &str| -> SocketAddr {
        let (_, rest) = line.split_once(&format!("{key}=")).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    Webhook {
        https: field("https"),
        metrics: field("metrics"),
        process,
    }
}

/// One HTTP/1.1 exchange over TLS to `addr` as `SERVER_NAME`, trusting only `ca_pem`: the
/// certificate the server presented and the response body. `Err` when the handshake fails.
async fn exchange(
    addr: SocketAddr,
    ca_pem: &str,
    request: &str,
    body: &[u8],
) -> Result<(CertificateDer<'static>, u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let head = format!(
        "{request} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status: u16 = String::from_utf8_lossy(&response[9..12]).parse().unwrap();
    Ok((peer, status, response[split + 4..].to_vec()))
}

fn admission_review(pod: &Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&common::admission_review(pod, namespace, "CREATE")).unwrap()
}

/// The response's patch applied to `pod` (as the API server does).
fn patched(pod: &Value, review: &Value) -> Value {
    let response = &review["response"];
    assert_eq!(response["allowed"], true, "{review}");
    let patch: json_patch::Patch =
        serde_json::from_slice(&unb64(response["patch"].as_str().unwrap())).unwrap();
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn simple_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders",
            "labels": { "token-agent.io/inject": "true" },
            "annotations": { "token-agent.io/config-map": "orders-agent" },
        },
        "spec": { "containers": [{ "name": "app", "image": "orders:1" }] },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_swap_reloads_the_serving_certificate_and_a_broken_one_is_never_served() {
    token_agent::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (Pki::new(), Pki::new());
    let leaf = |pki: &Pki| pki.leaf(&[SERVER_NAME], ExtendedKeyUsagePurpose::ServerAuth);
    let one = leaf(&first);
    let mut volume = ProjectedVolume::new(
        &dir.path().join("tls"),
        &[("tls.crt", &one.cert_pem), ("tls.key", &one.key_pem)],
    );
    let hook = start_webhook(
        &[
            "--tls-dir",
            volume.dir.to_str().unwrap(),
            "--agent-image",
            "token-agent:test",
        ],
        &[],
    )
    .await;
    assert_eq!(get_text(hook.metrics, "/readyz").await.0, 200);
    let first_ca = first.ca.pem();
    let body = admission_review(&simple_pod(), "apps");
    let (_, status, answer) = exchange(hook.https, &first_ca, "POST /mutate", &body)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let pod = patched(&simple_pod(), &answer);
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        "token-agent:test"
    );

    // cert-manager renews with a new key: the kubelet swaps `..data`.
    let two = leaf(&second);
    volume.update(&[("tls.crt", &two.cert_pem), ("tls.key", &two.key_pem)]);
    let second_ca = second.ca.pem();
    let deadline = Instant::now() + Duration::from_secs(10);
    while exchange(hook.https, &second_ca, "GET /healthz", b"")
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{}", hook.process.printed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exchange(hook.https, &first_ca, "GET /healthz", b"")
            .await
            .is_err()
    );

    // A key that does not belong to the certificate: counted, logged, never served.
    let three = leaf(&first);
    volume.update(&[("tls.crt", &three.cert_pem), ("tls.key", &two.key_pem)]);
    hook.process
        .wait_until("the failed load", Duration::from_secs(10), || {
            hook.process
                .printed()
                .contains("the certificate in use stays")
        })
        .await;
    let (peer, status, _) = exchange(hook.https, &second_ca, "GET /healthz", b"")
        .await
        .unwrap();
    assert_eq!((peer, status), (two.der.clone(), 200));

    // Not an AdmissionReview: 400, and the API server applies its failurePolicy.
    let (_, status, text) = exchange(hook.https, &second_ca, "POST /mutate", b"{\"kind\":1}")
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));

    let metrics = common::scrape(&format!("http://{}", hook.metrics)).await;
    let series = |s: &str| common::series_value(&metrics, s);
    assert_eq!(
        series(r#"token_agent_webhook_admissions_total{namespace="apps",result="injected"}"#),
        1.0
    );
    assert_eq!(
        series(r#"token_agent_webhook_admissions_total{namespace="",result="invalid"}"#),
        1.0
    );
    assert_eq!(
        series("token_agent_webhook_admission_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        series(r#"token_agent_webhook_certificate_loads_total{result="success"}"#),
        2.0
    );
    assert!(series(r#"token_agent_webhook_certificate_loads_total{result="failure"}"#) >= 1.0);
    let expiry = series("token_agent_webhook_certificate_expiry_timestamp_seconds");
    assert!(expiry > common::unix_now() as f64, "{expiry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_the_webhook_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let hook = start_webhook(
        &[
            "--tls-dir",
            dir.path().to_str().unwrap(),
            "--agent-image",
            "token-agent:test",
        ],
        &[],
    )
    .await;
    assert_eq!(get_text(hook.metrics, "/healthz").await.0, 200);
    let (status, text) = get_text(hook.metrics, "/readyz").await;
    assert_eq!(status, 503, "{text}");
}

/// The chart's MutatingWebhookConfiguration, as installed (no caBundle yet).
fn webhook_configuration() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": SERVICE },
        "webhooks": [{
            "name": "inject.token-agent.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": { "service": { "name": SERVICE, "namespace": NAMESPACE, "path": "/mutate", "port": 443 } },
            "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"] }],
            "objectSelector": { "matchLabels": { "token-agent.io/inject": "true" } },
        }],
    })
}

fn secret_data(api: &KubeApi, key: &str) -> Option<String> {
    let secret = api.get("Secret", NAMESPACE, "injector-tls")?;
    Some(String::from_utf8(unb64(secret["data"][key].as_str()?)).unwrap())
}

fn published_ca(api: &KubeApi) -> Option<String> {
    let config = api.get("MutatingWebhookConfiguration", "", SERVICE)?;
    let bundle = config["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
    Some(String::from_utf8(unb64(bundle)).unwrap())
}

/// The pod of the end-to-end test: a non-root app whose token comes from `issuer`.
fn app_pod(issuer: SocketAddr, agent_port: u16) -> Value {
    let config = format!(
        "server:\n  listen: 0.0.0.0:{agent_port}\nsources:\n  - name: orders\n    kind: oauth2\n    token_url: http://{issuer}/token\n    client_id: orders\n    client_secret: {{ file: /var/run/secrets/token-agent/orders-client/client-secret }}\n    sinks:\n      - file: {{ path: orders.token }}\n"
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders-5f7c",
            "namespace": "apps",
            "labels": { "token-agent.io/inject": "true" },
            "annotations": {
                "token-agent.io/config": config,
                "token-agent.io/secrets": "orders-client",
            },
        },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000 },
            "containers": [{ "name": "app", "image": "orders:1" }],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_tls_publishes_its_ca_renews_its_certificate_and_the_injected_agent_gates_the_app()
 {
    token_agent::install_crypto_provider();
    let api = KubeApi::start(&[NAMESPACE, "apps"]).await;
    api.put(
        "MutatingWebhookConfiguration",
        "",
        SERVICE,
        webhook_configuration(),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), NAMESPACE);
    let agent_image = std::env::var("TOKEN_AGENT_IMAGE").unwrap_or("token-agent:test".into());
    let tls_dir = dir.path().join("tls");
    let hook = start_webhook(
        &[
            "--tls-dir",
            tls_dir.to_str().unwrap(),
            "--agent-image",
            &agent_image,
            "--self-managed-tls",
            "--tls-secret",
            "injector-tls",
            "--webhook-config",
            SERVICE,
            "--service",
            SERVICE,
            "--lease",
            "token-agent-injector",
            "--cert-validity",
            "6s",
            "--check-every",
            "300ms",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )
    .await;

    // The leader publishes the CA, stores the pair, and serves it at once.
    hook.process
        .wait_until(
            "the caBundle and the Secret",
            Duration::from_secs(20),
            || published_ca(&api).is_some() && secret_data(&api, "tls.crt").is_some(),
        )
        .await;
    let ca = published_ca(&api).unwrap();
    assert_eq!(secret_data(&api, "ca.crt").unwrap(), ca);
    let secret = api.get("Secret", NAMESPACE, "injector-tls").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let config = api
        .get("MutatingWebhookConfiguration", "", SERVICE)
        .unwrap();
    assert_eq!(
        config["webhooks"][0]["objectSelector"],
        webhook_configuration()["webhooks"][0]["objectSelector"],
        "fields besides caBundle kept"
    );
    assert_eq!(get_text(hook.metrics, "/readyz").await.0, 200);

    // The API server's side: an admission over TLS trusting only the published caBundle.
    let issued = common::fake_jwt(json!({ "sub": "orders", "exp": common::unix_now() + 600 }));
    let token = issued.clone();
    let issuer = Mock::start(move |_| {
        Reply::json(
            200,
            json!({ "access_token": token, "token_type": "Bearer", "expires_in": 600 }),
        )
    })
    .await;
    let agent_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pod = app_pod(issuer.addr, agent_port);
    let (served, status, answer) = exchange(
        hook.https,
        &ca,
        "POST /mutate",
        &admission_review(&pod, "apps"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let first_leaf =
        CertificateDer::from_pem_slice(secret_data(&api, "tls.crt").unwrap().as_bytes()).unwrap();
    assert_eq!(served, first_leaf);
    let pod = patched(&pod, &serde_json::from_slice(&answer).unwrap());

    // The kubelet's side, when a Docker engine and the image are here.
    if image("kubelet stand-in: the injected agent container started from the patched spec")
        .is_some()
    {
        play_kubelet(&pod, dir.path(), &issued).await;
    }

    // Renewal with a third of the 6 s left: a new leaf from the same CA, the caBundle unchanged.
    hook.process
        .wait_until(
            "a renewed serving certificate",
            Duration::from_secs(20),
            || {
                secret_data(&api, "tls.crt").is_some_and(|pem| {
                    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap() != first_leaf
                })
            },
        )
        .await;
    assert_eq!(published_ca(&api).unwrap(), ca, "the caBundle churned");
    assert_eq!(secret_data(&api, "ca.crt").unwrap(), ca);
    let renewed =
        CertificateDer::from_pem_slice(secret_data(&api, "tls.crt").unwrap().as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (served, _, _) = exchange(hook.https, &ca, "GET /healthz", b"")
            .await
            .unwrap();
        if served != first_leaf {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old certificate is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (served, _, _) = exchange(hook.https, &ca, "GET /healthz", b"")
        .await
        .unwrap();
    assert!(
        served == renewed
            || secret_data(&api, "tls.crt").is_some_and(|p| CertificateDer::from_pem_slice(
                p.as_bytes()
            )
            .unwrap()
                == served)
    );
}

/// A host directory for one of the pod's volumes, filled as the kubelet would.
fn volume_dir(pod: &Value, volume: &Value, root: &Path) -> Option<PathBuf> {
    let name = volume["name"].as_str().unwrap();
    let dir = root.join(name);
    let fs_group = pod["spec"]["securityContext"]["fsGroup"].as_u64();
    if volume.get("emptyDir").is_some() {
        std::fs::create_dir(&dir).unwrap();
        // The kubelet gives an emptyDir to the pod's fsGroup, setgid, group-writable.
        if let Some(group) = fs_group {
            std::os::unix::fs::chown(&dir, None, Some(group as u32)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2777)).unwrap();
        return Some(dir);
    }
    if let Some(items) = volume["downwardAPI"]["items"].as_array() {
        let files: Vec<(String, String)> = items
            .iter()
            .map(|item| {
                let field = item["fieldRef"]["fieldPath"].as_str().unwrap();
                let key = field
                    .strip_prefix("metadata.annotations['")
                    .and_then(|k| k.strip_suffix("']"))
                    .unwrap();
                let value = pod["metadata"]["annotations"][key]
                    .as_str()
                    .unwrap()
                    .to_owned();
                (item["path"].as_str().unwrap().to_owned(), value)
            })
            .collect();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        return Some(ProjectedVolume::new(&dir, &refs).dir);
    }
    if let Some(secret) = volume["secret"]["secretName"].as_str() {
        assert_eq!(secret, "orders-client");
        return Some(ProjectedVolume::new(&dir, &[("client-secret", "orders-secret")]).dir);
    }
    None
}

/// Starts the injected agent container from `pod`'s spec, probes it as the spec says, and
/// checks the app container's token mount before "starting" the app.
async fn play_kubelet(pod: &Value, root: &Path, issued: &str) {
    let spec = &pod["spec"];
    let agent = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "token-agent")
        .unwrap();
    assert_eq!(agent["restartPolicy"], "Always", "a native sidecar");
    let volumes: Vec<(String, PathBuf)> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?.to_owned(), volume_dir(pod, v, root)?)))
        .collect();
    let host_dir = |name: &str| {
        volumes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
    };

    let sc = &agent["securityContext"];
    let mut args: Vec<String> = vec!["--network".into(), "host".into()];
    args.push("--user".into());
    args.push(format!("{}:{}", sc["runAsUser"], sc["runAsGroup"]));
    if let Some(group) = spec["securityContext"]["fsGroup"].as_u64() {
        args.extend(["--group-add".into(), group.to_string()]);
    }
    if sc["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if sc["capabilities"]["drop"] == json!(["ALL"]) {
        args.extend(["--cap-drop".into(), "ALL".into()]);
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    let memory = agent["resources"]["limits"]["memory"].as_str().unwrap();
    args.extend([
        "--memory".into(),
        memory.trim_end_matches("Mi").to_owned() + "m",
    ]);
    for mount in agent["volumeMounts"].as_array().unwrap() {
        let Some(dir) = host_dir(mount["name"].as_str().unwrap()) else {
            continue;
        };
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        args.extend([
            "-v".into(),
            format!(
                "{}:{}{ro}",
                dir.display(),
                mount["mountPath"].as_str().unwrap()
            ),
        ]);
    }
    args.push(agent["image"].as_str().unwrap().to_owned());
    args.extend(
        agent["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    // The startup probe, polled from before the container starts and more often than its
    // period, to measure when it first passes; it must pass within the spec's
    // failureThreshold × periodSeconds.
    let probe = &agent["startupProbe"];
    let url = format!(
        "http://127.0.0.1:{}{}",
        probe["httpGet"]["port"],
        probe["httpGet"]["path"].as_str().unwrap()
    );
    let budget = Duration::from_secs(
        probe["failureThreshold"].as_u64().unwrap() * probe["periodSeconds"].as_u64().unwrap(),
    )
    .min(Duration::from_secs(30));
    let poller = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Some(jiff::Timestamp::now());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    });
    let container = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Container::run(&refs)
    })
    .await
    .unwrap();
    let started = docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", &container.0]);
    let started: jiff::Timestamp = started.parse().unwrap();
    let Some(passed) = poller.await.unwrap() else {
        panic!("startup probe never passed:\n{}", container.logs());
    };
    let took = passed.duration_since(started);
    eprintln!(
        "agent container start -> startup probe success: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );

    // Only now would the kubelet start the app: its token mount must hold the token.
    let app = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap();
    let mount = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "token-agent-tokens")
        .unwrap();
    assert_eq!(mount["readOnly"], true);
    assert_eq!(mount["mountPath"], "/var/run/tokens");
    let file = host_dir("token-agent-tokens").unwrap().join("orders.token");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), issued);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1000, 2000, 0o440),
        "readable by the app's uid and fsGroup only"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &agent[probe]["httpGet"];
        let url = format!(
            "http://127.0.0.1:{}{}",
            p["port"],
            p["path"].as_str().unwrap()
        );
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200, "{probe}");
    }
}
