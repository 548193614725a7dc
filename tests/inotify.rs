//! inotify on both backends: events in order with names, paths and rename cookies (fibers and
//! callbacks), errors naming the path, `IN_IGNORED`, `WouldBlock` and timeouts, the decoder on
//! hostile input, and a queue overflow provoked with a tiny `max_queued_events` in a child
//! process.

mod common;

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use common::temp_path;
use fdloop::dev::inotify::{decode, Event, EventKind, EventMask, Inotify, WatchMask};
use fdloop::{fiber, BackendKind, Interest, Loop, Timer};

/// The bound on waits for things that should happen promptly (never asserted as a duration).
const LIMIT: Duration = Duration::from_secs(20);

/// A directory removed with its contents when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = temp_path(tag);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads events in a fiber until `done(&events)` holds; every read is bounded by `LIMIT`.
fn read_until(
    lp: &Loop,
    mut ino: Inotify,
    done: impl Fn(&[Event]) -> bool + 'static,
) -> (Inotify, Vec<Event>) {
    let h = lp.spawn(move || {
        let mut all = Vec::new();
        while !done(&all) {
            match ino.read_events_timeout(LIMIT) {
                Ok(evs) => all.extend(evs),
                Err(e) => panic!("reading inotify events: {e}; got so far: {all:#?}"),
            }
        }
        (ino, all)
    });
    lp.run().unwrap();
    h.join().unwrap()
}

fn name(e: &Event) -> &str {
    e.name.as_deref().and_then(OsStr::to_str).unwrap_or("")
}

