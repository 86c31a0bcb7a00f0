//! Fuzz target: [`aviary_fuzz::spec_yaml`] must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aviary_fuzz::spec_yaml(data));
