//! nginx harness (filled in below).