backend_tests! {
    fn create_modify_rename_delete_in_order(lp: &Loop) {
        let dir = TempDir::new("ino-seq");
        let mut ino = Inotify::new().unwrap();
        let w = ino
            .add_watch(
                dir.path(),
                WatchMask::CREATE | WatchMask::MODIFY | WatchMask::MOVE | WatchMask::DELETE,
            )
            .unwrap();
        let d = dir.path().to_path_buf();
        // The reader waits first; the writer acts once the reader is suspended.
        let reader = lp.spawn(move || {
            let mut all: Vec<Event> = Vec::new();
            while !all.iter().any(|e| e.kind == EventKind::Delete) {
                all.extend(ino.read_events_timeout(LIMIT).unwrap());
            }
            all
        });
        lp.spawn(move || {
            fiber::yield_now();
            std::fs::write(d.join("a"), b"x").unwrap();
            std::fs::rename(d.join("a"), d.join("b")).unwrap();
            std::fs::remove_file(d.join("b")).unwrap();
        });
        lp.run().unwrap();
        let evs = reader.join().unwrap();

        let kinds: Vec<EventKind> = evs.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Create,
                EventKind::Modify,
                EventKind::MovedFrom,
                EventKind::MovedTo,
                EventKind::Delete
            ],
            "{evs:#?}"
        );
        let names: Vec<&str> = evs.iter().map(name).collect();
        assert_eq!(names, ["a", "a", "a", "b", "b"]);
        for e in &evs {
            assert_eq!(e.watch, w);
            assert_eq!(e.path.as_deref(), Some(dir.path().join(name(e)).as_path()));
            assert!(!e.is_dir());
        }
        // The rename pair shares one non-zero cookie; other events have none.
        assert_ne!(evs[2].cookie, 0);
        assert_eq!(evs[2].cookie, evs[3].cookie);
        assert!(evs[2].mask.contains(EventMask::MOVED_FROM));
        assert!(evs[3].mask.contains(EventMask::MOVED_TO));
        assert_eq!((evs[0].cookie, evs[1].cookie, evs[4].cookie), (0, 0, 0));
    }

    fn callback_style_with_start_poll(lp: &Loop) {
        let dir = TempDir::new("ino-cb");
        let mut ino = Inotify::new().unwrap();
        ino.add_watch(dir.path(), WatchMask::CREATE | WatchMask::DELETE).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        std::fs::remove_file(dir.path().join("f")).unwrap();

        let got = Rc::new(RefCell::new(Vec::<Event>::new()));
        let safety = lp.start_timer(Timer::after(LIMIT), |lp, _| lp.stop());
        let g = got.clone();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ino);
        lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
            assert!(ready.is_readable());
            match ino.try_read_events() {
                Ok(evs) => g.borrow_mut().extend(evs),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("{e}"),
            }
            if g.borrow().len() >= 3 {
                // The queue is drained: the next read says so.
                let e = ino.try_read_events().unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                lp.detach(fd).unwrap();
                lp.stop_timer(safety).unwrap();
            }
        })
        .unwrap();
        lp.run().unwrap();

        let evs = got.borrow();
        let summary: Vec<(EventKind, &str, bool)> =
            evs.iter().map(|e| (e.kind, name(e), e.is_dir())).collect();
        assert_eq!(
            summary,
            [
                (EventKind::Create, "sub", true),
                (EventKind::Create, "f", false),
                (EventKind::Delete, "f", false)
            ]
        );
    }

    fn remove_watch_reports_ignored(lp: &Loop) {
        let dir = TempDir::new("ino-rm");
        let mut ino = Inotify::new().unwrap();
        let w = ino.add_watch(dir.path(), WatchMask::CREATE).unwrap();
        assert_eq!(ino.watch_path(w), Some(dir.path()));
        ino.remove_watch(w).unwrap();
        // The path stays known until the IN_IGNORED event is read.
        assert_eq!(ino.watch_path(w), Some(dir.path()));
        let (mut ino, evs) = read_until(lp, ino, |evs| !evs.is_empty());
        assert_eq!(evs.len(), 1, "{evs:#?}");
        assert_eq!(evs[0].kind, EventKind::Ignored);
        assert!(evs[0].mask.contains(EventMask::IGNORED));
        assert_eq!(evs[0].watch, w);
        assert_eq!(evs[0].path.as_deref(), Some(dir.path()));
        assert_eq!(evs[0].name, None);
        assert_eq!(ino.watch_path(w), None);
        assert_eq!(ino.watches().count(), 0);
        let e = ino.remove_watch(w).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    fn deleted_file_reports_delete_self_then_ignored(lp: &Loop) {
        let dir = TempDir::new("ino-delself");
        let file = dir.path().join("victim");
        std::fs::write(&file, b"").unwrap();
        let mut ino = Inotify::new().unwrap();
        let w = ino.add_watch(&file, WatchMask::DELETE_SELF).unwrap();
        std::fs::remove_file(&file).unwrap();
        let (ino, evs) =
            read_until(lp, ino, |evs| evs.iter().any(|e| e.kind == EventKind::Ignored));
        let kinds: Vec<EventKind> = evs.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::DeleteSelf, EventKind::Ignored]);
        for e in &evs {
            assert_eq!(e.watch, w);
            assert_eq!(e.path.as_deref(), Some(file.as_path()));
        }
        assert_eq!(ino.watch_path(w), None);
    }

    fn empty_queue_would_block_and_timeout(lp: &Loop) {
        let dir = TempDir::new("ino-empty");
        let mut ino = Inotify::new().unwrap();
        ino.add_watch(dir.path(), WatchMask::CREATE).unwrap();
        let e = ino.try_read_events().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let h = lp.spawn(move || {
            let e = ino.read_events_timeout(Duration::from_millis(5)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            let e = ino.read_events_timeout(Duration::ZERO).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            ino
        });
        lp.run().unwrap();
        let mut ino = h.join().unwrap();
        // Still usable after a timeout.
        std::fs::write(dir.path().join("late"), b"").unwrap();
        let evs = ino.try_read_events().unwrap();
        assert_eq!(evs[0].kind, EventKind::Create);
        assert_eq!(name(&evs[0]), "late");
    }

    fn overflow_with_tiny_queue(lp: &Loop) {
        run_overflow_child(lp.backend().kind);
    }
}

