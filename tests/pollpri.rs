//! `POLLPRI` sources on both backends, from callbacks and fibers, with a check that nothing
//! busy-loops:
//!
//! * kernfs change notifications, with the cgroup v2 `cgroup.events` file and
//!   `fdloop::dev::kernfs` — the same path (`kernfs_notify`, re-read from offset 0) as a sysfs
//!   GPIO `value` file. A child cgroup is created (in the cgroup2 mount found in
//!   `/proc/self/mounts`, or in one mounted on a temporary directory); a `sleep` process moved
//!   into it makes `populated 1`, killing it makes `populated 0`. Without a writable cgroup2
//!   hierarchy the tests print "skipped: …" and pass.
//! * TCP urgent data (`MSG_OOB`) with `Loop::start_poll(PRIORITY)` and `fiber::wait(PRIORITY)`.

mod common;

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fdloop::dev::kernfs::{self, Attribute, Watch};
use fdloop::{fiber, Interest, Loop, Timer};

/// Bounds waits that should end promptly; reaching it turns a hang into a failure (never
/// asserted as a time limit).
const HANG_GUARD: Duration = Duration::from_secs(20);
/// How long to keep watching after the last change, to see that no further callback comes.
const QUIET: Duration = Duration::from_millis(30);

/// A child cgroup for one test, removed (with its process and any mount made for it) on drop.
struct TestCgroup {
    dir: PathBuf,
    mount: Option<PathBuf>,
    child: Option<Child>,
}

/// `\040`-style escapes of /proc/self/mounts.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cgroup2_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(unescape(f[1])))
        })
        .collect()
}

fn mount_cgroup2(dir: &Path) -> io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: (FFI) every pointer is a NUL-terminated string that outlives the call; no data.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl TestCgroup {
    fn new(tag: &str) -> Result<TestCgroup, String> {
        // Unique per test: the two backends' variants run in parallel.
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fdloop-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut tried = Vec::new();
        for root in cgroup2_mounts() {
            let dir = root.join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(TestCgroup {
                        dir,
                        mount: None,
                        child: None,
                    })
                }
                Err(e) => tried.push(format!("{}: {e}", root.display())),
            }
        }
        let mnt = common::temp_path("cgroup2");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        if let Err(e) = mount_cgroup2(&mnt) {
            let _ = fs::remove_dir(&mnt);
            tried.push(format!("mount -t cgroup2 at {}: {e}", mnt.display()));
            return Err(format!(
                "no writable cgroup v2 hierarchy ({})",
                tried.join("; ")
            ));
        }
        let dir = mnt.join(&name);
        let cg = TestCgroup {
            dir: dir.clone(),
            mount: Some(mnt),
            child: None,
        };
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(cg)
    }

    fn events(&self) -> PathBuf {
        self.dir.join("cgroup.events")
    }

    /// Starts `sleep` and moves it into the cgroup.
    fn populate(&mut self) {
        let child = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Kills and reaps the process: the cgroup becomes empty.
    fn depopulate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.depopulate();
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("cannot remove cgroup {}: {e}", self.dir.display());
        }
        if let Some(mnt) = &self.mount {
            let target = CString::new(mnt.as_os_str().as_bytes()).unwrap();
            // SAFETY: (FFI) a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            let _ = fs::remove_dir(mnt);
        }
    }
}

/// The `populated` value in `cgroup.events`.
fn populated(events: &str) -> u8 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no populated line in {events:?}"))
}

fn dedup(mut v: Vec<u8>) -> Vec<u8> {
    v.dedup();
    v
}

