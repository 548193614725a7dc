//! Fuzz target: `gpio_event_decode` (see `fdloop_fuzz::gpio_event` for what it checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fdloop_fuzz::gpio_event(data));
