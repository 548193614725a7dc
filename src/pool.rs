//! The loop's thread pool: [`Loop::spawn_blocking`] runs CPU-heavy or blocking work off the
//! loop thread and delivers the result back on it.
//!
//! The pool starts on first use with up to the configured number of threads (the number of
//! cores by default), spawned as work arrives. Its queue is bounded ([`QUEUE_CAPACITY`] jobs);
//! results travel back through the loop's posted-closure queue.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use fdloop_backends::{OpId, OpSlab};

use crate::Loop;

/// Jobs that may wait in a loop's pool queue before [`Loop::spawn_blocking`] refuses more.
pub const QUEUE_CAPACITY: usize = 65_536;

type Job = Box<dyn FnOnce() + Send>;
type ResultCallback = Box<dyn FnOnce(&Loop, Box<dyn Any + Send>)>;

struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    shutdown: bool,
}

struct PoolShared {
    state: Mutex<State>,
    cv: Condvar,
}

/// A fixed-size pool of worker threads with a bounded queue.
pub(crate) struct ThreadPool {
    shared: Arc<PoolShared>,
    workers: Vec<JoinHandle<()>>,
    max: usize,
}

impl ThreadPool {
    fn new(max: usize) -> ThreadPool {
        ThreadPool {
            shared: Arc::new(PoolShared {
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    idle: 0,
                    shutdown: false,
                }),
                cv: Condvar::new(),
            }),
            workers: Vec::new(),
            max: max.max(1),
        }
    }

    fn submit(&mut self, job: Job) -> io::Result<()> {
        let spawn = {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.jobs.len() >= QUEUE_CAPACITY {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("the loop's thread pool queue is full ({QUEUE_CAPACITY} jobs waiting)"),
                ));
            }
            st.jobs.push_back(job);
            st.idle == 0 && self.workers.len() < self.max
        };
        if spawn {
            let shared = self.shared.clone();
            let worker = thread::Builder::new()
                .name("fdloop-pool".into())
                .spawn(move || work(&shared))?;
            self.workers.push(worker);
        }
        self.shared.cv.notify_one();
        Ok(())
    }

    /// Drops queued jobs, lets running ones finish, and joins every worker.
    fn shutdown(&mut self) {
        let dropped: VecDeque<Job> = {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.shutdown = true;
            std::mem::take(&mut st.jobs)
        };
        drop(dropped);
        self.shared.cv.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(shared: &PoolShared) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if st.shutdown {
            return;
        }
        if let Some(job) = st.jobs.pop_front() {
            drop(st);
            job();
            st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        st.idle += 1;
        st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        st.idle -= 1;
    }
}

/// The loop's side: the pool (started lazily) and the callbacks waiting for results.
pub(crate) struct Blocking {
    threads: usize,
    pool: Option<ThreadPool>,
    callbacks: OpSlab<ResultCallback>,
}

impl Blocking {
    pub(crate) fn new(threads: usize) -> Blocking {
        Blocking {
            threads,
            pool: None,
            callbacks: OpSlab::new(),
        }
    }

    /// Jobs whose result has not been delivered yet.
    pub(crate) fn pending(&self) -> usize {
        self.callbacks.len()
    }

    pub(crate) fn shutdown(&mut self) {
        if let Some(mut pool) = self.pool.take() {
            pool.shutdown();
        }
        for id in self.callbacks.ids() {
            self.callbacks.remove(id);
        }
    }
}

impl Loop {
    /// Runs `f` on the loop's thread pool, then `callback` with its result on the loop thread.
    /// A panic in `f` is caught and handed to `callback` as `Err(payload)`, like
    /// [`std::thread::JoinHandle::join`]. A pending job keeps [`Loop::run`] going.
    ///
    /// ```
    /// use fdloop::Loop;
    ///
    /// let lp = Loop::new()?;
    /// lp.spawn_blocking(|| (1..=10u64).product::<u64>(), |_lp, result| {
    ///     assert_eq!(result.unwrap(), 3_628_800);
    /// })?;
    /// lp.run()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// * `WouldBlock` when [`QUEUE_CAPACITY`] jobs are already waiting;
    /// * the OS error when a worker thread cannot be spawned.
    pub fn spawn_blocking<T, F, C>(&self, f: F, callback: C) -> io::Result<()>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
        C: FnOnce(&Loop, thread::Result<T>) + 'static,
    {
        let shared = self.inner.shared.clone();
        let mut blocking = self.inner.blocking.borrow_mut();
        let key = blocking.callbacks.insert(Box::new(move |lp, any| {
            let result = *any
                .downcast::<thread::Result<T>>()
                .expect("a pool result has the type its job produced");
            callback(lp, result);
        }));
        let job: Job = Box::new(move || {
            let result: thread::Result<T> = panic::catch_unwind(AssertUnwindSafe(f));
            let boxed: Box<dyn Any + Send> = Box::new(result);
            // A closed loop refuses the result; it is dropped here.
            let _ = shared.post(Box::new(move |lp: &Loop| lp.finish_blocking(key, boxed)));
        });
        let threads = blocking.threads;
        let pool = blocking
            .pool
            .get_or_insert_with(|| ThreadPool::new(threads));
        if let Err(e) = pool.submit(job) {
            blocking.callbacks.remove(key);
            return Err(e);
        }
        Ok(())
    }

    fn finish_blocking(&self, key: OpId, result: Box<dyn Any + Send>) {
        let callback = self.inner.blocking.borrow_mut().callbacks.remove(key);
        if let Some(cb) = callback {
            cb(self, result);
        }
    }
}
