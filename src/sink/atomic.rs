//! Crash-safe file replacement inside a directory the file may not escape.
//!
//! Method: open the target's directory once (never following a symlink below the configured
//! sink directory), create a temporary file in it, write, apply mode and owner, fsync, and
//! `renameat(2)` it over the target, then fsync the directory. `rename` within one file
//! system is atomic, so a reader opening the path sees either the old complete file or the new
//! complete file, never a partial, empty or mixed one — even if the agent is killed at any
//! instant (a killed write leaves at most a `.tmp-*` file, which is never reused and is swept
//! at the next start). The fsyncs make the new content survive a power loss once the rename is
//! reported done. Working relative to the open directory also costs fewer system calls than
//! resolving the path on every write (see BENCHMARKS.md).
//!
//! Unlike kubelet's `..data` symlink swap this does not update several files as one unit;
//! each file carries everything a reader needs (the `json` format holds token and expiry
//! together). Like every rename-based method, a `subPath` mount of a single file never sees
//! the replacement: mount the directory.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, fsync, mkdirat, openat, renameat, statat, unlinkat,
};
use rustix::io::Errno;

use crate::error::Reason;

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

impl Reason for AtomicError {
    fn reason(&self) -> &'static str {
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

/// An open directory that files are replaced in. Every operation is relative to this handle
/// (`openat`, `renameat`), so a symlink planted in the path cannot redirect a write once the
/// directory is open, and a replacement costs a handful of system calls with no path walk.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens `base` and then each directory of `sub` below it, creating what is missing.
    /// `base` comes from the configuration and may itself be a symlink (`/var/run`); nothing
    /// below it is followed: a symlinked directory inside the sink directory is refused.
    pub fn open(base: &Path, sub: &Path) -> Result<Dir, AtomicError> {
        check_subdirectory(sub).map_err(|_| escape(sub, base))?;
        let mut fd = match open_directory(CWD, base, OFlags::empty()) {
            Err(e) if e == Errno::NOENT => {
                fs::create_dir_all(base).map_err(io_err("create directory", base))?;
                open_directory(CWD, base, OFlags::empty())
            }
            other => other,
        }
        .map_err(|e| io_err("open directory", base)(e.into()))?;
        let mut path = base.to_owned();
        for component in sub.components() {
            let Component::Normal(name) = component else {
                continue; // `.`; `..` and roots were refused above
            };
            path.push(name);
            fd = open_subdirectory(&fd, name).map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR
                    if statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink) =>
                {
                    escape(&path, base)
                }
                e => io_err("open directory", &path)(e.into()),
            })?;
        }
        Ok(Dir { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `name` is a regular file holding exactly `content` (a symlink never is).
    pub fn holds(&self, name: &OsStr, content: &[u8]) -> bool {
        self.read(name, content.len() as u64)
            .is_ok_and(|existing| existing.as_deref() == Some(content))
    }

    /// The content of the regular file `name`, `None` if it is missing or larger than `limit`.
    /// Symlinks are not followed.
    pub fn read(&self, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
        self.read_if(name, limit, |_| true)
    }

    /// Like [`Dir::read`], for a file only the agent's own user may have made: `None` if
    /// another uid owns it.
    pub fn read_own(&self, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let me = rustix::process::geteuid().as_raw();
        self.read_if(name, limit, |meta| meta.uid() == me)
    }

    fn read_if(
        &self,
        name: &OsStr,
        limit: u64,
        accept: impl Fn(&std::fs::Metadata) -> bool,
    ) -> io::Result<Option<Vec<u8>>> {
        let fd = match openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if e == Errno::NOENT || e == Errno::LOOP => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() > limit || !accept(&meta) {
            return Ok(None);
        }
        let mut content = Vec::with_capacity(meta.len() as usize);
        Read::take(&mut file, limit).read_to_end(&mut content)?;
        Ok(Some(content))
    }

    /// Atomically makes `name` hold `content` with `owner` applied: a temporary file in this
    /// directory, written, chmod-ed (and chown-ed), optionally fsync-ed, then renamed over
    /// `name`. Call [`Dir::sync`] afterwards to make the rename itself durable.
    pub fn replace(
        &self,
        name: &OsStr,
        content: &[u8],
        owner: Ownership,
        durable: bool,
    ) -> Result<(), AtomicError> {
        let (temp_name, fd) = self.create_temporary(name)?;
        let written = (|| {
            let mut file = File::from(fd);
            file.write_all(content).map_err(|e| ("write", e))?;
            apply_owner(&file, owner)?;
            if durable {
                file.sync_all().map_err(|e| ("fsync", e))?;
            }
            renameat(&self.fd, &temp_name, &self.fd, name).map_err(|e| ("rename into", e.into()))
        })();
        written.map_err(|(op, source)| {
            let _ = unlinkat(&self.fd, &temp_name, AtFlags::empty());
            let path = self.path.join(name);
            match source.raw_os_error() {
                Some(code) if code == Errno::ISDIR.raw_os_error() => {
                    AtomicError::IsDirectory { path }
                }
                _ => AtomicError::Io { op, path, source },
            }
        })
    }

    /// `.tmp-<name>-<random>`, created exclusively (a leftover of a killed write is never
    /// reused; the sweep at start removes those).
    fn create_temporary(&self, name: &OsStr) -> Result<(OsString, OwnedFd), AtomicError> {
        let mut attempt = 0;
        loop {
            let mut temp_name = OsString::from(".tmp-");
            temp_name.push(name);
            temp_name.push(format!("-{:016x}", fastrand::u64(..)));
            match openat(
                &self.fd,
                &temp_name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            ) {
                Ok(fd) => return Ok((temp_name, fd)),
                Err(e) if e == Errno::EXIST && attempt < 8 => attempt += 1,
                Err(e) => {
                    return Err(io_err("create temporary file in", &self.path)(e.into()));
                }
            }
        }
    }

    /// Re-applies mode and owner to an existing `name`, so a drifted mode is repaired.
    pub fn enforce(&self, name: &OsStr, owner: Ownership) -> Result<(), AtomicError> {
        let path = || self.path.join(name);
        let fd = openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &path())(e.into()))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(io_err("stat", &path()))?;
        let drifted = meta.mode() & 0o7777 != owner.mode
            || owner.uid.is_some_and(|u| u != meta.uid())
            || owner.gid.is_some_and(|g| g != meta.gid());
        if drifted {
            apply_owner(&file, owner).map_err(|(op, e)| io_err(op, &path())(e))?;
        }
        Ok(())
    }

    /// Removes `name` if it exists.
    pub fn remove(&self, name: &OsStr) -> Result<(), AtomicError> {
        match unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(e) if e == Errno::NOENT => Ok(()),
            Err(e) => Err(io_err("remove", &self.path.join(name))(e.into())),
        }
    }

    /// fsync of the directory: renames and removals done so far survive a power loss.
    pub fn sync(&self) -> Result<(), AtomicError> {
        fsync(&self.fd).map_err(|e| io_err("fsync directory", &self.path)(e.into()))
    }
}

