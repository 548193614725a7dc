//! Fuzz target: `fanotify_decode` (see `fdloop_fuzz::fanotify` for what it checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fdloop_fuzz::fanotify(data));
