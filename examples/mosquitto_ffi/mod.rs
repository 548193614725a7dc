//! Bindings to the system's libmosquitto (`mosquitto.h`, version 2.0) and [`Client`], a small
//! safe MQTT client that implements [`ExternalSource`], so that one fdloop [`Loop`] drives it.
//!
//! Shared by `examples/mosquitto.rs` and `tests/mosquitto.rs`; it links `libmosquitto`
//! (Debian: `apt-get install libmosquitto-dev`).
//!
//! libmosquitto calls its callbacks (connect, disconnect, message) from inside
//! `mosquitto_loop_read` and friends. Here they only queue an [`Event`]; the queue is handed to
//! the client's handler once the library call has returned, so that the handler may call back
//! into the library (publish, subscribe) without re-entering it.

// The example and the test each use a part of this module.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Once;

use fdloop::external::ExternalSource;
use fdloop::Loop;

/// `struct mosquitto`: opaque.
#[repr(C)]
pub struct Mosquitto {
    _opaque: [u8; 0],
}

/// `struct mosquitto_message`.
#[repr(C)]
pub struct MosquittoMessage {
    pub mid: c_int,
    pub topic: *mut c_char,
    pub payload: *mut c_void,
    pub payloadlen: c_int,
    pub qos: c_int,
    pub retain: bool,
}

/// The connect, disconnect and publish callbacks: `(mosq, obj, rc or mid)`.
type ConnectCallback = unsafe extern "C" fn(*mut Mosquitto, *mut c_void, c_int);
type MessageCallback = unsafe extern "C" fn(*mut Mosquitto, *mut c_void, *const MosquittoMessage);

/// `MOSQ_ERR_SUCCESS`.
pub const MOSQ_ERR_SUCCESS: c_int = 0;
/// `MOSQ_ERR_NO_CONN`.
pub const MOSQ_ERR_NO_CONN: c_int = 4;
/// `MOSQ_ERR_CONN_LOST`.
pub const MOSQ_ERR_CONN_LOST: c_int = 7;
/// `MOSQ_ERR_ERRNO`: see `errno`.
pub const MOSQ_ERR_ERRNO: c_int = 14;

#[link(name = "mosquitto")]
extern "C" {
    pub fn mosquitto_lib_init() -> c_int;
    pub fn mosquitto_lib_cleanup() -> c_int;
    pub fn mosquitto_new(
        id: *const c_char,
        clean_session: bool,
        obj: *mut c_void,
    ) -> *mut Mosquitto;
    pub fn mosquitto_destroy(mosq: *mut Mosquitto);
    pub fn mosquitto_connect_async(
        mosq: *mut Mosquitto,
        host: *const c_char,
        port: c_int,
        keepalive: c_int,
    ) -> c_int;
    pub fn mosquitto_reconnect_async(mosq: *mut Mosquitto) -> c_int;
    pub fn mosquitto_disconnect(mosq: *mut Mosquitto) -> c_int;
    pub fn mosquitto_socket(mosq: *mut Mosquitto) -> c_int;
    pub fn mosquitto_loop_read(mosq: *mut Mosquitto, max_packets: c_int) -> c_int;
    pub fn mosquitto_loop_write(mosq: *mut Mosquitto, max_packets: c_int) -> c_int;
    pub fn mosquitto_loop_misc(mosq: *mut Mosquitto) -> c_int;
    pub fn mosquitto_want_write(mosq: *mut Mosquitto) -> bool;
    pub fn mosquitto_subscribe(
        mosq: *mut Mosquitto,
        mid: *mut c_int,
        sub: *const c_char,
        qos: c_int,
    ) -> c_int;
    pub fn mosquitto_publish(
        mosq: *mut Mosquitto,
        mid: *mut c_int,
        topic: *const c_char,
        payloadlen: c_int,
        payload: *const c_void,
        qos: c_int,
        retain: bool,
    ) -> c_int;
    pub fn mosquitto_publish_callback_set(
        mosq: *mut Mosquitto,
        on_publish: Option<ConnectCallback>,
    );
    pub fn mosquitto_message_callback_set(
        mosq: *mut Mosquitto,
        on_message: Option<MessageCallback>,
    );
    pub fn mosquitto_connect_callback_set(
        mosq: *mut Mosquitto,
        on_connect: Option<ConnectCallback>,
    );
    pub fn mosquitto_disconnect_callback_set(
        mosq: *mut Mosquitto,
        on_disconnect: Option<ConnectCallback>,
    );
    pub fn mosquitto_strerror(mosq_errno: c_int) -> *const c_char;
}

