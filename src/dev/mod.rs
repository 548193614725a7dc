//! Device and kernel-notification helpers: typed wrappers so that callers do not decode kernel
//! structures by hand. Each works from fibers and from callbacks, on both backends.

pub mod eventfd;
pub mod fanotify;
pub mod gpio;
pub mod inotify;
pub mod kernfs;
pub mod serial;
pub mod signalfd;
pub mod timerfd;
