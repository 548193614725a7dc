//! fdloop's echo server, single-threaded.
//!
//! ```text
//! echo_fdloop [--addr 127.0.0.1:0] [--style callback|fiber] [--backend uring|epoll]
//!             [--batch-wait-us N] [--recv multishot|single]
//! ```
//!
//! `--batch-wait-us`: the io_uring batch wait (`LoopBuilder::batch_wait`; Linux 6.12, ignored
//! elsewhere): after submitting its responses the loop sleeps until the next request in the
//! same `io_uring_enter`, waiting at most this long for it. Default 0 (off); 50 suits the callback server.
//!
//! * `callback`: one multishot accept, one multishot receive per connection into a pool of
//!   1,024 × 4 KiB buffers shared by all connections (`Loop::accept_multishot` /
//!   `recv_multishot`), and `Loop::send` from a per-connection `Vec` reused round after round.
//!   With `--recv single`: one `Loop::recv` per request into the connection's own 4 KiB
//!   buffer, submitted again once the response is sent (docs/callbacks.md, "Multishot or a
//!   receive per request?").
//! * `fiber`: one fiber per connection (`fdloop::net::TcpStream`, `Read` / `Write`), the
//!   16 KiB buffer on the fiber's stack.
//!
//! Prints `READY <addr>` once listening, then serves until killed.

use std::rc::Rc;
use std::time::Duration;

use fdloop::{BackendKind, Loop};
use fdloop_bench::fdloop_echo::{accept_callbacks, accept_fibers, Receive};
use fdloop_bench::{backend_arg, ready, Args, ECHO_BUF};

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr: String = args.get("addr", "127.0.0.1:0".to_string());
    let style: String = args.get("style", "callback".to_string());
    // Off by default: it halves io_uring_enter calls but costs CPU (a timer per wait) and
    // latency (docs/callbacks.md, "Batch wait"). It suits the callback server, whose responses need
    // nothing after their send; a fiber waits for its send before it reads again, so it would
    // lose up to the batch wait per round trip.
    let batch_us: u64 = args.get("batch-wait-us", 0);
    let receive = match args.get("recv", "multishot".to_string()).as_str() {
        "multishot" => Receive::Multishot,
        "single" => Receive::Single,
        other => {
            eprintln!("--recv: multishot or single, not {other:?}");
            std::process::exit(2);
        }
    };
    let lp = Loop::builder()
        .backend(backend_arg(&args))
        .batch_wait(Duration::from_micros(batch_us))
        .build()?;
    let listener = fdloop_bench::listen(&addr)?;
    let local = listener.local_addr()?;
    eprintln!("echo_fdloop: {style} on {}", lp.backend());
    match style.as_str() {
        "callback" => {
            if lp.backend().kind == BackendKind::Epoll {
                listener.set_nonblocking(true)?;
            }
            accept_callbacks(&lp, Rc::new(listener), ECHO_BUF, receive, Rc::default());
        }
        "fiber" => {
            let listener = fdloop::net::TcpListener::from_std(listener)?;
            lp.spawn(move || accept_fibers::<ECHO_BUF>(listener, Rc::default()));
        }
        other => {
            eprintln!("--style: callback or fiber, not {other:?}");
            std::process::exit(2);
        }
    }
    ready(local);
    lp.run()
}
