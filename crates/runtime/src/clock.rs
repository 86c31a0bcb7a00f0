//! The wall clock, read in one place: epoch milliseconds as the bus, the audit trail and the
//! analysis windows carry them.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock now: the one place that reads it.
#[allow(clippy::disallowed_methods)]
pub fn system_now() -> SystemTime {
    SystemTime::now()
}

/// Now, in milliseconds since the Unix epoch; 0 for a clock set before 1970, `u64::MAX` past
/// the year 584 million.
pub fn now_ms() -> u64 {
    system_now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// [`now_ms`] as the signed milliseconds protobuf timestamps use (`int64 *_ms`).
pub fn now_ms_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_system_clock_in_milliseconds() {
        let before =
            u64::try_from(system_now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        let (a, b) = (now_ms(), now_ms_i64());
        assert!(a >= before && a - before < 60_000, "{a} vs {before}");
        assert!(b >= i64::try_from(a).unwrap());
    }
}
