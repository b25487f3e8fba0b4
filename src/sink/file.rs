//! `file:` sink — a token file on a (shared) volume, replaced atomically on every change.
//!
//! Next to each token file the sink keeps `.<name>.meta.json` (expiry, issue time and a
//! SHA-256 of the token, never the token), with the token file's mode but always owned by the
//! agent's user: on restart the agent reuses a still-valid token instead of fetching a new
//! one, and the hash proves the file and the metadata belong together. Metadata another user
//! owns is never believed (the agent also caps what it adopts, see `source_loop.rs`).

mod mode;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use self::mode::FileMode;
use super::atomic::{self, AtomicError, Dir, Ownership, Written};
use super::format::{self, Format};
use super::volume::VolumeOf;
use super::{
    BoxFuture, BuildError, Problems, Sink, SinkContext, SinkError, SinkKind, SinkSet, TENANT,
    blocking,
};
use crate::error::Reason;
use crate::names::{InstanceId, is_env_name, shown};
use crate::token::{Token, fingerprint};

/// `defaults.file`: what file sinks use unless they say otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDefaults {
    /// Directory that relative sink paths are resolved in and may not escape.
    #[serde(default = "default_token_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_mode")]
    pub mode: FileMode,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for FileDefaults {
    fn default() -> Self {
        FileDefaults {
            dir: default_token_dir(),
            mode: default_mode(),
            uid: None,
            gid: None,
        }
    }
}

fn default_token_dir() -> PathBuf {
    PathBuf::from("/var/run/tokens")
}

fn default_mode() -> FileMode {
    FileMode(0o440)
}

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
    /// The directory this sink writes into: its own `dir`, else `default_dir`.
    fn dir_or<'a>(&'a self, default_dir: &'a Path) -> &'a Path {
        self.dir.as_deref().unwrap_or(default_dir)
    }
}

impl SinkKind for FileSinkConfig {
    fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if let Err(message) = atomic::check_relative(&instance_path(&self.path, "tenant")) {
            problems.push(("path".into(), message));
        }
        if let Some(name) = &self.env_name {
            if self.format != Format::Env {
                problems.push(("env_name".into(), "only applies to `format: env`".into()));
            } else if !is_env_name(name) {
                problems.push((
                    "env_name".into(),
                    format!("`{name}` is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
        }
        problems
    }

    fn is_per_instance(&self) -> bool {
        self.path.to_string_lossy().contains(TENANT)
    }

    fn target(&self, default_dir: &Path) -> Option<(&'static str, PathBuf)> {
        Some(("path", self.dir_or(default_dir).join(&self.path)))
    }

    fn build(&self, source: &str, ctx: &SinkContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(self.file_sink(source, ctx.file)))
    }

    /// Temporaries of killed writes, with one directory read per directory however many sinks
    /// write there (a read per sink was quadratic at 10 000 sources).
    fn sweep_leftovers<'a>(sinks: &'a SinkSet<'a>) -> BoxFuture<'a, ()> {
        let mut by_dir: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for (dir, prefixes) in sinks.of_kind::<FileSink>().filter_map(FileSink::stale_prefixes) {
            by_dir.entry(dir).or_default().extend(prefixes);
        }
        Box::pin(async move {
            let swept = blocking(move || {
                for (dir, prefixes) in by_dir {
                    atomic::remove_stale_temporaries(&dir, &prefixes);
                }
                Ok::<_, AtomicError>(())
            });
            // Best effort: what cannot be removed now is tried again at the next start.
            let _ = swept.await;
        })
    }
}

impl FileSinkConfig {
    /// The runnable sink (blocking methods, for tests and for [`SinkKind::build`]).
    pub fn file_sink(&self, source: &str, defaults: &FileDefaults) -> FileSink {
        FileSink {
            dir: self.dir_or(&defaults.dir).into(),
            path: self.path.as_path().into(),
            format: self.format,
            owner: Ownership {
                mode: self.mode.unwrap_or(defaults.mode).0,
                uid: self.uid.or(defaults.uid),
                gid: self.gid.or(defaults.gid),
            },
            env_name: self
                .env_name
                .clone()
                .unwrap_or_else(|| format::default_env_name(source))
                .into(),
            source: source.into(),
            written: Arc::default(),
            volume: Arc::new(VolumeOf::new(self.dir_or(&defaults.dir))),
        }
    }
}

/// `path` with `{tenant}` replaced by `instance`.
fn instance_path(path: &Path, instance: &str) -> PathBuf {
    PathBuf::from(path.to_string_lossy().replace(TENANT, instance))
}

/// A file another source writes, by its metadata.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: says source `{owner}` writes this file: refusing to overwrite another source's token",
    meta.display()
)]
pub struct FileTaken {
    meta: PathBuf,
    owner: String,
}

