//! fanotify on both backends: open and modify events with the right pid (this process's, a
//! child's), events' fds and paths, permission events denied and allowed for child processes
//! (and allowed when dropped unanswered), errors, and the decoder on hand-made and hostile
//! buffers.
//!
//! fanotify needs CAP_SYS_ADMIN. Without it the behaviour tests check the error message and
//! skip. Permission marks block every opener of the marked file until the group answers: the
//! tests mark only files they create, answer every event, remove their marks in a guard (and
//! dropping the group allows whatever is still pending), bound every wait, and run their child
//! processes under `timeout`.

mod common;

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use common::temp_path;
use fdloop::dev::fanotify::{
    decode, Class, DecodeError, Event, EventKind, Fanotify, InitFlags, MarkKind, Mask, Response,
    METADATA_LEN,
};
use fdloop::{Interest, Loop, Timer};

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
    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p.canonicalize().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A group of `class`, or `None` (after checking the error message) without the privilege.
fn group(class: Class) -> Option<Fanotify> {
    match Fanotify::new(class, InitFlags::empty()) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            assert!(
                e.to_string().contains("CAP_SYS_ADMIN"),
                "the EPERM error does not say what is missing: {e}"
            );
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("fanotify_init: {e}"),
    }
}

/// Removes the group's inode marks when dropped (also on a panic), then closes the group,
/// which allows any permission event still pending.
struct Marked(Option<Fanotify>);

impl Marked {
    fn get(&mut self) -> &mut Fanotify {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.flush(MarkKind::Inode);
        }
    }
}

/// `timeout 20 cat path` with its output captured, in the C locale.
fn cat(path: &Path, under_timeout: bool) -> Child {
    let mut cmd = if under_timeout {
        let mut c = Command::new("timeout");
        c.arg(LIMIT.as_secs().to_string()).arg("cat");
        c
    } else {
        Command::new("cat")
    };
    cmd.arg(path)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat")
}

fn union_for(evs: &[Event], pid: i32) -> Mask {
    evs.iter()
        .filter(|e| e.pid == pid)
        .fold(Mask::empty(), |m, e| m | e.mask)
}

