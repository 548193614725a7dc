//! monoio's echo server: one runtime on one thread, one task per connection, owned buffers
//! ("rent" I/O).
//!
//! ```text
//! echo_monoio [--addr 127.0.0.1:0] [--driver uring|epoll]
//! ```
//!
//! `uring` is monoio's `IoUringDriver`; `epoll` its `LegacyDriver` (mio).

use fdloop_bench::{ready, Args, ECHO_BUF};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpListener;

async fn serve(addr: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr.as_str())?;
    ready(listener.local_addr()?);
    loop {
        let (mut conn, _) = listener.accept().await?;
        conn.set_nodelay(true)?;
        monoio::spawn(async move {
            let mut buf = Vec::with_capacity(ECHO_BUF);
            loop {
                let (res, b) = conn.read(buf).await;
                buf = b;
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let (res, b) = conn.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    return;
                }
                buf.clear();
            }
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr: String = args.get("addr", "127.0.0.1:0".to_string());
    match args.get_str("driver").unwrap_or("uring") {
        "uring" | "io_uring" => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .build()?
            .block_on(serve(addr)),
        "epoll" | "legacy" => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()?
            .block_on(serve(addr)),
        other => {
            eprintln!("--driver: uring or epoll, not {other:?}");
            std::process::exit(2);
        }
    }
}
