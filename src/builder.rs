//! [`LoopBuilder`]: backend choice, ring size and pool sizes.

use std::io;
use std::time::Duration;

use fdloop_backends::{BackendChoice, BackendInfo, Config, Driver, BACKEND_ENV};

use crate::Loop;

/// Configures and builds a [`Loop`].
///
/// ```
/// use fdloop::{BackendChoice, Loop};
///
/// let lp = Loop::builder()
///     .backend(BackendChoice::Epoll)
///     .ring_entries(512)
///     .pool_threads(2)
///     .build()?;
/// assert_eq!(lp.backend().kind, fdloop::BackendKind::Epoll);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoopBuilder {
    backend: Option<BackendChoice>,
    config: Config,
    pool_threads: Option<usize>,
    stack_size: usize,
}

impl Default for LoopBuilder {
    fn default() -> Self {
        LoopBuilder::new()
    }
}

impl LoopBuilder {
    /// The defaults: backend from `FDLOOP_BACKEND` (else automatic), 256 ring entries, a
    /// thread pool sized to the machine's cores, 4 file threads for the epoll backend.
    pub fn new() -> LoopBuilder {
        LoopBuilder {
            backend: None,
            config: Config::default(),
            pool_threads: None,
            stack_size: crate::fiber::DEFAULT_STACK_SIZE,
        }
    }

    /// Forces a backend. This takes precedence over the `FDLOOP_BACKEND` environment variable.
    pub fn backend(mut self, choice: BackendChoice) -> LoopBuilder {
        self.backend = Some(choice);
        self
    }

    /// Submission-queue entries of the io_uring ring (rounded up to a power of two by the
    /// kernel; at most 32768). More operations than this may be in flight: the excess is queued
    /// in user space.
    pub fn ring_entries(mut self, entries: u32) -> LoopBuilder {
        self.config.ring_entries = entries.clamp(1, 32768);
        self
    }

    /// Completion-queue entries of the io_uring ring (default: 4 × ring entries; at most
    /// 65536). The loop keeps in-flight operations below this.
    pub fn cq_entries(mut self, entries: u32) -> LoopBuilder {
        self.config.cq_entries = Some(entries.clamp(1, 65536));
        self
    }

    /// Threads of the pool that runs [`Loop::spawn_blocking`] jobs (default: the number of
    /// cores). The pool starts on first use.
    pub fn pool_threads(mut self, threads: usize) -> LoopBuilder {
        self.pool_threads = Some(threads.max(1));
        self
    }

    /// Threads the epoll backend uses for regular-file I/O (default 4; unused on io_uring,
    /// where file I/O is asynchronous in the kernel).
    pub fn file_threads(mut self, threads: usize) -> LoopBuilder {
        self.config.file_threads = threads.max(1);
        self
    }

    /// io_uring batch wait (Linux 6.12; ignored on older kernels and on epoll; default off).
    /// When an iteration has submitted `n` operations and then has to block, the loop waits
    /// for `2n` completions (each response sent likely brings a new request), for at most
    /// `max`, and then for the first one as usual: a request/response server
    /// submits its responses and sleeps until the next request in one `io_uring_enter` instead
    /// of two, because the responses' own completions no longer end the wait at once. The
    /// price is latency: those completions reach their callbacks up to `max` later when
    /// nothing else happens meanwhile (a program that waits for a send before its next step
    /// loses up to `max` per step). Timers still fire on time. Values of tens of microseconds
    /// suit request/response servers; `Duration::ZERO` turns it off.
    pub fn batch_wait(mut self, max: Duration) -> LoopBuilder {
        self.config.batch_wait = (!max.is_zero()).then_some(max);
        self
    }

    /// The default stack size of this loop's fibers (default 64 KiB; at least 4 KiB). Stacks
    /// of this size are pooled and reused.
    pub fn stack_size(mut self, bytes: usize) -> LoopBuilder {
        self.stack_size = bytes.max(4096);
        self
    }

    /// Builds the loop on the calling thread.
    ///
    /// # Errors
    ///
    /// * `InvalidInput` when `FDLOOP_BACKEND` holds something other than `auto`, `uring` or
    ///   `epoll`;
    /// * a forced io_uring backend (builder or environment) that cannot be set up, with the
    ///   kernel's reason;
    /// * resource errors (ENOMEM, EMFILE, ENFILE) while creating the ring or the epoll set,
    ///   which are reported rather than hidden behind a fallback.
    pub fn build(self) -> io::Result<Loop> {
        let (choice, origin) = match self.backend {
            Some(c) => (c, "by LoopBuilder::backend"),
            None => match BackendChoice::from_env()? {
                Some(c) => (c, "by the FDLOOP_BACKEND environment variable"),
                None => (BackendChoice::Auto, ""),
            },
        };
        let config = Config {
            backend: choice,
            ..self.config
        };
        let driver = Driver::new(&config).map_err(|e| {
            if choice != BackendChoice::Uring {
                e
            } else {
                io::Error::new(e.kind(), format!("{e} (io_uring was forced {origin})"))
            }
        })?;
        let mut info: BackendInfo = driver.info().clone();
        if choice != BackendChoice::Auto {
            let var = if origin.contains(BACKEND_ENV) {
                format!("{BACKEND_ENV}={}", info.kind.short_name())
            } else {
                "LoopBuilder::backend".to_string()
            };
            info.reason = format!("forced by {var}; {}", info.reason);
        }
        let pool = self.pool_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        Ok(Loop::from_parts(driver, info, pool, self.stack_size))
    }
}
