//! Prints the edges of one GPIO line until Ctrl-C.
//!
//! ```text
//! cargo run --example gpio -- /dev/gpiochip0 17   # character device: chip and line offset
//! cargo run --example gpio -- sysfs 17            # sysfs: global GPIO number
//! ```
//!
//! With the character device, a fiber reads each edge event with the kernel's timestamp
//! (`CLOCK_MONOTONIC`, taken close to the interrupt) and sequence number. With sysfs, a callback
//! watches the `value` file and prints the value read after each change, stamped with the time
//! of the read (sysfs gives no timestamp, and changes before the read coalesce). Ctrl-C stops
//! the loop and exits with status 0; a line exported by this program is unexported first.
//! Without arguments it prints its usage and exits with status 2.

use std::env;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use fdloop::dev::gpio::cdev::{Chip, EdgeDetection, EdgeKind, LineConfig};
use fdloop::dev::gpio::sysfs::{self, Direction, Edge};
use fdloop::dev::timerfd::Clock;
use fdloop::{Loop, Signal};

const USAGE: &str = "usage: gpio /dev/gpiochipN OFFSET   (GPIO character device)\n       \
                     gpio sysfs NUMBER             (/sys/class/gpio)";

fn stamp(d: Duration) -> String {
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn chardev(lp: &Loop, chip: &str, offset: u32) -> io::Result<()> {
    let chip = Chip::open(chip)?;
    let info = chip.chip_info()?;
    println!(
        "{} ({}, {} lines): line {offset}, both edges; Ctrl-C to stop",
        info.name, info.label, info.lines
    );
    let config = LineConfig::input().edge_detection(EdgeDetection::Both);
    let mut req = chip.request_lines(&[offset], &config, "fdloop-example")?;
    println!("value now: {}", u8::from(req.get_value(offset)?));
    lp.spawn(move || loop {
        match req.read_edge_event() {
            Ok(ev) => {
                let kind = match ev.kind {
                    EdgeKind::Rising => "rising ",
                    EdgeKind::Falling => "falling",
                };
                println!(
                    "[{}] line {} {kind} (event #{}, #{} on this line)",
                    stamp(Duration::from_nanos(ev.timestamp_ns)),
                    ev.offset,
                    ev.seqno,
                    ev.line_seqno
                );
            }
            Err(e) => {
                eprintln!("gpio: reading edge events: {e}");
                fdloop::fiber::with_loop(|lp| lp.stop());
                return;
            }
        }
    });
    Ok(())
}

/// Returns whether this program exported the line (and should unexport it).
fn sysfs_gpio(lp: &Loop, number: u32) -> io::Result<bool> {
    let was_exported = std::path::Path::new(sysfs::DEFAULT_ROOT)
        .join(format!("gpio{number}"))
        .exists();
    let pin = sysfs::export(number)?;
    pin.set_direction(Direction::In)?;
    pin.set_edge(Edge::Both)?;
    println!(
        "gpio {number} ({}): both edges; Ctrl-C to stop",
        pin.path().display()
    );
    println!("value now: {}", u8::from(pin.value()?));
    pin.watch(lp, |lp, value| match value {
        Ok(v) => {
            let now = Clock::Monotonic.now().unwrap_or_default();
            println!("[{}] value {} (time of the read)", stamp(now), u8::from(v));
        }
        Err(e) => {
            eprintln!("gpio: watching the value: {e}");
            lp.stop();
        }
    })?;
    Ok(!was_exported)
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let [source, line] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Ok(line) = line.parse::<u32>() else {
        eprintln!("gpio: {line:?} is not a line number\n{USAGE}");
        return ExitCode::from(2);
    };
    let run = || -> io::Result<Option<u32>> {
        let lp = Loop::new()?;
        lp.start_signal(Signal::INT, |lp, _| lp.stop())?;
        let unexport = if source == "sysfs" {
            sysfs_gpio(&lp, line)?.then_some(line)
        } else {
            chardev(&lp, source, line)?;
            None
        };
        lp.run()?;
        Ok(unexport)
    };
    match run() {
        Ok(unexport) => {
            if let Some(n) = unexport {
                if let Err(e) = sysfs::unexport(n) {
                    eprintln!("gpio: {e}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gpio: {e}");
            ExitCode::FAILURE
        }
    }
}
