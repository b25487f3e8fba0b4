//! `signal: { name: HUP, pid_file: PATH }` or `{ name: HUP, process: NAME }`: a signal to the
//! app. The pid file is read afresh each time (the app may have restarted); a process is found
//! by name in `/proc`, which needs `shareProcessNamespace: true` in a pod. The agent itself and
//! pid 1 (init, or the pod's pause process) are never signalled.

use std::path::PathBuf;

use rustix::process::{Pid, Signal, getpid, kill_process};
use serde::Deserialize;

use super::NotifyError;
use crate::kind::Problems;

/// Largest pid file read (a pid and a newline; anything longer is not a pid file).
const MAX_PID_FILE: u64 = 64;

/// `comm` in `/proc` holds at most this many bytes of a process name.
const COMM_LEN: usize = 15;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalAction {
    pub name: SignalName,
    /// A file holding the pid to signal.
    pub pid_file: Option<PathBuf>,
    /// The name of the processes to signal (their `comm`, or `argv[0]`'s file name).
    pub process: Option<String>,
    #[serde(default)]
    pub on_start: bool,
}

/// The signals an app may reload on.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SignalName {
    #[serde(rename = "HUP", alias = "SIGHUP")]
    Hup,
    #[serde(rename = "USR1", alias = "SIGUSR1")]
    Usr1,
    #[serde(rename = "USR2", alias = "SIGUSR2")]
    Usr2,
    #[serde(rename = "INT", alias = "SIGINT")]
    Int,
    #[serde(rename = "TERM", alias = "SIGTERM")]
    Term,
    #[serde(rename = "QUIT", alias = "SIGQUIT")]
    Quit,
}

impl SignalName {
    fn signal(self) -> Signal {
        match self {
            SignalName::Hup => Signal::HUP,
            SignalName::Usr1 => Signal::USR1,
            SignalName::Usr2 => Signal::USR2,
            SignalName::Int => Signal::INT,
            SignalName::Term => Signal::TERM,
            SignalName::Quit => Signal::QUIT,
        }
    }
}

impl SignalAction {
    pub fn check(&self) -> Problems {
        let mut problems = Vec::new();
        match (&self.pid_file, &self.process) {
            (Some(_), None) => {}
            (None, Some(name)) if !name.is_empty() && !name.contains('/') => {}
            (None, Some(_)) => problems.push((
                "signal.process".into(),
                "a process name, without `/`".into(),
            )),
            _ => problems.push((
                "signal".into(),
                "give exactly one of `pid_file` or `process`".into(),
            )),
        }
        problems
    }

    pub fn run(&self) -> Result<(), NotifyError> {
        let pids = match (&self.pid_file, &self.process) {
            (Some(file), _) => vec![read_pid(file)?],
            (None, Some(name)) => {
                let found = find_by_name(name);
                if found.is_empty() {
                    return Err(NotifyError(format!(
                        "no process named `{name}` is visible (is shareProcessNamespace on?)"
                    )));
                }
                found
            }
            (None, None) => Vec::new(),
        };
        for pid in pids {
            kill_process(pid, self.name.signal()).map_err(|e| {
                NotifyError(format!(
                    "cannot send {:?} to pid {}: {e}",
                    self.name,
                    pid.as_raw_nonzero()
                ))
            })?;
        }
        Ok(())
    }
}

/// A pid another process may be signalled at: not init, not the agent.
fn signallable(raw: i32) -> Option<Pid> {
    let pid = Pid::from_raw(raw).filter(|p| raw > 1 && *p != getpid())?;
    Some(pid)
}

fn read_pid(file: &std::path::Path) -> Result<Pid, NotifyError> {
    let failed = |why: String| NotifyError(format!("pid file {}: {why}", file.display()));
    let size = std::fs::metadata(file)
        .map_err(|e| failed(e.to_string()))?
        .len();
    if size > MAX_PID_FILE {
        return Err(failed(format!("{size} bytes is not a pid")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| failed(e.to_string()))?;
    let raw: i32 = text
        .trim()
        .parse()
        .map_err(|_| failed("does not hold a pid".into()))?;
    signallable(raw).ok_or_else(|| failed(format!("refusing to signal pid {raw}")))
}

/// The processes named `name`, by `comm` (truncated by the kernel) and, for longer names, by
/// the file name of `argv[0]`; of a tree of same-named processes only the topmost (nginx's
/// master, not its workers; an app, not a child it has forked and not yet exec'd).
fn find_by_name(name: &str) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let comm_name: String = name.chars().take(COMM_LEN).collect();
    let named: Vec<(i32, i32)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let raw: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim_end_matches('\n') != comm_name {
                return None;
            }
            if name.len() > COMM_LEN {
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let argv0 = cmdline.split(|b| *b == 0).next()?;
                let base = argv0.rsplit(|b| *b == b'/').next()?;
                if base != name.as_bytes() {
                    return None;
                }
            }
            Some((raw, parent_of(&e.path())?))
        })
        .collect();
    named
        .iter()
        .filter(|(_, parent)| !named.iter().any(|(pid, _)| pid == parent))
        .filter_map(|(pid, _)| signallable(*pid))
        .collect()
}

/// The parent pid in `/proc/PID/stat` (the field after the parenthesised name, which may
/// itself hold spaces and parentheses).
fn parent_of(proc_dir: &std::path::Path) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}
