//! The libmosquitto example's client against a real `mosquitto` broker, on both backends:
//! 1,000 messages round-trip in order, the broker is killed and restarted on the same port,
//! the client reconnects by itself and another 100 messages round-trip.
//!
//! Needs `--features mosquitto` (it links the system's libmosquitto) and the `mosquitto` broker
//! binary (Debian: `apt-get install mosquitto libmosquitto-dev`). Each test starts its own
//! broker on a free port of 127.0.0.1, so a system broker on 1883 is no obstacle.

#[cfg(not(feature = "mosquitto"))]
#[test]
#[ignore = "needs --features mosquitto and a mosquitto broker"]
fn round_trip_and_broker_restart() {}

#[cfg(feature = "mosquitto")]
mod common;

#[cfg(feature = "mosquitto")]
#[path = "../examples/mosquitto_ffi/mod.rs"]
mod mosquitto_ffi;

#[cfg(feature = "mosquitto")]
mod with_broker {
    use std::cell::{Cell, RefCell};
    use std::fs::{self, File};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use fdloop::external::{ExternalId, ExternalOptions};
    use fdloop::{Loop, Timer};

    use crate::mosquitto_ffi::{Client, Event};

    /// A `mosquitto` broker on 127.0.0.1, killed when dropped.
    struct Broker {
        child: Option<Child>,
        port: u16,
        dir: PathBuf,
    }

    impl Broker {
        /// Starts a broker on `port` (a free one if `None`) and waits until it accepts
        /// connections.
        fn start(port: Option<u16>, tag: &str) -> Broker {
            let port = port.unwrap_or_else(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            });
            let dir = crate::common::temp_path(&format!("mosquitto-{tag}"));
            fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("mosquitto.conf");
            // Recent brokers listen only on localhost without a configuration; this one also
            // queues without limit, so that a burst is never dropped.
            fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_queued_messages 0\n"
                ),
            )
            .unwrap();
            let log = File::create(dir.join("broker.log")).unwrap();
            let child = broker_command()
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start the mosquitto broker ({e}); install the mosquitto package")
                });
            let mut broker = Broker {
                child: Some(child),
                port,
                dir,
            };
            broker.wait_ready();
            broker
        }

        fn wait_ready(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("the broker exited ({status}): {}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "the broker does not accept connections after 10 s: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn log(&self) -> String {
            fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
        }

        /// Kills the broker (SIGKILL: no goodbye to the clients) and reaps it.
        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            self.kill();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn broker_command() -> Command {
        let sbin = "/usr/sbin/mosquitto";
        let in_path = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|p| p.join("mosquitto").is_file())
        });
        if !in_path && std::path::Path::new(sbin).is_file() {
            Command::new(sbin)
        } else {
            Command::new("mosquitto")
        }
    }

    /// What the client saw.
    #[derive(Default)]
    struct Seen {
        connects: Cell<u32>,
        /// A session is up (between `Connected(0)` and `Disconnected`).
        connected: Cell<bool>,
        /// Established sessions that ended.
        disconnects: Cell<u32>,
        /// Reconnect attempts that failed before a session was up (libmosquitto reports them
        /// as `Disconnected` too: an attempt made while no broker listens on the port).
        failed_attempts: Cell<u32>,
        refused: RefCell<Vec<i32>>,
        acked: Cell<usize>,
        received: RefCell<Vec<u32>>,
    }

    /// Runs the loop in short slices until `cond` holds (at most `secs` seconds).
    fn run_until(lp: &Loop, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {secs} s"
            );
            lp.run_for(Duration::from_millis(10)).unwrap();
        }
    }

    /// Publishes `range` (QoS 1, payload = the number) from a timer, with at most 100 messages
    /// on their way at a time, and waits until all of them came back and were acknowledged.
    fn round_trip(
        lp: &Loop,
        id: &ExternalId<Client>,
        seen: &Rc<Seen>,
        topic: &str,
        range: std::ops::Range<u32>,
    ) {
        let before = seen.received.borrow().len();
        let acked_before = seen.acked.get();
        let total = range.len();
        let next = Rc::new(Cell::new(range.start));
        {
            let (id, seen, next, topic) =
                (id.clone(), seen.clone(), next.clone(), topic.to_owned());
            let end = range.end;
            lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, timer| {
                while next.get() < end {
                    let on_the_way = (next.get() - range.start) as usize
                        - (seen.received.borrow().len() - before);
                    if on_the_way >= 100 {
                        return;
                    }
                    let payload = next.get().to_string();
                    let r = lp
                        .with_external(&id, |c| c.publish(&topic, payload.as_bytes(), 1, false))
                        .unwrap();
                    match r {
                        Ok(_) => next.set(next.get() + 1),
                        Err(e) => panic!("publish {payload}: {e}"),
                    }
                }
                lp.stop_timer(timer).unwrap();
            });
        }
        run_until(lp, 60, "all messages back", || {
            seen.received.borrow().len() == before + total
                && seen.acked.get() == acked_before + total
        });
        let got = seen.received.borrow()[before..].to_vec();
        let want: Vec<u32> = range.collect();
        assert!(
            got == want,
            "messages lost, duplicated or out of order: {got:?}"
        );
    }

    crate::backend_tests! {
        fn round_trip_and_broker_restart(lp: &Loop) {
            let tag = format!("{}-{:?}", std::process::id(), lp.backend().kind);
            let mut broker = Broker::start(None, &tag);
            let port = broker.port;
            let topic = format!("fdloop/test/{tag}");
            let seen = Rc::new(Seen::default());

            let mut client = Client::new(&format!("fdloop-test-{tag}")).unwrap();
            {
                let (seen, topic) = (seen.clone(), topic.clone());
                client.on_event(move |_lp, client, event| match event {
                    Event::Connected(0) => {
                        seen.connects.set(seen.connects.get() + 1);
                        seen.connected.set(true);
                        client.subscribe(&topic, 1).unwrap();
                    }
                    Event::Connected(rc) => seen.refused.borrow_mut().push(rc),
                    Event::Disconnected(_) if seen.connected.replace(false) => {
                        seen.disconnects.set(seen.disconnects.get() + 1)
                    }
                    Event::Disconnected(_) => {
                        seen.failed_attempts.set(seen.failed_attempts.get() + 1)
                    }
                    Event::Published(_) => seen.acked.set(seen.acked.get() + 1),
                    Event::Message { payload, .. } => {
                        let n = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                        seen.received.borrow_mut().push(n);
                    }
                });
            }
            client.connect("127.0.0.1", port, 10).unwrap();
            let options = ExternalOptions { housekeeping_every: Duration::from_millis(50) };
            let id = lp.attach_external(client, options).unwrap();
            run_until(lp, 10, "connected", || seen.connects.get() == 1);

            round_trip(lp, &id, &seen, &topic, 0..1000);

            // The broker goes away without a word, and comes back on the same port.
            broker.kill();
            run_until(lp, 10, "disconnection noticed", || seen.disconnects.get() == 1);
            drop(broker);
            let broker = Broker::start(Some(port), &format!("{tag}-again"));
            run_until(lp, 20, "reconnected", || seen.connects.get() == 2);
            assert!(lp.with_external(&id, |c| c.reconnect_attempts()).unwrap() >= 1);

            round_trip(lp, &id, &seen, &topic, 1000..1100);
            assert!(seen.refused.borrow().is_empty(), "refused: {:?}", seen.refused.borrow());
            assert_eq!(seen.disconnects.get(), 1);

            let mut client = lp.detach_external(&id).unwrap().expect("not in use");
            client.disconnect().unwrap();
            drop(client);
            drop(broker);
        }
    }
}
