//! Opens and holds idle client connections for `idle` and `memory` (which start it as a child
//! process, so that client and server ends do not share one process's fd limit).
//!
//! ```text
//! holdconns --addrs HOST:PORT[,HOST:PORT…] --conns N
//! ```
//!
//! Connects N blocking sockets (round-robin over the addresses), prints `READY <n>`, then
//! reads commands on stdin, one per line: `probe <i>` writes one byte on connection `i` and
//! waits up to 2 s for it to come back, answering `ok <ms>` or `timeout`; `quit` (or
//! end-of-input) exits.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fdloop_bench::Args;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addrs: Vec<SocketAddr> = args
        .get_str("addrs")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("--addrs: HOST:PORT list"))
        .collect();
    let n: usize = args.get("conns", 1000);
    if addrs.is_empty() {
        eprintln!("usage: holdconns --addrs HOST:PORT[,…] --conns N");
        std::process::exit(2);
    }
    fdloop_bench::raise_nofile(n as u64 + 64)?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect(addrs[i % addrs.len()]) {
            Ok(s) => conns.push(s),
            Err(e) => {
                eprintln!("holdconns: connect {i}: {e}");
                break;
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "READY {}", conns.len())
        .and_then(|()| out.flush())
        .is_err()
    {
        return Ok(()); // the parent is gone
    }
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<usize>().ok()),
        ) {
            (Some("probe"), Some(i)) if i < conns.len() => {
                let c = &mut conns[i];
                let t = Instant::now();
                let mut b = [0u8; 1];
                let ok = c.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
                    && c.write_all(b"x").is_ok()
                    && c.read_exact(&mut b).is_ok();
                if ok {
                    writeln!(out, "ok {:.3}", t.elapsed().as_secs_f64() * 1e3)?;
                } else {
                    writeln!(out, "timeout")?;
                }
                out.flush()?;
            }
            (Some("quit"), _) => break,
            _ => {
                writeln!(out, "?")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
