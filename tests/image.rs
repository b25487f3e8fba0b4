//! The container image (`Dockerfile`, built by `scripts/image.sh`) with a real Docker engine:
//! what is in it, and that every mode runs locked down — read-only root filesystem, all
//! capabilities dropped, `no-new-privileges`, uid 65532 — writing nothing but its sinks.
//!
//! `scripts/test.sh` builds the image when a Docker daemon answers and names it in
//! `TOKEN_AGENT_IMAGE`; without one these tests are skipped (and listed), in CI they must run.
//! Figures (size, time to the first token, RSS) are printed, not asserted against a clock:
//! BENCHMARKS.md records them.

mod common;

use std::os::unix::fs::MetadataExt;

use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::{Container, docker, docker_ok, image, mount, shared_dir};
use common::pki::{Pki, https_issuer};
use common::{Mock, Reply};
use rcgen::ExtendedKeyUsagePurpose;

const MIB: u64 = 1024 * 1024;
/// The goal for the image (the binary is ~10 MiB, the CA bundle ~0.2 MiB).
const MAX_IMAGE: u64 = 12 * MIB;
/// How every container here runs: the chart's securityContext, in `docker run` words.
const LOCKED_DOWN: [&str; 5] = [
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

#[test]
fn the_image_is_small_non_root_and_holds_only_the_binary_and_the_ca_bundle() {
    let Some(image) = image("image contents") else {
        return;
    };
    let inspect: serde_json::Value =
        serde_json::from_str(&docker_ok(&["image", "inspect", &image])).unwrap();
    let inspect = &inspect[0];
    let size = inspect["Size"].as_u64().unwrap();
    eprintln!(
        "image size: {size} bytes ({:.1} MiB)",
        size as f64 / MIB as f64
    );
    assert!(size <= MAX_IMAGE, "{size} bytes");
    let config = &inspect["Config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/token-agent"]));
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    for label in ["source", "revision", "description", "title"] {
        let value = labels[format!("org.opencontainers.image.{label}")]
            .as_str()
            .unwrap_or_default();
        assert!(!value.is_empty(), "label {label} missing: {labels}");
    }

    // Every file of every layer: the binary and the bundle, nothing else (no shell, no
    // package manager, no passwd).
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("image.tar");
    docker_ok(&["image", "save", "-o", saved.to_str().unwrap(), &image]);
    let tar = |args: &[&str]| {
        let out = Command::new("tar").args(args).output().unwrap();
        assert!(out.status.success(), "tar {args:?}");
        out.stdout
    };
    tar(&[
        "-xf",
        saved.to_str().unwrap(),
        "-C",
        dir.path().to_str().unwrap(),
    ]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let mut files = Vec::new();
    let mut bundle = Vec::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let layer = dir.path().join(layer.as_str().unwrap());
        let layer = layer.to_str().unwrap();
        for entry in String::from_utf8(tar(&["-tf", layer])).unwrap().lines() {
            if entry.ends_with('/') {
                continue;
            }
            files.push(entry.to_owned());
            if entry == "etc/ssl/certs/ca-certificates.crt" {
                bundle = tar(&["-xOf", layer, entry]);
            }
        }
    }
    files.sort();
    assert_eq!(files, ["etc/ssl/certs/ca-certificates.crt", "token-agent"]);
    let roots = String::from_utf8_lossy(&bundle)
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    assert!(roots >= 100, "{roots} CA certificates in the bundle");

    let shell = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &image,
        "-c",
        "true",
    ]);
    assert!(!shell.status.success(), "the image has a shell");
    let version = docker_ok(&["run", "--rm", "--network", "none", &image, "--version"]);
    assert_eq!(
        version,
        format!("token-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_dev_demo_runs_locked_down_without_network_and_writes_only_its_tokens() {
    let Some(image) = image("image dev demo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = shared_dir(dir.path(), "tokens");
    let token = tokens.join("demo-api.token");
    let mut args = LOCKED_DOWN.to_vec();
    let volume = mount(&tokens, "/tokens", false);
    args.extend(["--network", "none", "-v", &volume, &image]);
    args.extend(["dev", "--dir", "/tokens"]);
    let started = Instant::now();
    let demo = Container::run(&args);
    demo.wait_for("demo-api.token", || token.exists());
    let first = started.elapsed();
    demo.wait_for("demo.env", || tokens.join("demo.env").exists());

    let meta = std::fs::metadata(&token).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert!(!std::fs::read_to_string(&token).unwrap().is_empty());
    assert_eq!(demo.status("Uid"), "65532 65532 65532 65532");
    assert_eq!(demo.status("CapEff"), "0000000000000000");
    assert_eq!(demo.status("NoNewPrivs"), "1");
    // Still running: no mode needs a writable path besides its sinks (`--read-only` would
    // make it exit, as the demo did when it wrote its client secret to /tmp).
    std::thread::sleep(Duration::from_secs(2));
    assert!(demo.running(), "{}", demo.logs());
    // Of which the agent's own part: from the container's start (as Docker records it) to
    // the token file's modification time.
    let started_at = docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", &demo.0]);
    let started_at = humantime::parse_rfc3339(&started_at).unwrap();
    let written = meta.modified().unwrap();
    eprintln!(
        "dev demo in the image: docker run to the first token file {first:?} (container start to the file: {:?}), RSS {}",
        written.duration_since(started_at).unwrap_or_default(),
        demo.status("VmRSS")
    );
}

/// `run` as the chart runs it: the config from a read-only directory at the image's default
/// path, ten sources, tokens to a shared directory. On the host network only to reach the
/// test's issuers on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reads_its_mounted_config_and_keeps_ten_tokens_locked_down() {
    let Some(image) = image("image run") else {
        return;
    };
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            serde_json::json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = shared_dir(dir.path(), "tokens");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let mut yaml =
        "server: { enabled: false }\ndefaults: { file: { dir: /var/run/tokens } }\nsources:\n"
            .to_owned();
    for i in 0..10 {
        yaml += &format!(
            "  - name: s{i}\n    kind: oauth2\n    token_url: '{}'\n    client_id: c\n    auth: none\n    sinks: [ {{ file: {{ path: s{i}.token }} }} ]\n",
            mock.url("/token")
        );
    }
    std::fs::write(config.join("config.yaml"), yaml).unwrap();
    let mut args = LOCKED_DOWN.to_vec();
    let (config_volume, tokens_volume) = (
        mount(&config, "/etc/token-agent", true),
        mount(&tokens, "/var/run/tokens", false),
    );
    args.extend([
        "--network",
        "host",
        "-v",
        &config_volume,
        "-v",
        &tokens_volume,
    ]);
    args.push(&image);
    let agent = Container::run(&args);
    let all = || (0..10).all(|i| tokens.join(format!("s{i}.token")).exists());
    let took = agent.wait_for("ten token files", all);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.running(), "{}", agent.logs());
    assert_eq!(mock.requests().len(), 10, "{}", agent.logs());
    eprintln!(
        "run in the image, 10 sources: first ten tokens after {took:?}, idle RSS {}",
        agent.status("VmRSS")
    );
}