backend_tests! {
    fn open_and_modify_with_pids_in_a_fiber(lp: &Loop) {
        let Some(mut fan) = group(Class::Notification) else { return };
        let dir = TempDir::new("fan-notify");
        let file = dir.file("watched", b"hello\n");
        fan.mark(&file, MarkKind::Inode, Mask::OPEN | Mask::MODIFY).unwrap();

        // This process opens and writes; then a child reads it.
        std::fs::write(&file, b"changed\n").unwrap();
        let child = cat(&file, false);
        let child_pid = child.id() as i32;
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"changed\n");

        let me = std::process::id() as i32;
        let f = file.clone();
        let h = lp.spawn(move || {
            let mut all: Vec<Event> = Vec::new();
            while !union_for(&all, child_pid).contains(Mask::OPEN) {
                let evs = fan.read_events_timeout(LIMIT).unwrap();
                for e in &evs {
                    assert_eq!(e.kind, EventKind::Notification);
                    assert_eq!(e.path().unwrap(), f, "{e:?}");
                }
                all.extend(evs);
            }
            all
        });
        lp.run().unwrap();
        let evs = h.join().unwrap();
        // In order: this process's events first (merged or not), then the child's.
        assert_eq!(evs[0].pid, me, "{evs:#?}");
        assert!(union_for(&evs, me).contains(Mask::OPEN | Mask::MODIFY), "{evs:#?}");
        assert!(!union_for(&evs, child_pid).contains(Mask::MODIFY), "{evs:#?}");
        assert!(evs.iter().all(|e| e.pid == me || e.pid == child_pid), "{evs:#?}");
        assert!(evs.iter().all(|e| e.fd.is_some() && e.info.is_empty()));
    }

    fn callback_style_with_start_poll(lp: &Loop) {
        let Some(mut fan) = group(Class::Notification) else { return };
        let dir = TempDir::new("fan-cb");
        let file = dir.file("watched", b"x");
        fan.mark(&file, MarkKind::Inode, Mask::OPEN | Mask::CLOSE_NOWRITE).unwrap();
        drop(std::fs::File::open(&file).unwrap());

        let got = Rc::new(RefCell::new(Vec::<Event>::new()));
        let safety = lp.start_timer(Timer::after(LIMIT), |lp, _| lp.stop());
        let g = got.clone();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&fan);
        lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
            assert!(ready.is_readable());
            match fan.try_read_events() {
                Ok(evs) => g.borrow_mut().extend(evs),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("{e}"),
            }
            let all = union_for(&g.borrow(), std::process::id() as i32);
            if all.contains(Mask::OPEN | Mask::CLOSE_NOWRITE) {
                let e = fan.try_read_events().unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                lp.detach(fd).unwrap();
                lp.stop_timer(safety).unwrap();
            }
        })
        .unwrap();
        lp.run().unwrap();
        let evs = got.borrow();
        assert!(!evs.is_empty());
        for e in evs.iter() {
            assert_eq!(e.path().unwrap(), file);
            assert!(!e.needs_response());
        }
    }

    fn permission_denied_for_one_file_allowed_for_another(lp: &Loop) {
        let Some(fan) = group(Class::Content) else { return };
        let dir = TempDir::new("fan-perm");
        let deny = dir.file("deny.txt", b"secret\n");
        let allow = dir.file("allow.txt", b"public\n");
        let mut marked = Marked(Some(fan));
        marked.get().mark(&deny, MarkKind::Inode, Mask::OPEN_PERM).unwrap();
        marked.get().mark(&allow, MarkKind::Inode, Mask::OPEN_PERM).unwrap();

        // Each child waits in open(2) until the loop answers.
        let denied = cat(&deny, true);
        let allowed = cat(&allow, true);

        let (d, a) = (deny.clone(), allow.clone());
        let h = lp.spawn(move || {
            let mut marked = marked;
            let (mut saw_deny, mut saw_allow) = (false, false);
            while !(saw_deny && saw_allow) {
                let evs = marked.get().read_events_timeout(LIMIT).unwrap();
                for e in evs {
                    assert_eq!(e.kind, EventKind::Permission, "{e:?}");
                    assert!(e.mask.contains(Mask::OPEN_PERM));
                    assert!(e.needs_response());
                    let path = e.path().unwrap();
                    let answer = if path == d {
                        saw_deny = true;
                        Response::Deny
                    } else {
                        saw_allow |= path == a;
                        Response::Allow
                    };
                    marked.get().respond(&e, answer).unwrap();
                    assert!(!e.needs_response());
                    let again = marked.get().respond(&e, Response::Allow).unwrap_err();
                    assert_eq!(again.kind(), io::ErrorKind::InvalidInput, "{again}");
                }
            }
        });
        lp.run().unwrap();
        h.join().unwrap();

        let out = denied.wait_with_output().unwrap();
        assert!(!out.status.success(), "cat of the denied file succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "not EPERM: {err}");
        assert!(out.stdout.is_empty());
        let out = allowed.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"public\n");
    }

    fn unanswered_permission_event_is_allowed_when_dropped(lp: &Loop) {
        let Some(fan) = group(Class::Content) else { return };
        let dir = TempDir::new("fan-drop");
        let file = dir.file("f.txt", b"dropped\n");
        let mut marked = Marked(Some(fan));
        marked.get().mark(&file, MarkKind::Inode, Mask::OPEN_PERM).unwrap();
        let child = cat(&file, true);
        let h = lp.spawn(move || {
            let mut marked = marked;
            let evs = marked.get().read_events_timeout(LIMIT).unwrap();
            assert!(evs.iter().all(|e| e.kind == EventKind::Permission));
            drop(evs); // unanswered: allowed on drop
            marked
        });
        lp.run().unwrap();
        let _marked = h.join().unwrap(); // the group is still open
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"dropped\n");
    }
}

