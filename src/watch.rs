//! Telling when files that are replaced in place change: a ConfigMap or Secret volume (the
//! kubelet swaps a `..data` symlink to a new timestamped directory; the file's own inode never
//! changes), an editor's write-to-temp-and-rename, an in-place write, a delete and recreate.
//!
//! `notify` (inotify on Linux) delivers the raw events; this wrapper adds what it leaves to the
//! caller (its docs, "Known Problems", and issues #165, #403, #709):
//! - it watches each file's **directory**, never the file: a watch on a file (or through the
//!   `..data` symlink) dies with the directory the kubelet deletes (kubernetes#112677);
//! - it keeps the events that can change a watched file's content (a write, a create, a
//!   rename or removal of the file or of `..data`), and drops the rest: reads (`Access`, our
//!   own included), other `..`-prefixed entries (the kubelet's timestamped directories and
//!   `..data_tmp`), other files;
//! - it debounces: a change is reported once nothing relevant happened for `quiet` (a burst of
//!   writes is one change; `notify-debouncer-full` reports a create-then-rename as a create of
//!   the target, which a rename filter then misses);
//! - it re-arms: when a watched directory is deleted or replaced (a new inode at the same
//!   path), the watcher is rebuilt. 8.x leaves a stale entry after IN_DELETE_SELF (#709), so a
//!   fresh watcher is made rather than the old one re-used;
//! - every `backstop` it re-arms if needed and says so, so the caller can compare contents in
//!   case an event was lost (a queue overflow, a directory that did not exist yet).
//!
//! Idle, it costs one blocked inotify thread and a timer every `backstop`: no polling.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The symlink the kubelet swaps to update a projected volume.
pub const DATA_LINK: &str = "..data";

/// The longest a steady stream of events can hold a change back, in units of `quiet`.
const MAX_QUIET_PERIODS: u32 = 10;

/// What [`FileWatch::changed`] reports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Watched files that may have changed.
    pub files: BTreeSet<PathBuf>,
    /// The periodic look: nothing may have happened; contents are worth comparing.
    pub backstop: bool,
}

/// Watches a set of files through their directories.
pub struct FileWatch {
    /// Watched files by directory (made absolute, symlinks kept as written).
    dirs: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    /// The (device, inode) each directory had when it was watched; `None`: not watched (it
    /// did not exist, or the watch failed).
    armed: BTreeMap<PathBuf, Option<(u64, u64)>>,
    watcher: Option<RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    sender: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    quiet: Duration,
    backstop: Duration,
}

