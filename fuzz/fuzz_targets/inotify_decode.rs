//! Fuzz target: `inotify_decode` (see `fdloop_fuzz::inotify` for what it checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fdloop_fuzz::inotify(data));
