//! Crash-safe file replacement inside a directory the file may not escape.
//!
//! Method: write a temporary file in the target's own directory, apply mode and owner, fsync
//! it, `rename(2)` it over the target, then fsync the directory. `rename` within one file
//! system is atomic, so a reader opening the path sees either the old complete file or the new
//! complete file, never a partial, empty or mixed one — even if the agent is killed at any
//! instant (a killed write leaves at most a `.tmp-*` file, which the next write ignores and the
//! OS reclaims when it is removed). The fsyncs make the new content survive a power loss once
//! the rename is reported done.
//!
//! Unlike kubelet's `..data` symlink swap this does not update several files as one unit;
//! each file carries everything a reader needs (the `json` format holds token and expiry
//! together). Like every rename-based method, a `subPath` mount of a single file never sees
//! the replacement: mount the directory.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Owner and permissions applied to every written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The content changed and was replaced.
    Replaced,
    /// The file already held exactly these bytes (mode and owner were still enforced).
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("{path} escapes the sink directory {dir}")]
    Escape { path: PathBuf, dir: PathBuf },
    #[error("{path} is a directory")]
    IsDirectory { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl AtomicError {
    pub fn reason(&self) -> &'static str {
        match self {
            AtomicError::Escape { .. } => "path_escape",
            AtomicError::IsDirectory { .. } => "not_a_file",
            AtomicError::Io { source, .. } => match source.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "no_space",
                io::ErrorKind::ReadOnlyFilesystem => "read_only",
                io::ErrorKind::PermissionDenied => "permission_denied",
                _ => "io",
            },
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AtomicError + 'a {
    move |source| AtomicError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Checks a configured relative path without touching the disk: no `..`, not absolute, no
/// empty or overlong components (kubelet's limits: 255 per name, 4096 in all).
pub fn check_relative(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("is empty".into());
    }
    if path.as_os_str().len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    for component in path.components() {
        match component {
            Component::Normal(name) if name.len() > 255 => {
                return Err("has a name longer than 255 bytes".into());
            }
            Component::Normal(name) if name.to_string_lossy().starts_with("..") => {
                return Err("has a name starting with `..` (reserved)".into());
            }
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err("contains `..` and could escape the sink directory".into());
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("is absolute; give a path relative to `dir`".into());
            }
        }
    }
    if path.file_name().is_none() {
        return Err("does not name a file".into());
    }
    Ok(())
}

/// Resolves `dir/relative`, creating missing directories, and refuses any result whose parent
/// resolves (through symlinks) outside `dir`.
pub fn resolve(dir: &Path, relative: &Path) -> Result<PathBuf, AtomicError> {
    check_relative(relative).map_err(|_| AtomicError::Escape {
        path: relative.to_owned(),
        dir: dir.to_owned(),
    })?;
    let target = dir.join(relative);
    let parent = target.parent().unwrap_or(dir);
    fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    let real_dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
    let real_parent = fs::canonicalize(parent).map_err(io_err("resolve", parent))?;
    if !real_parent.starts_with(&real_dir) {
        return Err(AtomicError::Escape {
            path: target,
            dir: dir.to_owned(),
        });
    }
    let name = target.file_name().unwrap_or_default();
    Ok(real_parent.join(name))
}

/// Atomically makes `path` hold exactly `content` with `owner` applied.
pub fn write(path: &Path, content: &[u8], owner: Ownership) -> Result<Written, AtomicError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(AtomicError::IsDirectory {
                path: path.to_owned(),
            });
        }
        Ok(meta)
            if meta.file_type().is_file()
                && meta.len() == content.len() as u64
                && fs::read(path).is_ok_and(|existing| existing == content) =>
        {
            enforce(path, owner)?;
            return Ok(Written::Unchanged);
        }
        _ => {}
    }

    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{name}-"))
        .tempfile_in(parent)
        .map_err(io_err("create temporary file in", parent))?;
    temp.write_all(content)
        .map_err(io_err("write", temp.path()))?;
    apply_owner(temp.as_file(), temp.path(), owner)?;
    temp.as_file()
        .sync_all()
        .map_err(io_err("fsync", temp.path()))?;
    temp.persist(path).map_err(|e| AtomicError::Io {
        op: "rename into",
        path: path.to_owned(),
        source: e.error,
    })?;
    sync_dir(parent)?;
    Ok(Written::Replaced)
}

