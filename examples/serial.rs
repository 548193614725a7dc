//! A request/response exchange over a serial port, with fibers.
//!
//! ```text
//! cargo run --example serial                      # over a pty pair, with a simulated device
//! cargo run --example serial -- /dev/ttyUSB0      # a real port at 115200 8N1
//! cargo run --example serial -- /dev/ttyACM0 9600
//! ```
//!
//! Without a port, the example makes a pty pair and opens its slave by path, exactly as it
//! would open a real port; a second fiber plays the device on the master side and answers
//! each `PING` line with `PONG`. With a port, it sends `PING\n` and prints whatever line comes
//! back within 2 s (many boards reset when the port is opened, and may miss it).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::dev::serial::{pty_pair, SerialPort, Settings};
use fdloop::Loop;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port = args.next();
    let baud = match args.next() {
        Some(b) => b.parse::<u32>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad baud rate {b:?}: {e}"),
            )
        })?,
        None => 115_200,
    };
    let lp = Loop::new()?;
    println!("backend: {}", lp.backend());
    match port {
        Some(path) => real_port(&lp, Path::new(&path), baud),
        None => simulated(&lp, baud),
    }
}

/// A pty pair: the host opens the slave by path, a fiber on the master plays the device.
fn simulated(lp: &Loop, baud: u32) -> io::Result<()> {
    let (device, slave) = pty_pair()?;
    let path = slave.path().expect("a pty slave has a path").to_path_buf();
    let host = SerialPort::open(&path, &Settings::new().baud_rate(baud))?;
    // The host's fd keeps the slave side open; without this one, the device sees the host's
    // close as the hang-up (end-of-file).
    drop(slave);
    println!(
        "pty pair: host on {}, simulated device on the master",
        path.display()
    );

    lp.spawn(move || {
        let mut lines = BufReader::new(&device);
        let mut line = String::new();
        loop {
            line.clear();
            // Ok(0): every slave fd is closed, the pty master's hang-up.
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("device: read failed: {e}");
                    return;
                }
            }
            let reply: &[u8] = if line == "PING\n" {
                b"PONG\n"
            } else {
                b"ERR\n"
            };
            if let Err(e) = (&device).write_all(reply) {
                eprintln!("device: write failed: {e}");
                return;
            }
        }
        println!("device: the host hung up");
    });

    let host = Rc::new(host);
    lp.spawn(move || {
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut replies = BufReader::new(&*host);
        for i in 1..=3 {
            let sent = Instant::now();
            if let Err(e) = (&*host).write_all(b"PING\n").and_then(|()| host.drain()) {
                eprintln!("host: write failed: {e}");
                return;
            }
            let mut reply = String::new();
            match replies.read_line(&mut reply) {
                Ok(_) => println!(
                    "host: request {i}: PING -> {} in {} µs",
                    reply.trim_end(),
                    sent.elapsed().as_micros()
                ),
                Err(e) => {
                    eprintln!("host: no reply: {e}");
                    return;
                }
            }
        }
        // Dropping the host closes the last slave fd: the device reads end-of-file.
    });
    lp.run()
}

/// A real port: send one request and print the line that comes back within 2 s.
fn real_port(lp: &Loop, path: &Path, baud: u32) -> io::Result<()> {
    let port = SerialPort::open(path, &Settings::new().baud_rate(baud))?;
    println!("{} open at {baud} 8N1", path.display());
    let h = lp.spawn(move || -> io::Result<()> {
        (&port).write_all(b"PING\n")?;
        port.drain()?;
        println!("sent: PING");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut line = Vec::new();
        let mut buf = [0u8; 256];
        while !line.contains(&b'\n') {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            port.set_read_timeout(Some(left))?;
            match (&port).read(&mut buf) {
                Ok(0) => break, // hung up (unplugged)
                Ok(n) => line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if line.is_empty() {
            println!("no reply within 2 s");
        } else {
            println!("received: {:?}", String::from_utf8_lossy(&line));
        }
        Ok(())
    });
    lp.run()?;
    h.join()
        .unwrap_or_else(|_| Err(io::Error::other("the fiber panicked")))
}