impl Reason for FileTaken {
    fn reason(&self) -> &'static str {
        "conflict"
    }
}

/// Sidecar metadata; no secret in it. Borrowed when written, owned when read back.
#[derive(Debug, Serialize, Deserialize)]
struct Meta<'a> {
    source: Cow<'a, str>,
    token_type: Cow<'a, str>,
    #[serde(with = "humantime_serde")]
    issued_at: SystemTime,
    #[serde(with = "humantime_serde")]
    expires_at: SystemTime,
    sha256: Cow<'a, str>,
    #[serde(default)]
    metadata: Cow<'a, BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct FileSink {
    // Shared, not owned: the sink is cloned into every write it hands to its volume's threads.
    dir: Arc<Path>,
    path: Arc<Path>,
    format: Format,
    owner: Ownership,
    env_name: Arc<str>,
    source: Arc<str>,
    /// Instances written since start (see [`FileSink::write_blocking`]).
    written: Arc<Mutex<HashSet<InstanceId>>>,
    /// Where its writes run: the threads of the volume it writes to.
    volume: Arc<VolumeOf>,
}

/// Files read back at start are tokens or their metadata: anything larger is not ours.
const MAX_EXISTING: u64 = 1 << 20;

/// A metadata record without extra fields is ~250 bytes.
const META_CAPACITY: usize = 512;

impl FileSink {
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
    fn relative(&self, instance: &InstanceId) -> Result<Cow<'_, Path>, AtomicError> {
        if !self.is_per_instance() {
            return Ok(Cow::Borrowed(&self.path));
        }
        if instance.is_single() {
            return Err(AtomicError::Escape {
                path: self.path.to_path_buf(),
                dir: self.dir.to_path_buf(),
            });
        }
        Ok(Cow::Owned(instance_path(&self.path, instance.as_str())))
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
    pub fn write_blocking(
        &self,
        token: &Token,
        instance: &InstanceId,
    ) -> Result<Written, SinkError> {
        let relative = self.relative(instance)?;
        let (sub, name) = atomic::split(&relative);
        let dir = Dir::open(&self.dir, sub)?;
        let content = self.format.render(token, &self.source, &self.env_name);
        let meta = Meta {
            source: Cow::Borrowed(&self.source),
            token_type: Cow::Borrowed(&token.token_type),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            sha256: Cow::Owned(token.fingerprint()),
            metadata: Cow::Borrowed(&token.metadata),
        };
        // Sized for the usual record at once: growing it piece by piece was a copy per step.
        let mut meta_bytes = Vec::with_capacity(META_CAPACITY);
        if serde_json::to_writer_pretty(&mut meta_bytes, &meta).is_err() {
            meta_bytes.clear();
        }
        // The token file's mode (the hash is an offline guessing aid for weak tokens), but
        // always the agent's own file: warm restarts believe no other owner's metadata.
        let meta_owner = Ownership {
            uid: None,
            ..self.owner
        };
        let meta_name = Self::meta_name(name);
        let first = self.first_write(instance);
        if first {
            self.check_not_taken(&dir, &meta_name)?;
            if dir.holds(name, &content) {
                dir.enforce(name, self.owner)?;
                if !dir.holds(&meta_name, &meta_bytes) {
                    dir.replace(&meta_name, &meta_bytes, meta_owner, false)?;
                    dir.sync()?;
                }
                self.mark_written(instance);
                return Ok(Written::Unchanged);
            }
        }
        dir.replace(name, &content, self.owner, true)?;
        dir.replace(&meta_name, &meta_bytes, meta_owner, false)?;
        dir.sync()?;
        if first {
            self.mark_written(instance);
        }
        Ok(Written::Replaced)
    }

    /// Whether `instance` has not been written since start.
    fn first_write(&self, instance: &InstanceId) -> bool {
        let seen = self.written.lock().unwrap_or_else(|e| e.into_inner());
        !seen.contains(instance)
    }

    fn mark_written(&self, instance: &InstanceId) {
        let mut seen = self.written.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(instance.clone());
    }