fn apply_owner(file: &File, path: &Path, owner: Ownership) -> Result<(), AtomicError> {
    if owner.uid.is_some() || owner.gid.is_some() {
        std::os::unix::fs::fchown(file, owner.uid, owner.gid).map_err(io_err("chown", path))?;
    }
    file.set_permissions(Permissions::from_mode(owner.mode))
        .map_err(io_err("chmod", path))
}

/// Re-applies mode and owner to an unchanged file, so a drifted mode is repaired.
fn enforce(path: &Path, owner: Ownership) -> Result<(), AtomicError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    use std::os::unix::fs::MetadataExt;
    let drifted = meta.mode() & 0o7777 != owner.mode
        || owner.uid.is_some_and(|u| u != meta.uid())
        || owner.gid.is_some_and(|g| g != meta.gid());
    if drifted {
        let file = File::open(path).map_err(io_err("open", path))?;
        apply_owner(&file, path, owner)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Removes temporary files a killed writer left in `dir`: names starting with one of
/// `prefixes` (`.tmp-<file name>-…`). One directory read however many sinks share `dir`; run
/// before any write starts, so no live temporary file can match.
pub fn remove_stale_temporaries(dir: &Path, prefixes: &std::collections::BTreeSet<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes `path` if it exists (used when a file must disappear, never for escape checks).
pub fn remove(path: &Path) -> Result<(), AtomicError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AtomicError::Io {
            op: "remove",
            path: path.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const OWNER: Ownership = Ownership {
        mode: 0o440,
        uid: None,
        gid: None,
    };

    #[test]
    fn relative_path_rules() {
        for ok in ["a.token", "sub/a.token", "./a"] {
            assert!(check_relative(Path::new(ok)).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for (bad, why) in [
            ("", "empty"),
            ("../a", "`..`"),
            ("sub/../../a", "`..`"),
            ("/etc/passwd", "absolute"),
            ("..data", "reserved"),
            (long.as_str(), "255"),
            (".", "does not name a file"),
        ] {
            let err = check_relative(Path::new(bad)).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn writes_replaces_and_skips_unchanged_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = resolve(dir.path(), Path::new("sub/t")).unwrap();
        assert_eq!(write(&path, b"one", OWNER).unwrap(), Written::Replaced);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o440);
        let inode = fs::metadata(&path).unwrap().ino();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert_eq!(write(&path, b"one", OWNER).unwrap(), Written::Unchanged);
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            inode,
            "unchanged content is not rewritten"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().mode() & 0o7777,
            0o440,
            "mode is enforced on every write"
        );
        assert_eq!(write(&path, b"two", OWNER).unwrap(), Written::Replaced);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn stale_temporaries_of_a_killed_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-t-abc123"), b"half").unwrap();
        fs::write(dir.path().join(".tmp-other-abc123"), b"keep").unwrap();
        remove_stale_temporaries(dir.path(), &[".tmp-t-".to_owned()].into_iter().collect());
        assert!(!dir.path().join(".tmp-t-abc123").exists());
        assert!(dir.path().join(".tmp-other-abc123").exists());
    }

    #[test]
    fn owner_and_group_are_applied_on_every_write() {
        if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
            assert!(
                std::env::var_os("TOKEN_AGENT_REQUIRE_MOUNT").is_none(),
                "CI runs as root"
            );
            return; // chown needs root (or CAP_CHOWN)
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let owner = Ownership {
            mode: 0o440,
            uid: Some(1234),
            gid: Some(5678),
        };
        write(&path, b"one", owner).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        assert_eq!(write(&path, b"one", owner).unwrap(), Written::Unchanged);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (1234, 5678),
            "a drifted owner is repaired"
        );
    }

    #[test]
    fn planted_symlink_directory_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let err = resolve(dir.path(), Path::new("evil/t")).unwrap_err();
        assert_eq!(err.reason(), "path_escape");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn planted_symlink_file_is_replaced_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("t")).unwrap();
        let path = resolve(dir.path(), Path::new("t")).unwrap();
        write(&path, b"new", OWNER).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    }
}
