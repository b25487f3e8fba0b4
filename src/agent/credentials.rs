//! Credential files that change: a source backing off after a failure (`invalid_client`, say)
//! fetches again within seconds of its Secret being fixed, not when a backoff of up to
//! `retry.max` ends. Files are read afresh at every fetch anyway; this only moves the next
//! fetch forward, and only for a source that is failing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::supervise::Supervisor;
use crate::watch::FileWatch;

/// Quiet time after the last event before a change counts (a Secret update is one swap).
const QUIET: Duration = Duration::from_secs(1);

/// How often a replaced directory is looked for (the contents need no backstop: they are read
/// at every fetch).
const REARM_CHECK: Duration = Duration::from_secs(60);

/// Watches the files every running source reads.
pub(super) struct CredentialWatch {
    watch: FileWatch,
}

impl CredentialWatch {
    pub fn new(supervisor: &Supervisor) -> Self {
        let files = supervisor
            .members()
            .flat_map(|m| m.source.print.files.iter().cloned());
        CredentialWatch {
            watch: FileWatch::new(files, QUIET, REARM_CHECK),
        }
    }

    /// The credential files that changed (never returns while none is watched).
    pub async fn changed(&mut self) -> BTreeSet<PathBuf> {
        loop {
            let change = self.watch.changed().await;
            if !change.files.is_empty() {
                return change.files;
            }
        }
    }

    /// Tells every source that reads one of `files`.
    pub fn poke(&self, files: &BTreeSet<PathBuf>, supervisor: &Supervisor) {
        for member in supervisor.members() {
            let reads = member.source.print.files.iter();
            if reads
                .filter_map(|f| std::path::absolute(f).ok())
                .any(|f| files.contains(&f))
            {
                member.source.credentials_changed.notify_one();
            }
        }
    }
}
