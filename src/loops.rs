//! Thread-per-core: [`Loops`] runs N loops on N threads.
//!
//! Each thread builds its own [`Loop`] — its own io_uring ring, or its own epoll set — runs a
//! start closure on it, then runs it. There is no work stealing: a loop serves what its start
//! closure (and later the closures posted to it) set up, and fibers never leave their thread.
//! Other threads reach a loop through its [`LoopHandle`] ([`Loops::handle`]); a posted closure
//! wakes the loop through its eventfd.
//!
//! The typical server gives every loop its own listening socket on the same port with
//! `SO_REUSEPORT`, and lets the kernel spread the connections:
//!
//! ```
//! use fdloop::loops::Loops;
//! use fdloop::Interest;
//! use std::io::{self, Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::os::fd::{AsRawFd, FromRawFd};
//! use std::sync::Mutex;
//!
//! /// A non-blocking listener on 127.0.0.1:`port` with SO_REUSEPORT (port 0: any free port).
//! fn reuseport_listener(port: u16) -> io::Result<TcpListener> {
//!     let cvt = |r: i32| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) };
//!     // SAFETY: (FFI) plain syscalls; `addr` and `one` outlive the calls that read them, and the
//!     // fd is owned by the returned listener only.
//!     unsafe {
//!         let fd = cvt(libc::socket(
//!             libc::AF_INET,
//!             libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
//!             0,
//!         ))?;
//!         let listener = TcpListener::from_raw_fd(fd);
//!         let one: libc::c_int = 1;
//!         let len = std::mem::size_of_val(&one) as libc::socklen_t;
//!         let one = (&one as *const libc::c_int).cast();
//!         cvt(libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, one, len))?;
//!         let mut addr: libc::sockaddr_in = std::mem::zeroed();
//!         addr.sin_family = libc::AF_INET as libc::sa_family_t;
//!         addr.sin_port = port.to_be();
//!         addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
//!         let len = std::mem::size_of_val(&addr) as libc::socklen_t;
//!         cvt(libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len))?;
//!         cvt(libc::listen(fd, 128))?;
//!         Ok(listener)
//!     }
//! }
//!
//! // One listener per loop, all on the same port.
//! let first = reuseport_listener(0)?;
//! let port = first.local_addr()?.port();
//! let listeners = Mutex::new(vec![Some(first), Some(reuseport_listener(port)?)]);
//!
//! let loops = Loops::builder().threads(2).name("acceptor").start(move |lp, index| {
//!     let listener = listeners.lock().unwrap()[index].take().unwrap();
//!     let fd = listener.as_raw_fd();
//!     lp.start_poll(fd, Interest::READABLE, move |_lp, _ready| {
//!         // Level-triggered: accept what is there; the rest comes with the next wake-up.
//!         while let Ok((mut conn, _)) = listener.accept() {
//!             let _ = writeln!(conn, "hello from loop {index}");
//!         }
//!     })
//!     .unwrap();
//! })?;
//!
//! for _ in 0..8 {
//!     let mut reply = String::new();
//!     TcpStream::connect(("127.0.0.1", port))?.read_to_string(&mut reply)?;
//!     assert!(reply.starts_with("hello from loop "));
//! }
//! loops.stop_all();
//! loops.join()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Lifetime of the loops
//!
//! A loop thread runs its loop until it is stopped ([`Loops::stop_all`],
//! [`LoopHandle::stop`], or [`Loop::stop`] from inside) or, like [`Loop::run`], until nothing
//! is left to wait for. Loops that get their work only from posted closures would end at once;
//! [`LoopsBuilder::keep_alive`] keeps them running until they are stopped. When a loop thread
//! ends, its loop is closed (see [`Loop::close`]) and posting to its handle fails.
//!
//! # Panics and errors in loop threads
//!
//! A panic in a start closure or a callback ends that loop's thread (its loop is closed while
//! unwinding); the other loops go on. [`Loops::join`] reports it as an error naming the thread
//! and quoting the panic message, rather than re-raising it, so that dropping a [`Loops`]
//! (which joins) never panics. An error returned by the loop's `run` is reported the same way.

use std::fmt;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use crate::{Loop, LoopBuilder, LoopHandle};

/// N loops on N threads (thread-per-core). Built with [`Loops::builder`].
///
/// Dropping it stops every loop and waits for the threads (errors are then ignored; call
/// [`Loops::join`] to see them).
pub struct Loops {
    handles: Vec<LoopHandle>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

/// Configures and starts [`Loops`].
#[derive(Clone, Debug)]
pub struct LoopsBuilder {
    threads: Option<usize>,
    pin: bool,
    keep_alive: bool,
    loop_builder: LoopBuilder,
    name: String,
}

impl Default for LoopsBuilder {
    fn default() -> Self {
        LoopsBuilder::new()
    }
}

/// What a loop thread reports once it has tried to build its loop.
type Built = (usize, io::Result<LoopHandle>);

/// Whether the built loops may go on (`Some(true)`) or must close (`Some(false)`).
#[derive(Default)]
struct Go {
    decision: Mutex<Option<bool>>,
    cond: Condvar,
}

impl Go {
    fn decide(&self, go: bool) {
        *self.decision.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        self.cond.notify_all();
    }