/// Initialises libmosquitto once per process (its reference count is not thread-safe, so it
/// is never released while clients may exist; see [`cleanup`]).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: (FFI) no argument; called once, before any other libmosquitto function.
        unsafe { mosquitto_lib_init() };
    });
}

/// Releases libmosquitto's global state. Call it at most once, at the end of `main`, after
/// every [`Client`] is dropped.
pub fn cleanup() {
    // SAFETY: (FFI) no argument; the caller promises that no client is alive any more.
    unsafe { mosquitto_lib_cleanup() };
}

/// An error code of libmosquitto as an `io::Error` (`errno` for `MOSQ_ERR_ERRNO`).
pub fn mosq_error(rc: c_int) -> io::Error {
    if rc == MOSQ_ERR_ERRNO {
        return io::Error::last_os_error();
    }
    // SAFETY: (FFI) mosquitto_strerror accepts any value and returns a static NUL-terminated
    // string.
    let text = unsafe { CStr::from_ptr(mosquitto_strerror(rc)) }.to_string_lossy();
    let kind = match rc {
        MOSQ_ERR_NO_CONN => io::ErrorKind::NotConnected,
        MOSQ_ERR_CONN_LOST => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("mosquitto: {text} ({rc})"))
}

fn check(rc: c_int) -> io::Result<()> {
    if rc == MOSQ_ERR_SUCCESS {
        Ok(())
    } else {
        Err(mosq_error(rc))
    }
}

fn c_string(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a string"))
}

/// What the broker connection reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// CONNACK: `0` is success, anything else a refusal code.
    Connected(i32),
    /// The connection ended: `0` after [`Client::disconnect`], anything else unexpectedly.
    Disconnected(i32),
    /// The broker acknowledged the message with this id (QoS 1 and 2; at once for QoS 0).
    Published(i32),
    /// A message arrived on a subscribed topic.
    Message { topic: String, payload: Vec<u8> },
}

/// What libmosquitto's callbacks write to: its address is the library's `obj` pointer.
#[derive(Default)]
struct Queue {
    events: RefCell<VecDeque<Event>>,
}

/// Gives the `obj` pointer back as the client's queue.
///
/// # Safety
///
/// (FFI) `obj` must be the pointer passed to `mosquitto_new` by [`Client::new`]: the
/// `Rc<Queue>` it points into lives as long as the `struct mosquitto`.
unsafe fn queue<'a>(obj: *mut c_void) -> &'a Queue {
    // SAFETY: (FFI) forwarded from this function's contract; `Queue` is only ever shared.
    unsafe { &*obj.cast::<Queue>() }
}

unsafe extern "C" fn on_connect(_mosq: *mut Mosquitto, obj: *mut c_void, rc: c_int) {
    // SAFETY: (FFI) libmosquitto passes back the `obj` given to mosquitto_new (see `queue`).
    let q = unsafe { queue(obj) };
    q.events.borrow_mut().push_back(Event::Connected(rc));
}

unsafe extern "C" fn on_disconnect(_mosq: *mut Mosquitto, obj: *mut c_void, rc: c_int) {
    // SAFETY: (FFI) libmosquitto passes back the `obj` given to mosquitto_new, which points into
    // the client's live `Queue` (see `queue`).
    let q = unsafe { queue(obj) };
    q.events.borrow_mut().push_back(Event::Disconnected(rc));
}

unsafe extern "C" fn on_publish(_mosq: *mut Mosquitto, obj: *mut c_void, mid: c_int) {
    // SAFETY: (FFI) libmosquitto passes back the `obj` given to mosquitto_new, which points into
    // the client's live `Queue` (see `queue`).
    let q = unsafe { queue(obj) };
    q.events.borrow_mut().push_back(Event::Published(mid));
}

unsafe extern "C" fn on_message(
    _mosq: *mut Mosquitto,
    obj: *mut c_void,
    msg: *const MosquittoMessage,
) {
    // SAFETY: (FFI) libmosquitto passes back the `obj` given to mosquitto_new, which points into
    // the client's live `Queue` (see `queue`).
    let q = unsafe { queue(obj) };
    // SAFETY: (FFI) libmosquitto passes a valid message that lives for the duration of the call.
    let msg = unsafe { &*msg };
    let topic = if msg.topic.is_null() {
        String::new()
    } else {
        // SAFETY: (FFI) a non-null topic is a NUL-terminated string owned by the message.
        unsafe { CStr::from_ptr(msg.topic) }
            .to_string_lossy()
            .into_owned()
    };
    let payload = match usize::try_from(msg.payloadlen) {
        Ok(len) if len > 0 && !msg.payload.is_null() => {
            // SAFETY: (FFI) the payload is `payloadlen` readable bytes owned by the message.
            unsafe { std::slice::from_raw_parts(msg.payload.cast::<u8>(), len) }.to_vec()
        }
        _ => Vec::new(),
    };
    q.events
        .borrow_mut()
        .push_back(Event::Message { topic, payload });
}

