//! An MQTT client on the system's libmosquitto, driven by one fdloop loop through
//! [`fdloop::external`]: the library's socket is watched by the loop (writable only while
//! `mosquitto_want_write` says so), `mosquitto_loop_misc` runs from the loop's housekeeping
//! timer, and a lost connection is re-established with `mosquitto_reconnect_async`.
//!
//! ```text
//! apt-get install libmosquitto-dev mosquitto
//! mosquitto -p 1883 &
//! cargo run --features mosquitto --example mosquitto -- --host 127.0.0.1 --port 1883 --count 10
//! ```
//!
//! It subscribes to a topic, publishes `--count` messages (default 10) from a timer, prints what
//! it receives, and exits 0 once it has received them all, after `--seconds` (default 30), or on
//! Ctrl-C. Restart the broker meanwhile: the client reconnects, subscribes again and goes on.

#[path = "mosquitto_ffi/mod.rs"]
mod mosquitto_ffi;

use std::cell::Cell;
use std::io;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use fdloop::external::ExternalOptions;
use fdloop::{Loop, Signal, Timer};
use mosquitto_ffi::{Client, Event};

struct Args {
    host: String,
    port: u16,
    count: u64,
    seconds: u64,
    topic: String,
}

const USAGE: &str = "usage: mosquitto [--host 127.0.0.1] [--port 1883] [--count 10] \
                     [--seconds 30] [--topic fdloop/example]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        count: 10,
        seconds: 30,
        topic: format!("fdloop/example/{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let bad = |v: &str| format!("bad value for {flag}: {v}\n{USAGE}");
        match flag.as_str() {
            "--host" => args.host = value()?,
            "--port" => {
                let v = value()?;
                args.port = v.parse().map_err(|_| bad(&v))?;
            }
            "--count" => {
                let v = value()?;
                args.count = v.parse().map_err(|_| bad(&v))?;
            }
            "--seconds" => {
                let v = value()?;
                args.seconds = v.parse().map_err(|_| bad(&v))?;
            }
            "--topic" => args.topic = value()?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mosquitto example: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    let lp = Loop::new()?;
    println!("backend: {}", lp.backend());

    let connected = Rc::new(Cell::new(false));
    let received = Rc::new(Cell::new(0u64));
    let mut client = Client::new(&format!("fdloop-example-{}", std::process::id()))?;
    {
        let (connected, received) = (connected.clone(), received.clone());
        let (topic, count) = (args.topic.clone(), args.count);
        client.on_event(move |lp, client, event| match event {
            Event::Connected(0) => {
                println!("connected; subscribing to {topic}");
                connected.set(true);
                // A clean session: the subscription is made again after every reconnection.
                if let Err(e) = client.subscribe(&topic, 1) {
                    eprintln!("subscribe: {e}");
                }
            }
            Event::Connected(rc) => println!("connection refused by the broker (code {rc})"),
            Event::Disconnected(rc) => {
                connected.set(false);
                println!("disconnected (code {rc}); reconnecting");
            }
            Event::Published(_mid) => {}
            Event::Message { topic, payload } => {
                received.set(received.get() + 1);
                println!("received on {topic}: {}", String::from_utf8_lossy(&payload));
                if received.get() >= count {
                    println!("received all {count} messages");
                    lp.stop();
                }
            }
        });
    }
    client.connect(&args.host, args.port, 30)?;
    let options = ExternalOptions {
        housekeeping_every: Duration::from_millis(500),
    };
    let id = lp.attach_external(client, options)?;

    // Publishes one message per tick while connected, until `count` are out.
    let sent = Rc::new(Cell::new(0u64));
    {
        let (id, sent, connected) = (id.clone(), sent.clone(), connected.clone());
        let (topic, count) = (args.topic.clone(), args.count);
        lp.start_timer(
            Timer::every(Duration::from_millis(100)),
            move |lp, timer| {
                if sent.get() >= count {
                    let _ = lp.stop_timer(timer);
                    return;
                }
                if !connected.get() {
                    return;
                }
                let payload = format!("message {}", sent.get() + 1);
                // Through the loop, so that it notices the library's wish to write at once.
                match lp.with_external(&id, |c| c.publish(&topic, payload.as_bytes(), 1, false)) {
                    Ok(Ok(_mid)) => sent.set(sent.get() + 1),
                    Ok(Err(e)) => eprintln!("publish: {e} (retrying)"),
                    Err(e) => eprintln!("publish: {e}"),
                }
            },
        );
    }
    lp.start_timer(Timer::after(Duration::from_secs(args.seconds)), |lp, _| {
        println!("time is up");
        lp.stop();
    });
    lp.start_signal(Signal::INT, |lp, _| {
        println!("interrupted");
        lp.stop();
    })?;

    lp.run()?;
    println!(
        "sent {}, received {} of {}",
        sent.get(),
        received.get(),
        args.count
    );
    if let Some(mut client) = lp.detach_external(&id)? {
        let _ = client.disconnect();
    }
    drop(lp);
    mosquitto_ffi::cleanup();
    Ok(())
}
