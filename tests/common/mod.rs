//! Test support: an in-process HTTP server on 127.0.0.1 that records every request, and
//! helpers to run the agent from a YAML string.
#![allow(dead_code)]

pub mod api_portal;
pub mod docker;
pub mod kube_api;
pub mod kubelet;
pub mod mindsphere;
pub mod pki;
pub mod process;
#[path = "../../src/skipped.rs"]
pub mod skipped;
pub mod vendors;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use token_agent::agent::{Agent, OnceOutcome};
use token_agent::clock::Clock;
use token_agent::config::Config;

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as `application/x-www-form-urlencoded`, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `Authorization: Basic` decoded to `(user, password)` without any form-decoding.
    pub fn basic_raw(&self) -> Option<(String, String)> {
        use base64::Engine;
        let b64 = self.header("authorization")?.strip_prefix("Basic ")?;
        let decoded =
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
        let (u, p) = decoded.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    }
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Stream the body in chunks without a Content-Length.
    pub chunked: bool,
}

impl Reply {
    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A running mock server.
pub struct Mock {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Mock {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let handler = handler.clone();
                let log = log.clone();
                async move {
                    let rec = Recorded {
                        method,
                        path: uri.path().to_owned(),
                        query: uri.query().map(str::to_owned),
                        headers,
                        body: body.to_vec(),
                    };
                    log.lock().unwrap().push(rec.clone());
                    let reply = handler(&rec);
                    tokio::time::sleep(reply.delay).await;
                    respond(reply)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn respond(reply: Reply) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap())
        .header("content-type", reply.content_type);
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value);
    }
    if reply.chunked {
        let chunks: Vec<Result<Bytes, std::io::Error>> = reply
            .body
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        builder
            .body(Body::from_stream(futures_stream(chunks)))
            .unwrap()
    } else {
        builder.body(Body::from(reply.body)).unwrap()
    }
}

fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter(items)
}

/// A JWT-shaped token (unsigned) with the given claims.
pub fn fake_jwt(claims: serde_json::Value) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(claims.to_string())
    )
}

/// Seconds from now until the `expires_at` of a `format: json` token document; negative once
/// it has passed (a slow machine gets a clear assertion, not a panic in `duration_since`).
pub fn seconds_left(doc: &serde_json::Value) -> i64 {
    let at = doc["expires_at"].as_str().unwrap_or_default();
    let at = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("expires_at {at:?}: {e}"));
    match at.duration_since(std::time::SystemTime::now()) {
        Ok(left) => left.as_secs() as i64,
        Err(passed) => -(passed.duration().as_secs() as i64),
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Parses `yaml` (with `{dir}` replaced by `dir`) and runs `once`.
pub async fn once(yaml: &str, dir: &Path) -> Vec<OnceOutcome> {
    let yaml = yaml.replace("{dir}", &dir.display().to_string());
    let config = Config::parse(&yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"));
    Agent::build(&config, Clock::system()).unwrap().once().await
}

/// Writes `content` to a fresh file and returns its path (for `client_secret: { file: … }`).
pub fn secret_file(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// A child process killed (and reaped) when the test ends, also when it panics: a live agent
/// would otherwise outlast the test and hold its output open.
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Command::spawn` returning a [`Running`].
pub trait SpawnGuarded {
    fn spawn_guarded(&mut self) -> Running;
}

impl SpawnGuarded for std::process::Command {
    /// Retries `ETXTBSY`: a program a test has just written can still be open for writing
    /// in a child another test thread forked meanwhile, until that child execs (the classic
    /// fork/exec race of a multithreaded process, golang/go#22315).
    fn spawn_guarded(&mut self) -> Running {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                started => return Running(started.expect("the process starts")),
            }
        }
    }
}

/// An address nothing accepts on, held for as long as the socket lives: bound but not
/// listening, so a connection is refused and no other process can take the port meanwhile.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A shipped example with its host and token directory replaced, and its secrets set.
pub fn example(
    name: &str,
    host: &str,
    mock: &Mock,
    dir: &Path,
    secrets: &[(&str, &str)],
) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap();
    let mut text = text
        .replace(host, &format!("http://{}", mock.addr))
        .replace("/var/run/tokens", &dir.display().to_string());
    for (reference, value) in secrets {
        if let Some(file) = reference.strip_prefix("file:") {
            let path = dir.join(file.trim_start_matches('/').replace('/', "_"));
            std::fs::write(&path, value).unwrap();
            text = text.replace(file, &path.display().to_string());
        } else {
            // `{ env: NAME }` becomes a file holding the value: setting variables in a
            // process whose other tests run in parallel threads is a data race.
            let path = dir.join(format!("env-{reference}"));
            std::fs::write(&path, value).unwrap();
            let file = format!("{{ file: '{}' }}", path.display());
            text = text.replace(&format!("{{ env: {reference} }}"), &file);
        }
    }
    text
}

/// `GET {base}/metrics` of an agent.
pub async fn scrape(base: &str) -> String {
    token_agent::install_crypto_provider();
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    response.text().await.unwrap()
}

/// The value of the series `name{labels}` (label text exactly as exposed), 0 when absent.
pub fn series_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The `admission.k8s.io/v1` AdmissionReview the API server sends for `pod` (an UPDATE
/// carries the same pod as `oldObject`).
pub fn admission_review(
    pod: &serde_json::Value,
    namespace: &str,
    operation: &str,
) -> serde_json::Value {
    let old = if operation == "UPDATE" {
        pod.clone()
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace,
            "operation": operation,
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod,
            "oldObject": old,
            "dryRun": false,
        }
    })
}