    /// Before the first write of a file: refuses it when its metadata names another source
    /// (another agent, or another configuration, writes it); the file stays as it is.
    fn check_not_taken(&self, dir: &Dir, meta_name: &OsStr) -> Result<(), FileTaken> {
        let meta = dir.read_own(meta_name, MAX_EXISTING).ok().flatten();
        let owner = meta.and_then(|m| serde_json::from_slice::<Meta>(&m).ok());
        match owner {
            Some(meta) if *meta.source != *self.source => Err(FileTaken {
                meta: dir.path().join(meta_name),
                owner: shown(&meta.source),
            }),
            _ => Ok(()),
        }
    }

    /// The directory this sink writes in and the temporary-file prefixes a killed write of it
    /// could leave there (token and metadata), for the sweep at start.
    fn stale_prefixes(&self) -> Option<(PathBuf, Vec<String>)> {
        let path = self.path.to_string_lossy().into_owned();
        let (parent, file) = match path.rsplit_once('/') {
            Some((parent, file)) => (self.dir.join(parent), file.to_owned()),
            None => (self.dir.to_path_buf(), path),
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
    pub fn remove_blocking(&self, instance: &InstanceId) -> Result<(), AtomicError> {
        if !self.is_per_instance() {
            return Ok(());
        }
        self.delete_blocking(instance)
    }

    /// Deletes the token file of `instance` and its metadata, unless the metadata names
    /// another source.
    fn delete_blocking(&self, instance: &InstanceId) -> Result<(), AtomicError> {
        let relative = self.relative(instance)?;
        let (sub, name) = atomic::split(&relative);
        let dir = Dir::open(&self.dir, sub)?;
        let meta_name = Self::meta_name(name);
        if self.check_not_taken(&dir, &meta_name).is_err() {
            return Ok(()); // another source's file: never written here, not ours to delete
        }
        dir.remove(name)?;
        dir.remove(&meta_name)?;
        dir.sync()?;
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(instance);
        Ok(())
    }

    /// The token this sink holds from an earlier run, if its file and metadata agree
    /// (single-token paths only).
    pub fn load_existing_blocking(&self) -> Option<Token> {
        if self.is_per_instance() {
            return None;
        }
        atomic::check_relative(&self.path).ok()?;
        let (sub, name) = atomic::split(&self.path);
        let dir = Dir::open(&self.dir, sub).ok()?;
        let meta = dir.read_own(&Self::meta_name(name), MAX_EXISTING).ok()??;
        let meta: Meta = serde_json::from_slice(&meta).ok()?;
        let content = dir.read(name, MAX_EXISTING).ok()??;
        let value = self.format.read_token(&content, &self.env_name)?;
        if *meta.source != *self.source || fingerprint(value.as_bytes()) != meta.sha256 {
            return None;
        }
        let mut token = Token::new(
            value.into(),
            meta.token_type.into_owned(),
            meta.issued_at,
            meta.expires_at,
        );
        token.metadata = meta.metadata.into_owned();
        Some(token)
    }
}

impl Sink for FileSink {
    /// `file:<dir>/<path>` — bounded by the config, used as the metric label.
    fn label(&self) -> String {
        format!("file:{}", self.dir.join(&self.path).display())
    }

    fn write<'a>(
        &'a self,
        token: &'a Token,
        instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        let (sink, token, instance) = (self.clone(), token.clone(), instance.clone());
        Box::pin(self.volume.run(move || sink.write_blocking(&token, &instance)))
    }

    fn remove<'a>(&'a self, instance: &'a InstanceId) -> BoxFuture<'a, Result<(), SinkError>> {
        let (sink, instance) = (self.clone(), instance.clone());
        Box::pin(self.volume.run(move || sink.remove_blocking(&instance)))
    }

    fn retire<'a>(
        &'a self,
        instances: &'a [InstanceId],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let (sink, instances) = (self.clone(), instances.to_vec());
        Box::pin(self.volume.run(move || {
            instances.iter().try_for_each(|i| sink.delete_blocking(i))
        }))
    }

    fn file_of(&self, instance: &InstanceId) -> Option<PathBuf> {
        Some(self.dir.join(self.relative(instance).ok()?))
    }

