//! Blocking file-system work of sinks, run on a few threads of its own per volume (file
//! system) instead of the runtime's shared blocking pool.
//!
//! - A hung volume (an NFS server gone, a stuck FUSE daemon) holds only its own volume's
//!   threads: sinks on other volumes, every fetch and `/healthz` go on, and the stuck write
//!   shows in `/healthz` (`SINK_WRITE_LIMIT`). A shared pool of N threads is exhausted by N
//!   hung writes, whichever volume the next write is for.
//! - Under load a volume's threads take write after write from their queue without sleeping:
//!   tokio's pool of 8 threads on a 2-core machine woke a thread for every write, a third of
//!   the agent's cost per refresh (BENCHMARKS.md, "Footprint and throughput").
//!
//! Threads start on demand and end after [`KEEP_ALIVE`] without work, so an idle agent keeps
//! none. Work that runs once per source (the sweep at start, reading tokens back) stays on
//! tokio's pool.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::{SinkError, TaskFailed, blocking};
use crate::priority;

/// Most threads per volume. One writes while it keeps up: on a fast volume (tmpfs) writes
/// into one directory take its lock in the kernel in turn, so a second thread mostly waits on
/// that lock, and waking it for every write cost more than it saved. On a slow one (a disk,
/// where each write waits for `fsync`) a second doubles the writes in flight. So a second is
/// given work only once the oldest waiting write has waited [`SLOW_VOLUME`], which is looked at
/// as writes arrive: behind a stuck write, the next write to the volume brings the second.
pub const THREADS_PER_VOLUME: usize = 2;

/// How long the oldest write may wait for the busy thread before another takes work: ~200
/// writes on tmpfs, a few on a disk that syncs in a millisecond or more.
pub const SLOW_VOLUME: Duration = Duration::from_millis(5);

/// How long a volume's thread waits for work before it ends (tokio's pool waits as long).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// The threads of one volume and their queue.
pub struct Volume {
    state: Mutex<Queue>,
    ready: Condvar,
    keep_alive: Duration,
    /// How long the oldest write waits before a second thread takes work ([`SLOW_VOLUME`]).
    slow: Duration,
}

#[derive(Default)]
struct Queue {
    /// Each with when it was queued.
    jobs: VecDeque<(Instant, Job)>,
    threads: usize,
    idle: usize,
    /// Idle threads already woken for a job, not yet running: a burst of jobs starts new
    /// threads instead of waking the same one twice.
    woken: usize,
}

/// Every volume sinks wrote to, by device number; shared by all sinks of the process, across
/// reloads.
static VOLUMES: LazyLock<Mutex<HashMap<u64, Arc<Volume>>>> = LazyLock::new(Mutex::default);

impl Volume {
    pub fn new(keep_alive: Duration, slow: Duration) -> Arc<Volume> {
        Arc::new(Volume {
            state: Mutex::default(),
            ready: Condvar::new(),
            keep_alive,
            slow,
        })
    }

    /// Runs `work` on this volume's threads and waits for its result without blocking the
    /// runtime.
    pub async fn run<T, E>(
        self: &Arc<Self>,
        work: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, SinkError>
    where
        T: Send + 'static,
        E: Into<SinkError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(work());
        }))?;
        match rx.await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(TaskFailed(
                "the sink's work ended without a result (it panicked)".into(),
            )
            .into()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A job never runs under the lock: a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(self: &Arc<Self>, job: Job) -> Result<(), TaskFailed> {
        let mut queue = self.lock();
        let now = Instant::now();
        queue.jobs.push_back((now, job));
        // Threads running a job, or woken for one.
        let busy = queue.threads - (queue.idle - queue.woken);
        let waited = queue.jobs.front().map(|(queued, _)| now - *queued);
        if busy > 0 && waited.is_some_and(|w| w < self.slow) {
            return Ok(()); // a busy thread takes it soon
        }
        if queue.idle > queue.woken {
            queue.woken += 1;
            self.ready.notify_one();
            return Ok(());
        }
        if queue.threads >= THREADS_PER_VOLUME {
            return Ok(()); // every thread is busy and takes the job next
        }
        queue.threads += 1;
        drop(queue);
        let volume = Arc::clone(self);
        // At the process's own level, above the runtime's threads (crate::priority).
        let started = priority::spawn_full_priority(
            std::thread::Builder::new().name("sink-volume".into()),
            move || volume.work(),
        );
        if let Err(e) = started {
            let mut queue = self.lock();
            queue.threads -= 1;
            if queue.threads == 0 {
                // No thread to run them: this caller hears why, the others that their work
                // ended without a result.
                queue.jobs.clear();
                return Err(TaskFailed(format!("cannot start a sink thread: {e}")));
            }
        }
        Ok(()) // queued: a running thread takes it
    }

    /// A thread's life: jobs until none came for `keep_alive`.
    fn work(&self) {
        let mut queue = self.lock();
        loop {
            if let Some((_, job)) = queue.jobs.pop_front() {
                drop(queue);
                // A panicking job drops its result sender (its caller gets an error); the
                // thread stays for the next one.
                let _ = catch_unwind(AssertUnwindSafe(job));
                queue = self.lock();
                continue;
            }
            queue.idle += 1;
            let (guard, wait) = self
                .ready
                .wait_timeout(queue, self.keep_alive)
                .unwrap_or_else(|e| e.into_inner());
            queue = guard;
            queue.idle -= 1;
            queue.woken = queue.woken.saturating_sub(1).min(queue.idle);
            if wait.timed_out() && queue.jobs.is_empty() {
                queue.threads -= 1;
                return;
            }
        }
    }

    /// Threads alive now (for tests).
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.lock().threads
    }

    /// Jobs waiting for a thread (for tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().jobs.len()
    }
}

