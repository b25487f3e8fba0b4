//! Which sink writes which place (a file, a Secret), so that a tenant id chosen by a remote API
//! never makes one sink overwrite what another writes.
//!
//! `validate` refuses configurations where a `{tenant}` pattern can produce another sink's
//! target; this is the run-time guard behind it, for what a pattern check cannot see (a
//! configuration built without `validate`, a case the check misses). The first sink to claim a
//! place keeps it until its tenant goes away; any other is refused with reason `conflict` and
//! nothing is written.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Reason;

/// A sink: the name of its source and its position in the source's `sinks:` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub source: String,
    pub sink: usize,
}

#[derive(Default)]
pub(super) struct Places {
    owners: Mutex<HashMap<Box<str>, Owner>>,
}

/// A sink was about to write a place another sink owns.
#[derive(Debug, thiserror::Error)]
#[error(
    "{place} is written by source `{}` (sinks[{}]): refusing to overwrite it (a tenant id collides with another sink's target)",
    owner.source,
    owner.sink
)]
pub struct PlaceTaken {
    place: String,
    owner: Owner,
}

impl Reason for PlaceTaken {
    fn reason(&self) -> &'static str {
        "conflict"
    }
}

impl Places {
    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Owner>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `place` for `owner`: granted when free or already `owner`'s.
    pub fn claim(&self, place: &str, owner: &Owner) -> Result<(), PlaceTaken> {
        let mut owners = self.owners();
        match owners.get(place) {
            Some(held) if held != owner => Err(PlaceTaken {
                place: place.to_owned(),
                owner: held.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                owners.insert(place.into(), owner.clone());
                Ok(())
            }
        }
    }

    /// Gives `place` up, if `owner` holds it (its tenant went away and its output is removed).
    pub fn release(&self, place: &str, owner: &Owner) {
        let mut owners = self.owners();
        if owners.get(place) == Some(owner) {
            owners.remove(place);
        }
    }

    /// Gives up every place of `source` (a reload removed or replaced it).
    pub fn release_source(&self, source: &str) {
        self.owners().retain(|_, owner| owner.source != source);
    }
}
