//! Fuzz target: [`aviary_fuzz::route_render`] must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aviary_fuzz::route_render(data));
