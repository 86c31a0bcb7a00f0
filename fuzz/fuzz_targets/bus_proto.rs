//! Fuzz target: [`aviary_fuzz::bus_proto`] must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aviary_fuzz::bus_proto(data));