fn open_directory<Fd: AsFd>(at: Fd, path: &Path, extra: OFlags) -> rustix::io::Result<OwnedFd> {
    openat(
        at,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
}

fn open_subdirectory(parent: &OwnedFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    match open_directory(parent, Path::new(name), OFlags::NOFOLLOW) {
        Err(e) if e == Errno::NOENT => {
            match mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(e) if e == Errno::EXIST => {}
                Err(e) => return Err(e),
            }
            open_directory(parent, Path::new(name), OFlags::NOFOLLOW)
        }
        other => other,
    }
}

/// `check_relative` for a directory part, which may be empty or `.` (`./a.token`).
fn check_subdirectory(sub: &Path) -> Result<(), String> {
    if sub.components().all(|c| c == Component::CurDir) {
        return Ok(());
    }
    check_relative(sub)
}

fn escape(path: &Path, dir: &Path) -> AtomicError {
    AtomicError::Escape {
        path: path.to_owned(),
        dir: dir.to_owned(),
    }
}

/// Splits a checked relative path into its directory part and file name.
pub fn split(relative: &Path) -> (&Path, &OsStr) {
    (
        relative.parent().unwrap_or(Path::new("")),
        relative.file_name().unwrap_or_default(),
    )
}

/// Atomically and durably makes `path` hold `content` (for the agent's own state files).
pub fn write(path: &Path, content: &[u8], owner: Ownership) -> Result<(), AtomicError> {
    let (parent, name) = split(path);
    let dir = Dir::open(parent, Path::new(""))?;
    dir.replace(name, content, owner, true)?;
    dir.sync()
}

