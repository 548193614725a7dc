//! Signals: [`Loop::start_signal`] and [`Loop::stop_signal`].
//!
//! fdloop keeps one process-wide registry (on `signal-hook-registry`). The real signal handler
//! only sets atomic flags and wakes the interested loops; callbacks run later on each loop's own
//! thread, where they may do anything. This works in multi-threaded programs without blocking
//! signals in any thread (unlike `signalfd`, which needs the signal blocked in *every* thread —
//! see [`crate`] docs — and whose blocked mask leaks into child processes).
//!
//! Standard signals coalesce in the kernel: a callback means "the signal arrived at least once
//! since the last callback". Several loops may watch the same signal; each gets a callback.
//!
//! When the last fdloop watch of a signal stops, the signal behaves as before fdloop watched it:
//! if its disposition was the default one, the default action (terminate, stop, ignore) is
//! emulated; a handler installed by someone else before fdloop keeps being called throughout.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fdloop_backends::{OpId, OpSlab};
use signal_hook_registry::SigId;

use crate::Loop;

/// A signal number that fdloop can watch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    /// `SIGHUP`.
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// `SIGINT` (Ctrl-C).
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGQUIT`.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGPIPE`.
    pub const PIPE: Signal = Signal(libc::SIGPIPE);
    /// `SIGALRM`.
    pub const ALRM: Signal = Signal(libc::SIGALRM);
    /// `SIGTERM`.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGCHLD`.
    pub const CHLD: Signal = Signal(libc::SIGCHLD);
    /// `SIGCONT`.
    pub const CONT: Signal = Signal(libc::SIGCONT);
    /// `SIGTSTP`.
    pub const TSTP: Signal = Signal(libc::SIGTSTP);
    /// `SIGWINCH`.
    pub const WINCH: Signal = Signal(libc::SIGWINCH);

    /// The signal numbered `signum`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for numbers outside `1..=SIGRTMAX`, for the C library's reserved numbers
    /// between 31 and `SIGRTMIN`, and for signals that cannot or must
    /// not be caught by an event loop: `SIGKILL` and `SIGSTOP` (uncatchable), `SIGSEGV`,
    /// `SIGBUS`, `SIGILL`, `SIGFPE` and `SIGTRAP` (synchronous faults; a handler that only sets
    /// a flag would return to the faulting instruction forever).
    pub fn new(signum: i32) -> io::Result<Signal> {
        if signum < 1 || signum > libc::SIGRTMAX() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{signum} is not a signal number (valid: 1..={})",
                    libc::SIGRTMAX()
                ),
            ));
        }
        if signum > 31 && signum < libc::SIGRTMIN() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "signal {signum} is reserved by the C library (threads, cancellation); \
                     real-time signals start at SIGRTMIN = {}",
                    libc::SIGRTMIN()
                ),
            ));
        }
        let forbidden = [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
        ];
        if forbidden.contains(&signum) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "signal {signum} cannot be watched by an event loop (SIGKILL and SIGSTOP \
                     cannot be caught; SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP are \
                     synchronous faults)"
                ),
            ));
        }
        Ok(Signal(signum))
    }

    /// The real-time signal `SIGRTMIN + n`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `n` is negative or `SIGRTMIN + n` is beyond `SIGRTMAX`.
    pub fn realtime(n: i32) -> io::Result<Signal> {
        if n < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("SIGRTMIN + {n}: the offset must not be negative"),
            ));
        }
        Signal::new(libc::SIGRTMIN().saturating_add(n))
    }

    /// The signal number.
    pub fn as_raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signal({})", self.0)
    }
}

/// Identifies a signal watch, for [`Loop::stop_signal`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalId {
    serial: u32,
    key: OpId,
}

impl fmt::Debug for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignalId({}:{})", self.serial, self.key.to_u64())
    }
}

type SignalCallback = Box<dyn FnMut(&Loop, Signal)>;

struct Watch {
    signal: Signal,
    flag: Arc<AtomicBool>,
    action: SigId,
    callback: Option<SignalCallback>,
}

/// One loop's signal watches.
#[derive(Default)]
pub(crate) struct Signals {
    watches: OpSlab<Watch>,
    /// Reused list of watch ids for dispatch (no allocation per signal).
    scratch: Vec<OpId>,
}

impl Signals {
    pub(crate) fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        for id in self.watches.ids() {
            if let Some(w) = self.watches.remove(id) {
                unwatch(&w);
            }
        }
    }
}

const NSIG: usize = 65;

/// fdloop watches per signal number, across every loop of the process.
static WATCHES: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];

/// Signals for which the default-emulating action has been considered.
static PREPARED: Mutex<[bool; NSIG]> = Mutex::new([false; NSIG]);

/// On first use of `signum`, if its disposition is the default one, registers an action that
/// emulates the default when no fdloop watch is left (signal-hook's handler, once installed,
/// never uninstalls itself).
fn prepare(signum: i32) -> io::Result<()> {
    let mut prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    let idx = signum as usize;
    if prepared[idx] {
        return Ok(());
    }
    // SAFETY: (FFI) sigaction with a null new action only reads the current one into `old`, a
    // zeroed (valid) sigaction that outlives the call.
    let was_default = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signum, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_DFL
    };
    if was_default {
        // SAFETY: (FFI) the action is async-signal-safe: an atomic load and signal-hook's
        // `emulate_default_handler` (sigaction + raise), which is made for signal handlers.
        unsafe {
            signal_hook_registry::register(signum, move || {
                if WATCHES[idx].load(Ordering::SeqCst) == 0 {
                    let _ = signal_hook::low_level::emulate_default_handler(signum);
                }
            })
        }?;
    }
    prepared[idx] = true;
    Ok(())
}