#[test]
fn mark_errors_name_the_path() {
    let Some(mut fan) = group(Class::Notification) else {
        return;
    };
    let dir = TempDir::new("fan-err");
    let missing = dir.0.join("missing");
    let e = fan.mark(&missing, MarkKind::Inode, Mask::OPEN).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    // Permission events need a permission class.
    let file = dir.file("f", b"");
    let e = fan
        .mark(&file, MarkKind::Inode, Mask::OPEN_PERM)
        .unwrap_err();
    assert!(e.to_string().contains("Class::Content"), "{e}");

    // Unmarking what is not marked.
    let e = fan.unmark(&file, MarkKind::Inode, Mask::OPEN).unwrap_err();
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    fan.flush(MarkKind::Inode).unwrap();
    fan.flush(MarkKind::Mount).unwrap();
}

#[test]
fn respond_to_a_notification_is_refused() {
    let Some(mut fan) = group(Class::Notification) else {
        return;
    };
    let dir = TempDir::new("fan-resp");
    let file = dir.file("f", b"");
    fan.mark(&file, MarkKind::Inode, Mask::OPEN).unwrap();
    drop(std::fs::File::open(&file).unwrap());
    let evs = fan.try_read_events().unwrap();
    assert!(!evs.is_empty());
    let e = fan.respond(&evs[0], Response::Allow).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    // A taken fd is the caller's.
    let mut ev = evs.into_iter().next().unwrap();
    let fd = ev.fd.take().unwrap();
    assert!(ev.path().is_err());
    drop(fd);
}

#[test]
#[should_panic(expected = "must be called inside a fiber")]
fn read_events_outside_a_fiber_panics() {
    // A FID group: allowed without privileges too (Linux 5.13).
    let mut fan = Fanotify::new(Class::Notification, InitFlags::REPORT_FID)
        .unwrap_or_else(|e| panic!("must be called inside a fiber (skipped: {e})"));
    let _ = fan.read_events();
}

#[test]
fn fid_mode_events_carry_info_and_no_fd() {
    // Works unprivileged on Linux 5.13 and later: inode marks, no fds, file handles instead.
    let mut fan = match Fanotify::new(Class::Notification, InitFlags::REPORT_FID) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: FID mode unavailable: {e}");
            return;
        }
    };
    let dir = TempDir::new("fan-fid");
    let file = dir.file("f", b"");
    fan.mark(&file, MarkKind::Inode, Mask::OPEN).unwrap();
    drop(std::fs::File::open(&file).unwrap());
    let evs = fan.try_read_events().unwrap();
    assert!(!evs.is_empty());
    let e = &evs[0];
    assert!(e.mask.contains(Mask::OPEN));
    assert_eq!(e.kind, EventKind::Notification);
    assert!(e.fd.is_none());
    assert_eq!(e.pid, std::process::id() as i32);
    // The first info record is a file handle (FAN_EVENT_INFO_TYPE_FID), `len` bytes long.
    assert_eq!(
        e.info.first(),
        Some(&libc::FAN_EVENT_INFO_TYPE_FID),
        "{e:?}"
    );
    let len = u16::from_ne_bytes([e.info[2], e.info[3]]) as usize;
    assert!(len <= e.info.len());
    assert_eq!(e.path().unwrap_err().kind(), io::ErrorKind::NotFound);
}

// ---- the decoder ----

fn record(mask: u64, fd: i32, pid: i32, info: &[u8]) -> Vec<u8> {
    let len = METADATA_LEN + info.len();
    let mut v = Vec::new();
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.push(libc::FANOTIFY_METADATA_VERSION);
    v.push(0);
    v.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
    v.extend_from_slice(&mask.to_ne_bytes());
    v.extend_from_slice(&fd.to_ne_bytes());
    v.extend_from_slice(&pid.to_ne_bytes());
    v.extend_from_slice(info);
    v
}

#[test]
fn decoder_reads_overflow_from_a_hand_made_buffer() {
    let buf = record(libc::FAN_Q_OVERFLOW, libc::FAN_NOFD, 0, &[]);
    let recs: Vec<_> = decode(&buf).collect();
    assert_eq!(recs.len(), 1);
    let r = recs[0].unwrap();
    assert_eq!(r.kind(), EventKind::Overflow);
    assert_eq!(r.fd, libc::FAN_NOFD);
    assert_eq!(r.mask, libc::FAN_Q_OVERFLOW);
    assert!(r.info.is_empty());
    assert_eq!(
        format!("{:?}", Mask::from_bits_retain(r.mask)),
        "Mask(Q_OVERFLOW)"
    );
}

