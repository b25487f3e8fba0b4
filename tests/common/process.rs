//! Agent processes started by tests: killed when the test ends (also on a panic), everything
//! they print kept for leak checks, and the address their HTTP server bound read from their
//! own log. Tests configure `listen: 127.0.0.1:0`, so no two tests can race for a port.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Running, SpawnGuarded};

/// The message of the line that names the bound address (`main.rs::start_server`).
const SERVING: &str = "serving /metrics, /healthz and /readyz";

pub struct AgentProcess {
    child: Running,
    lines: Arc<Mutex<Vec<String>>>,
    drains: Vec<JoinHandle<()>>,
}

impl std::ops::Deref for AgentProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for AgentProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl AgentProcess {
    /// Starts `command` with stdout and stderr piped, and collects every line of both. Logs at
    /// `info` unless the command sets `RUST_LOG` itself: the address is an `info` line, and a
    /// developer's own `RUST_LOG=warn` must not hide it.
    pub fn start(command: &mut Command) -> AgentProcess {
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_guarded();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let drain = |pipe: Box<dyn Read + Send>| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let drains = vec![
            drain(Box::new(child.stdout.take().unwrap())),
            drain(Box::new(child.stderr.take().unwrap())),
        ];
        AgentProcess {
            child,
            lines,
            drains,
        }
    }

    /// Every line printed so far, stdout and stderr in the order they were read.
    pub fn printed(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// `http://<address>` of the agent's server, from its log (text or JSON), waiting up to
    /// 30 s for it; fails the test if the agent exits first.
    pub async fn base_url(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = self.lines.lock().unwrap().iter().find_map(|l| bound(l)) {
                return format!("http://{addr}");
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before serving:\n{}",
                    self.printed()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent never said where it listens:\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `check` holds, up to `limit`; fails the test with everything the agent
    /// printed otherwise.
    pub async fn wait_until(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the agent printed:\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits up to 10 s for the exit (blocking: call it off the async threads).
    /// Returns the exit status and everything the agent printed.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for drain in std::mem::take(&mut self.drains) {
            drain.join().unwrap();
        }
        (status, self.printed())
    }
}

/// The address in a "serving …" log line: `addr=…` in text, `"addr":"…"` in JSON.
fn bound(line: &str) -> Option<&str> {
    if !line.contains(SERVING) {
        return None;
    }
    let (_, rest) = line
        .split_once("addr=")
        .or_else(|| line.split_once("\"addr\":\""))?;
    rest.split(|c: char| c.is_whitespace() || c == '"').next()
}
