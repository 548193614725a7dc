//! Watches a directory with inotify and prints its events as they come, from a fiber.
//!
//! ```text
//! cargo run --example watch                      # a demo: a temp dir that the example changes itself
//! cargo run --example watch -- /some/dir         # until Ctrl-C
//! cargo run --example watch -- /some/dir --seconds 10
//! ```
//!
//! Without a directory, the example creates a temporary one, changes it from a second fiber
//! (create, write, rename, delete) and stops after 3 seconds unless `--seconds` says otherwise.
//! Ctrl-C (SIGINT) stops it at any time. `FDLOOP_BACKEND=epoll` runs it on the epoll backend.

use std::cell::Cell;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::dev::inotify::{Event, EventKind, Inotify, WatchMask};
use fdloop::{fiber, Loop, Signal, Timer};

struct Args {
    dir: Option<PathBuf>,
    seconds: Option<u64>,
}

fn usage() -> ! {
    eprintln!("usage: watch [DIR] [--seconds N]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: None,
        seconds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let n = it.next().and_then(|n| n.parse().ok());
                args.seconds = Some(n.unwrap_or_else(|| usage()));
            }
            "-h" | "--help" => usage(),
            _ if a.starts_with('-') => usage(),
            _ if args.dir.is_none() => args.dir = Some(PathBuf::from(a)),
            _ => usage(),
        }
    }
    args
}

fn describe(e: &Event, start: Instant) -> String {
    let t = start.elapsed().as_secs_f64();
    let what = match &e.path {
        Some(p) => p.display().to_string(),
        None => String::from("-"),
    };
    let dir = if e.is_dir() { " (dir)" } else { "" };
    let cookie = if e.cookie != 0 {
        format!(" cookie={}", e.cookie)
    } else {
        String::new()
    };
    format!(
        "[{t:7.3}s] {:<12} {what}{dir}{cookie}",
        format!("{:?}", e.kind)
    )
}

fn main() -> io::Result<()> {
    let args = parse_args();
    let lp = Loop::new()?;
    println!("backend: {}", lp.backend());

    // The directory: the one given, or a temp dir for the demo.
    let demo = args.dir.is_none();
    let dir = match args.dir {
        Some(d) => d,
        None => {
            let d = std::env::temp_dir().join(format!("fdloop-watch-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    let seconds = args.seconds.or(if demo { Some(3) } else { None });

    let mut inotify = Inotify::new()?;
    inotify.add_watch(
        &dir,
        WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::MOVE
            | WatchMask::CLOSE_WRITE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    match seconds {
        Some(s) => println!("watching {} for {s} s (Ctrl-C stops)", dir.display()),
        None => println!("watching {} (Ctrl-C stops)", dir.display()),
    }

    // Stop on SIGINT, or when the time is up.
    lp.start_signal(Signal::INT, |lp, _| {
        println!("SIGINT: stopping");
        lp.stop();
    })?;
    if let Some(s) = seconds {
        lp.start_timer(Timer::after(Duration::from_secs(s)), |lp, _| lp.stop());
    }

    // The reader: a fiber whose `read_events` suspends only itself.
    let start = Instant::now();
    let count = Rc::new(Cell::new(0usize));
    let n = count.clone();
    lp.spawn(move || loop {
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(e) => {
                // Also the way out when the loop closes while the fiber waits.
                if e.raw_os_error() != Some(libc::ECANCELED) {
                    eprintln!("reading events: {e}");
                }
                return;
            }
        };
        for e in &events {
            n.set(n.get() + 1);
            println!("{}", describe(e, start));
            match e.kind {
                EventKind::Overflow => {
                    println!("  the kernel's queue overflowed: events were lost; rescan:");
                    for (_, path) in inotify.watches() {
                        println!("  rescan {}", path.display());
                    }
                }
                EventKind::Ignored => {
                    println!("  the watch is gone");
                    if inotify.watches().next().is_none() {
                        println!("nothing left to watch");
                        fiber::with_loop(|lp| lp.stop());
                        return;
                    }
                }
                _ => {}
            }
        }
    });

    // The demo's changes, from a second fiber.
    if demo {
        let d = dir.clone();
        lp.spawn(move || {
            for i in 0.. {
                fiber::sleep(Duration::from_millis(300));
                let a = d.join(format!("file-{i}"));
                let b = d.join(format!("renamed-{i}"));
                let step = || -> io::Result<()> {
                    std::fs::write(&a, format!("change {i}\n"))?;
                    std::fs::rename(&a, &b)?;
                    std::fs::remove_file(&b)
                };
                if let Err(e) = step() {
                    eprintln!("demo change {i}: {e}");
                    return;
                }
            }
        });
    }

    lp.run()?;
    println!("{} events", count.get());
    drop(lp); // unwinds the suspended fibers
    if demo {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