#[test]
fn decoder_reads_several_records_with_info() {
    let mut buf = record(libc::FAN_OPEN, 7, 42, &[]);
    buf.extend(record(
        libc::FAN_OPEN_PERM,
        8,
        43,
        &[1, 0, 8, 0, 9, 9, 9, 9],
    ));
    buf.extend(record(libc::FAN_CLOSE_WRITE | libc::FAN_MODIFY, 9, 44, &[]));
    let recs: Vec<_> = decode(&buf).collect::<Result<_, _>>().unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!((recs[0].fd, recs[0].pid), (7, 42));
    assert_eq!(recs[0].kind(), EventKind::Notification);
    assert_eq!(recs[1].kind(), EventKind::Permission);
    assert_eq!(recs[1].info, &[1, 0, 8, 0, 9, 9, 9, 9]);
    assert_eq!(
        format!("{:?}", Mask::from_bits_retain(recs[2].mask)),
        "Mask(MODIFY | CLOSE_WRITE)"
    );
}

#[test]
fn decoder_rejects_truncated_and_malformed_records() {
    let good = record(libc::FAN_OPEN, 3, 1, &[]);
    // Every cut of a record.
    for cut in 1..good.len() {
        let mut d = decode(&good[..cut]);
        assert!(
            matches!(d.next(), Some(Err(DecodeError::Truncated { .. }))),
            "cut at {cut}"
        );
        assert_eq!(d.next(), None);
    }
    assert_eq!(decode(&[]).next(), None);

    // A wrong ABI version.
    let mut bad = good.clone();
    bad[4] = 2;
    assert_eq!(decode(&bad).next(), Some(Err(DecodeError::Version(2))));

    // event_len shorter than the metadata, or longer than the buffer.
    let mut bad = good.clone();
    bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert_eq!(decode(&bad).next(), Some(Err(DecodeError::EventLen(8))));
    let mut bad = good.clone();
    bad[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(matches!(
        decode(&bad).next(),
        Some(Err(DecodeError::Truncated { .. }))
    ));

    // metadata_len out of range.
    let mut bad = good.clone();
    bad[6..8].copy_from_slice(&100u16.to_ne_bytes());
    assert_eq!(
        decode(&bad).next(),
        Some(Err(DecodeError::MetadataLen(100)))
    );
    let mut bad = good.clone();
    bad[6..8].copy_from_slice(&4u16.to_ne_bytes());
    assert_eq!(decode(&bad).next(), Some(Err(DecodeError::MetadataLen(4))));

    // A good record, then garbage: one record, one error, then nothing.
    let mut buf = good.clone();
    buf.extend_from_slice(&[0xff; 30]);
    let mut d = decode(&buf);
    assert!(d.next().unwrap().is_ok());
    assert!(d.next().unwrap().is_err());
    assert_eq!(d.next(), None);
    assert_eq!(d.rest().len(), 30);
    let e: io::Error = DecodeError::Version(9).into();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("version 9"));
}

#[test]
fn decoder_survives_garbage() {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for len in 0..800 {
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Often a plausible header, so that decoding gets past the first checks.
        if len >= METADATA_LEN && next() % 2 == 0 {
            let event_len = (METADATA_LEN as u64 + next() % 40) as u32;
            buf[0..4].copy_from_slice(&event_len.to_ne_bytes());
            buf[4] = libc::FANOTIFY_METADATA_VERSION;
            buf[6..8].copy_from_slice(&((METADATA_LEN as u64 + next() % 8) as u16).to_ne_bytes());
        }
        let mut n = 0;
        for r in decode(&buf) {
            n += 1;
            if let Ok(r) = r {
                let _ = r.kind();
                assert!(r.info.len() <= len);
            }
        }
        assert!(n <= len / METADATA_LEN + 1);
    }
}
