//! A real Docker engine for tests: the image `scripts/test.sh` built (named in
//! `TOKEN_AGENT_IMAGE`), detached containers removed when dropped, and host directories shaped
//! like the volumes a kubelet would mount.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn image(test: &str) -> Option<String> {
    match std::env::var("TOKEN_AGENT_IMAGE") {
        Ok(image) if !image.is_empty() => Some(image),
        _ => {
            super::skipped::skip_unless_required(
                "TOKEN_AGENT_REQUIRE_IMAGE",
                test,
                "no image: scripts/test.sh builds one (scripts/image.sh) when a Docker daemon runs",
            );
            None
        }
    }
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A detached container, removed when dropped (also when the test panics).
pub struct Container(pub String);

impl Container {
    pub fn run(args: &[&str]) -> Container {
        let mut all = vec!["run", "-d"];
        all.extend(args);
        Container(docker_ok(&all))
    }

    pub fn pid(&self) -> u32 {
        docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.0])
            .parse()
            .unwrap()
    }

    pub fn running(&self) -> bool {
        docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.0]) == "true"
    }

    /// A `/proc/<pid>/status` field of the container's main process.
    pub fn status(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.0]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn wait_for(&self, what: &str, check: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// A directory the container's uid can write, like an `emptyDir`.
pub fn shared_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

pub fn mount(host: &Path, at: &str, read_only: bool) -> String {
    format!(
        "{}:{at}{}",
        host.display(),
        if read_only { ":ro" } else { "" }
    )
}
