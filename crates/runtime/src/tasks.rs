//! One lifecycle for a service's tasks: what a service spawns, what must keep running, and how it
//! drains.
//!
//! A service makes one [`Tasks`] from the process's shutdown token and its [`Readiness`], then
//! spawns through it:
//!
//! - [`Tasks::critical`]: a loop the service cannot work without (a subscription, an xDS server,
//!   a watch). If it ends before shutdown, whether with an error or not, the service's `tasks`
//!   readiness condition fails, the stop token is cancelled so every other task winds down, and
//!   [`Tasks::finish`] returns the failure, so `run` ends with an error instead of a process that
//!   stays ready with half its work dead.
//! - [`Tasks::spawn`]: work in flight (one request, one delivery). It keeps the caller's span,
//!   so a trace carried by a message goes on through the task.
//!
//! Flow: `let tasks = Tasks::new(&shutdown, &ready)` → spawn → `tasks.stopped().await` →
//! `tasks.finish(deadline).await`, which waits for every task up to the deadline and names
//! those it gave up on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{Condition, Readiness};

/// The name of the readiness condition a critical task's exit fails.
pub const CONDITION: &str = "tasks";

/// A critical task ended while the service was not shutting down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("critical task {task} stopped: {reason}")]
pub struct TaskFailed {
    /// The name the task was spawned under.
    pub task: &'static str,
    /// Its error, or `exited` when it returned without one.
    pub reason: String,
}

/// What a drain waited for and what it gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained {
    /// Every task ended before the deadline.
    pub complete: bool,
    /// The tasks still running at the deadline, by name (one entry per task), sorted.
    pub unfinished: Vec<&'static str>,
}

/// A service's tasks; clones share them.
#[derive(Debug, Clone)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
    healthy: Condition,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    next_id: AtomicU64,
    running: Mutex<BTreeMap<u64, &'static str>>,
    failure: Mutex<Option<TaskFailed>>,
}

impl Tasks {
    /// Tasks that stop when `shutdown` is cancelled (or a critical task fails), with the
    /// [`CONDITION`] condition registered on `readiness` (met until a critical task fails).
    pub fn new(shutdown: &CancellationToken, readiness: &Readiness) -> Self {
        let healthy = readiness.condition(CONDITION);
        healthy.set(true);
        Self {
            stop: shutdown.child_token(),
            tracker: TaskTracker::new(),
            healthy,
            shared: Arc::default(),
        }
    }

    /// The token tasks watch to stop taking new work: cancelled on shutdown or when a critical
    /// task fails.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Resolves once the tasks are to stop (see [`Tasks::token`]).
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Spawns work in flight under `name`, inside the caller's current span; [`Tasks::finish`]
    /// waits for it.
    pub fn spawn<F>(&self, name: &'static str, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let guard = self.enter(name);
        self.tracker.spawn(
            async move {
                let _guard = guard;
                work.await
            }
            .in_current_span(),
        )
    }

    /// Spawns a loop the service cannot work without, inside the caller's current span. If it
    /// ends before the tasks are stopped, the service stops being ready, every task is told to
    /// stop, and [`Tasks::finish`] returns the failure.
    pub fn critical<F, E>(&self, name: &'static str, work: F) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let guard = self.enter(name);
        let tasks = self.clone();
        self.tracker.spawn(
            async move {
                let _guard = guard;
                let result = work.await;
                if tasks.stop.is_cancelled() {
                    if let Err(error) = result {
                        tracing::warn!(task = name, %error, "task ended with an error while stopping");
                    }
                    return;
                }
                let reason = match result {
                    Ok(()) => "exited".to_owned(),
                    // `{:#}`: an anyhow error's whole chain, a plain error's message.
                    Err(error) => format!("{error:#}"),
                };
                tracing::error!(task = name, %reason, "critical task stopped; the service is no longer ready");
                tasks.fail(TaskFailed { task: name, reason });
            }
            .in_current_span(),
        )
    }

    /// The first critical task's failure, if one failed.
    pub fn failure(&self) -> Option<TaskFailed> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The names of the tasks running now, sorted.
    pub fn running(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .copied()
            .collect();
        names.sort_unstable();
        names
    }