backend_tests! {
    fn cgroup_events_with_a_callback_watch(lp: &Loop) {
        let cg = match TestCgroup::new("cb") {
            Ok(cg) => Rc::new(RefCell::new(cg)),
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let attr = Attribute::open(cg.borrow().events()).unwrap();
        assert_eq!(populated(&attr.read_value().unwrap()), 0);
        let seen: Rc<RefCell<Vec<u8>>> = Rc::default();
        let calls = Rc::new(Cell::new(0u32));
        let watch: Rc<RefCell<Option<Watch>>> = Rc::default();
        let (s, c, w, cg2) = (seen.clone(), calls.clone(), watch.clone(), cg.clone());
        let handle = kernfs::watch(lp, attr, move |lp, value| {
            c.set(c.get() + 1);
            let p = populated(&value.unwrap());
            s.borrow_mut().push(p);
            match p {
                1 => cg2.borrow_mut().depopulate(),
                _ if s.borrow().contains(&1) => {
                    // Keep watching a little: no further callback may come.
                    let w = w.clone();
                    lp.start_timer(Timer::after(QUIET), move |lp, _| {
                        w.borrow().as_ref().unwrap().stop(lp).unwrap();
                        lp.stop(); // the hang guard's timer is still pending
                    });
                }
                _ => {}
            }
        }).unwrap();
        assert!(handle.is_active());
        *watch.borrow_mut() = Some(handle.clone());
        let cg3 = cg.clone();
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| cg3.borrow_mut().populate());
        let guard = lp.start_timer(Timer::after(HANG_GUARD), |lp, _| lp.stop());
        lp.run().unwrap();
        let _ = lp.stop_timer(guard);
        assert!(!handle.is_active(), "the watch did not see both changes: {:?}", seen.borrow());
        assert_eq!(dedup(seen.borrow().clone()), vec![1, 0]);
        // Two changes: a busy loop (level-triggered poll on an attribute that was not re-read)
        // would have called back thousands of times.
        eprintln!("{} callbacks for 2 changes", calls.get());
        assert!(calls.get() <= 4, "{} callbacks for 2 changes", calls.get());
        handle.stop(lp).unwrap(); // stopping again is harmless
    }

    fn cgroup_events_in_a_fiber(lp: &Loop) {
        let mut cg = match TestCgroup::new("fiber") {
            Ok(cg) => cg,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let attr = Attribute::open(cg.events()).unwrap();
        let h = lp.spawn(move || {
            assert_eq!(populated(&attr.read_value().unwrap()), 0);
            let mut seen = Vec::new();
            let mut wakeups = 0;
            cg.populate();
            while seen.last() != Some(&1) {
                seen.push(populated(&attr.wait_change(Some(HANG_GUARD)).unwrap()));
                wakeups += 1;
            }
            cg.depopulate();
            while seen.last() != Some(&0) {
                seen.push(populated(&attr.wait_change(Some(HANG_GUARD)).unwrap()));
                wakeups += 1;
            }
            // Nothing changes now: the wait must time out rather than return at once.
            let quiet = attr.wait_change(Some(QUIET)).map_err(|e| e.kind());
            (seen, wakeups, quiet, cg)
        });
        lp.run().unwrap();
        let (seen, wakeups, quiet, _cg) = h.join().unwrap();
        assert_eq!(dedup(seen), vec![1, 0]);
        eprintln!("{wakeups} wake-ups for 2 changes");
        assert!(wakeups <= 4, "{wakeups} wake-ups for 2 changes");
        assert_eq!(quiet, Err(io::ErrorKind::WouldBlock));
    }

    fn without_a_reread_the_level_triggered_poll_repeats(lp: &Loop) {
        // The control for the tests above: a plain start_poll(PRIORITY) whose callback does
        // not re-read the attribute is called again and again for one change (level-triggered
        // on both backends) — the busy loop that kernfs::watch avoids.
        let cg = match TestCgroup::new("control") {
            Ok(cg) => Rc::new(RefCell::new(cg)),
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let attr = Attribute::open(cg.borrow().events()).unwrap();
        let fd = attr.as_raw_fd();
        // Move the file position to end-of-file with plain reads (used below).
        let mut buf = [0u8; 256];
        // SAFETY: (FFI) `buf` is a live buffer of its length.
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        let calls = Rc::new(Cell::new(0u32));
        let c = calls.clone();
        lp.start_poll(fd, Interest::PRIORITY, move |lp, ready| {
            assert!(ready.is_priority() && ready.is_error(), "{ready:?}");
            c.set(c.get() + 1);
            if c.get() == 100 {
                lp.detach(fd).unwrap();
                lp.stop(); // the hang guard's timer is still pending
            }
        }).unwrap();
        cg.borrow_mut().populate();
        let guard = lp.start_timer(Timer::after(HANG_GUARD), |lp, _| lp.stop());
        lp.run().unwrap();
        let _ = lp.stop_timer(guard);
        assert_eq!(calls.get(), 100);
        // A read at end-of-file does not re-arm; a read from offset 0 does.
        let pri_now = || {
            let mut p = libc::pollfd { fd, events: libc::POLLPRI, revents: 0 };
            // SAFETY: (FFI) one live pollfd; a zero timeout does not wait.
            assert!(unsafe { libc::poll(&mut p, 1, 0) } >= 0);
            p.revents & libc::POLLPRI != 0
        };
        assert!(pri_now());
        // SAFETY: (FFI) `buf` is a live buffer of its length.
        assert_eq!(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }, 0);
        assert!(pri_now(), "a read at end-of-file re-armed the notification");
        assert_eq!(populated(&attr.read_value().unwrap()), 1);
        assert!(!pri_now(), "a read from offset 0 did not re-arm the notification");
    }

    fn kernfs_errors(lp: &Loop) {
        let err = Attribute::open("/sys/no/such/attribute").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/sys/no/such/attribute"), "{err}");
        // A regular file can be read but not watched.
        let path = common::temp_path("kernfs-regular");
        fs::write(&path, "42\n").unwrap();
        let attr = Attribute::open(&path).unwrap();
        assert_eq!(attr.read_value().unwrap(), "42\n");
        let mut buf = [0u8; 1];
        assert_eq!(attr.read_raw(&mut buf).unwrap(), 1);
        // Opened read-only.
        assert_eq!(attr.write_value("x").unwrap_err().raw_os_error(), Some(libc::EBADF));
        let h = lp.spawn(move || {
            let e = attr.wait_change(None).unwrap_err();
            (e.kind(), e.to_string(), attr)
        });
        lp.run().unwrap();
        let (kind, msg, attr) = h.join().unwrap();
        assert_eq!(kind, io::ErrorKind::PermissionDenied, "{msg}");
        assert!(msg.contains("cannot be polled"), "{msg}");
        let e = kernfs::watch(lp, attr, |_, _| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let w = Attribute::open_writable(&path).unwrap();
        // pwrite at offset 0 (sysfs stores whole values; a regular file keeps the rest).
        w.write_value("17\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "17\n");
        fs::remove_file(&path).unwrap();
    }

    fn tcp_urgent_data_with_a_callback(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        (&client).write_all(b"abc").unwrap();
        send_oob(&client, b'!');
        let urgent: Rc<RefCell<Vec<u8>>> = Rc::default();
        let calls = Rc::new(Cell::new(0));
        let (u, c) = (urgent.clone(), calls.clone());
        let fd = server.as_raw_fd();
        lp.start_poll(fd, Interest::PRIORITY, move |lp, ready| {
            assert!(ready.is_priority());
            c.set(c.get() + 1);
            u.borrow_mut().push(recv_oob(fd));
            if c.get() == 1 {
                // A second urgent byte, later.
                let client = client.try_clone().unwrap();
                lp.start_timer(Timer::after(Duration::from_millis(2)), move |_, _| send_oob(&client, b'?'));
            } else {
                lp.start_timer(Timer::after(QUIET), move |lp, _| lp.detach(fd).unwrap());
            }
        }).unwrap();
        lp.run().unwrap();
        assert_eq!(*urgent.borrow(), b"!?");
        assert_eq!(calls.get(), 2, "one callback per urgent byte, no busy loop");
        // The urgent bytes left the normal stream.
        let mut normal = [0u8; 3];
        server.read_exact(&mut normal).unwrap();
        assert_eq!(&normal, b"abc");
    }

    fn tcp_urgent_data_in_a_fiber(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let h = lp.spawn(move || {
            let fd = server.as_raw_fd();
            let mut got = Vec::new();
            let mut wakeups = 0;
            let sender = client.try_clone().unwrap();
            fiber::spawn(move || {
                fiber::sleep(Duration::from_millis(2));
                send_oob(&sender, b'1');
            });
            let ready = fiber::wait(fd, Interest::PRIORITY, Some(HANG_GUARD)).unwrap();
            wakeups += 1;
            assert!(ready.is_priority(), "{ready:?}");
            got.push(recv_oob(fd));
            // Consumed: PRIORITY is clear, the next wait times out.
            let quiet = fiber::wait(fd, Interest::PRIORITY, Some(QUIET)).map_err(|e| e.kind());
            send_oob(&client, b'2');
            let ready = fiber::wait(fd, Interest::PRIORITY, Some(HANG_GUARD)).unwrap();
            wakeups += 1;
            assert!(ready.is_priority());
            got.push(recv_oob(fd));
            (got, wakeups, quiet)
        });
        lp.run().unwrap();
        let (got, wakeups, quiet) = h.join().unwrap();
        assert_eq!(got, b"12");
        assert_eq!(wakeups, 2);
        assert_eq!(quiet, Err(io::ErrorKind::WouldBlock));
    }
}

fn send_oob(s: &TcpStream, byte: u8) {
    // SAFETY: (FFI) a one-byte live buffer.
    let n = unsafe { libc::send(s.as_raw_fd(), (&byte as *const u8).cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, 1, "{}", io::Error::last_os_error());
}

fn recv_oob(fd: i32) -> u8 {
    let mut b = 0u8;
    // SAFETY: (FFI) a one-byte live buffer.
    let n = unsafe { libc::recv(fd, (&mut b as *mut u8).cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, 1, "{}", io::Error::last_os_error());
    b
}