#[test]
fn missing_path_error_names_it() {
    let dir = TempDir::new("ino-missing");
    let missing = dir.path().join("no-such-entry");
    let mut ino = Inotify::new().unwrap();
    let e = ino.add_watch(&missing, WatchMask::CREATE).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "the error does not name the path: {e}"
    );
    let e = ino
        .add_watch(Path::new("bad\0path"), WatchMask::CREATE)
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}

#[test]
#[should_panic(expected = "must be called inside a fiber")]
fn read_events_outside_a_fiber_panics() {
    let mut ino = Inotify::new().unwrap();
    let _ = ino.read_events();
}

// ---- the decoder ----

fn record(wd: i32, mask: u32, cookie: u32, name: &[u8], padded: usize) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wd.to_ne_bytes());
    v.extend_from_slice(&mask.to_ne_bytes());
    v.extend_from_slice(&cookie.to_ne_bytes());
    v.extend_from_slice(&(padded as u32).to_ne_bytes());
    let mut n = name.to_vec();
    n.resize(padded, 0);
    v.extend_from_slice(&n);
    v
}

#[test]
fn decoder_reads_records_and_strips_padding() {
    let mut buf = record(1, libc::IN_CREATE, 0, b"hello", 16);
    buf.extend(record(1, libc::IN_MOVED_FROM, 77, b"x", 4));
    buf.extend(record(-1, libc::IN_Q_OVERFLOW, 0, b"", 0));
    buf.extend(record(2, libc::IN_IGNORED, 0, b"", 0));
    let mut d = decode(&buf);
    let evs: Vec<_> = d.by_ref().collect();
    assert!(d.rest().is_empty());
    assert_eq!(evs.len(), 4);
    assert_eq!(evs[0].name, Some(&b"hello"[..]));
    assert_eq!(evs[0].kind(), EventKind::Create);
    assert_eq!((evs[1].cookie, evs[1].name), (77, Some(&b"x"[..])));
    assert_eq!(evs[2].kind(), EventKind::Overflow);
    assert_eq!((evs[2].wd, evs[2].name), (-1, None));
    assert_eq!(evs[3].kind(), EventKind::Ignored);
}

#[test]
fn decoder_stops_at_truncated_records() {
    let full = record(3, libc::IN_DELETE, 0, b"name", 8);
    for cut in 0..full.len() {
        let mut d = decode(&full[..cut]);
        assert_eq!(d.next(), None, "cut at {cut}");
        assert_eq!(d.rest().len(), cut);
    }
    // A complete record followed by a partial one.
    let mut buf = full.clone();
    buf.extend_from_slice(&full[..20]);
    let mut d = decode(&buf);
    assert_eq!(d.by_ref().count(), 1);
    assert_eq!(d.rest().len(), 20);
    // A length field far beyond the buffer (and beyond usize arithmetic on 32-bit).
    let huge = record(1, libc::IN_CREATE, 0, b"", 0);
    let mut huge = huge.clone();
    huge[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(decode(&huge).count(), 0);
    // A name of NULs only is no name.
    assert_eq!(
        decode(&record(1, libc::IN_CREATE, 0, b"", 8))
            .next()
            .unwrap()
            .name,
        None
    );
}

#[test]
fn decoder_survives_garbage() {
    // A deterministic pseudo-random generator (xorshift): no dependency, reproducible.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for len in 0..600 {
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Now and then a small length field, so that some records decode.
        if len >= 16 && next() % 2 == 0 {
            buf[12..16].copy_from_slice(&((next() % 32) as u32).to_ne_bytes());
        }
        let mut d = decode(&buf);
        let mut consumed = 0;
        for ev in d.by_ref() {
            consumed += 16 + ev.name.map_or(0, <[u8]>::len);
            let _ = ev.kind();
        }
        assert!(consumed <= len);
        assert!(d.rest().len() <= len);
    }
}