    /// Stops the tasks (if not already), takes no more, and waits up to `deadline` for every
    /// one to end; says what it gave up on. Tasks still running at the deadline are left to
    /// the runtime's shutdown.
    pub async fn drain(&self, deadline: Duration) -> Drained {
        self.stop.cancel();
        self.tracker.close();
        let in_flight = self.running();
        if !in_flight.is_empty() {
            tracing::info!(tasks = ?in_flight, "draining");
        }
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Drained {
                complete: true,
                unfinished: Vec::new(),
            };
        }
        let unfinished = self.running();
        tracing::warn!(?deadline, tasks = ?unfinished, "drain deadline passed");
        Drained {
            complete: false,
            unfinished,
        }
    }

    /// [`Tasks::drain`], then the outcome of the service's run: the critical failure that
    /// stopped it, if any.
    ///
    /// # Errors
    /// A critical task ended before shutdown ([`TaskFailed`]).
    pub async fn finish(&self, deadline: Duration) -> Result<Drained, TaskFailed> {
        let drained = self.drain(deadline).await;
        match self.failure() {
            Some(failure) => Err(failure),
            None => Ok(drained),
        }
    }

    fn fail(&self, failure: TaskFailed) {
        self.healthy.set(false);
        self.shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(failure);
        self.stop.cancel();
    }

    fn enter(&self, name: &'static str) -> Running {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, name);
        Running {
            id,
            shared: self.shared.clone(),
        }
    }
}

/// Removes a task from the running set when it ends, however it ends (an abort included).
struct Running {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks() -> (CancellationToken, Readiness, Tasks) {
        let shutdown = CancellationToken::new();
        let ready = Readiness::default();
        ready.set(true);
        let tasks = Tasks::new(&shutdown, &ready);
        (shutdown, ready, tasks)
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_work_in_flight() {
        let (shutdown, ready, tasks) = tasks();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn("request", async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = done_tx.send(());
        });
        assert!(ready.get());
        assert_eq!(tasks.running(), ["request"]);
        shutdown.cancel();
        let drained = tasks.finish(Duration::from_secs(5)).await;
        assert_eq!(
            drained,
            Ok(Drained {
                complete: true,
                unfinished: vec![]
            })
        );
        assert!(
            done_rx.await.is_ok(),
            "the request finished before the drain returned"
        );
        assert!(tasks.running().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_names_what_it_gave_up_on() {
        let (shutdown, _ready, tasks) = tasks();
        tasks.spawn("slow delivery", std::future::pending::<()>());
        tasks.spawn("quick", async {});
        let token = tasks.token();
        tasks.critical("subscription", async move {
            token.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        shutdown.cancel();
        let drained = tasks.drain(Duration::from_secs(2)).await;
        assert_eq!(
            drained,
            Drained {
                complete: false,
                unfinished: vec!["slow delivery"]
            }
        );
        assert_eq!(
            tasks.failure(),
            None,
            "a loop ending on shutdown is no failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_that_dies_fails_readiness_and_the_run() {
        let (shutdown, ready, tasks) = tasks();
        let token = tasks.token();
        let (peer_tx, peer_rx) = tokio::sync::oneshot::channel();
        tasks.spawn("peer", async move {
            token.cancelled().await;
            let _ = peer_tx.send(());
        });
        tasks.critical("watch", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(std::io::Error::other("stream closed"))
        });
        tasks.stopped().await;
        assert!(
            !shutdown.is_cancelled(),
            "the process trigger is not touched"
        );
        assert!(!ready.get());
        assert_eq!(ready.unmet(), [CONDITION]);
        assert!(peer_rx.await.is_ok(), "the other tasks were told to stop");
        let failure = tasks.finish(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(failure.task, "watch");
        assert_eq!(failure.reason, "stream closed");
        assert_eq!(
            failure.to_string(),
            "critical task watch stopped: stream closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_returning_early_without_error_is_a_failure_too() {
        let (_shutdown, ready, tasks) = tasks();
        tasks.critical("xds", async { Ok::<(), std::io::Error>(()) });
        tasks.stopped().await;
        assert!(!ready.get());
        let failure = tasks.finish(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            failure,
            TaskFailed {
                task: "xds",
                reason: "exited".into()
            }
        );
    }

    // Current-thread runtime: the spawned task runs on this thread, under this subscriber.
    #[tokio::test]
    async fn spawned_work_keeps_the_callers_span() {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let (_shutdown, _ready, tasks) = tasks();
        let span = tracing::info_span!("caller");
        assert!(span.id().is_some());
        let (inside, critical) = {
            let _entered = span.enter();
            let inside = tasks.spawn("inside", async { tracing::Span::current().id() });
            let (tx, rx) = tokio::sync::oneshot::channel();
            tasks.critical("loop", async move {
                let _ = tx.send(tracing::Span::current().id());
                Ok::<(), std::io::Error>(())
            });
            (inside, rx)
        };
        assert_eq!(inside.await.unwrap(), span.id());
        assert_eq!(critical.await.unwrap(), span.id());
    }
}
