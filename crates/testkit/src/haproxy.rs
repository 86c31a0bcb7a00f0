//! haproxy harness (filled in below).