type Handler = Box<dyn FnMut(&Loop, &mut Client, Event)>;

/// An MQTT client on libmosquitto, driven by an fdloop [`Loop`] through
/// [`Loop::attach_external`](fdloop::Loop::attach_external).
///
/// The handler set with [`Client::on_event`] receives every [`Event`] and may publish or
/// subscribe. After an unexpected disconnection, housekeeping calls
/// `mosquitto_reconnect_async` until the broker accepts the connection again (subscriptions
/// are not restored by the broker for a clean session: resubscribe on `Connected(0)`).
pub struct Client {
    mosq: NonNull<Mosquitto>,
    queue: Rc<Queue>,
    handler: Option<Handler>,
    /// Reconnect when the connection is lost (set by `connect`, cleared by `disconnect`).
    stay_connected: bool,
    reconnect_attempts: u64,
}

impl Client {
    /// A client with this MQTT client id and a clean session.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an id with a NUL byte; `mosquitto_new` failing (out of memory).
    pub fn new(id: &str) -> io::Result<Client> {
        init();
        let id = c_string(id)?;
        let queue = Rc::new(Queue::default());
        let obj = Rc::as_ptr(&queue).cast_mut().cast::<c_void>();
        // SAFETY: (FFI) `id` is a NUL-terminated string (libmosquitto copies it); `obj` points into
        // `queue`, which the client keeps alive until after mosquitto_destroy.
        let mosq = unsafe { mosquitto_new(id.as_ptr(), true, obj) };
        let mosq = NonNull::new(mosq).ok_or_else(io::Error::last_os_error)?;
        // SAFETY: (FFI) `mosq` is a live client; the callbacks match the C prototypes.
        unsafe {
            mosquitto_connect_callback_set(mosq.as_ptr(), Some(on_connect));
            mosquitto_disconnect_callback_set(mosq.as_ptr(), Some(on_disconnect));
            mosquitto_publish_callback_set(mosq.as_ptr(), Some(on_publish));
            mosquitto_message_callback_set(mosq.as_ptr(), Some(on_message));
        }
        Ok(Client {
            mosq,
            queue,
            handler: None,
            stay_connected: false,
            reconnect_attempts: 0,
        })
    }

    /// Sets the handler of [`Event`]s.
    pub fn on_event(&mut self, handler: impl FnMut(&Loop, &mut Client, Event) + 'static) {
        self.handler = Some(Box::new(handler));
    }

    /// Starts connecting without blocking (`mosquitto_connect_async`). When the broker cannot
    /// be reached now, housekeeping retries.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a host with a NUL byte. A refused connection is not an error here:
    /// it is retried.
    pub fn connect(&mut self, host: &str, port: u16, keepalive_secs: u16) -> io::Result<()> {
        let host = c_string(host)?;
        self.stay_connected = true;
        // SAFETY: (FFI) a live client and a NUL-terminated host (copied by libmosquitto).
        let rc = unsafe {
            mosquitto_connect_async(
                self.mosq.as_ptr(),
                host.as_ptr(),
                c_int::from(port),
                c_int::from(keepalive_secs),
            )
        };
        if rc == MOSQ_ERR_ERRNO || rc == MOSQ_ERR_SUCCESS {
            // MOSQ_ERR_ERRNO: refused or unreachable for now; housekeeping reconnects.
            return Ok(());
        }
        check(rc)
    }

    /// Sends DISCONNECT and stops reconnecting.
    ///
    /// # Errors
    ///
    /// `NotConnected` when not connected.
    pub fn disconnect(&mut self) -> io::Result<()> {
        self.stay_connected = false;
        // SAFETY: (FFI) a live client.
        check(unsafe { mosquitto_disconnect(self.mosq.as_ptr()) })
    }

    /// Subscribes to `pattern`; returns the message id.
    ///
    /// # Errors
    ///
    /// `NotConnected` when not connected; libmosquitto's other errors.
    pub fn subscribe(&mut self, pattern: &str, qos: i32) -> io::Result<i32> {
        let pattern = c_string(pattern)?;
        let mut mid = 0;
        // SAFETY: (FFI) a live client, a writable `mid`, a NUL-terminated pattern (copied).
        check(unsafe { mosquitto_subscribe(self.mosq.as_ptr(), &mut mid, pattern.as_ptr(), qos) })?;
        Ok(mid)
    }

