//! The process's memory, as the binary manages it (declared by `main.rs`: the library forbids
//! `unsafe`): the allocator, and giving back the pages of code that only start-up ran.
//!
//! A sidecar's resident memory is mostly pages of its own executable. The static build places
//! the functions a running agent executes side by side, those of the steady state first
//! (`scripts/link.sh`), so once start-up is over the agent unmaps its code and constants: the
//! kernel keeps them in the page cache, and what runs afterwards maps back only its own pages.
//! BENCHMARKS.md ("Footprint and throughput") has the figures.

use std::time::Duration;

/// musl's allocator takes one global lock per call: with two runtime workers and the blocking
/// pool allocating at once it was a fifth of the agent's CPU at full load (BENCHMARKS.md
/// "Footprint and throughput"). mimalloc keeps per-thread heaps. Built without transparent
/// huge pages (`no_thp`): with them every thread's first allocation made 2 MiB resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (the Rust binding names no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the system at once instead of after mimalloc's default second: the
/// start-up burst of 10 000 sources otherwise peaks 20 MiB higher, and at a sidecar's pace
/// (a refresh every few minutes) the delay buys nothing.
pub fn tune_allocator() {
    // SAFETY: sets a process-wide integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// How long after `run` starts its start-up code is done with: parsing, building clients and
/// the first fetches of 10 000 sources take about 2 s (BENCHMARKS.md). Giving pages back too
/// early costs only their mapping back.
pub const START_UP_SETTLED: Duration = Duration::from_secs(10);

/// A mapping of the executable that can be unmapped whole.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    resident_kib: u64,
}

/// Unmaps this process's read-only mappings of its executable (code and constants); returns
/// the KiB that were resident. The pages stay in the page cache, and code that runs later
/// maps its pages back on first use, from memory.
pub fn release_start_up_code() -> std::io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in releasable(&smaps, &exe.to_string_lossy()) {
        // SAFETY: the range is one whole read-only mapping of the executable file that holds
        // no private (written) page; dropping its page-table entries only makes the next
        // access read the same bytes from the page cache again. No Rust reference is
        // invalidated: the contents do not change.
        unsafe {
            rustix::mm::madvise(m.start as *mut _, m.len, rustix::mm::Advice::LinuxDontNeed)?
        };
        released += m.resident_kib;
    }
    Ok(released)
}

/// The mappings of `exe` in `smaps` that are read-only and hold only file pages. A read-only
/// mapping with private pages (RELRO: relocated, then write-protected) would lose its
/// relocations, and a writable one its data: neither is taken.
fn releasable(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<(Mapping, bool)> = None; // the mapping, and whether it qualifies
    let mut finish = |entry: Option<(Mapping, bool)>| {
        if let Some((m, true)) = entry {
            found.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            finish(current.take());
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let read_only = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-');
            let mapping = Mapping {
                start,
                len: end.saturating_sub(start),
                resident_kib: 0,
            };
            current = Some((mapping, read_only && path == exe));
        } else if let Some((m, qualifies)) = current.as_mut() {
            let kib = fields.next().and_then(|v| v.parse::<u64>().ok());
            match (first, kib) {
                ("Rss:", Some(kib)) => m.resident_kib = kib,
                ("Anonymous:", Some(kib)) if kib > 0 => *qualifies = false,
                _ => {}
            }
        }
    }
    finish(current.take());
    found
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn the_allocator_option_set_at_start_is_the_purge_delay() {
        // mimalloc's purge delay defaults to 1000 ms, and no other option does: a renumbered
        // enum in a newer mimalloc fails here instead of silently setting another option.
        // SAFETY: reads a process-wide integer option.
        let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, 1000);
    }

    const SMAPS: &str = "\
00200000-004c9000 r--p 00000000 fe:00 6973453                            /opt/token-agent
Size:               2852 kB
Rss:                1152 kB
Anonymous:             0 kB
004c9000-00ce1000 r-xp 002c8000 fe:00 6973453                            /opt/token-agent
Size:               8288 kB
Rss:                2976 kB
Anonymous:             0 kB
00ce1000-00ce7000 r--p 00ae0000 fe:00 6973453                            /opt/token-agent
Size:                 24 kB
Rss:                  24 kB
Anonymous:            24 kB
00ce7000-00cee000 rw-p 00ae6000 fe:00 6973453                            /opt/token-agent
Rss:                  28 kB
Anonymous:            28 kB
7f0000000000-7f0000021000 r-xp 00000000 fe:00 42                         /usr/lib/libother.so
Rss:                  64 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 rw-p 00000000 00:00 0 
Rss:                1348 kB
Anonymous:          1348 kB
";

    #[test]
    fn only_read_only_file_pages_of_the_executable_are_released() {
        let found = releasable(SMAPS, "/opt/token-agent");
        assert_eq!(
            found,
            [
                Mapping {
                    start: 0x200000,
                    len: 0x2c9000,
                    resident_kib: 1152
                },
                Mapping {
                    start: 0x4c9000,
                    len: 0x818000,
                    resident_kib: 2976
                },
            ],
            "RELRO (private pages), data, other files and the heap are never taken"
        );
        assert!(releasable(SMAPS, "/opt/other").is_empty());
    }

    /// Written before the release and read after it: writable data survives.
    static WRITTEN: AtomicU64 = AtomicU64::new(0);

    #[test]
    fn releasing_unmaps_code_and_the_process_runs_on() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let code_kib = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            releasable(&smaps, &exe.to_string_lossy())
                .iter()
                .map(|m| m.resident_kib)
                .sum::<u64>()
        };
        WRITTEN.store(0x5eed, Ordering::SeqCst);
        let before = code_kib();
        let released = release_start_up_code().unwrap();
        let after = code_kib();
        assert!(
            released > 0 && released >= before / 2,
            "{released} of {before} KiB"
        );
        assert!(
            after < before,
            "resident code: {before} KiB before, {after} KiB after"
        );
        // This test binary is dynamically linked with RELRO: had the release taken the
        // relocated, write-protected pages, the calls below (through them) would crash.
        let formatted = format!("{:?}", std::fs::metadata("/proc/self/exe").is_ok());
        assert_eq!(formatted, "true");
        assert_eq!(WRITTEN.load(Ordering::SeqCst), 0x5eed);
    }
}
