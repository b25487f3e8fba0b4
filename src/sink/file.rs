//! `file:` sink — a token file on a (shared) volume, replaced atomically on every change.
//!
//! Next to each token file the sink keeps `.<name>.meta.json` (expiry, issue time and a
//! SHA-256 of the token, never the token): on restart the agent reuses a still-valid token
//! instead of fetching a new one, and the hash proves the file and the metadata belong together.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::atomic::{self, AtomicError, Dir, Ownership, Written};
use super::format::{self, Format};
use crate::config::{FileDefaults, FileMode};
use crate::token::{Token, fingerprint};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File name relative to `dir`; may contain sub-directories, never `..`. Per-tenant
    /// sources put `{tenant}` in it.
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// Overrides `defaults.file.dir`.
    pub dir: Option<PathBuf>,
    /// Overrides `defaults.file.mode`.
    pub mode: Option<FileMode>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Variable name for `format: env` (default: `<SOURCE>_TOKEN`).
    pub env_name: Option<String>,
}

impl FileSinkConfig {
    /// Problems as `(field relative to this sink, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(message) = atomic::check_relative(&instance_path(&self.path, "tenant")) {
            problems.push(("path".into(), message));
        }
        if let Some(name) = &self.env_name {
            if self.format != Format::Env {
                problems.push(("env_name".into(), "only applies to `format: env`".into()));
            } else if !format::is_valid_env_name(name) {
                problems.push((
                    "env_name".into(),
                    format!("`{name}` is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
        }
        problems
    }

    /// The directory this sink writes into.
    pub fn dir<'a>(&'a self, defaults: &'a FileDefaults) -> &'a Path {
        self.dir.as_deref().unwrap_or(&defaults.dir)
    }

    pub fn build(&self, source: &str, defaults: &FileDefaults) -> FileSink {
        FileSink {
            dir: self.dir(defaults).to_owned(),
            path: self.path.clone(),
            format: self.format,
            owner: Ownership {
                mode: self.mode.unwrap_or(defaults.mode).0,
                uid: self.uid.or(defaults.uid),
                gid: self.gid.or(defaults.gid),
            },
            env_name: self
                .env_name
                .clone()
                .unwrap_or_else(|| format::default_env_name(source)),
            source: source.to_owned(),
            written: Arc::default(),
        }
    }
}

/// The placeholder a per-tenant sink path carries.
pub const TENANT: &str = "{tenant}";

/// `path` with `{tenant}` replaced by `instance`.
fn instance_path(path: &Path, instance: &str) -> PathBuf {
    PathBuf::from(path.to_string_lossy().replace(TENANT, instance))
}

/// A tenant id becomes a file name: only `[A-Za-z0-9._-]`, not starting with `.`, ≤ 128.
pub fn check_instance_name(instance: &str) -> Result<(), String> {
    let ok = !instance.is_empty()
        && instance.len() <= 128
        && !instance.starts_with('.')
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{instance}` cannot be used in a file name"))
    }
}

/// Sidecar metadata; no secret in it.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    source: String,
    token_type: String,
    #[serde(with = "humantime_serde")]
    issued_at: SystemTime,
    #[serde(with = "humantime_serde")]
    expires_at: SystemTime,
    sha256: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
    path: PathBuf,
    format: Format,
    owner: Ownership,
    env_name: String,
    source: String,
    /// Instances written since start (see [`FileSink::write`]).
    written: Arc<Mutex<HashSet<String>>>,
}

/// Files read back at start are tokens or their metadata: anything larger is not ours.
const MAX_EXISTING: u64 = 1 << 20;

impl FileSink {
    /// `file:<dir>/<path>` — bounded by the config, used as the metric label.
    pub fn label(&self) -> String {
        format!("file:{}", self.dir.join(&self.path).display())
    }

    /// `.<name>.meta.json`, next to the token file.
    fn meta_name(name: &OsStr) -> OsString {
        let mut meta = OsString::from(".");
        meta.push(name);
        meta.push(".meta.json");
        meta
    }

    /// Whether the path holds `{tenant}` (one file per instance).
    pub fn is_per_instance(&self) -> bool {
        self.path.to_string_lossy().contains(TENANT)
    }

    /// The relative path for `instance` (the configured path for a single-token source).
    fn relative(&self, instance: &str) -> Result<PathBuf, AtomicError> {
        if !self.is_per_instance() {
            return Ok(self.path.clone());
        }
        check_instance_name(instance).map_err(|_| AtomicError::Escape {
            path: PathBuf::from(instance),
            dir: self.dir.clone(),
        })?;
        Ok(instance_path(&self.path, instance))
    }

    /// Writes `token` for `instance` (blocking I/O; the agent runs it off the async threads).
    ///
    /// The token file is written durably (fsync of the file, then of the directory after the
    /// rename); the metadata is renamed into place too but not fsync-ed on its own: it only
    /// serves warm restarts, and a stale one fails the hash check and costs a fetch.
    ///
    /// The first write of an instance after start compares with the disk, so a restarted agent
    /// re-delivering the token it found there does not touch the file; after that the agent
    /// only writes when it holds a new token.
    pub fn write(&self, token: &Token, instance: &str) -> Result<Written, AtomicError> {
        let relative = self.relative(instance)?;
        let (sub, name) = atomic::split(&relative);
        let dir = Dir::open(&self.dir, sub)?;
        let content = self.format.render(token, &self.source, &self.env_name);
        let meta = Meta {
            source: self.source.clone(),
            token_type: token.token_type.clone(),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            sha256: token.fingerprint(),
            metadata: token.metadata.clone(),
        };
        let meta_bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        let meta_owner = Ownership {
            mode: self.owner.mode | 0o444,
            ..self.owner
        };
        let meta_name = Self::meta_name(name);
        if self.first_write(instance) && dir.holds(name, &content) {
            dir.enforce(name, self.owner)?;
            if !dir.holds(&meta_name, &meta_bytes) {
                dir.replace(&meta_name, &meta_bytes, meta_owner, false)?;
                dir.sync()?;
            }
            return Ok(Written::Unchanged);
        }
        dir.replace(name, &content, self.owner, true)?;
        dir.replace(&meta_name, &meta_bytes, meta_owner, false)?;
        dir.sync()?;
        Ok(Written::Replaced)
    }

    /// True the first time it is asked for `instance` since start.
    fn first_write(&self, instance: &str) -> bool {
        let mut seen = self.written.lock().unwrap_or_else(|e| e.into_inner());
        !seen.contains(instance) && seen.insert(instance.to_owned())
    }

    /// The directory this sink writes in and the temporary-file prefixes a killed write of it
    /// could leave there (token and metadata), for the sweep at start.
    pub fn stale_prefixes(&self) -> Option<(PathBuf, Vec<String>)> {
        let path = self.path.to_string_lossy().into_owned();
        let (parent, file) = match path.rsplit_once('/') {
            Some((parent, file)) => (self.dir.join(parent), file.to_owned()),
            None => (self.dir.clone(), path),
        };
        if parent.to_string_lossy().contains(TENANT) {
            return None; // one directory per tenant: nothing known to sweep up front
        }
        let stem = file.split(TENANT).next().unwrap_or_default().to_owned();
        Some((
            parent,
            vec![format!(".tmp-{stem}"), format!(".tmp-.{stem}")],
        ))
    }

    /// Removes the files of an instance that went away (per-instance paths only).
    pub fn remove(&self, instance: &str) -> Result<(), AtomicError> {
        if !self.is_per_instance() {
            return Ok(());
        }
        let relative = self.relative(instance)?;
        let (sub, name) = atomic::split(&relative);
        let dir = Dir::open(&self.dir, sub)?;
        dir.remove(name)?;
        dir.remove(&Self::meta_name(name))?;
        dir.sync()?;
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(instance);
        Ok(())
    }

    /// The token this sink holds from an earlier run, if its file and metadata agree
    /// (single-token paths only).
    pub fn load_existing(&self) -> Option<Token> {
        if self.is_per_instance() {
            return None;
        }
        atomic::check_relative(&self.path).ok()?;
        let (sub, name) = atomic::split(&self.path);
        let dir = Dir::open(&self.dir, sub).ok()?;
        let meta: Meta =
            serde_json::from_slice(&dir.read(&Self::meta_name(name), MAX_EXISTING).ok()??).ok()?;
        let content = dir.read(name, MAX_EXISTING).ok()??;
        let value = self.format.read_token(&content, &self.env_name)?;
        if meta.source != self.source || fingerprint(value.as_bytes()) != meta.sha256 {
            return None;
        }
        let mut token = Token::new(
            value.into(),
            meta.token_type,
            meta.issued_at,
            meta.expires_at,
        );
        token.metadata = meta.metadata;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sink(dir: &Path, format: Format) -> FileSink {
        let config = FileSinkConfig {
            path: "a/t".into(),
            format,
            dir: None,
            mode: None,
            uid: None,
            gid: None,
            env_name: None,
        };
        config.build(
            "orders",
            &FileDefaults {
                dir: dir.to_owned(),
                ..FileDefaults::default()
            },
        )
    }

    fn token(value: &str) -> Token {
        let now = SystemTime::now();
        Token::new(
            value.into(),
            "Bearer".into(),
            now,
            now + Duration::from_secs(300),
        )
    }

    #[test]
    fn warm_restart_reads_back_each_format() {
        for format in [Format::Raw, Format::Json, Format::Env] {
            let dir = tempfile::tempdir().unwrap();
            let s = sink(dir.path(), format);
            assert!(s.load_existing().is_none());
            let t = token("tok-1");
            s.write(&t, "").unwrap();
            let back = s.load_existing().unwrap();
            assert!(back.same_value(&t), "{format:?}");
            assert_eq!(
                back.expires_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                t.expires_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            );
        }
    }

    #[test]
    fn per_tenant_paths_are_filled_in_checked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            path: "mdsp/{tenant}.token".into(),
            format: Format::Raw,
            dir: None,
            mode: None,
            uid: None,
            gid: None,
            env_name: None,
        };
        let s = config.build(
            "m",
            &FileDefaults {
                dir: dir.path().to_owned(),
                ..FileDefaults::default()
            },
        );
        assert!(s.is_per_instance());
        s.write(&token("tok-a"), "tenant-a").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("mdsp/tenant-a.token")).unwrap(),
            "tok-a"
        );
        for bad in ["../x", "a/b", ".hidden", ""] {
            assert_eq!(
                s.write(&token("t"), bad).unwrap_err().reason(),
                "path_escape",
                "{bad}"
            );
        }
        s.remove("tenant-a").unwrap();
        assert!(!dir.path().join("mdsp/tenant-a.token").exists());
        assert!(!dir.path().join("mdsp/.tenant-a.token.meta.json").exists());
        assert!(s.load_existing().is_none());
    }

    #[test]
    fn mismatched_metadata_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), Format::Raw);
        s.write(&token("tok-1"), "").unwrap();
        std::fs::write(dir.path().join("a/t"), "someone-else").unwrap();
        assert!(s.load_existing().is_none());
    }
}