fn unwatch(w: &Watch) {
    signal_hook_registry::unregister(w.action);
    WATCHES[w.signal.0 as usize].fetch_sub(1, Ordering::SeqCst);
}

fn not_watching() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no such signal watch: already stopped, or it belongs to another loop",
    )
}

impl Loop {
    /// Calls `callback` on this loop's thread after `signal` arrives. Standard signals
    /// coalesce: one callback means "at least once since the last callback".
    ///
    /// The signal is delivered however the process's threads are set up: no signal needs to
    /// be blocked. Several loops (and several watches on one loop) may watch the same signal;
    /// each is called.
    ///
    /// ```
    /// use fdloop::{Loop, Signal};
    ///
    /// let lp = Loop::new()?;
    /// lp.start_signal(Signal::USR1, |lp, sig| {
    ///     println!("got {sig:?}");
    ///     lp.stop();
    /// })?;
    /// // SAFETY: (FFI) raising a signal with a handler installed is sound.
    /// unsafe { libc::raise(libc::SIGUSR1) };
    /// lp.run()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Errors of the process-wide registry (`sigaction` failing).
    pub fn start_signal<F>(&self, signal: Signal, callback: F) -> io::Result<SignalId>
    where
        F: FnMut(&Loop, Signal) + 'static,
    {
        prepare(signal.0)?;
        let flag = Arc::new(AtomicBool::new(false));
        let any = self.inner.signal_pending.clone();
        let waker = self.inner.shared.waker.clone();
        let handler_flag = flag.clone();
        WATCHES[signal.0 as usize].fetch_add(1, Ordering::SeqCst);
        // SAFETY: (FFI) the action is async-signal-safe: two atomic stores and `Waker::wake`, which
        // is an atomic swap and a write(2) to an eventfd. It allocates nothing and takes no lock.
        let action = unsafe {
            signal_hook_registry::register(signal.0, move || {
                handler_flag.store(true, Ordering::SeqCst);
                any.store(true, Ordering::SeqCst);
                waker.wake();
            })
        };
        let action = match action {
            Ok(a) => a,
            Err(e) => {
                WATCHES[signal.0 as usize].fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        let key = self.inner.signals.borrow_mut().watches.insert(Watch {
            signal,
            flag,
            action,
            callback: Some(Box::new(callback)),
        });
        Ok(SignalId {
            serial: self.inner.serial,
            key,
        })
    }

    /// Stops a signal watch; its callback is dropped. When it was the last fdloop watch of that
    /// signal in the process, the signal behaves as it did before (see the module docs).
    ///
    /// # Errors
    ///
    /// `NotFound` for a watch already stopped or one of another loop.
    pub fn stop_signal(&self, id: SignalId) -> io::Result<()> {
        if id.serial != self.inner.serial {
            return Err(not_watching());
        }
        let watch = self
            .inner
            .signals
            .borrow_mut()
            .watches
            .remove(id.key)
            .ok_or_else(not_watching)?;
        unwatch(&watch);
        drop(watch);
        Ok(())
    }

    /// Runs the callbacks of signals that arrived.
    pub(crate) fn dispatch_signals(&self) {
        if !self.inner.signal_pending.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut ids = {
            let mut signals = self.inner.signals.borrow_mut();
            let mut ids = std::mem::take(&mut signals.scratch);
            ids.clear();
            ids.extend(signals.watches.iter().map(|(id, _)| id));
            ids
        };
        for &key in &ids {
            let taken = {
                let mut signals = self.inner.signals.borrow_mut();
                match signals.watches.get_mut(key) {
                    Some(w) if w.flag.swap(false, Ordering::SeqCst) => {
                        w.callback.take().map(|cb| (cb, w.signal))
                    }
                    _ => None,
                }
            };
            let Some((mut callback, signal)) = taken else {
                continue;
            };
            let id = SignalId {
                serial: self.inner.serial,
                key,
            };
            let ok = self.call_user(|| callback(self, signal)).is_some();
            let dropped = {
                let mut signals = self.inner.signals.borrow_mut();
                match signals.watches.get_mut(key) {
                    Some(w) if ok && w.callback.is_none() => {
                        w.callback = Some(callback);
                        None
                    }
                    _ => Some(callback),
                }
            };
            drop(dropped);
            if !ok {
                let _ = self.stop_signal(id);
                // Let the remaining flags be looked at next time.
                self.inner.signal_pending.store(true, Ordering::SeqCst);
                break;
            }
        }
        ids.clear();
        self.inner.signals.borrow_mut().scratch = ids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_invalid_numbers_are_refused() {
        for n in [0, -1, 32, 33, libc::SIGRTMAX() + 1] {
            let e = Signal::new(n).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{n}");
        }
        assert!(Signal::realtime(-1).is_err());
        assert_eq!(Signal::realtime(0).unwrap().as_raw(), libc::SIGRTMIN());
        assert_eq!(Signal::new(libc::SIGUSR1).unwrap(), Signal::USR1);
    }
}