    fn load_existing(&self) -> BoxFuture<'_, Option<Token>> {
        let sink = self.clone();
        Box::pin(async move {
            blocking(move || Ok::<_, AtomicError>(sink.load_existing_blocking()))
                .await
                .ok()
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Duration;

    fn single() -> InstanceId {
        InstanceId::single()
    }

    fn tenant(id: &str) -> InstanceId {
        InstanceId::tenant(id).unwrap()
    }

    fn sink_config() -> FileSinkConfig {
        FileSinkConfig {
            path: "a/t".into(),
            format: Format::Raw,
            dir: None,
            mode: None,
            uid: None,
            gid: None,
            env_name: None,
        }
    }

    fn defaults(dir: &Path) -> FileDefaults {
        FileDefaults {
            dir: dir.to_owned(),
            ..FileDefaults::default()
        }
    }

    fn sink(dir: &Path, format: Format) -> FileSink {
        let config = FileSinkConfig {
            format,
            ..sink_config()
        };
        config.file_sink("orders", &defaults(dir))
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
            assert!(s.load_existing_blocking().is_none());
            let t = token("tok-1");
            s.write_blocking(&t, &single()).unwrap();
            let back = s.load_existing_blocking().unwrap();
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
            ..sink_config()
        };
        let s = config.file_sink("m", &defaults(dir.path()));
        assert!(s.is_per_instance());
        s.write_blocking(&token("tok-a"), &tenant("tenant-a")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("mdsp/tenant-a.token")).unwrap(),
            "tok-a"
        );
        // A hostile tenant id never becomes an `InstanceId`, so it cannot reach a path; the one
        // id that can, the single instance, is refused by a per-tenant sink.
        for bad in ["../x", "a/b", ".hidden", ""] {
            assert!(InstanceId::tenant(bad).is_err(), "{bad}");
        }
        assert_eq!(
            s.write_blocking(&token("t"), &single())
                .unwrap_err()
                .reason(),
            "path_escape"
        );
        s.remove_blocking(&tenant("tenant-a")).unwrap();
        assert!(!dir.path().join("mdsp/tenant-a.token").exists());
        assert!(!dir.path().join("mdsp/.tenant-a.token.meta.json").exists());
        assert!(s.load_existing_blocking().is_none());
    }

    #[test]
    fn a_file_whose_metadata_names_another_source_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = sink(dir.path(), Format::Raw);
        theirs.write_blocking(&token("theirs"), &single()).unwrap();
        let mut ours = sink(dir.path(), Format::Raw);
        ours.source = "payments".into();
        let err = ours.write_blocking(&token("ours"), &single()).unwrap_err();
        assert_eq!(err.reason(), "conflict");
        assert!(err.to_string().contains("says source `orders` writes this file"), "{err}");
        assert_eq!(fs::read_to_string(dir.path().join("a/t")).unwrap(), "theirs");
        assert!(ours.write_blocking(&token("again"), &single()).is_err(), "still refused");
        // The owner itself goes on writing.
        theirs.write_blocking(&token("theirs-2"), &single()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a/t")).unwrap(), "theirs-2");
        // Nor is it deleted when an instance of the other source goes away.
        let per_tenant = |source: &str| {
            let config = FileSinkConfig {
                path: "{tenant}.token".into(),
                ..sink_config()
            };
            config.file_sink(source, &defaults(dir.path()))
        };
        per_tenant("orders").write_blocking(&token("o"), &tenant("t1")).unwrap();
        per_tenant("payments").remove_blocking(&tenant("t1")).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("t1.token")).unwrap(), "o");
    }

    #[test]
    fn metadata_has_the_token_mode_and_another_owners_is_not_believed() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), Format::Raw);
        s.write_blocking(&token("tok-1"), &single()).unwrap();
        let meta = dir.path().join("a/.t.meta.json");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&meta), 0o440, "not world-readable: the hash aids offline guessing");
        assert_eq!(mode(&meta), mode(&dir.path().join("a/t")));
        assert!(s.load_existing_blocking().is_some());
        if fs::metadata(&meta).unwrap().uid() == 0 {
            // Root can hand the record to another user, as a planted one would be.
            std::os::unix::fs::chown(&meta, Some(4321), None).unwrap();
            assert!(s.load_existing_blocking().is_none(), "another user's record");
        }
    }

    #[test]
    fn mismatched_metadata_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), Format::Raw);
        s.write_blocking(&token("tok-1"), &single()).unwrap();
        std::fs::write(dir.path().join("a/t"), "someone-else").unwrap();
        assert!(s.load_existing_blocking().is_none());
    }
}
