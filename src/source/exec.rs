//! `kind: exec` — a command prints the token: argv (no shell unless asked), a timeout, the
//! token read from stdout as text or JSON. Credentials reach the command through its
//! environment or stdin, never its arguments (visible to every user through /proc), and the
//! command sees no other environment than `PATH` and what is configured.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::response::{self, ResponseMapping};
use super::{BuildContext, BuildError, FetchError, Now, Problems, SingleTokenSource, Source, SourceKind};
use crate::child::{ProcessGroup, path_variable};
use crate::credential::CredentialRef;
use crate::http::MAX_RESPONSE_BYTES;
use crate::names::is_env_name;
use crate::redact::scrub;
use crate::token::Token;

/// Most of stderr kept for an error message (before scrubbing and truncation).
const MAX_STDERR_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments. With `shell: true`, one string run by `/bin/sh -c`.
    #[serde(deserialize_with = "crate::de::strings")]
    pub command: Vec<String>,
    #[serde(default)]
    pub shell: bool,
    #[serde(default = "default_timeout", with = "crate::de::duration")]
    pub timeout: Duration,
    /// Plain environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Credentials passed as environment variables.
    #[serde(default)]
    pub secret_env: BTreeMap<String, CredentialRef>,
    /// A credential written to the command's stdin (then closed).
    pub stdin: Option<CredentialRef>,
    /// How stdout is read (`format: text` for a bare token).
    #[serde(default)]
    pub response: ResponseMapping,
    #[serde(default, with = "crate::de::duration")]
    pub ttl: Option<Duration>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SourceKind for ExecConfig {
    /// The command's own timeout bounds the fetch.
    fn fetch_bound(&self, _http_timeout: Duration) -> Duration {
        self.timeout
    }

    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        match (self.command.as_slice(), self.shell) {
            ([], _) => problems.push(("command".into(), "must name a program".into())),
            ([_], true) => {}
            (_, true) => problems.push((
                "command".into(),
                "with `shell: true`, give one string for /bin/sh -c".into(),
            )),
            ([program, ..], false) if program.is_empty() => {
                problems.push(("command".into(), "must name a program".into()))
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            problems.push(("timeout".into(), "must be greater than zero".into()));
        }
        for name in self.env.keys().chain(self.secret_env.keys()) {
            if !is_env_name(name) {
                problems.push((format!("env.{name}"), "not a valid variable name".into()));
            }
        }
        for name in self.env.keys().filter(|k| self.secret_env.contains_key(*k)) {
            problems.push((format!("secret_env.{name}"), "also set in `env`".into()));
        }
        for (field, message) in self.response.check() {
            problems.push((format!("response.{field}"), message));
        }
        problems
    }

    fn inline_secrets(&self) -> Vec<String> {
        let mut fields: Vec<String> = self
            .secret_env
            .iter()
            .filter(|(_, r)| r.is_inline())
            .map(|(k, _)| format!("secret_env.{k}"))
            .collect();
        if self.stdin.as_ref().is_some_and(CredentialRef::is_inline) {
            fields.push("stdin".into());
        }
        fields
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let program = if self.shell {
            "/bin/sh -c …".to_owned()
        } else {
            self.command.first().cloned().unwrap_or_default()
        };
        Ok(Box::new(ExecSource {
            config: self.clone(),
            program,
        }))
    }
}

pub struct ExecSource {
    config: ExecConfig,
    /// The program name, for messages (never its arguments).
    program: String,
}

impl SingleTokenSource for ExecSource {
    async fn fetch_token(&self, now: &Now) -> Result<Token, FetchError> {
        let c = &self.config;
        let mut secrets: Vec<String> = Vec::new();
        let (program, args): (&str, Vec<&str>) = if c.shell {
            ("/bin/sh", vec!["-c", c.command[0].as_str()])
        } else {
            (
                c.command[0].as_str(),
                c.command[1..].iter().map(String::as_str).collect(),
            )
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", path_variable())
            .envs(&c.env)
            .stdin(if c.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // A group of its own, so that a timeout ends what a shell started too.
            .process_group(0);
        for (name, reference) in &c.secret_env {
            let value = reference.load()?.expose_secret().to_owned();
            cmd.env(name, &value);
            secrets.push(value);
        }
        let stdin_value = c.stdin.as_ref().map(CredentialRef::load).transpose()?;
        if let Some(v) = &stdin_value {
            secrets.push(v.expose_secret().to_owned());
        }
        let failed = |detail: String| FetchError::Command {
            command: self.program.clone(),
            detail,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot start: {e}")))?;
        let group = ProcessGroup::of(&child);

        let run = async {
            if let (Some(mut pipe), Some(value)) = (child.stdin.take(), &stdin_value) {
                // A command that does not read stdin closes it early: not an error.
                let _ = pipe.write_all(value.expose_secret().as_bytes()).await;
            }
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let out = child.stdout.take();
            let err = child.stderr.take();
            let read_out = async {
                if let Some(out) = out {
                    let _ = out
                        .take(MAX_RESPONSE_BYTES as u64 + 1)
                        .read_to_end(&mut stdout)
                        .await;
                }
            };
            let read_err = async {
                if let Some(err) = err {
                    let _ = err
                        .take(MAX_STDERR_BYTES as u64)
                        .read_to_end(&mut stderr)
                        .await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (status, stdout, stderr)
        };
        let (status, stdout, stderr) = match tokio::time::timeout(c.timeout, run).await {
            Ok(done) => {
                group.disarm();
                done
            }
            Err(_) => {
                return Err(FetchError::CommandTimeout {
                    command: self.program.clone(),
                    timeout: c.timeout,
                });
            }
        };
        // Checked first: the command dies of SIGPIPE once the agent stops reading.
        if stdout.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError::CommandOutputTooLarge {
                command: self.program.clone(),
                limit: MAX_RESPONSE_BYTES,
            });
        }
        let status = status.map_err(|e| failed(format!("cannot wait for it: {e}")))?;
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        if !status.success() {
            let said = String::from_utf8_lossy(&stderr);
            let said = scrub(said.trim(), &secret_refs);
            let how = status.code().map_or_else(
                || "was killed by a signal".to_owned(),
                |code| format!("exited with {code}"),
            );
            return Err(failed(if said.is_empty() {
                how
            } else {
                format!("{how}: {said}")
            }));
        }
        response::token_from_body(&stdout, &c.response, c.ttl, now(), &self.program)
    }
}
