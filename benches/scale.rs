//! `cargo bench --bench scale` — what token-agent costs, measured against a local issuer on
//! 127.0.0.1 with tokens written to tmpfs (/dev/shm). Prints a table; BENCHMARKS.md has the
//! numbers and how to read them. Not a test: nothing here asserts on time.
//!
//! The binary measured is the one the image ships: the static musl release build, which the
//! bench builds first (`cargo build --release --target x86_64-unknown-linux-musl`). `BENCH_BIN`
//! measures another build instead (e.g. `target/release/token-agent`, the glibc one).
//!
//! Environment: `BENCH_SOURCES` (default "10,1000,10000,50000"), `BENCH_IDLE_SECS` (default
//! 60), `BENCH_STARTS` (default 20), `BENCH_SUSTAIN_SECS` (default 2), `BENCH_SUSTAIN_ROUNDS`
//! (default 8), `BENCH_SUSTAIN_SOURCES` (default 12000), `BENCH_ONLY` (sections: footprint,scale,sustain,idle,admission,start),
//! `BENCH_ADMISSION_SECS` (default 10), `BENCH_BIN`, `BENCH_BIN_B` (a second build the sustained
//! section compares with the first, round by round).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The static target the image ships (`scripts/image.sh`).
const SHIPPED_TARGET: &str = "x86_64-unknown-linux-musl";

/// The binary measured: `BENCH_BIN`, or the shipped static build, built here so the figures
/// are for the code in this tree. Without the musl target (`rustup target add`, Debian
/// `musl-tools`) the bench says so and measures this build's glibc binary.
fn bin() -> String {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("BENCH_BIN") {
            return bin;
        }
        let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", SHIPPED_TARGET])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        let shipped = format!(
            "{}/target/{SHIPPED_TARGET}/release/token-agent",
            env!("CARGO_MANIFEST_DIR")
        );
        if built {
            shipped
        } else {
            println!("(the {SHIPPED_TARGET} build failed: measuring the glibc build instead)");
            env!("CARGO_BIN_EXE_token-agent").to_owned()
        }
    })
    .clone()
}

/// A minimal keep-alive HTTP/1.1 issuer: every request gets the same token JSON. Written on raw
/// tokio so the issuer is not what is measured (wrk shows its capacity in the same run).
async fn issuer(expires_in: &'static str) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let served = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    let n = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // One reply per complete request (headers; bodies are small and sent at once).
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                        let body_len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if pending.len() < end + 4 + body_len {
                            break;
                        }
                        pending.drain(..end + 4 + body_len);
                        // A new token every time, as a real issuer does (an unchanged token
                        // would let the agent skip its file write).
                        let n = served.fetch_add(1, Ordering::Relaxed);
                        let body = format!(
                            r#"{{"access_token":"bench-token-{n:032}","token_type":"Bearer","expires_in":{expires_in}}}"#
                        );
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

/// A configuration of `sources` oauth2 sources, each writing `s<i>.token` into `dir`. The file
/// is written beside `dir`, not in it, as in a pod (config and token volumes are apart): the
/// agent watches its configuration's directory, and token writes there would wake it.
fn config(
    dir: &Path,
    addr: SocketAddr,
    sources: usize,
    refresh: &str,
    concurrency: usize,
    server: &str,
) -> PathBuf {
    let mut text = format!(
        "defaults:\n  file: {{ dir: '{}', mode: '0600' }}\n  refresh: {refresh}\n  retry: {{ initial: 50ms, max: 1s }}\nserver: {server}\nmax_concurrent_fetches: {concurrency}\nsources:\n",
        dir.display()
    );
    for i in 0..sources {
        text.push_str(&format!("  - {{ name: s{i}, kind: oauth2, token_url: 'http://{addr}/token', auth: none, sinks: [ {{ file: {{ path: s{i}.token }} }} ] }}\n"));
    }
    // Its own directory, as a ConfigMap volume in a pod: the agent watches the configuration's
    // directory, and every open of a token directory inside it would be an event to read.
    let config_dir = dir.with_file_name("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let path = config_dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// When the sustained section refreshes a token, as a share of its 1 s lifetime.
const REFRESH_AT: f64 = 0.2;

/// No HTTP server: the scale and throughput sections measure the token work alone.
const NO_SERVER: &str = "{ enabled: false }";
/// The server a deployed sidecar runs (probes and metrics), on a free port.
const SIDECAR_SERVER: &str = "{ listen: '127.0.0.1:0' }";

fn token_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name().to_string_lossy().ends_with(".token")
                        && !e.file_name().to_string_lossy().starts_with('.')
                })
                .count()
        })
        .unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn spawn(config: &Path) -> Child {
    spawn_bin(&bin(), config)
}