    fn wait(&self) -> bool {
        let mut d = self.decision.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(go) = *d {
                return go;
            }
            d = self.cond.wait(d).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl LoopsBuilder {
    /// The defaults: one loop per available core, not pinned, loops end when they have
    /// nothing left, the default [`LoopBuilder`], threads named `fdloop-0`, `fdloop-1`, ….
    pub fn new() -> LoopsBuilder {
        LoopsBuilder {
            threads: None,
            pin: false,
            keep_alive: false,
            loop_builder: LoopBuilder::new(),
            name: "fdloop".to_string(),
        }
    }

    /// The number of loops and threads (default: [`std::thread::available_parallelism`]; at
    /// least 1).
    pub fn threads(mut self, n: usize) -> LoopsBuilder {
        self.threads = Some(n.max(1));
        self
    }

    /// Pins loop thread `i` to one CPU: the `i`-th CPU (modulo their number) of the affinity
    /// mask of the thread that calls [`LoopsBuilder::start`] (`sched_getaffinity`), with
    /// `sched_setaffinity`. Failures are returned by `start`. Only CPUs numbered below 1024
    /// (`CPU_SETSIZE`) are seen.
    pub fn pin(mut self, pin: bool) -> LoopsBuilder {
        self.pin = pin;
        self
    }

    /// Keeps every loop running until it is stopped, even when it has nothing to wait for
    /// (default: `false`, a loop ends like [`Loop::run`] when nothing is left). Use it for
    /// loops that get their work from closures posted later.
    pub fn keep_alive(mut self, keep_alive: bool) -> LoopsBuilder {
        self.keep_alive = keep_alive;
        self
    }

    /// The configuration of every loop (cloned for each thread).
    pub fn loop_builder(mut self, builder: LoopBuilder) -> LoopsBuilder {
        self.loop_builder = builder;
        self
    }

    /// The prefix of the thread names: thread `i` is named `{prefix}-{i}` (Linux shows the
    /// first 15 bytes).
    pub fn name(mut self, prefix: impl Into<String>) -> LoopsBuilder {
        self.name = prefix.into();
        self
    }

    /// Starts the threads. Each one pins itself (if asked), builds its loop, waits until every
    /// loop is built, then calls `f(&loop, index)` — typically to spawn fibers or start
    /// sources — and runs its loop (see the [module docs](self)).
    ///
    /// Returns once every loop is built, before the start closures have necessarily run.
    ///
    /// # Errors
    ///
    /// When a thread cannot be spawned, a CPU cannot be pinned, or a loop cannot be built
    /// (for example a forced io_uring backend that is unavailable; see
    /// [`LoopBuilder::build`]): the loops already built are closed without running `f`, every
    /// thread is joined, and the first error is returned with the thread's name.
    pub fn start<F>(self, f: F) -> io::Result<Loops>
    where
        F: Fn(&Loop, usize) + Send + Sync + 'static,
    {
        let n = self.threads.unwrap_or_else(|| {
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let cpus = if self.pin {
            Some(affinity_cpus()?)
        } else {
            None
        };
        let f = Arc::new(f);
        let go = Arc::new(Go::default());
        let (tx, rx) = mpsc::channel::<Built>();
        let mut threads = Vec::with_capacity(n);
        let mut spawn_error = None;
        for index in 0..n {
            let name = format!("{}-{index}", self.name);
            let cpu = cpus.as_ref().map(|c| c[index % c.len()]);
            let builder = self.loop_builder.clone();
            let (f, go, tx) = (f.clone(), go.clone(), tx.clone());
            let keep_alive = self.keep_alive;
            let spawned = thread::Builder::new()
                .name(name.clone())
                .spawn(move || loop_thread(index, cpu, builder, keep_alive, &*f, &go, tx));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(io::Error::new(
                        e.kind(),
                        format!("cannot spawn loop thread {name}: {e}"),
                    ));
                    break;
                }
            }
        }
        drop(tx);

        let mut handles: Vec<Option<LoopHandle>> = vec![None; threads.len()];
        let mut first_error = spawn_error;
        for _ in 0..threads.len() {
            // Each thread sends once and then drops its sender, so this ends even if a
            // thread panics before it sends.
            let Ok((index, built)) = rx.recv() else { break };
            match built {
                Ok(h) => handles[index] = Some(h),
                Err(e) => {
                    let name = thread_name(&threads[index]);
                    let e = io::Error::new(e.kind(), format!("loop thread {name}: {e}"));
                    first_error.get_or_insert(e);
                }
            }
        }
        // A thread that panicked before it reported (in a `LoopBuilder` method, say) left no
        // handle; its panic message is the error.
        let early_panic = first_error.is_none() && handles.iter().any(Option::is_none);
        if first_error.is_some() || early_panic {
            go.decide(false);
            for t in threads {
                let name = thread_name(&t);
                if let Err(payload) = t.join() {
                    first_error.get_or_insert_with(|| panic_error(&name, payload.as_ref()));
                }
            }
            return Err(first_error
                .unwrap_or_else(|| io::Error::other("a loop thread ended while starting")));
        }
        go.decide(true);
        Ok(Loops {
            handles: handles.into_iter().flatten().collect(),
            threads,
        })
    }
}

/// The body of loop thread `index`.
fn loop_thread(
    index: usize,
    cpu: Option<usize>,
    builder: LoopBuilder,
    keep_alive: bool,
    f: &(dyn Fn(&Loop, usize) + Send + Sync),
    go: &Go,
    tx: mpsc::Sender<Built>,
) -> io::Result<()> {
    let built = cpu.map_or(Ok(()), pin_to).and_then(|()| builder.build());
    let lp = match built {
        Ok(lp) => {
            let _ = tx.send((index, Ok(lp.handle())));
            lp
        }
        Err(e) => {
            let _ = tx.send((index, Err(e)));
            return Ok(());
        }
    };
    drop(tx);
    if !go.wait() {
        return lp.close();
    }
    f(&lp, index);
    if keep_alive {
        // No deadline: runs until stopped, also when idle.
        lp.run_for(Duration::MAX)?;
    } else {
        lp.run()?;
    }
    lp.close()
}

fn thread_name(t: &JoinHandle<io::Result<()>>) -> String {
    t.thread().name().unwrap_or("(unnamed)").to_string()
}

fn panic_error(name: &str, payload: &(dyn std::any::Any + Send)) -> io::Error {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not a string)");
    io::Error::other(format!("loop thread {name} panicked: {msg}"))
}

/// The CPUs in the calling thread's affinity mask, in increasing order.
fn affinity_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: (FFI) cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: (FFI) `set` is writable memory of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("sched_getaffinity: {e}")));
    }
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    // SAFETY: (FFI) every index is below CPU_SETSIZE, the size of `set` in bits.
    let cpus: Vec<usize> = (0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other(
            "sched_getaffinity returned no CPU below CPU_SETSIZE to pin loops to",
        ));
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: (FFI) cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: (FFI) `cpu` comes from `affinity_cpus`, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: (FFI) `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot pin to CPU {cpu} (sched_setaffinity): {e}"),
        ));
    }
    Ok(())
}

impl Loops {
    /// A builder: threads, pinning, the loops' configuration, thread names.
    pub fn builder() -> LoopsBuilder {
        LoopsBuilder::new()
    }

    /// The handles of the loops, in thread order.
    pub fn handles(&self) -> &[LoopHandle] {
        &self.handles
    }

    /// The handle of loop `index`.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    pub fn handle(&self, index: usize) -> &LoopHandle {
        &self.handles[index]
    }

    /// The thread that runs loop `index` (its name and id).
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    pub fn thread(&self, index: usize) -> &Thread {
        self.threads[index].thread()
    }

    /// The number of loops.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always `false`: there is at least one loop.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops every loop (from any thread); their threads then close their loops and end.
    /// Loops that have ended already are skipped. It does not wait: see [`Loops::join`].
    pub fn stop_all(&self) {
        for h in &self.handles {
            // The posted stop also catches a loop whose start closure is still running: a stop
            // flag set before its `run` begins would be cleared by `run`.
            let _ = h.post(|lp| lp.stop());
            let _ = h.stop();
        }
    }

    /// Waits for every loop thread to end (it does not stop them: see [`Loops::stop_all`]).
    ///
    /// # Errors
    ///
    /// The first failure, in thread order: a panic in a loop thread (an `Other` error naming
    /// the thread and quoting the panic message) or an error returned by its loop's `run`.
    /// Every thread is joined regardless.
    pub fn join(mut self) -> io::Result<()> {
        self.join_all()
    }

    fn join_all(&mut self) -> io::Result<()> {
        let me = thread::current().id();
        let mut first = None;
        for t in self.threads.drain(..) {
            if t.thread().id() == me {
                // Dropped from one of its own loop threads: that thread cannot wait for itself.
                continue;
            }
            let name = thread_name(&t);
            let err = match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(io::Error::new(e.kind(), format!("loop thread {name}: {e}"))),
                Err(payload) => Some(panic_error(&name, payload.as_ref())),
            };
            if first.is_none() {
                first = err;
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_all();
            let _ = self.join_all();
        }
    }
}

impl fmt::Debug for Loops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loops")
            .field("len", &self.len())
            .field("handles", &self.handles)
            .finish()
    }
}
