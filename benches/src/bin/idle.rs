//! An idle loop: N idle echo connections and M far timers; how often does the loop wake up,
//! and how much CPU does it use, while nothing happens?
//!
//! ```text
//! idle [--backend uring|epoll] [--style fiber|callback] [--conns 10000] [--timers 10000]
//!      [--secs 10] [--cq-entries N] [--probes 8]
//! ```
//!
//! `holdconns` child processes open the connections (plain blocking sockets, never written to
//! during the window); the loop thread accepts them and parks one read per connection (a fiber in
//! `read`, or a `Loop::recv_multishot`), and starts the timers with deadlines 1000–3600 s
//! away. Then the window: `Loop::run_for(secs)`. The loop thread's context switches
//! (`/proc/thread-self/status`: each blocking wait that sleeps is one voluntary switch) and its
//! CPU time (`CLOCK_THREAD_CPUTIME_ID`) are read before and after; nothing is counted inside
//! fdloop. `GO` and `DONE` mark the window on stdout, so that a runner can also count the
//! process's syscalls from outside (`perf stat`).
//!
//! After the window, `probes` connections spread over the whole range (the first, the last,
//! and evenly between) each send one byte, and the echo is awaited for up to 2 s: an idle
//! connection must still be served when it wakes up.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::{BackendKind, Loop, Timer};
use fdloop_bench::fdloop_echo::{accept_callbacks, accept_fibers, Receive};
use fdloop_bench::{backend_arg, clients, proc_status, wait_accepted, Args};

fn thread_cpu_ns() -> u64 {
    // SAFETY: (FFI) `ts` is a plain struct that lives across the call.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

fn ctxt_switches() -> (u64, u64) {
    let p = "/proc/thread-self/status";
    (
        proc_status(p, "voluntary_ctxt_switches").unwrap_or(0),
        proc_status(p, "nonvoluntary_ctxt_switches").unwrap_or(0),
    )
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let conns: usize = args.get("conns", 10_000);
    let timers: usize = args.get("timers", 10_000);
    let secs: f64 = args.get("secs", 10.0);
    let probes: usize = args.get("probes", 8);
    let style: String = args.get("style", "fiber".to_string());
    fdloop_bench::raise_nofile(conns as u64 + 256)?;

    let mut builder = Loop::builder().backend(backend_arg(&args));
    if let Some(cq) = args.get_str("cq-entries") {
        builder = builder.cq_entries(cq.parse().unwrap_or(1024));
    }
    let lp = builder.build()?;
    let listener = fdloop_bench::listen("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let accepted = Rc::new(Cell::new(0usize));
    match style.as_str() {
        "callback" => {
            if lp.backend().kind == BackendKind::Epoll {
                listener.set_nonblocking(true)?;
            }
            accept_callbacks(
                &lp,
                Rc::new(listener),
                1024,
                Receive::Multishot,
                accepted.clone(),
            );
        }
        "fiber" => {
            let listener = fdloop::net::TcpListener::from_std(listener)?;
            let a = accepted.clone();
            lp.spawn(move || accept_fibers::<1024>(listener, a));
        }
        other => {
            eprintln!("--style: callback or fiber, not {other:?}");
            std::process::exit(2);
        }
    }

    // The clients, in `holdconns` child processes.
    let handle = lp.handle();
    let clients = clients::start(vec![addr], conns, 15_000, move || {
        let _ = handle.stop();
    })?;
    // Wait until every client is connected and accepted; give up when accepting stalls for
    // 10 s (the clients then stay blocked in connect, and the probes are skipped).
    let (n, stalled) = wait_accepted(&lp, &clients.connected, &accepted)?;
    if accepted.get() < n || stalled {
        eprintln!("only {} of {conns} connections accepted", accepted.get());
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..timers {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(1_000_000 + seed % 2_600_000);
        lp.start_timer(Timer::after(delay), |_, _| {});
    }
    // Settle: every fiber parked in its read, every recv submitted.
    lp.run_for(Duration::from_millis(200))?;

    println!("GO");
    let (v0, n0) = ctxt_switches();
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    lp.run_for(Duration::from_secs_f64(secs))?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns() - cpu0;
    let (v1, n1) = ctxt_switches();
    println!("DONE");

    // Probes: one byte on connections spread over the range, echoed within 2 s?
    let idx = if stalled {
        Vec::new()
    } else {
        clients::spread(n, probes)
    };
    let answered = if stalled {
        Vec::new()
    } else {
        clients.probe.send(idx.clone()).expect("client manager");
        lp.run_for(Duration::from_secs(2 * probes as u64 + 10))?;
        clients.probed.recv().unwrap_or_default()
    };
    let ok = answered.iter().filter(|a| a.is_some()).count();
    let probe_list: Vec<String> = idx
        .iter()
        .zip(&answered)
        .map(|(i, a)| match a {
            Some(ms) => format!("{{\"conn\":{i},\"ms\":{ms:.2}}}"),
            None => format!("{{\"conn\":{i},\"ms\":null}}"),
        })
        .collect();
    println!(
        "{{\"bench\":\"idle\",\"backend\":\"{}\",\"style\":\"{style}\",\"conns\":{},\"timers\":{timers},\
         \"secs\":{wall:.3},\"voluntary_switches\":{},\"involuntary_switches\":{},\
         \"loop_cpu_ms\":{:.3},\"accept_stalled\":{stalled},\"probes_answered\":{ok},\"probes\":[{}]}}",
        lp.backend().kind.short_name(),
        accepted.get(),
        v1 - v0,
        n1 - n0,
        cpu as f64 / 1e6,
        probe_list.join(","),
    );
    // Tearing down 10,000 connections is not what is measured.
    std::process::exit(0);
}
