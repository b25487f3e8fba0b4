//! `exec: { command: [argv…], timeout: 10s }`: a command run after each change, with an
//! environment cleared as for `kind: exec` (only `PATH`) plus `TOKEN_AGENT_SOURCE`,
//! `TOKEN_AGENT_FILE` (when one file holds the new token) and `TOKEN_AGENT_EXPIRES_AT`
//! (RFC 3339). Never the token: the command reads the file if it needs it.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use super::{Change, NotifyError, check_timeout};
use crate::child::{ProcessGroup, path_variable};
use crate::kind::Problems;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    #[serde(deserialize_with = "crate::de::strings")]
    pub command: Vec<String>,
    /// Longest the command may run before it is killed (default 10s).
    #[serde(default, with = "crate::de::duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub on_start: bool,
}

impl ExecAction {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    pub fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if self.command.first().is_none_or(String::is_empty) {
            problems.push((
                "exec.command".into(),
                "give the program and its arguments".into(),
            ));
        }
        check_timeout(self.timeout, &mut problems, "exec");
        problems
    }

    pub async fn run(&self, source: &str, change: &Change) -> Result<(), NotifyError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(NotifyError("no command".into())); // refused by `check`
        };
        let failed = |why: String| NotifyError(format!("`{program}`: {why}"));
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", path_variable())
            .env("TOKEN_AGENT_SOURCE", source)
            .env(
                "TOKEN_AGENT_EXPIRES_AT",
                humantime::format_rfc3339_seconds(change.expires_at).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(file) = &change.file {
            cmd.env("TOKEN_AGENT_FILE", file);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot start: {e}")))?;
        // Killed with its group if the timeout drops this future first.
        let group = ProcessGroup::of(&child);
        let status = child.wait().await.map_err(|e| failed(e.to_string()))?;
        group.disarm();
        if status.success() {
            Ok(())
        } else {
            Err(failed(format!("exited with {status}")))
        }
    }
}