impl FileWatch {
    /// Watches `files`: a change is reported after `quiet` without further events, and every
    /// `backstop` a look is suggested.
    pub fn new(
        files: impl IntoIterator<Item = PathBuf>,
        quiet: Duration,
        backstop: Duration,
    ) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        let mut dirs: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for file in files {
            let Ok(file) = std::path::absolute(&file) else {
                continue;
            };
            if let Some(dir) = file.parent() {
                dirs.entry(dir.to_owned()).or_default().insert(file.clone());
            }
        }
        let mut watch = FileWatch {
            armed: dirs.keys().map(|d| (d.clone(), None)).collect(),
            dirs,
            watcher: None,
            events,
            sender,
            quiet,
            backstop,
        };
        watch.arm();
        watch
    }

    /// The files watched.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.dirs.values().flatten()
    }

    /// (Re)builds the watcher over every directory that exists now.
    fn arm(&mut self) {
        self.watcher = None;
        if self.dirs.is_empty() {
            return;
        }
        let sender = self.sender.clone();
        let mut watcher = match notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch files for changes; relying on the periodic check");
                return;
            }
        };
        for (dir, armed) in &mut self.armed {
            *armed = None;
            let Ok(meta) = std::fs::metadata(dir) else {
                continue; // not there (yet): the periodic check tries again
            };
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => *armed = Some((meta.dev(), meta.ino())),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch a directory for changes; relying on the periodic check")
                }
            }
        }
        self.watcher = Some(watcher);
    }

    /// Whether a directory is gone, is new, or is another inode than the one watched.
    fn needs_rearming(&self) -> bool {
        self.armed.iter().any(|(dir, armed)| {
            let now = std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
            now != *armed
        })
    }

    /// Waits until a watched file may have changed (debounced), or the backstop period has
    /// passed. Never returns while no file is watched.
    pub async fn changed(&mut self) -> Change {
        if self.dirs.is_empty() {
            return std::future::pending().await;
        }
        let mut change = Change::default();
        let backstop = tokio::time::sleep(self.backstop);
        tokio::pin!(backstop);
        // Wait for the first relevant event.
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    if let Some(event) = event {
                        self.take(event, &mut change.files);
                    }
                    if !change.files.is_empty() {
                        break;
                    }
                }
                _ = &mut backstop => {
                    if self.needs_rearming() {
                        debug!("a watched directory was replaced; watching it again");
                        self.arm();
                    }
                    change.backstop = true;
                    return change;
                }
            }
        }
        // Then for quiet.
        let give_up = Instant::now() + self.quiet * MAX_QUIET_PERIODS;
        loop {
            let until = (Instant::now() + self.quiet).min(give_up);
            tokio::select! {
                event = self.events.recv() => if let Some(event) = event {
                    self.take(event, &mut change.files);
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        if self.needs_rearming() {
            self.arm();
        }
        change
    }

    /// Adds the watched files `event` may have changed to `files`.
    fn take(&mut self, event: notify::Result<notify::Event>, files: &mut BTreeSet<PathBuf>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                debug!(error = %e, "file watch error; looking at every file");
                files.extend(self.files().cloned());
                return;
            }
        };
        if event.need_rescan() {
            files.extend(self.files().cloned());
            return;
        }
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
                | EventKind::Modify(ModifyKind::Metadata(_))
                | EventKind::Any
        );
        if !relevant {
            return;
        }
        for path in &event.paths {
            // The watched directory itself was removed or renamed: all of it may have changed.
            if let Some(watched) = self.dirs.get(path) {
                files.extend(watched.iter().cloned());
                continue;
            }
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let Some(watched) = self.dirs.get(dir) else {
                continue;
            };
            if name == DATA_LINK {
                files.extend(watched.iter().cloned());
            } else if !name.to_string_lossy().starts_with("..") {
                files.extend(
                    watched
                        .iter()
                        .filter(|f| f.file_name() == Some(name))
                        .cloned(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const QUIET: Duration = Duration::from_millis(100);
    const BACKSTOP: Duration = Duration::from_millis(400);

    /// The next change, failing the test after 5 s.
    async fn next(watch: &mut FileWatch) -> Change {
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("no change reported within 5 s")
    }

    #[tokio::test]
    async fn sees_writes_and_data_swaps_ignores_the_rest_and_survives_a_replaced_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("config");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut watch = FileWatch::new([file.clone()], QUIET, BACKSTOP);
        let only_file = Change {
            files: [file.clone()].into(),
            backstop: false,
        };

        std::fs::write(&file, "b").unwrap();
        assert_eq!(next(&mut watch).await, only_file);

        // A kubelet-style swap: `..data_tmp` renamed over `..data`.
        std::fs::create_dir(dir.join("..2026_1")).unwrap();
        symlink("..2026_1", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join(DATA_LINK)).unwrap();
        assert_eq!(next(&mut watch).await, only_file);

        // Other files, other `..` entries, and reads: only the backstop follows.
        std::fs::write(dir.join("other.yaml"), "x").unwrap();
        std::fs::create_dir(dir.join("..2026_2")).unwrap();
        let _ = std::fs::read(&file).unwrap();
        let quiet = next(&mut watch).await;
        assert_eq!(
            quiet,
            Change {
                files: BTreeSet::new(),
                backstop: true
            }
        );

        // The directory is replaced by another one at the same path: watched again.
        std::fs::rename(&dir, root.path().join("old")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        // Whatever the move itself reports, the watch is re-armed by the next backstop.
        let _ = next(&mut watch).await;
        let rearmed = next(&mut watch).await;
        assert!(rearmed.backstop || rearmed == only_file, "{rearmed:?}");
        std::fs::write(&file, "c").unwrap();
        assert_eq!(next(&mut watch).await, only_file);
    }

    #[tokio::test]
    async fn a_burst_of_writes_is_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        let mut watch = FileWatch::new([file.clone()], QUIET, Duration::from_secs(60));
        for i in 0..10 {
            std::fs::write(&file, i.to_string()).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(next(&mut watch).await.files, [file].into());
        let again = tokio::time::timeout(QUIET * 3, watch.changed()).await;
        assert!(again.is_err(), "a second change for one burst: {again:?}");
    }
}