    /// Publishes `payload` on `topic`; returns the message id. libmosquitto copies the payload
    /// and writes it at once if it can, else when the socket is writable.
    ///
    /// # Errors
    ///
    /// `NotConnected` when not connected; `InvalidInput` for a payload over 2 GiB or a topic
    /// with a NUL byte; libmosquitto's other errors.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: i32,
        retain: bool,
    ) -> io::Result<i32> {
        let topic = c_string(topic)?;
        let len = c_int::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload too large"))?;
        let mut mid = 0;
        // SAFETY: (FFI) a live client, a writable `mid`, a NUL-terminated topic, and `len` readable
        // bytes at `payload` (libmosquitto copies them before returning).
        check(unsafe {
            mosquitto_publish(
                self.mosq.as_ptr(),
                &mut mid,
                topic.as_ptr(),
                len,
                payload.as_ptr().cast(),
                qos,
                retain,
            )
        })?;
        Ok(mid)
    }

    /// Whether the client has a socket (connected or connecting).
    pub fn has_socket(&self) -> bool {
        // SAFETY: (FFI) a live client.
        unsafe { mosquitto_socket(self.mosq.as_ptr()) >= 0 }
    }

    /// How many times housekeeping called `mosquitto_reconnect_async`.
    pub fn reconnect_attempts(&self) -> u64 {
        self.reconnect_attempts
    }

    /// Hands the queued events to the handler.
    fn dispatch(&mut self, lp: &Loop) {
        loop {
            let Some(event) = self.queue.events.borrow_mut().pop_front() else {
                return;
            };
            let Some(mut handler) = self.handler.take() else {
                continue;
            };
            handler(lp, self, event);
            if self.handler.is_none() {
                self.handler = Some(handler);
            }
        }
    }

    /// Runs one library call, then dispatches the events it queued. Returns the call's code
    /// and, for a failure, its error (read before the handler runs and changes `errno`).
    fn call(
        &mut self,
        lp: &Loop,
        f: impl FnOnce(*mut Mosquitto) -> c_int,
    ) -> (c_int, io::Result<()>) {
        let rc = f(self.mosq.as_ptr());
        let result = check(rc);
        self.dispatch(lp);
        (rc, result)
    }
}

impl ExternalSource for Client {
    fn fd(&mut self) -> Option<RawFd> {
        // SAFETY: (FFI) a live client.
        let fd = unsafe { mosquitto_socket(self.mosq.as_ptr()) };
        (fd >= 0).then_some(fd)
    }

    fn on_readable(&mut self, lp: &Loop) -> io::Result<()> {
        // SAFETY: (FFI) a live client, used from one thread only.
        self.call(lp, |m| unsafe { mosquitto_loop_read(m, 1) }).1
    }

    fn on_writable(&mut self, lp: &Loop) -> io::Result<()> {
        // SAFETY: (FFI) a live client, used from one thread only.
        self.call(lp, |m| unsafe { mosquitto_loop_write(m, 1) }).1
    }

    fn wants_write(&mut self) -> bool {
        // SAFETY: (FFI) a live client.
        unsafe { mosquitto_want_write(self.mosq.as_ptr()) }
    }

    fn housekeeping(&mut self, lp: &Loop) -> io::Result<()> {
        if self.fd().is_none() {
            if self.stay_connected {
                self.reconnect_attempts += 1;
                // A refused attempt (the broker is down) is retried at the next housekeeping.
                // SAFETY: (FFI) a live client whose host and port were set by `connect`.
                let _ = self.call(lp, |m| unsafe { mosquitto_reconnect_async(m) });
            }
            return Ok(());
        }
        // SAFETY: (FFI) a live client, used from one thread only.
        match self.call(lp, |m| unsafe { mosquitto_loop_misc(m) }) {
            (MOSQ_ERR_NO_CONN, _) => Ok(()),
            (_, result) => result,
        }
    }

    fn on_error(&mut self, _lp: &Loop, err: io::Error) {
        // Losing the connection is expected when the broker goes away: housekeeping reconnects.
        if err.kind() != io::ErrorKind::ConnectionReset {
            eprintln!("mqtt: {err}");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: (FFI) the client is live and dropped once; the queue it points to is freed after
        // this (field drop order), so no callback can see a dangling `obj`.
        unsafe { mosquitto_destroy(self.mosq.as_ptr()) };
    }
}
