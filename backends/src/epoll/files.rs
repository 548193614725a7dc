//! The epoll driver's thread pool for regular files and other blocking operations.
//!
//! Regular files (and block devices, directories, `/dev/null` …) cannot be polled: epoll refuses
//! them with `EPERM` and `poll(2)` calls them always ready, yet a read may wait for the disk. So
//! on the epoll driver their operations (`pread`, `pwrite`, `preadv`, `pwritev`, `read`, `write`,
//! `fsync`, `fdatasync`), writes to blocking pipes and ttys, and connects on blocking sockets run
//! here, on a few threads, instead of blocking the loop thread (I5). This is the honest fallback
//! for files on epoll: the same thing libuv, monoio's legacy driver and compio do. The io_uring
//! driver needs none of it.
//!
//! * `Config::file_threads` threads (at least one), spawned on demand: a thread is added when a
//!   job is queued and no thread is idle.
//! * Jobs go through a `Mutex` + `Condvar` queue. A finished job's result goes into a shared
//!   completed list, and the driver is woken through its wake-up eventfd (a [`Waker`]).
//! * A job still queued can be cancelled (its final completion is then `-ECANCELED`). A running
//!   job cannot be stopped: its real result is its final completion.
//! * Dropping the pool stops and joins its threads; the driver first waits for every job (I1).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::syscalls;
use crate::{Op, OpId, Waker};

/// A queued operation.
struct Job {
    id: OpId,
    op: Op,
}

// SAFETY: (I2, I3) `Op` is `!Send` only because it holds raw pointers (buffers, iovecs, msghdrs,
// addresses). The caller of `Epoll::push` promised that they stay valid and unmoved, that the loop
// thread does not otherwise access them, and that the fd stays open until the operation's final
// completion. That completion is produced only after the job has finished on its pool thread (or
// was taken out of the queue without running), so the pool thread is the only one using the
// pointers while they are guaranteed valid.
unsafe impl Send for Job {}

/// State shared between the driver and the pool threads.
#[derive(Default)]
struct State {
    /// Jobs not started yet, oldest first.
    queue: VecDeque<Job>,
    /// Finished jobs: (id, result), not yet taken by the driver.
    done: Vec<(OpId, i32)>,
    /// Jobs being run right now.
    running: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// Set when the pool is dropped: threads exit once the queue is empty.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or the pool stops.
    work: Condvar,
    /// Signalled when a job finishes (for [`FilePool::wait_idle`]).
    finished: Condvar,
    wake: Waker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic cannot happen while the lock is held (no user code runs under it), but if it
        // did, the state is still consistent: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool.
pub(super) struct FilePool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    max_threads: usize,
}

impl FilePool {
    /// A pool of at most `max_threads` threads (at least 1); none is spawned yet. Finished jobs
    /// wake the driver through `wake`.
    pub(super) fn new(max_threads: usize, wake: Waker) -> FilePool {
        FilePool {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                finished: Condvar::new(),
                wake,
            }),
            threads: Vec::new(),
            max_threads: max_threads.max(1),
        }
    }

    /// Queues `op`.
    ///
    /// # Errors
    ///
    /// The error of spawning the first thread (`EAGAIN` when the process is out of threads);
    /// the job is then not queued.
    ///
    /// # Safety
    ///
    /// (I2, I3) `op`'s pointers must stay valid and its fd open until the job's result has been
    /// taken by [`FilePool::take_done`] or the job removed by [`FilePool::cancel`].
    pub(super) unsafe fn submit(&mut self, id: OpId, op: Op) -> io::Result<()> {
        let mut st = self.shared.lock();
        st.queue.push_back(Job { id, op });
        // More queued jobs than idle threads to take them: add a thread if allowed.
        let need_thread = st.queue.len() > st.idle && self.threads.len() < self.max_threads;
        drop(st);
        if need_thread {
            if let Err(e) = self.spawn() {
                if self.threads.is_empty() {
                    let mut st = self.shared.lock();
                    st.queue.retain(|j| j.id != id);
                    return Err(e);
                }
                // The threads we have will get to it.
            }
        }
        self.shared.work.notify_one();
        Ok(())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name("fdloop-files".into())
            .spawn(move || worker(&shared))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Removes the job `id` if it has not started. Returns `true` when it was removed (the
    /// caller completes it with `-ECANCELED`); `false` when it is running or finished (its
    /// result will come through [`FilePool::take_done`]).
    pub(super) fn cancel(&mut self, id: OpId) -> bool {
        let mut st = self.shared.lock();
        match st.queue.iter().position(|j| j.id == id) {
            Some(pos) => {
                st.queue.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Appends the finished jobs to `into`. Both vectors keep their capacity, so this does not
    /// allocate in steady state (I6).
    pub(super) fn take_done(&mut self, into: &mut Vec<(OpId, i32)>) {
        let mut st = self.shared.lock();
        into.append(&mut st.done);
    }

    /// Blocks until no job is queued or running.
    pub(super) fn wait_idle(&mut self) {
        let mut st = self.shared.lock();
        while st.running > 0 || !st.queue.is_empty() {
            st = self
                .shared
                .finished
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A pool thread: runs jobs until the pool stops and the queue is empty.
fn worker(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        if let Some(job) = st.queue.pop_front() {
            st.running += 1;
            drop(st);
            // SAFETY: (I2, I3) the job's pointers stay valid and its fd open until the driver takes
            // its result, which is pushed only after this call returns (see `unsafe impl Send for
            // Job`).
            let result = unsafe { syscalls::run_blocking(&job.op) };
            st = shared.lock();
            st.running -= 1;
            st.done.push((job.id, result));
            shared.finished.notify_all();
            drop(st);
            shared.wake.wake();
            st = shared.lock();
        } else if st.stop {
            return;
        } else {
            st.idle += 1;
            st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            st.idle -= 1;
        }
    }
}