// ---- overflow, in a child process ----

const SYSCTL: &str = "/proc/sys/fs/inotify/max_queued_events";
const ROLE_ENV: &str = "FDLOOP_INOTIFY_OVERFLOW_CHILD";

/// Serialises the children of this process: each changes a machine-wide sysctl for an instant,
/// and two at once could restore each other's value.
static SYSCTL_LOCK: Mutex<()> = Mutex::new(());

fn run_overflow_child(kind: BackendKind) {
    let backend = match kind {
        BackendKind::Uring => "uring",
        BackendKind::Epoll => "epoll",
    };
    let _lock = SYSCTL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overflow_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, backend)
        .env("FDLOOP_BACKEND", backend)
        .output()
        .expect("spawn the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "overflow child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    if let Some(at) = stdout.find("CHILD-SKIP ") {
        let line = stdout[at + "CHILD-SKIP ".len()..].lines().next();
        println!("overflow on {backend}: {}", line.unwrap_or(""));
        return;
    }
    assert!(
        stdout.contains("CHILD-DONE"),
        "the overflow child did not run its checks:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    if let Some(at) = stdout.find("CHILD-DONE") {
        println!("{}", stdout[at..].lines().next().unwrap_or(""));
    }
}

/// Restores the sysctl when dropped, also when the child panics.
struct Restore {
    old: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.old) {
            eprintln!("could not restore {SYSCTL} to {}: {e}", self.old);
        }
    }
}

/// The child's side; does nothing in a normal run.
#[test]
#[ignore = "run in a child process by overflow_with_tiny_queue"]
fn overflow_child() {
    let Ok(backend) = std::env::var(ROLE_ENV) else {
        return;
    };
    let old = match std::fs::read_to_string(SYSCTL) {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            println!("CHILD-SKIP skipped: cannot read {SYSCTL}: {e}");
            return;
        }
    };
    // The limit is captured when the instance is created: change it for as short a time as
    // possible, and restore it before anything else happens.
    let ino = {
        if let Err(e) = std::fs::write(SYSCTL, "16") {
            println!(
                "CHILD-SKIP skipped: cannot write {SYSCTL} ({e}); this test needs root and a \
                 writable /proc/sys"
            );
            return;
        }
        let _restore = Restore { old: old.clone() };
        Inotify::new()
    };
    assert_eq!(std::fs::read_to_string(SYSCTL).unwrap().trim(), old);
    let mut ino = ino.unwrap();

    let choice = match backend.as_str() {
        "uring" => fdloop::BackendChoice::Uring,
        _ => fdloop::BackendChoice::Epoll,
    };
    let Some(lp) = common::new_loop(choice) else {
        println!("CHILD-SKIP skipped: io_uring is unavailable here");
        return;
    };
    let dir = TempDir::new("ino-overflow");
    let w = ino.add_watch(dir.path(), WatchMask::CREATE).unwrap();
    for i in 0..100 {
        std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
    }
    let (ino, evs) = read_until(&lp, ino, |evs| {
        evs.iter().any(|e| e.kind == EventKind::Overflow)
    });
    let last = evs.last().unwrap();
    assert_eq!(last.kind, EventKind::Overflow, "{evs:#?}");
    assert!(last.mask.contains(EventMask::Q_OVERFLOW));
    assert_eq!(last.watch.as_raw(), -1);
    assert_eq!(last.path, None);
    assert!(
        evs.len() <= 17,
        "more events than the queue holds: {}",
        evs.len()
    );
    assert!(evs[..evs.len() - 1]
        .iter()
        .all(|e| e.kind == EventKind::Create && e.watch == w));
    // What to rescan.
    assert_eq!(ino.watches().collect::<Vec<_>>(), [(w, dir.path())]);
    println!(
        "CHILD-DONE {backend}: {} events, the last an overflow",
        evs.len()
    );
}
