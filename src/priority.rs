//! When the agent is short of CPU, finishing refreshes goes before starting more: the runtime's
//! threads (fetches, the endpoints) run one nice level below the threads that write tokens.
//!
//! Measured on a saturated 2-core machine (BENCHMARKS.md, "Footprint and throughput"): with
//! equal weights the workers, busy with 32 fetches at once, take CPU the writer threads need.
//! One level lower gave ~4 % more refreshes for less CPU each; six levels starved the fetches.
//! Without contention nice levels change nothing.
//!
//! A thread inherits its creator's level and an unprivileged process cannot raise one again,
//! so writer threads are not started by the lowered workers but by a thread that stays at the
//! process's own level ([`start_full_priority_starter`]).

use std::io;
use std::sync::{OnceLock, mpsc};
use std::thread;

use rustix::process::{getpriority_process, setpriority_process};

/// Nice levels the runtime's threads stay below the writer threads.
pub const RUNTIME_NICE_OFFSET: i32 = 1;

/// The weakest nice level Linux has.
const WEAKEST: i32 = 19;

type Start = Box<dyn FnOnce() + Send>;

/// The channel to the thread that starts full-priority threads, once it runs.
static STARTER: OnceLock<mpsc::Sender<Start>> = OnceLock::new();

/// The process's own level, read by the first thread that asks: `main`, as it starts the
/// starter. A blocking thread that a lowered worker spawns is lowered from here, not twice.
static PROCESS_LEVEL: OnceLock<Option<i32>> = OnceLock::new();

fn process_level() -> Option<i32> {
    *PROCESS_LEVEL.get_or_init(|| getpriority_process(None).ok())
}

/// Starts the thread that starts threads at the calling thread's level. Call it once, before
/// any thread is lowered (in `main`, before the runtime exists).
pub fn start_full_priority_starter() -> io::Result<()> {
    process_level();
    let (to_starter, starts) = mpsc::channel::<Start>();
    thread::Builder::new()
        .name("thread-starter".into())
        .stack_size(64 * 1024)
        .spawn(move || starts.into_iter().for_each(|start| start()))?;
    let _ = STARTER.set(to_starter);
    Ok(())
}

/// Spawns `work` on a new thread at the process's own level: through the starter when one
/// runs (the caller waits the moment it takes, as it would spawning the thread itself), else
/// from the calling thread, whose level the new one then inherits.
pub fn spawn_full_priority(
    builder: thread::Builder,
    work: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    let Some(starter) = STARTER.get() else {
        return builder.spawn(work).map(drop);
    };
    let gone = || io::Error::other("the thread starter has ended");
    let (reply, started) = mpsc::sync_channel(1);
    let start: Start = Box::new(move || {
        let _ = reply.send(builder.spawn(work).map(drop));
    });
    starter.send(start).map_err(|_| gone())?;
    started.recv().map_err(|_| gone())?
}

/// Puts the calling thread [`RUNTIME_NICE_OFFSET`] levels below the process's own: the
/// runtime calls it as each of its threads starts. Best effort: nothing depends on it, and a
/// seccomp profile may refuse the call.
pub fn lower_this_thread() {
    if let Some(level) = process_level() {
        let _ = setpriority_process(None, (level + RUNTIME_NICE_OFFSET).min(WEAKEST));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Spawn = fn(thread::Builder, Box<dyn FnOnce() + Send>) -> io::Result<()>;

    fn spawn_here(builder: thread::Builder, work: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        builder.spawn(work).map(drop)
    }

    /// From a lowered thread, spawns one by `spawn` (which lowers itself too if `lowers`):
    /// the two threads' levels.
    fn levels(spawn: Spawn, lowers: bool) -> (i32, i32) {
        thread::spawn(move || {
            lower_this_thread();
            let lowered = getpriority_process(None).unwrap();
            let (tx, rx) = mpsc::channel();
            let work = Box::new(move || {
                if lowers {
                    lower_this_thread();
                }
                tx.send(getpriority_process(None).unwrap()).unwrap();
            });
            spawn(thread::Builder::new(), work).unwrap();
            (lowered, rx.recv().unwrap())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn runtime_threads_sit_one_level_below_the_writer_threads() {
        // The test thread has the process's level, as `main` has.
        let base = getpriority_process(None).unwrap();
        let lowered = (base + RUNTIME_NICE_OFFSET).min(WEAKEST);
        start_full_priority_starter().unwrap();
        // Why the starter exists: a thread a lowered one spawns inherits its level.
        assert_eq!(levels(spawn_here, false), (lowered, lowered));
        // A runtime thread a lowered one spawns (tokio's blocking pool) ends one level down.
        assert_eq!(levels(spawn_here, true), (lowered, lowered));
        assert_eq!(levels(spawn_full_priority, false), (lowered, base));
    }
}
