//! The echo load generator: one thread, mio (epoll), N connections.
//!
//! ```text
//! loadgen --addr HOST:PORT [--conns 64] [--size 64] [--depth 1] [--secs 3] [--warmup 0.5]
//! ```
//!
//! Each connection keeps `depth` messages of `size` bytes in flight (`depth 1` is
//! request/response; more is pipelining) and sends the next one as soon as one has been
//! echoed in full. Every echoed byte is compared with what was sent (each message is a
//! different slice of a pattern, so a byte delivered to the wrong connection or in the wrong
//! order is caught); a mismatch or a closed connection ends the run with exit status 1.
//!
//! The run is a warm-up, then the measured window. The generator prints `GO` when the window
//! opens and `DONE` when it closes (so that a runner can sample the server's CPU time and
//! syscall counters over exactly that window), then one JSON line: round trips in the window,
//! round trips per second, and latency percentiles (µs) of the messages completed in it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use fdloop_bench::{process_cpu_us, Args};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Period of the pattern the messages are cut from (a prime, so that the slices of
/// consecutive messages and connections differ).
const PERIOD: usize = 251;

struct Conn {
    stream: TcpStream,
    id: usize,
    /// Messages queued for sending so far.
    sent: u64,
    /// Messages echoed back in full so far.
    done: u64,
    /// Bytes of message `done` received so far.
    recv_off: usize,
    out: Vec<u8>,
    out_off: usize,
    /// When each message in flight was queued.
    stamps: VecDeque<Instant>,
}

struct Gen {
    pattern: Vec<u8>,
    size: usize,
    depth: u64,
    measuring: bool,
    round_trips: u64,
    latencies_ns: Vec<u32>,
    bytes_checked: u64,
}

impl Gen {
    fn message(&self, conn: usize, seq: u64) -> &[u8] {
        let start = (conn * 7 + (seq % PERIOD as u64) as usize * 13) % PERIOD;
        &self.pattern[start..start + self.size]
    }

    /// Queues messages up to the depth and writes what the socket takes.
    fn fill(&self, c: &mut Conn) -> io::Result<()> {
        if c.sent - c.done < self.depth {
            let now = Instant::now();
            if c.out_off == c.out.len() {
                c.out.clear();
                c.out_off = 0;
            }
            while c.sent - c.done < self.depth {
                let m = self.message(c.id, c.sent);
                c.out.extend_from_slice(m);
                c.stamps.push_back(now);
                c.sent += 1;
            }
        }
        while c.out_off < c.out.len() {
            match c.stream.write(&c.out[c.out_off..]) {
                Ok(n) => c.out_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads until `WouldBlock`, checking every byte.
    fn drain(&mut self, c: &mut Conn, scratch: &mut [u8]) -> io::Result<()> {
        loop {
            let n = match c.stream.read(scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection {} closed by the server", c.id),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let mut chunk = &scratch[..n];
            while !chunk.is_empty() {
                if c.done == c.sent {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("connection {}: {} bytes nobody sent", c.id, chunk.len()),
                    ));
                }
                let m = (self.size - c.recv_off).min(chunk.len());
                let want = &self.message(c.id, c.done)[c.recv_off..c.recv_off + m];
                if want != &chunk[..m] {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "connection {}: message {} bytes {}..{} differ from what was sent",
                            c.id,
                            c.done,
                            c.recv_off,
                            c.recv_off + m
                        ),
                    ));
                }
                self.bytes_checked += m as u64;
                chunk = &chunk[m..];
                c.recv_off += m;
                if c.recv_off == self.size {
                    c.recv_off = 0;
                    c.done += 1;
                    let sent_at = c.stamps.pop_front().expect("a stamp per message in flight");
                    if self.measuring {
                        self.round_trips += 1;
                        let ns = now.duration_since(sent_at).as_nanos();
                        self.latencies_ns
                            .push(u32::try_from(ns).unwrap_or(u32::MAX));
                    }
                }
            }
        }
    }
}

fn percentile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    if let Err(e) = run() {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let args = Args::parse();
    let Some(addr) = args.get_str("addr").map(str::to_string) else {
        eprintln!("usage: loadgen --addr HOST:PORT [--conns N] [--size S] [--depth K] [--secs D] [--warmup W]");
        std::process::exit(2);
    };
    let conns_n: usize = args.get("conns", 64);
    let size: usize = args.get("size", 64).max(1);
    let depth: u64 = args.get("depth", 1).max(1);
    let secs: f64 = args.get("secs", 3.0);
    let warmup: f64 = args.get("warmup", 0.5);
    fdloop_bench::raise_nofile(conns_n as u64 + 64)?;

    let pattern: Vec<u8> = (0..PERIOD + size)
        .map(|i| ((i % PERIOD) * 167 + 13) as u8)
        .collect();
    let mut gen = Gen {
        pattern,
        size,
        depth,
        measuring: false,
        round_trips: 0,
        latencies_ns: Vec::with_capacity(1 << 22),
        bytes_checked: 0,
    };
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(conns_n);
    for id in 0..conns_n {
        let std_stream = std::net::TcpStream::connect(addr.as_str())?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Conn {
            stream,
            id,
            sent: 0,
            done: 0,
            recv_off: 0,
            out: Vec::with_capacity(size * depth as usize),
            out_off: 0,
            stamps: VecDeque::with_capacity(depth as usize),
        });
    }
    for c in &mut conns {
        gen.fill(c)?;
    }
    let mut scratch = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let go_at = start + Duration::from_secs_f64(warmup);
    let end_at = go_at + Duration::from_secs_f64(secs);
    let mut window_start = None;
    let mut cpu_start = 0;
    let stdout = io::stdout();
    loop {
        let now = Instant::now();
        if window_start.is_none() && now >= go_at {
            gen.measuring = true;
            window_start = Some(now);
            cpu_start = process_cpu_us();
            let mut o = stdout.lock();
            writeln!(o, "GO")?;
            o.flush()?;
        }
        if now >= end_at {
            break;
        }
        match poll.poll(&mut events, Some(Duration::from_millis(5))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                gen.drain(c, &mut scratch)?;
            }
            gen.fill(c)?;
        }
    }
    let window = window_start.map_or(Duration::ZERO, |w| w.elapsed());
    let client_cpu_s = (process_cpu_us() - cpu_start) as f64 / 1e6;
    {
        let mut o = stdout.lock();
        writeln!(o, "DONE")?;
        o.flush()?;
    }
    let mut lat = std::mem::take(&mut gen.latencies_ns);
    lat.sort_unstable();
    let mean_us = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| u64::from(x)).sum::<u64>() as f64 / lat.len() as f64 / 1000.0
    };
    let secs_measured = window.as_secs_f64();
    let rt_per_s = if secs_measured > 0.0 {
        gen.round_trips as f64 / secs_measured
    } else {
        0.0
    };
    println!(
        "{{\"conns\":{conns_n},\"size\":{size},\"depth\":{depth},\"secs\":{secs_measured:.4},\
         \"round_trips\":{},\"rt_per_s\":{rt_per_s:.1},\"p50_us\":{:.2},\"p99_us\":{:.2},\
         \"p999_us\":{:.2},\"mean_us\":{mean_us:.2},\"bytes_checked\":{},\"client_cpu_s\":{client_cpu_s:.3}}}",
        gen.round_trips,
        percentile_us(&lat, 0.50),
        percentile_us(&lat, 0.99),
        percentile_us(&lat, 0.999),
        gen.bytes_checked,
    );
    Ok(())
}