fn spawn_bin(bin: &str, config: &Path) -> Child {
    Command::new(bin)
        .args(["run", "--config", config.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A scratch directory on tmpfs holding `tokens/` (the sink directory) and the configuration.
struct Scratch {
    _root: tempfile::TempDir,
    tokens: PathBuf,
}

fn scratch(name: &str) -> Scratch {
    let root = tempfile::Builder::new()
        .prefix(name)
        .tempdir_in("/dev/shm")
        .unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let tokens = root.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    Scratch {
        _root: root,
        tokens,
    }
}

/// The token request the agent sends for the bench's sources (`auth: none`), as a wrk
/// script: wrk adds `Host` and `Content-Length`. A bare `GET` is fewer bytes for the kernel
/// and the issuer than the work the agent is measured against.
const TOKEN_REQUEST: &str = concat!(
    r#"wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["accept"] = "application/json"
wrk.headers["content-type"] = "application/x-www-form-urlencoded"
wrk.headers["user-agent"] = "token-agent/"#,
    env!("CARGO_PKG_VERSION"),
    "\"\n"
);

/// wrk's rate of token requests against `addr` with `connections` connections for `secs`.
fn wrk(addr: SocketAddr, connections: usize, secs: u64) -> Option<f64> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile().ok()?;
    std::fs::write(script.path(), TOKEN_REQUEST).ok()?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(script.path())
        .arg(format!("http://{addr}/token"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `BENCH_ONLY=sustain,idle` runs only those sections (footprint, scale, sustain, idle,
/// admission, start).
fn wants(section: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts the agent on a fresh scratch directory and waits (at most 120 s) until `sources`
/// token files exist. Returns the scratch, the child and how long the first tokens took.
async fn start_agent(
    name: &str,
    addr: SocketAddr,
    sources: usize,
    refresh: &str,
    server: &str,
) -> (Scratch, Child, Duration) {
    let work = scratch(name);
    let cfg = config(&work.tokens, addr, sources, refresh, 32, server);
    let started = Instant::now();
    let child = spawn(&cfg);
    while token_files(&work.tokens) < sources && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (work, child, started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // `cargo test --all-targets` also runs bench targets (without `--bench`): do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/scale.rs: run with `cargo bench --bench scale`");
        return;
    }
    let counts: Vec<usize> = std::env::var("BENCH_SOURCES")
        .unwrap_or_else(|_| "10,1000,10000,50000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 60);
    let starts: usize = env_or("BENCH_STARTS", 20);
    let sustain_secs: u64 = env_or("BENCH_SUSTAIN_SECS", 2);
    let sustain_sources: usize = env_or("BENCH_SUSTAIN_SOURCES", 12_000);
    let sustain_rounds: usize = env_or("BENCH_SUSTAIN_ROUNDS", 8);
    let bin = bin();
    println!("token-agent {} — {bin}", env!("CARGO_PKG_VERSION"));
    println!(
        "binary size: {:.2} MiB",
        std::fs::metadata(&bin)
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(0.0)
    );
    let (addr, served) = issuer("1800").await;

    // 1. Footprint: what one sidecar costs, idle, with the HTTP server a pod runs: 15 s after
    //    its first tokens, when start-up is over (the agent unmaps its start-up code after
    //    10 s; idle blocking threads end after 10 s).
    if wants("footprint") {
        println!("\n| sources (idle, server on) | VmRSS | RssAnon | RssFile | threads |");
        println!("|---:|---:|---:|---:|---:|");
        for n in [1, 10] {
            let (work, child, _) =
                start_agent("ta-bench-footprint", addr, n, "{ at: 80% }", SIDECAR_SERVER).await;
            tokio::time::sleep(Duration::from_secs(15)).await;
            let pid = child.id();
            let kib = |key| status_kib(pid, key) as f64 / 1024.0;
            println!(
                "| {n} | {:.2} MiB | {:.2} MiB | {:.2} MiB | {} |",
                kib("VmRSS:"),
                kib("RssAnon:"),
                kib("RssFile:"),
                status_kib(pid, "Threads:")
            );
            stop(child);
            drop(work);
        }
    }

    // 2. Scale: time to every first token, peak RSS.
    if wants("scale") {
        println!("\n| sources | all first tokens written | peak RSS (VmHWM) | RSS after |");
        println!("|---:|---:|---:|---:|");
        for &n in &counts {
            let work = scratch("ta-bench-scale");
            let cfg = config(
                &work.tokens,
                addr,
                n,
                "{ at: 80%, jitter: 10% }",
                32,
                NO_SERVER,
            );
            let base = served.load(Ordering::Relaxed);
            let started = Instant::now();
            let child = spawn(&cfg);
            let pid = child.id();
            // Watch the issuer (cheap) until every source has fetched, then the directory (a
            // readdir of 100 000 entries every few ms would compete with the agent for the CPU).
            while served.load(Ordering::Relaxed) - base < n as u64
                && started.elapsed() < Duration::from_secs(120)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while token_files(&work.tokens) < n && started.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let took = started.elapsed();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (hwm, rss) = (status_kib(pid, "VmHWM:"), status_kib(pid, "VmRSS:"));
            stop(child);
            println!(
                "| {n} | {:.0} ms | {:.1} MiB | {:.1} MiB |",
                took.as_secs_f64() * 1000.0,
                hwm as f64 / 1024.0,
                rss as f64 / 1024.0
            );
        }
    }

    // 3. Sustained refreshes, against what the machine can do for the same work.
    if wants("sustain") {
        sustain(sustain_sources, sustain_secs, sustain_rounds.max(1)).await;
    }

    // 4. Idle cost: 10 sources with 30-minute tokens.
    if wants("idle") {
        let (work, child, _) =
            start_agent("ta-bench-idle", addr, 10, "{ at: 80% }", SIDECAR_SERVER).await;
        let pid = child.id();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let (ticks, rss) = (cpu_ticks(pid) - t0, status_kib(pid, "VmRSS:"));
        stop(child);
        drop(work);
        let hz = 100.0; // USER_HZ on Linux
        println!(
            "\nidle: 10 sources, 30-min tokens: {:.0} ms CPU in {idle_secs} s ({:.4} % of a core), RSS at the end {:.1} MiB",
            ticks as f64 / hz * 1000.0,
            ticks as f64 / hz / idle_secs as f64 * 100.0,
            rss as f64 / 1024.0
        );
    }

    // 5. The injector: admission latency at a steady 200 reviews/s over kept-alive TLS
    //    connections (as the API server sends them), and the webhook's memory.
    if wants("admission") {
        admission(env_or("BENCH_ADMISSION_SECS", 10)).await;
    }

    // 6. Start-up: process start to first token file, median of `starts` runs.
    if !wants("start") {
        return;
    }
    let mut samples = Vec::new();
    for _ in 0..starts {
        let work = scratch("ta-bench-start");
        let cfg = config(&work.tokens, addr, 1, "{ at: 80% }", 32, NO_SERVER);
        let started = Instant::now();
        let child = spawn(&cfg);
        while token_files(&work.tokens) < 1 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        stop(child);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "\nstart-up to first token file: median {:.1} ms, min {:.1} ms, max {:.1} ms ({starts} runs)",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1]
    );
}

/// The agent saturated (`sources` tokens that live 1 s, refreshed at [`REFRESH_AT`] of their
/// life: demand is five times the sources per second), then the two halves of its work
/// measured alone on the same machine: wrk against the same issuer with the same connections,
/// and [`write_loop`] in the same directory. Doing both halves back to back, the machine
/// manages at most 1 / (1/http + 1/write) refreshes per second; the ratio is the agent's share
/// of that.
///
/// This VM's speed drifts by up to 1.5x within seconds, so the three are measured in `rounds`
/// short rounds, the agent paused (SIGSTOP) while the others run, and each round gives its own
/// ratio; the median round is the figure. With `BENCH_BIN_B` a second build runs beside the
/// first (its own issuer and directory, paused while the first runs and the other way round,
/// the two going first in turn), and the two are compared round by round: adjacent slices see
/// the same machine speed.
async fn sustain(sources: usize, secs: u64, rounds: usize) {
    let connections = 32;
    // Refreshed at a fifth of the 1 s lifetime: 5 × `sources` refreshes per second demanded,
    // well above what the machine can do, so the agent is always saturated. At half-life
    // (2 × 12 000 = 24 000/s) a machine whose limit is ~37 000/s left the agent waiting for
    // due tokens, and the ratio could not pass 65 % whatever the build.
    let demand = sources as f64 / REFRESH_AT;
    let mut bins = vec![bin()];
    bins.extend(std::env::var("BENCH_BIN_B").ok());
    let mut agents = Vec::new();
    for path in &bins {
        let (issuer_addr, served) = issuer("1").await;
        let work = scratch("ta-bench-sustain");
        let cfg = config(
            &work.tokens,
            issuer_addr,
            sources,
            &format!(
                "{{ at: {}%, jitter: 0%, min_interval: 1ms }}",
                REFRESH_AT * 100.0
            ),
            connections,
            NO_SERVER,
        );
        let child = spawn_bin(path, &cfg);
        let started = Instant::now();
        while served.load(Ordering::Relaxed) < sources as u64
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        signal(child.id(), "STOP");
        agents.push((child, issuer_addr, served, work));
    }
    println!(
        "\nsustained refreshes ({sources} sources, 1 s tokens refreshed at {} %, {demand:.0}/s demanded, {connections} concurrent fetches, tmpfs), {rounds} rounds of {secs} s each:",
        REFRESH_AT * 100.0
    );
    println!(
        "| round | build | agent | CPU | µs per refresh | wrk -c{connections} (HTTP alone) | write loop 1 / 2 threads | limit | agent / limit |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    // Per build: (ratio to the limit, µs per refresh, refreshes per second) of each round.
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); agents.len()];
    for round in 1..=rounds {
        let mut measured = vec![(0.0, 0.0, 0.0); agents.len()];
        // Builds take turns going first, so neither always follows the write loop.
        for i in (0..agents.len()).map(|i| (i + round) % agents.len()) {
            let (child, _, served, _) = &agents[i];
            let pid = child.id();
            signal(pid, "CONT");
            // Past start-up, or past the backlog the pause left (every token expired meanwhile).
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (before, ticks) = (served.load(Ordering::Relaxed), cpu_ticks(pid));
            let window = Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let refreshes = served.load(Ordering::Relaxed) - before;
            let cpu_secs = (cpu_ticks(pid) - ticks) as f64 / 100.0;
            let took = window.elapsed().as_secs_f64();
            signal(pid, "STOP");
            measured[i] = (
                refreshes as f64 / took,
                cpu_secs / took,
                cpu_secs * 1e6 / refreshes.max(1) as f64,
            );
        }
        let (_, issuer_addr, _, work) = &agents[0];
        let issuer_addr = *issuer_addr;
        let http = tokio::task::spawn_blocking(move || wrk(issuer_addr, connections, secs))
            .await
            .unwrap();
        let tokens = work.tokens.clone();
        let writes = tokio::task::spawn_blocking(move || {
            [1, 2].map(|threads| write_loop(&tokens, sources, threads, secs))
        })
        .await
        .unwrap();
        let write = writes[0].max(writes[1]);
        let limit = http.map(|http| 1.0 / (1.0 / http + 1.0 / write));
        for (i, (agent, cores, per_refresh)) in measured.into_iter().enumerate() {
            let ratio = limit.map(|l| agent / l * 100.0);
            // Near the demand the agent waited for due tokens: that round says nothing of its speed.
            let unsaturated = if agent > 0.9 * demand {
                " (near the demand: not saturated)"
            } else {
                ""
            };
            results[i].push((ratio.unwrap_or(f64::NAN), per_refresh, agent));
            println!(
                "| {round} | {} | {agent:.0}/s | {cores:.2} cores | {per_refresh:.0} | {} | {:.0}/s / {:.0}/s | {} | {} |",
                ["A", "B"][i],
                http.map_or("(wrk not installed)".into(), |h| format!("{h:.0}/s")),
                writes[0],
                writes[1],
                match (http, limit) {
                    (Some(h), Some(l)) => format!("1/(1/{h:.0} + 1/{write:.0}) = {l:.0}/s"),
                    _ => "—".into(),
                },
                ratio.map_or("—".into(), |r| format!("{r:.0} %{unsaturated}")),
            );
        }
    }
    for (child, ..) in &agents {
        signal(child.id(), "CONT");
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, ((child, ..), path)) in agents.into_iter().zip(&bins).enumerate() {
        let rss = status_kib(child.id(), "VmRSS:");
        stop(child);
        let build = &results[i];
        println!(
            "  {} ({path}): median round {} of the limit, {:.0} µs per refresh (fetch + token file + metadata + log); RSS {:.1} MiB",
            ["A", "B"][i],
            match median(build.iter().map(|r| r.0).collect()) {
                r if r.is_nan() => "— (wrk not installed: apt-get install wrk)".to_owned(),
                r => format!("{r:.0} %"),
            },
            median(build.iter().map(|r| r.1).collect()),
            rss as f64 / 1024.0
        );
    }
    if results.len() == 2 {
        let pairs = || results[0].iter().zip(&results[1]);
        println!(
            "  B / A, median of the rounds: refreshes {:.3}, CPU per refresh {:.3} (B faster in {} of {rounds} rounds)",
            median(pairs().map(|(a, b)| b.2 / a.2).collect()),
            median(pairs().map(|(a, b)| b.1 / a.1).collect()),
            pairs().filter(|(a, b)| b.2 > a.2).count()
        );
    }
}

/// Sends `SIGname` to `pid` (STOP and CONT pause the agent while the limit is measured).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// What the file sink does per refresh, with nothing else: open the directory, then for the
/// token (`mode 0600`, fsync) and its metadata (no fsync) create a temporary file, write,
/// fchmod, rename it over the target and close, then fsync the directory once. `threads`
/// loops share the files (`s<i>.token` for i < `files`) as the agent's blocking pool does.
/// Returns replacements (token + metadata) per second over `secs`.
fn write_loop(dir: &Path, files: usize, threads: usize, secs: u64) -> f64 {
    use rustix::fs::{CWD, Mode, OFlags, fchmod, fsync, openat, renameat};
    let token = format!("bench-token-{:032}", 0);
    let metadata = format!(
        "{{\n  \"source\": \"s0\",\n  \"token_type\": \"Bearer\",\n  \"expires_at\": \"2026-11-23T23:18:06Z\",\n  \"refreshed_at\": \"2026-11-23T23:18:05Z\",\n  \"sha256\": \"{}\"\n}}\n",
        "0".repeat(64)
    );
    let done = AtomicU64::new(0);
    let until = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (token, metadata, done) = (&token, &metadata, &done);
            scope.spawn(move || {
                let mut i = t;
                let mut count = 0;
                let replace = |dirfd: &std::os::fd::OwnedFd, name: &str, body: &str, sync| {
                    let tmp = format!(".tmp-{name}-{:016x}", fastrand::u64(..));
                    let flags = OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC;
                    let fd = openat(dirfd, &tmp, flags, Mode::from_raw_mode(0o600)).unwrap();
                    rustix::io::write(&fd, body.as_bytes()).unwrap();
                    fchmod(&fd, Mode::from_raw_mode(0o600)).unwrap();
                    if sync {
                        fsync(&fd).unwrap();
                    }
                    renameat(dirfd, &tmp, dirfd, name).unwrap();
                };
                while Instant::now() < until {
                    let dirfd = openat(
                        CWD,
                        dir,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .unwrap();
                    let name = format!("s{i}.token");
                    replace(&dirfd, &name, token, true);
                    replace(&dirfd, &format!(".{name}.meta.json"), metadata, false);
                    fsync(&dirfd).unwrap();
                    count += 1;
                    i = (i + threads) % files;
                }
                done.fetch_add(count, Ordering::Relaxed);
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Reads one HTTP/1.1 response with a Content-Length body from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `token-agent webhook` with a fresh certificate, loaded with the `one-container` golden
/// case at 200 reviews/s for `secs`. Latency counts from each request's write (tokio's timer
/// wakes up to 1 ms after a scheduled time, which is the load generator's lateness, not the
/// webhook's); a stall would still show, as a request cannot be written before the previous
/// answer on its connection arrived.
async fn admission(secs: u64) {
    token_agent::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let name = "token-agent-injector.token-agent.svc";
    let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let (https, metrics) = (free_port(), free_port());
    let child = Command::new(bin())
        .args([
            "webhook",
            "--agent-image",
            "token-agent:bench",
            "--namespace",
            "token-agent",
        ])
        .args(["--listen", &format!("127.0.0.1:{https}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--tls-dir", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ready = format!("http://127.0.0.1:{metrics}/readyz");
    let started = Instant::now();
    while reqwest::get(&ready)
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "webhook never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let case: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/inject/cases/one-container.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "bench",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "namespace": "apps",
            "operation": "CREATE",
            "object": case["pod"],
        }
    }))
    .unwrap();
    let request = [
        format!("POST /mutate HTTP/1.1\r\nHost: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body,
    ]
    .concat();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    const RATE: u64 = 200;
    const CONNECTIONS: u64 = 4;
    let total = RATE * secs;
    let t0 = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (tls, request) = (tls.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", https))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            let server = rustls::pki_types::ServerName::try_from(name).unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server, tcp)
                .await
                .unwrap();
            let mut latencies = Vec::new();
            let mut buf = Vec::new();
            let mut i = c;
            while i < total {
                let due = t0 + Duration::from_micros(i * 1_000_000 / RATE);
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                stream.write_all(&request).await.unwrap();
                read_response(&mut stream, &mut buf).await;
                assert!(
                    buf.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&buf)
                );
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                i += CONNECTIONS;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    stop(child);
    println!(
        "\nadmission ({} reviews at {RATE}/s over {CONNECTIONS} TLS connections, typical pod): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; webhook RSS {:.1} MiB (peak {:.1} MiB)",
        all.len(),
        at(0.50),
        at(0.99),
        all[all.len() - 1],
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