/// The image's CA bundle is what the agent trusts by default, and `SSL_CERT_FILE` replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_replaces_the_bundled_roots() {
    let Some(image) = image("image SSL_CERT_FILE") else {
        return;
    };
    let pki = Pki::new();
    let server = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let port = https_issuer(&server, None).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = shared_dir(dir.path(), "tokens");
    std::fs::write(dir.path().join("ca.pem"), pki.ca.pem()).unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        format!("defaults: {{ file: {{ dir: /tokens }} }}\nsources:\n  - name: s\n    kind: oauth2\n    token_url: 'https://localhost:{port}/token'\n    auth: none\n    sinks: [ {{ file: {{ path: s.token }} }} ]\n"),
    )
    .unwrap();
    let (etc, out) = (
        mount(dir.path(), "/etc/token-agent", true),
        mount(&tokens, "/tokens", false),
    );
    let once = |env: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend(LOCKED_DOWN);
        args.extend(["--network", "host", "-v", &etc, "-v", &out]);
        args.extend(env);
        args.extend([image.as_str(), "once"]);
        docker(&args)
    };
    let untrusted = once(&[]);
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(!tokens.join("s.token").exists());

    let trusted = once(&["-e", "SSL_CERT_FILE=/etc/token-agent/ca.pem"]);
    let stderr = String::from_utf8_lossy(&trusted.stderr);
    assert!(trusted.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(tokens.join("s.token")).unwrap(),
        "tls-token"
    );
}
