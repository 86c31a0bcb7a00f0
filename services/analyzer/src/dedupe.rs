//! Identical concurrent calls share one execution ("single flight"), and each backend has a
//! bound on calls in flight.
//!
//! Many rollouts (and the canary-vs-primary pair of many metrics) ask the same backend the
//! same query for the same instant at once; only the first caller runs it, the others wait for
//! its result. A finished call is forgotten at once; reusing finished answers for the same
//! window is [`crate::cache`]'s job.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, Semaphore, watch};
use tracing::Instrument as _;

/// Joins identical concurrent calls keyed by `K`.
#[derive(Debug)]
pub struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `call` unless an identical call (same `key`) is in flight, in which case it waits
    /// for that one. Returns the value and whether this caller ran the call itself.
    ///
    /// If the running caller is cancelled, a waiting caller runs its own `call` instead.
    pub async fn run<F, Fut>(&self, key: K, call: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                call()
            })
            .await
            .clone();
        if ran {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&key);
            }
        }
        (value, ran)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Joins identical concurrent calls keyed by `K`, like [`SingleFlight`], but the call runs in
/// a task of its own: a caller that stops waiting (its requester gave up) does not cancel it,
/// so a repeated request joins the call still in flight instead of starting another. Used for
/// webhooks, which may take their whole timeout to answer.
#[derive(Debug)]
pub struct DetachedFlight<K, V> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for DetachedFlight<K, V> {
    fn default() -> Self {
        Self {
            inflight: Arc::default(),
        }
    }
}

/// Forgets a finished (or aborted) call, so the next identical call runs again.
struct Forget<K: Eq + Hash, V> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    key: K,
}

impl<K: Eq + Hash, V> Drop for Forget<K, V> {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl<K, V> DetachedFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Waits for the call keyed by `key`, starting `call` in a task of its own unless an
    /// identical one is in flight. Returns the value (`None` when the call was aborted before
    /// it finished) and whether this caller started the call. Dropping the returned future
    /// stops waiting; the call goes on.
    pub async fn run<F, Fut>(&self, key: K, call: F) -> (Option<V>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, started) = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let forget = Forget {
                        inflight: self.inflight.clone(),
                        key,
                    };
                    let call = call();
                    tokio::spawn(
                        async move {
                            let value = call.await;
                            // Forget first: a caller arriving after this runs its own call.
                            drop(forget);
                            tx.send_replace(Some(value));
                        }
                        .in_current_span(),
                    );
                    (rx, true)
                }
            }
        };
        let value = match rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        };
        (value, started)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// One semaphore per backend, created on first use, bounding calls in flight to each.
#[derive(Debug)]
pub struct PerBackendLimit {
    permits: usize,
    semaphores: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl PerBackendLimit {
    /// At most `permits` (at least 1) calls in flight per backend.
    pub fn new(permits: usize) -> Self {
        Self {
            permits: permits.max(1),
            semaphores: Mutex::new(HashMap::new()),
        }
    }

    /// The semaphore of `backend`.
    pub fn semaphore(&self, backend: &str) -> Arc<Semaphore> {
        let mut map = self.semaphores.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(backend.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.permits)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn identical_concurrent_calls_run_once() {
        let flight: Arc<SingleFlight<String, u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (flight, calls) = (flight.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("q".to_owned(), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        7
                    })
                    .await
            }));
        }
        let mut leaders = 0;
        for t in tasks {
            let (v, ran) = t.await.unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(ran);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flight.in_flight(), 0, "finished calls are forgotten");
        // Not a cache: a later call runs again.
        let (v, ran) = flight.run("q".to_owned(), || async { 8 }).await;
        assert_eq!((v, ran), (8, true));
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_do_not_wait_for_each_other() {
        let flight: SingleFlight<u8, u8> = SingleFlight::default();
        let (a, b) = tokio::join!(flight.run(1, || async { 1 }), flight.run(2, || async { 2 }));
        assert_eq!((a, b), ((1, true), (2, true)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_detached_call_outlives_callers_that_stop_waiting() {
        let flight: Arc<DetachedFlight<&str, u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let call = |calls: Arc<AtomicUsize>| {
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                7
            }
        };
        // The first caller gives up after 1 s; the call goes on.
        let gave_up = tokio::time::timeout(
            Duration::from_secs(1),
            flight.run("hook", call(calls.clone())),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(flight.in_flight(), 1);
        // A repeated caller joins it rather than calling again.
        let (value, started) = flight.run("hook", call(calls.clone())).await;
        assert_eq!((value, started), (Some(7), false));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0, "finished calls are forgotten");
    }

    #[test]
    fn backends_have_their_own_permits() {
        let limit = PerBackendLimit::new(2);
        let a = limit.semaphore("a");
        let _p1 = a.clone().try_acquire_owned().unwrap();
        let _p2 = a.clone().try_acquire_owned().unwrap();
        assert!(a.clone().try_acquire_owned().is_err());
        assert!(limit.semaphore("b").try_acquire_owned().is_ok());
        assert!(Arc::ptr_eq(&a, &limit.semaphore("a")));
    }
}
