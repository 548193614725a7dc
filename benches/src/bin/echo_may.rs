//! may's echo server: stackful coroutines on one worker thread (`may::config().set_workers(1)`),
//! one coroutine per connection.
//!
//! ```text
//! echo_may [--addr 127.0.0.1:0]
//! ```

use std::io::{Read, Write};

use fdloop_bench::{ready, Args, ECHO_BUF};
use may::go;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr: String = args.get("addr", "127.0.0.1:0".to_string());
    may::config().set_workers(1);
    let listener = may::net::TcpListener::bind(addr.as_str())?;
    ready(listener.local_addr()?);
    let server = go!(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            go!(move || {
                let mut buf = vec![0u8; ECHO_BUF];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let _ = server.join();
    Ok(())
}