/// The volume of one sink directory, found on first use (a `stat` on tokio's pool, so a hung
/// volume cannot block the runtime even there).
#[derive(Debug)]
pub struct VolumeOf {
    dir: PathBuf,
    volume: OnceLock<Arc<Volume>>,
}

impl VolumeOf {
    pub fn new(dir: &Path) -> VolumeOf {
        VolumeOf {
            dir: dir.to_owned(),
            volume: OnceLock::new(),
        }
    }

    /// Runs `work` on the threads of this directory's volume.
    pub async fn run<T, E>(
        &self,
        work: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, SinkError>
    where
        T: Send + 'static,
        E: Into<SinkError> + Send + 'static,
    {
        if cfg!(test) {
            // The agent's timing tests run on tokio's paused clock, which jumps ahead whenever
            // the runtime waits on anything but its own blocking pool. `Volume` is tested
            // below; integration tests and the benchmarks run the threads.
            return blocking(work).await;
        }
        let volume = match self.volume.get() {
            Some(volume) => Arc::clone(volume),
            None => {
                let dir = self.dir.clone();
                let device = blocking(move || Ok::<_, SinkError>(device_of(&dir))).await?;
                let volume = Arc::clone(
                    VOLUMES
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(device)
                        .or_insert_with(|| Volume::new(KEEP_ALIVE, SLOW_VOLUME)),
                );
                Arc::clone(self.volume.get_or_init(|| volume))
            }
        };
        volume.run(work).await
    }
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").finish_non_exhaustive()
    }
}

