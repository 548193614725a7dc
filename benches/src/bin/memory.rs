//! Memory of many idle fiber connections: N connections, one fiber each parked in `read`;
//! the process's resident memory (`VmRSS`) before and after.
//!
//! ```text
//! memory [--backend uring|epoll] [--conns 100000] [--fibers F] [--stack 65536] [--buf 1024]
//!        [--cq-entries N] [--probes 8]
//! ```
//!
//! `--fibers F` (more than N) first parks F − N fibers without a connection, each waiting on a
//! `Notify` with a 1 KiB buffer on its stack (as a connection fiber has by default): where
//! the fd limit stops the connections short of F, the loop still holds F fibers, and the
//! result gives the resident memory of both kinds apart.
//!
//! On Linux 6.13 and later a fiber stack is one memory mapping and neighbouring stacks merge
//! (guard regions); on older kernels each is two, so 100,000 fibers need `vm.max_map_count`
//! above 200,000 (the default is 65,530). N connections need N fds: the process raises
//! `RLIMIT_NOFILE` up to its hard limit (raising the hard limit itself needs
//! `CAP_SYS_RESOURCE`). The clients are `holdconns` child processes (15,000 connections each)
//! connecting to five listeners (one port cannot take 100,000 connections from one address:
//! the ephemeral port range is about 28,000 ports per destination).
//!
//! Only this process's memory is counted (`VmRSS`); socket buffers are kernel memory. After
//! the measurement, a few connections each send one byte and wait up to 2 s for the echo.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::sync::Notify;
use fdloop::Loop;
use fdloop_bench::fdloop_echo::accept_fibers;
use fdloop_bench::{
    backend_arg, clients, guard_regions, mappings, proc_status, wait_accepted, Args,
};

const LISTENERS: usize = 5;

fn rss_kib() -> u64 {
    proc_status("/proc/self/status", "VmRSS").unwrap_or(0)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let conns: usize = args.get("conns", 100_000);
    let stack: usize = args.get("stack", 64 * 1024);
    let buf: usize = args.get("buf", 1024);
    let probes: usize = args.get("probes", 8);
    let fibers: usize = args.get("fibers", conns).max(conns);
    let maps: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if !guard_regions() && maps < 2 * fibers as u64 + 10_000 {
        eprintln!(
            "vm.max_map_count is {maps}; on this kernel {fibers} fibers need about {} mappings: \
             run `sysctl -w vm.max_map_count={}` (or use fewer --fibers / --conns)",
            2 * fibers,
            (2 * fibers + 65_536).next_power_of_two()
        );
        std::process::exit(2);
    }
    let nofile = fdloop_bench::raise_nofile(conns as u64 + 1024)?;
    if nofile < conns as u64 + 64 {
        eprintln!(
            "RLIMIT_NOFILE is {nofile}: too low for {conns} connections (raise the hard limit: \
             `ulimit -Hn`, which needs CAP_SYS_RESOURCE; or use fewer --conns)"
        );
        std::process::exit(2);
    }

    let lp = Loop::builder()
        .backend(backend_arg(&args))
        .stack_size(stack)
        .cq_entries(args.get("cq-entries", 1024))
        .build()?;
    let rss_start = rss_kib();

    // Fibers without a connection, parked as a connection's fiber is in its read.
    let extra = fibers - conns;
    let park = Rc::new(Notify::new());
    let parked = Rc::new(Cell::new(0usize));
    for _ in 0..extra {
        let (park, parked) = (park.clone(), parked.clone());
        lp.spawn(move || {
            let mut buf = [0u8; 1024];
            std::hint::black_box(&mut buf);
            parked.set(parked.get() + 1);
            let _ = park.notified();
        });
    }
    while parked.get() < extra {
        lp.run_for(Duration::from_millis(10))?;
    }
    let rss_parked = rss_kib();

    let accepted = Rc::new(Cell::new(0usize));
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for _ in 0..LISTENERS {
        let l = fdloop_bench::listen("127.0.0.1:0")?;
        addrs.push(l.local_addr()?);
        let l = fdloop::net::TcpListener::from_std(l)?;
        let a = accepted.clone();
        // The accept fibers' buffers size does not matter; the connection fibers' does.
        match buf {
            0..=1024 => lp.spawn(move || accept_fibers::<1024>(l, a)),
            1025..=4096 => lp.spawn(move || accept_fibers::<4096>(l, a)),
            _ => lp.spawn(move || accept_fibers::<16384>(l, a)),
        };
    }

    let handle = lp.handle();
    let clients = clients::start(addrs, conns, 15_000, move || {
        let _ = handle.stop();
    })?;
    let t_connect = Instant::now();
    let (total, stalled) = wait_accepted(&lp, &clients.connected, &accepted)?;
    let connect_s = t_connect.elapsed().as_secs_f64();
    // Settle: every fiber parked in its read.
    lp.run_for(Duration::from_millis(500))?;
    let rss_end = rss_kib();
    let hwm = proc_status("/proc/self/status", "VmHWM").unwrap_or(0);
    let maps_used = mappings();
    let n = accepted.get();

    let idx = if stalled {
        Vec::new()
    } else {
        clients::spread(total, probes)
    };
    let answered = if stalled {
        0
    } else {
        clients.probe.send(idx.clone()).expect("client manager");
        lp.run_for(Duration::from_secs(2 * probes as u64 + 10))?;
        clients
            .probed
            .recv()
            .unwrap_or_default()
            .iter()
            .filter(|a| a.is_some())
            .count()
    };

    let per_conn = if n > 0 {
        (rss_end.saturating_sub(rss_parked)) as f64 * 1024.0 / n as f64
    } else {
        0.0
    };
    let per_parked = if extra > 0 {
        (rss_parked.saturating_sub(rss_start)) as f64 * 1024.0 / extra as f64
    } else {
        0.0
    };
    println!(
        "{{\"bench\":\"memory\",\"backend\":\"{}\",\"conns\":{n},\"stack\":{stack},\"buf\":{buf},\
         \"parked_fibers\":{extra},\"fibers\":{},\"mappings\":{maps_used},\
         \"guard_regions\":{},\"rss_start_kib\":{rss_start},\"rss_parked_kib\":{rss_parked},\
         \"rss_kib\":{rss_end},\"hwm_kib\":{hwm},\"bytes_per_conn\":{per_conn:.0},\
         \"bytes_per_parked_fiber\":{per_parked:.0},\"connect_s\":{connect_s:.2},\
         \"accept_stalled\":{stalled},\"probes\":{},\"probes_answered\":{answered}}}",
        lp.backend().kind.short_name(),
        extra + n,
        guard_regions(),
        idx.len(),
    );
    std::process::exit(0);
}