fn apply_owner(file: &File, owner: Ownership) -> Result<(), (&'static str, io::Error)> {
    if owner.uid.is_some() || owner.gid.is_some() {
        std::os::unix::fs::fchown(file, owner.uid, owner.gid).map_err(|e| ("chown", e))?;
    }
    file.set_permissions(Permissions::from_mode(owner.mode))
        .map_err(|e| ("chmod", e))
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

/// Removes `path` if it exists, durably (for the agent's own state files).
pub fn remove(path: &Path) -> Result<(), AtomicError> {
    let (parent, name) = split(path);
    let dir = Dir::open(parent, Path::new(""))?;
    dir.remove(name)?;
    dir.sync()
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
    fn replaces_with_mode_and_leaves_no_temporary() {
        let base = tempfile::tempdir().unwrap();
        let dir = Dir::open(base.path(), Path::new("sub/deeper")).unwrap();
        let path = base.path().join("sub/deeper/t");
        let name = OsStr::new("t");
        assert!(!dir.holds(name, b""), "a missing file holds nothing");
        dir.replace(name, b"one", OWNER, true).unwrap();
        dir.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o440);
        assert!(dir.holds(name, b"one"));
        assert!(!dir.holds(name, b"two"));
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        dir.enforce(name, OWNER).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().mode() & 0o7777,
            0o440,
            "a drifted mode is repaired"
        );
        dir.replace(name, b"two", OWNER, false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        assert_eq!(dir.read(name, 2).unwrap(), None, "over the limit");
        dir.remove(name).unwrap();
        dir.remove(name).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
        let base = tempfile::tempdir().unwrap();
        let dir = Dir::open(base.path(), Path::new("")).unwrap();
        let name = OsStr::new("t");
        dir.replace(name, b"old", OWNER, true).unwrap();
        // A directory in the way of the rename: the write fails after the temporary exists.
        fs::create_dir(base.path().join("d")).unwrap();
        fs::write(base.path().join("d/x"), b"").unwrap();
        let err = dir
            .replace(OsStr::new("d"), b"new", OWNER, true)
            .unwrap_err();
        assert_eq!(err.reason(), "not_a_file", "{err}");
        assert_eq!(fs::read(base.path().join("t")).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
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
            crate::skipped::skip_unless_required(
                "TOKEN_AGENT_REQUIRE_MOUNT",
                "sink::atomic::owner_and_group_are_applied_on_every_write",
                "chown needs root (or CAP_CHOWN)",
            );
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("t");
        let owner = Ownership {
            mode: 0o440,
            uid: Some(1234),
            gid: Some(5678),
        };
        write(&path, b"one", owner).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        let dir = Dir::open(base.path(), Path::new("")).unwrap();
        dir.enforce(OsStr::new("t"), owner).unwrap();
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
        fs::create_dir(dir.path().join("ok")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("ok/evil")).unwrap();
        for sub in ["evil", "ok/evil", "evil/deeper"] {
            let err = Dir::open(dir.path(), Path::new(sub)).unwrap_err();
            assert_eq!(err.reason(), "path_escape", "{sub}: {err}");
        }
        let err = Dir::open(dir.path(), Path::new("../x")).unwrap_err();
        assert_eq!(err.reason(), "path_escape");
        for fine in ["", ".", "./ok"] {
            assert!(Dir::open(dir.path(), Path::new(fine)).is_ok(), "{fine}");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn planted_symlink_file_is_replaced_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("t")).unwrap();
        let open = Dir::open(dir.path(), Path::new("")).unwrap();
        assert!(
            !open.holds(OsStr::new("t"), b"keep"),
            "symlinks are not read"
        );
        open.replace(OsStr::new("t"), b"new", OWNER, true).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        let path = dir.path().join("t");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    }
}
