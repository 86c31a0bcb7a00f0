//! The demo workload for Aviary: an HTTP app that reports its version and can be told to fail or
//! be slow, and a fixed-rate load generator that reports what the traffic saw.
//!
//! Both are used by `make demo` and the end-to-end tests, so they are real servers and clients,
//! not fakes.

pub mod app;
pub mod load;
