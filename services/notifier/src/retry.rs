//! When to try a post again: exponential backoff with jitter, `Retry-After` honoured on 429
//! (and 503), a cap on attempts and on total time, and permanent failures (most 4xx) not
//! retried at all. Time is tokio's, so tests run it with a paused clock.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Retry settings of every provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the second attempt (before jitter).
    pub initial_backoff: Duration,
    /// Longest wait between attempts (before jitter).
    pub max_backoff: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No attempt starts later than this after the first; a `Retry-After` that would end
    /// beyond it gives up at once.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 0.5 s doubling to 30 s, 8 attempts, within 5 minutes: rides out a webhook restart or a
    /// short rate limit, and gives up on an outage long before the event is stale.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 8,
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (attempt 1 = the first): `initial × 2^(attempt-1)`
    /// capped at `max_backoff`, then "equal jitter": a uniform pick in `[b/2, b]`, so retries
    /// of many posts spread out but never come sooner than half the backoff.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rng.random_range(0..=spread))
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered.
    Done,
    /// Failed in a way that may pass: 5xx, 408, 429, a timeout, a refused connection.
    /// `retry_after` is the server's `Retry-After`, when it gave one.
    Transient {
        /// What went wrong (no secrets).
        error: String,
        /// The server's requested wait.
        retry_after: Option<Duration>,
    },
    /// Failed in a way another attempt will not fix (400, 401, 403, 404, …).
    Permanent {
        /// What went wrong (no secrets).
        error: String,
    },
}

/// How a retried post ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Delivered after `attempts` attempts.
    Delivered {
        /// Attempts made.
        attempts: u32,
    },
    /// Gave up: permanent failure, attempts or time used up.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// `abandon` fired before an attempt or while waiting between two: nothing is settled, the event stays
    /// unacknowledged and will be redelivered.
    Abandoned,
}

/// Calls `send` until it succeeds, fails permanently, or `policy` gives up; `on_retry` is
/// called before each wait with the attempt number and the wait. When `abandon` is cancelled
/// it starts no further attempt and stops waiting, with [`Settled::Abandoned`]; an attempt
/// already under way is finished first.
pub async fn run<S, Fut, R>(
    policy: &RetryPolicy,
    abandon: &CancellationToken,
    mut send: S,
    mut on_retry: R,
) -> Settled
where
    S: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt>,
    R: FnMut(u32, Duration, &str),
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if abandon.is_cancelled() {
            return Settled::Abandoned;
        }
        // An attempt that started is finished (it is bounded by the provider's timeout):
        // cutting it off would leave us not knowing whether the chat tool posted it.
        let (error, retry_after) = match send(attempt).await {
            Attempt::Done => return Settled::Delivered { attempts: attempt },
            Attempt::Permanent { error } => {
                return Settled::Failed {
                    attempts: attempt,
                    error,
                };
            }
            Attempt::Transient { error, retry_after } => (error, retry_after),
        };
        if attempt >= policy.max_attempts {
            return Settled::Failed {
                attempts: attempt,
                error: format!("{error} (gave up after {attempt} attempts)"),
            };
        }
        // The server's Retry-After is a floor: never come back sooner than it asked.
        let wait = match retry_after {
            Some(after) => after,
            None => policy.backoff(attempt, &mut rand::rng()),
        };
        if started.elapsed() + wait > policy.max_elapsed {
            return Settled::Failed {
                attempts: attempt,
                error: format!(
                    "{error} (gave up: next attempt would start after {:?})",
                    policy.max_elapsed
                ),
            };
        }
        on_retry(attempt, wait, &error);
        tokio::select! {
            biased;
            () = abandon.cancelled() => return Settled::Abandoned,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some servers send fractional seconds; accept them rather than ignore the hint.
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: 5,
            max_elapsed: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = policy();
        let mut rng = rand::rng();
        for _ in 0..200 {
            let b1 = p.backoff(1, &mut rng);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = p.backoff(3, &mut rng);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            let b30 = p.backoff(30, &mut rng);
            assert!(
                b30 >= Duration::from_millis(500) && b30 <= Duration::from_secs(1),
                "{b30:?}"
            );
        }
    }

    /// Runs `run` over scripted outcomes and records the paused-clock time of each attempt.
    async fn script(outcomes: Vec<Attempt>, p: RetryPolicy) -> (Settled, Vec<Duration>) {
        let start = Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let outcomes = Arc::new(Mutex::new(outcomes.into_iter()));
        let settled = run(
            &p,
            &CancellationToken::new(),
            |_| {
                let times = times.clone();
                let outcomes = outcomes.clone();
                async move {
                    times.lock().expect("lock").push(start.elapsed());
                    outcomes
                        .lock()
                        .expect("lock")
                        .next()
                        .unwrap_or(Attempt::Done)
                }
            },
            |_, _, _| {},
        )
        .await;
        let times = times.lock().expect("lock").clone();
        (settled, times)
    }

    fn transient(retry_after: Option<u64>) -> Attempt {
        Attempt::Transient {
            error: "HTTP 503".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_exactly() {
        let (settled, times) = script(vec![transient(Some(7)), Attempt::Done], policy()).await;
        assert_eq!(settled, Settled::Delivered { attempts: 2 });
        assert_eq!(times.len(), 2);
        // Paused time advances exactly by the sleep: the second attempt is 7 s after the first.
        assert_eq!(times[1] - times[0], Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_backoff() {
        let (settled, times) = script(
            vec![transient(None), transient(None), Attempt::Done],
            policy(),
        )
        .await;
        assert_eq!(settled, Settled::Delivered { attempts: 3 });
        let first = times[1] - times[0];
        let second = times[2] - times[1];
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        assert!(
            second >= Duration::from_millis(100) && second <= Duration::from_millis(200),
            "{second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let (settled, times) = script(vec![transient(None); 10], policy()).await;
        assert!(
            matches!(settled, Settled::Failed { attempts: 5, .. }),
            "{settled:?}"
        );
        assert_eq!(times.len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_permanent_failures() {
        let (settled, times) = script(
            vec![Attempt::Permanent {
                error: "HTTP 404".into(),
            }],
            policy(),
        )
        .await;
        assert_eq!(
            settled,
            Settled::Failed {
                attempts: 1,
                error: "HTTP 404".into()
            }
        );
        assert_eq!(times.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_retry_after_exceeds_the_budget() {
        let p = RetryPolicy {
            max_elapsed: Duration::from_secs(10),
            ..policy()
        };
        let (settled, times) = script(vec![transient(Some(3600))], p).await;
        assert!(
            matches!(settled, Settled::Failed { attempts: 1, .. }),
            "{settled:?}"
        );
        assert_eq!(times.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn abandons_while_waiting() {
        let abandon = CancellationToken::new();
        let trigger = abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            trigger.cancel();
        });
        let settled = run(
            &policy(),
            &abandon,
            |_| async { transient(Some(30)) },
            |_, _, _| {},
        )
        .await;
        assert_eq!(settled, Settled::Abandoned);
    }

    #[test]
    fn parses_retry_after() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