/// The device of `dir`, or of its nearest existing ancestor (a sink creates its directory on
/// first write); 0 when nothing of the path exists.
fn device_of(dir: &Path) -> u64 {
    dir.ancestors()
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find_map(|a| std::fs::metadata(a).ok())
        .map_or(0, |m| m.dev())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;
    use crate::sink::AtomicError;

    type Done = Result<u32, AtomicError>;

    #[tokio::test]
    async fn work_runs_off_the_runtime_and_returns_its_result() {
        let volume = Volume::new(KEEP_ALIVE, SLOW_VOLUME);
        let runtime_thread = std::thread::current().id();
        let ran_on = volume
            .run(|| Ok::<_, AtomicError>(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(ran_on, runtime_thread);
        let failed = volume
            .run(|| {
                Err::<u32, _>(AtomicError::Io {
                    op: "write",
                    path: "/x".into(),
                    source: std::io::Error::other("full"),
                })
            })
            .await;
        assert!(failed.is_err());
    }

    /// Waits (up to 10 s) until `done` holds.
    async fn until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_volume_holds_only_its_own_threads() {
        let slow = Duration::from_millis(20);
        let hung = Volume::new(KEEP_ALIVE, slow);
        let other = Volume::new(KEEP_ALIVE, slow);
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let entered = Arc::new(AtomicUsize::new(0));
        // Every thread of `hung` blocks, and one more write waits in its queue. Each write
        // comes after the one before has waited `slow`, so the second thread takes work.
        let mut stuck = Vec::new();
        for i in 0..=THREADS_PER_VOLUME {
            let (held, counter, volume) = (held.clone(), entered.clone(), hung.clone());
            stuck.push(tokio::spawn(async move {
                volume
                    .run(move || -> Done {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = held.lock().unwrap().recv();
                        Ok(1)
                    })
                    .await
            }));
            until(|| entered.load(Ordering::SeqCst) + hung.queued() > i).await;
            tokio::time::sleep(slow * 2).await;
        }
        until(|| entered.load(Ordering::SeqCst) >= THREADS_PER_VOLUME).await;
        assert_eq!(entered.load(Ordering::SeqCst), THREADS_PER_VOLUME);
        assert_eq!(hung.queued(), 1, "the write beyond the cap waits");
        assert_eq!(
            hung.threads(),
            THREADS_PER_VOLUME,
            "no thread beyond the cap"
        );
        // The other volume, and the runtime, go on.
        let done = tokio::time::timeout(Duration::from_secs(10), other.run(|| -> Done { Ok(7) }))
            .await
            .expect("a write to another volume is not held by a hung one");
        assert_eq!(done.unwrap(), 7);
        assert!(stuck.iter().all(|s| !s.is_finished()));
        for _ in 0..=THREADS_PER_VOLUME {
            release.send(()).unwrap();
        }
        for s in stuck {
            assert_eq!(
                s.await.unwrap().unwrap(),
                1,
                "the queued write ran once freed"
            );
        }
        assert_eq!(entered.load(Ordering::SeqCst), THREADS_PER_VOLUME + 1);
    }

    /// A write that holds the thread running it until `release` says so.
    fn hold(
        volume: &Arc<Volume>,
    ) -> (
        mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<u32, SinkError>>,
    ) {
        let (release, held) = mpsc::channel::<()>();
        let volume = volume.clone();
        let first = tokio::spawn(async move {
            volume
                .run(move || -> Done {
                    let _ = held.recv();
                    Ok(0)
                })
                .await
        });
        (release, first)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wait_for_the_busy_thread_until_they_have_waited_too_long() {
        // Fresh writes behind a busy thread: it takes them in turn, no second thread starts.
        let patient = Volume::new(KEEP_ALIVE, Duration::from_secs(3600));
        let (release, first) = hold(&patient);
        until(|| patient.threads() == 1).await;
        let queued: Vec<_> = (1..=3)
            .map(|n| {
                let patient = patient.clone();
                tokio::spawn(async move { patient.run(move || -> Done { Ok(n) }).await })
            })
            .collect();
        until(|| patient.queued() == 3).await;
        assert_eq!(patient.queued(), 3);
        assert_eq!(
            patient.threads(),
            1,
            "no second thread for writes that just came"
        );
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (n, q) in (1..).zip(queued) {
            assert_eq!(q.await.unwrap().unwrap(), n);
        }

        // A write that waited `slow` behind a held thread: the next one brings a second
        // thread, which runs both; idle, it ends, and the held one is left.
        let slow = Duration::from_millis(20);
        let volume = Volume::new(Duration::from_secs(1), slow);
        let (release, first) = hold(&volume);
        until(|| volume.threads() == 1).await;
        let early = tokio::spawn({
            let volume = volume.clone();
            async move { volume.run(|| -> Done { Ok(1) }).await }
        });
        until(|| volume.queued() == 1).await;
        tokio::time::sleep(slow * 2).await;
        let late = volume.run(|| -> Done { Ok(2) });
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), late)
                .await
                .expect("a second thread runs the writes the held one cannot")
                .unwrap(),
            2
        );
        assert_eq!(early.await.unwrap().unwrap(), 1);
        assert_eq!(volume.threads(), 2);
        until(|| volume.threads() == 1).await;
        assert_eq!(volume.threads(), 1, "the second thread ended when idle");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn idle_threads_end_and_come_back_on_demand() {
        let volume = Volume::new(Duration::from_millis(20), SLOW_VOLUME);
        volume.run(|| -> Done { Ok(1) }).await.unwrap();
        assert_eq!(volume.threads(), 1);
        until(|| volume.threads() == 0).await;
        assert_eq!(volume.threads(), 0, "the idle thread ended");
        assert_eq!(volume.run(|| -> Done { Ok(2) }).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_survives() {
        let volume = Volume::new(KEEP_ALIVE, SLOW_VOLUME);
        let panicked = volume.run(|| -> Done { panic!("boom") }).await;
        assert!(panicked.unwrap_err().to_string().contains("panicked"));
        assert_eq!(volume.threads(), 1);
        assert_eq!(volume.run(|| -> Done { Ok(3) }).await.unwrap(), 3);
    }

    #[test]
    fn the_device_is_that_of_the_nearest_existing_directory() {
        let base = tempfile::tempdir().unwrap();
        let own = std::fs::metadata(base.path()).unwrap().dev();
        assert_eq!(device_of(base.path()), own);
        assert_eq!(device_of(&base.path().join("not/yet")), own);
        let here = std::fs::metadata(".").unwrap().dev();
        assert_eq!(device_of(Path::new("relative/dir")), here);
    }
}
