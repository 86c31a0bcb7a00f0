//! Drives one rollout while this replica holds its lease: feeds inputs (ticks, acks, verdicts,
//! gate answers, commands) to the state machine, stores each decision by CAS, then carries out
//! the decided actions and feeds their outcomes back.
//!
//! One task per owned rollout; inputs are handled one at a time, so a rollout's decisions are
//! serial. Before every write the driver checks that its replica's lease (the epoch its rollout
//! lease was taken under) is unexpired by its own clock, and a write that loses the CAS re-reads
//! and re-decides. A lost replica lease ends every driver of the replica at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aviary_bus::BusError;
use aviary_bus::kv::{Bucket, Entry};
use aviary_core::clusters::fold_verdicts;
use aviary_core::machine::{Action, Env, Input, Machine, RolloutStatus};
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::convert::{self, now_ms};
use crate::effects::Effects;
use crate::lease::{Held, Leases};
use crate::metrics::Metrics;
use crate::record::RolloutRecord;

/// What every driver of this replica shares.
pub struct Shared {
    /// The rollouts bucket.
    pub records: Bucket<RolloutRecord>,
    /// Lease operations.
    pub leases: Leases,
    /// Talking to the other services.
    pub effects: Effects,
    /// Own metrics.
    pub metrics: Metrics,
}

/// Why a driver stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The rollout has nothing left to do; the lease was released.
    Done,
    /// The replica lease was lost or expired before it could be renewed, or another replica
    /// took the rollout lease.
    LostLease,
    /// The replica is shutting down; the lease was released.
    Shutdown,
    /// The record vanished or could not be read.
    Gone,
}

/// A running driver's handle.
pub struct Handle {
    /// Nudges the driver to re-read its record (a control-API command was queued).
    pub wake: mpsc::Sender<()>,
    /// The latest revision of the record the watch has seen. The driver re-reads only when it
    /// is newer than the one it holds: most writes are its own, and re-reading each of them
    /// would cost a KV read and a full decode per decision. A watch channel keeps only the
    /// latest value, so a burst of writes never crowds out the one that matters.
    pub seen: tokio::sync::watch::Sender<u64>,
}

struct Driver {
    key: String,
    shared: Arc<Shared>,
    held: Held,
    entry: Entry<RolloutRecord>,
    machine: Machine,
    inputs: mpsc::Sender<Input>,
    published: HashSet<String>,
    /// Post-rollout and rollback hooks being called; each yields the input reporting its
    /// failure. The driver outlives a finished rollout until they are done, so a failure is
    /// still reported (each call is bounded by the hooks' own timeouts).
    hooks: tokio::task::JoinSet<Option<Input>>,
}

/// The fields of the held record a decision replaces, kept until the decision is stored.
struct Undo {
    status: RolloutStatus,
    commands: Option<Vec<crate::record::QueuedCommand>>,
    last_checks: Option<Vec<aviary_proto::events::MetricValue>>,
    outbox: Vec<aviary_proto::events::AuditEvent>,
    event_seq: u64,
}

/// Starts driving the rollout at `key` under the lease `held`.
///
/// Returns the handle and the task's join handle, which yields why it stopped.
pub fn spawn(
    key: String,
    shared: Arc<Shared>,
    held: Held,
    cancel: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<Exit>) {
    let (wake_tx, wake_rx) = mpsc::channel(4);
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(0);
    let span = tracing::info_span!("driver", rollout = %key);
    let task = tokio::spawn(tracing::Instrument::instrument(
        run(key, shared, held, cancel, wake_rx, seen_rx),
        span,
    ));
    (
        Handle {
            wake: wake_tx,
            seen: seen_tx,
        },
        task,
    )
}

async fn run(
    key: String,
    shared: Arc<Shared>,
    held: Held,
    cancel: CancellationToken,
    mut wake: mpsc::Receiver<()>,
    mut seen: tokio::sync::watch::Receiver<u64>,
) -> Exit {
    let (inputs, mut input_rx) = mpsc::channel(64);
    // Built in its own (boxed, short-lived) future, so this one never holds the record twice.
    let mut driver = match Box::pin(Driver::load(key, shared, held, inputs)).await {
        Ok(driver) => driver,
        Err(exit) => return exit,
    };
    info!(phase = %driver.entry.value.status.phase, "took ownership");
    Box::pin(driver.publish_outbox()).await;
    // Resume: a spec change first, then queued commands, then the request the previous owner
    // was waiting on (its answer cannot reach this driver), then a tick that re-sends whatever
    // else is due.
    if let Err(exit) = Box::pin(driver.catch_up()).await {
        return exit;
    }
    if let Err(exit) = Box::pin(driver.handle(Input::TookOver, None)).await {
        return exit;
    }
    if let Err(exit) = Box::pin(driver.handle(Input::Tick, None)).await {
        return exit;
    }
    // Only against the bucket's max age: ownership itself is renewed by the replica lease.
    let restamp_every = Duration::from_millis(
        driver
            .shared
            .leases
            .restamp_ms()
            .unwrap_or(u64::MAX / 4)
            .max(50),
    );
    // The first one at a random point of the second half, so rollouts taken together do not
    // re-stamp together.
    let first = restamp_every.mul_f64(0.5 + rand::random::<f64>() / 2.0);
    let mut restamp = tokio::time::interval_at(Instant::now() + first, restamp_every);
    restamp.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lost = driver.held.epoch.lost().clone();
    loop {
        if !driver.entry.value.needs_driver() && driver.hooks.is_empty() {
            Box::pin(driver.settle_outbox()).await;
            Box::pin(driver.shared.leases.release(&driver.held)).await;
            info!(phase = %driver.entry.value.status.phase, "rollout settled; released");
            return Exit::Done;
        }
        let tick_at = driver.next_tick();
        // Each branch's work is boxed: a select holds every branch's future inline, and a
        // decision's future (a CAS write, the effects) is several kilobytes that thousands of
        // idle drivers would otherwise each carry while they wait.
        let step = tokio::select! {
            () = lost.cancelled() => {
                warn!("replica lease lost; stopping");
                driver.shared.metrics.leases_lost.inc();
                return Exit::LostLease;
            }
            () = cancel.cancelled() => {
                Box::pin(driver.shared.leases.release(&driver.held)).await;
                return Exit::Shutdown;
            }
            Some(input) = input_rx.recv() => Box::pin(driver.handle(input, None)).await,
            Some(called) = driver.hooks.join_next(), if !driver.hooks.is_empty() => {
                match called {
                    Ok(Some(failed)) => Box::pin(driver.handle(failed, None)).await,
                    Ok(None) => Ok(()),
                    Err(error) => {
                        warn!(%error, "hook call task failed");
                        Ok(())
                    }
                }
            }
            Some(()) = wake.recv() => Box::pin(driver.reload()).await,
            Ok(()) = seen.changed() => {
                let revision = *seen.borrow_and_update();
                if revision > driver.entry.revision {
                    Box::pin(driver.reload()).await
                } else {
                    Ok(())
                }
            }
            () = tokio::time::sleep_until(tick_at) => {
                Box::pin(driver.handle(Input::Tick, None)).await
            }
            _ = restamp.tick() => Box::pin(driver.restamp()).await,
        };
        if let Err(exit) = step {
            return exit;
        }
    }
}

impl Drop for Driver {
    /// Hook calls still running when the driver stops (lease lost, shutdown) go on to the
    /// end, as calls that nothing waits for; only their failure goes unreported.
    fn drop(&mut self) {
        self.hooks.detach_all();
    }
}

impl Driver {
    /// Reads the record and builds the machine; releases the lease when either fails.
    async fn load(
        key: String,
        shared: Arc<Shared>,
        held: Held,
        inputs: mpsc::Sender<Input>,
    ) -> Result<Self, Exit> {
        let entry = match shared.records.get(&key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(Exit::Gone),
            Err(error) => {
                warn!(%error, "cannot read rollout record");
                shared.leases.release(&held).await;
                return Err(Exit::Gone);
            }
        };
        let machine = match Machine::new(&entry.value.rollout.spec) {
            Ok(machine) => machine,
            Err(errors) => {
                warn!(%errors, "stored spec does not validate; not driving it");
                shared.leases.release(&held).await;
                return Err(Exit::Gone);
            }
        };
        Ok(Self {
            key,
            shared,
            held,
            entry,
            machine,
            inputs,
            published: HashSet::new(),
            hooks: tokio::task::JoinSet::new(),
        })
    }

    fn next_tick(&self) -> Instant {
        let now = now_ms();
        let due = self
            .entry
            .value
            .status
            .next_tick_at_ms
            .unwrap_or(now + 60_000);
        Instant::now() + Duration::from_millis(due.saturating_sub(now))
    }

    async fn restamp(&mut self) -> Result<(), Exit> {
        match self.shared.leases.restamp(&self.held).await {
            Ok(held) => {
                self.held = held;
                Ok(())
            }
            Err(crate::lease::LeaseError::Taken { .. }) => {
                warn!("rollout lease taken by another replica; stopping");
                self.shared.metrics.leases_lost.inc();
                Err(Exit::LostLease)
            }
            // Retried at the next re-stamp, well before the bucket's max age.
            Err(error) => {
                warn!(%error, "cannot re-stamp rollout lease");
                Ok(())
            }
        }
    }

    /// Re-reads the record; acts on a spec change and on queued commands.
    async fn reload(&mut self) -> Result<(), Exit> {
        self.refresh().await?;
        self.catch_up().await
    }

    /// Acts on a spec change and on queued commands in the held record.
    async fn catch_up(&mut self) -> Result<(), Exit> {
        if self.entry.value.generation != self.entry.value.status.generation {
            let generation = self.entry.value.generation;
            self.handle(Input::SpecChanged { generation }, None).await?;
        }
        while let Some(queued) = self.entry.value.commands.first().cloned() {
            self.handle(Input::Command(queued.command), Some(&queued))
                .await?;
        }
        Ok(())
    }

    async fn refresh(&mut self) -> Result<(), Exit> {
        match self.shared.records.get(&self.key).await {
            Ok(Some(entry)) => {
                if entry.value.rollout.spec != self.entry.value.rollout.spec {
                    match Machine::new(&entry.value.rollout.spec) {
                        Ok(machine) => self.machine = machine,
                        Err(errors) => {
                            warn!(%errors, "new spec does not validate; keeping the old one")
                        }
                    }
                }
                self.entry = entry;
                Ok(())
            }
            Ok(None) => Err(Exit::Gone),
            Err(error) => {
                warn!(%error, "cannot re-read rollout record");
                Ok(())
            }
        }
    }

    /// Decides on `input` in its own trace (`rollout.decide`; a queued command's decision joins
    /// the trace of the API call that queued it); what the decision sends — route commands,
    /// analysis requests, audit events — carries that trace on.
    async fn handle(
        &mut self,
        input: Input,
        command: Option<&crate::record::QueuedCommand>,
    ) -> Result<(), Exit> {
        let span = tracing::info_span!(
            parent: None,
            "rollout.decide",
            rollout = %self.key,
            input = input.name(),
        );
        if let Some(traceparent) = command.and_then(|c| c.traceparent.as_deref()) {
            aviary_bus::trace::set_parent_from_traceparent(&span, traceparent);
        }
        tracing::Instrument::instrument(self.decide(input, command), span).await
    }

    /// Decides on `input`, stores the decision by CAS (re-deciding after a lost race), then
    /// carries out the actions. `command` is the queued command this input consumes.
    async fn decide(
        &mut self,
        input: Input,
        command: Option<&crate::record::QueuedCommand>,
    ) -> Result<(), Exit> {
        for _ in 0..aviary_bus::kv::UPDATE_WITH_ATTEMPTS {
            let now = now_ms();
            if !self.held.epoch.valid(now) {
                warn!("replica lease expired before it could be renewed; stopping");
                self.shared.metrics.leases_lost.inc();
                return Err(Exit::LostLease);
            }
            let record = &self.entry.value;
            if let Some(queued) = command
                && !record.commands.iter().any(|c| c.id == queued.id)
            {
                return Ok(()); // consumed by an earlier decision
            }
            let env = Env {
                now_ms: now,
                random: rand::random(),
            };
            let (status, actions) = match self.machine.step(&record.status, input.clone(), env) {
                Ok(decision) if decision.ignored.is_some() && command.is_none() => {
                    debug!(why = decision.ignored, "input ignored");
                    return Ok(());
                }
                Ok(decision) => (decision.status, decision.actions),
                Err(error) => {
                    // The phase moved on since the API accepted it; drop it, say why.
                    warn!(%error, "queued command refused");
                    (record.status.clone(), Vec::new())
                }
            };
            if command.is_none() && only_asks_for_analysis(&input, &actions) {
                // Not stored: asking for analysis follows from the stored status alone (a due
                // interval), so an owner taking over decides the same request at its first
                // tick. Held in memory, it is stored with the verdict's decision; a write lost to
                // a concurrent change re-reads the stored status and asks again.
                let before = std::mem::replace(&mut self.entry.value.status, status);
                if let Some(due) = before.next_tick_at_ms {
                    let lag = now_ms().saturating_sub(due);
                    self.shared.metrics.tick_lag.observe(lag as f64 / 1000.0);
                }
                self.observe(&before, &self.entry.value.status);
                self.execute(actions).await;
                return Ok(());
            }
            // The decision is written over the held record in place: the manifest and the spec
            // (most of its size) never change here, so only the fields that do are set aside,
            // to be put back if the write fails.
            let outbox: Vec<_> = record
                .outbox
                .iter()
                .filter(|e| !self.published.contains(&e.id))
                .cloned()
                .collect();
            let next = &mut self.entry.value;
            let undo = Undo {
                status: std::mem::replace(&mut next.status, status),
                commands: command.map(|queued| {
                    let kept = next
                        .commands
                        .iter()
                        .filter(|c| c.id != queued.id)
                        .cloned()
                        .collect();
                    std::mem::replace(&mut next.commands, kept)
                }),
                last_checks: match &input {
                    Input::Verdict(v) => Some(std::mem::replace(
                        &mut next.last_checks,
                        convert::verdict_metrics(&next.rollout.spec, v),
                    )),
                    _ => None,
                },
                outbox: std::mem::replace(&mut next.outbox, outbox),
                event_seq: next.event_seq,
            };
            let actor = command.map_or("", |c| c.actor.as_str());
            for action in &actions {
                if let Action::Emit(event) = action {
                    next.event_seq += 1;
                    let event = convert::audit_event(
                        next,
                        next.event_seq,
                        event,
                        actor,
                        now,
                        match &input {
                            Input::Verdict(v) => Some(v),
                            _ => None,
                        },
                    );
                    next.outbox.push(event);
                }
            }
            match self
                .shared
                .records
                .update(&self.key, &self.entry.value, self.entry.revision)
                .await
            {
                Ok(revision) => {
                    if matches!(input, Input::Tick)
                        && let Some(due) = undo.status.next_tick_at_ms
                    {
                        let lag = now_ms().saturating_sub(due);
                        self.shared.metrics.tick_lag.observe(lag as f64 / 1000.0);
                    }
                    self.observe(&undo.status, &self.entry.value.status);
                    self.entry.revision = revision;
                    self.forget_trimmed();
                    self.execute(actions).await;
                    return Ok(());
                }
                Err(BusError::Conflict { .. }) => {
                    debug!("record changed under us; re-deciding");
                    self.undo(undo);
                    self.refresh().await?;
                }
                Err(error) => {
                    self.undo(undo);
                    warn!(%error, "cannot store decision; will retry at the next tick");
                    return Ok(());
                }
            }
        }
        warn!("gave up storing a decision after repeated conflicts");
        Ok(())
    }

    /// Puts back what a decision that was not stored changed in the held record.
    fn undo(&mut self, undo: Undo) {
        let record = &mut self.entry.value;
        record.status = undo.status;
        if let Some(commands) = undo.commands {
            record.commands = commands;
        }
        if let Some(last_checks) = undo.last_checks {
            record.last_checks = last_checks;
        }
        record.outbox = undo.outbox;
        record.event_seq = undo.event_seq;
    }

    /// Forgets published events no longer in the stored outbox: once trimmed from it they are
    /// never seen again, so remembering them only grows the set for the rollout's whole run.
    fn forget_trimmed(&mut self) {
        let outbox = &self.entry.value.outbox;
        self.published
            .retain(|id| outbox.iter().any(|e| &e.id == id));
    }

    fn observe(&self, before: &RolloutStatus, after: &RolloutStatus) {
        let m = &self.shared.metrics;
        if before.phase != after.phase {
            match after.phase {
                aviary_core::machine::Phase::Succeeded => m.promotions.inc(),
                aviary_core::machine::Phase::Failed => m.rollbacks.inc(),
                _ => 0,
            };
        }
        if after.halted_since_ms.is_some() && before.halt_reason != after.halt_reason {
            m.halts.inc();
        }
        if after.failed_checks > before.failed_checks {
            m.failed_checks
                .inc_by(u64::from(after.failed_checks - before.failed_checks));
        }
        if after.step != before.step
            && let Some(started) = before.step_started_at_ms
        {
            m.step_duration
                .observe(now_ms().saturating_sub(started) as f64 / 1000.0);
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        // Each request is built here, from the held record; only what it needs goes to its task.
        let record = &self.entry.value;
        for action in actions {
            match action {
                Action::Emit(_) | Action::ScheduleTick { .. } => {}
                Action::ApplyRoute(route) => {
                    let sends = convert::route_sends(record, &route);
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    let latency = self.shared.metrics.ack_latency.clone();
                    let seq = route.seq;
                    info!(
                        seq,
                        canary = route.canary_weight,
                        primary = route.primary_weight,
                        "applying route"
                    );
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        let started = Instant::now();
                        let input = match shared.effects.apply_route(&sends).await {
                            Ok(confirmed) => {
                                latency.observe(started.elapsed().as_secs_f64());
                                // The machine checks every ingress's split, not only one.
                                Input::IngressesConfirmed {
                                    seq,
                                    ingresses: convert::ingress_splits(&confirmed.acks),
                                }
                            }
                            Err(failed) => Input::RouteFailed {
                                seq,
                                reason: failed.0,
                            },
                        };
                        let _ = inputs.send(input).await;
                    }));
                }
                Action::RequestAnalysis(request) if !record.rollout.spec.clusters.is_empty() => {
                    let requests = convert::cluster_analysis_requests(record, &request);
                    let policy = record.rollout.spec.cluster_policy.unwrap_or_default();
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    let seq = request.seq;
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        let asks = requests.iter().map(|(cluster, request)| {
                            shared.effects.analyze_in(Some(cluster), request)
                        });
                        let answers: Vec<_> = join_all(asks)
                            .await
                            .into_iter()
                            .zip(&requests)
                            .map(|(answer, (cluster, _))| {
                                let verdict = match answer {
                                    Ok(verdict) => Some(convert::verdict(seq, &verdict)),
                                    // No analyzer of the cluster answered: no verdict, a halt.
                                    Err(
                                        BusError::Timeout { .. } | BusError::NoResponders { .. },
                                    ) => {
                                        warn!(%cluster, "no verdict from the cluster's analyzers");
                                        None
                                    }
                                    Err(error) => Some(error_verdict(seq, &error)),
                                };
                                (cluster.as_str(), verdict)
                            })
                            .collect();
                        let folded = fold_verdicts(policy, seq, &answers);
                        let _ = inputs.send(Input::Verdict(folded)).await;
                    }));
                }
                Action::RequestAnalysis(request) => {
                    let pb_request = convert::analysis_request(record, &request);
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    let seq = request.seq;
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        let input = match shared.effects.analyze(&pb_request).await {
                            Ok(verdict) => Input::Verdict(convert::verdict(seq, &verdict)),
                            Err(BusError::Timeout { .. }) => Input::AnalysisTimeout { seq },
                            Err(error) => Input::Verdict(error_verdict(seq, &error)),
                        };
                        let _ = inputs.send(input).await;
                    }));
                }
                Action::CheckGate {
                    seq,
                    gate,
                    webhooks,
                } => {
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    let request = convert::webhook_request(record, seq, &webhooks);
                    let cluster = convert::hook_cluster(record);
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        // A gate with no webhooks is held by the API alone (Approve opens it).
                        let input = if webhooks.is_empty() {
                            Input::GateResult {
                                seq,
                                gate,
                                open: false,
                            }
                        } else {
                            match shared
                                .effects
                                .analyze_in(cluster.as_deref(), &request)
                                .await
                            {
                                // A rollback hook polled with the gate asked for rollback.
                                Ok(v) if convert::verdict(seq, &v).rollback_requested => {
                                    Input::RollbackRequested { seq }
                                }
                                // Open when the gate's own hooks passed (a rollback hook
                                // polled with it, not asking, takes no part).
                                Ok(v) => Input::GateResult {
                                    seq,
                                    gate,
                                    open: convert::verdict(seq, &v).outcome
                                        == aviary_core::machine::Outcome::Pass,
                                },
                                // No analyzer answered: a halt, not a closed gate.
                                Err(error) => Input::GateUnanswered {
                                    seq,
                                    gate,
                                    reason: error.to_string(),
                                },
                            }
                        };
                        let _ = inputs.send(input).await;
                    }));
                }
                Action::RunCheck { seq, webhook } => {
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    let request =
                        convert::webhook_request(record, seq, std::slice::from_ref(&webhook));
                    let cluster = convert::hook_cluster(record);
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        let input = match shared
                            .effects
                            .analyze_in(cluster.as_deref(), &request)
                            .await
                        {
                            Ok(v) => {
                                let passed = v.outcome == aviary_proto::Outcome::Pass as i32;
                                let reason = v
                                    .webhooks
                                    .first()
                                    .map(|w| w.reason.clone())
                                    .filter(|r| !r.is_empty())
                                    .unwrap_or(v.error);
                                Input::CheckResult {
                                    seq,
                                    passed,
                                    reason: if passed { String::new() } else { reason },
                                }
                            }
                            // No analyzer answered: a halt, not a failed check.
                            Err(error) => Input::CheckUnanswered {
                                seq,
                                reason: error.to_string(),
                            },
                        };
                        let _ = inputs.send(input).await;
                    }));
                }
                Action::RunHooks { hook, webhooks } => {
                    let shared = self.shared.clone();
                    let seq = record.status.seq;
                    let request = convert::webhook_request(record, seq, &webhooks);
                    let cluster = convert::hook_cluster(record);
                    let call = async move {
                        let failed = match shared
                            .effects
                            .analyze_in(cluster.as_deref(), &request)
                            .await
                        {
                            Ok(verdict) => convert::failed_hooks(&verdict),
                            Err(error) => vec![format!("not called: {error}")],
                        };
                        if failed.is_empty() {
                            return None;
                        }
                        let reason = failed.join("; ");
                        warn!(hook = hook.as_str(), %reason, "hooks failed");
                        Some(Input::HookFailed { hook, reason })
                    };
                    self.hooks.spawn(tracing::Instrument::in_current_span(call));
                }
                Action::Workload { seq, op } => {
                    let command = convert::workload_command(record, seq, op);
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        let (done, observed) = match shared.effects.workload(&command).await {
                            Ok(ack) if ack.ok => (ack.done, ack.observed),
                            Ok(ack) => (false, ack.error),
                            // No answer is a halt that asks again, never a step forward.
                            Err(error) => {
                                (false, format!("no answer from the controller: {error}"))
                            }
                        };
                        let _ = inputs
                            .send(Input::WorkloadDone {
                                seq,
                                done,
                                observed,
                            })
                            .await;
                    }));
                }
                Action::Finalise { seq } => {
                    let sends = convert::finalise_sends(record, seq);
                    let shared = self.shared.clone();
                    let inputs = self.inputs.clone();
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        match shared.effects.apply_route(&sends).await {
                            Ok(confirmed) => {
                                let ingresses = convert::ingress_splits(&confirmed.acks);
                                let input = Input::IngressesConfirmed { seq, ingresses };
                                let _ = inputs.send(input).await;
                            }
                            // The machine sends Finalise again at its next tick.
                            Err(failed) => warn!(reason = %failed, "finalising failed"),
                        }
                    }));
                }
            }
        }
        self.publish_outbox().await;
    }

    /// Drops published events from the stored outbox before letting the rollout go, so a later
    /// owner (perhaps long after the stream's duplicate window) never publishes them again.
    async fn settle_outbox(&mut self) {
        let mut next = self.entry.value.clone();
        let before = next.outbox.len();
        next.outbox.retain(|e| !self.published.contains(&e.id));
        if next.outbox.len() == before {
            return;
        }
        match self
            .shared
            .records
            .update(&self.key, &next, self.entry.revision)
            .await
        {
            Ok(revision) => {
                self.entry = Entry {
                    key: self.key.clone(),
                    value: next,
                    revision,
                }
            }
            // Someone changed the record (a new Apply): the next owner sees the outbox and the
            // stream de-duplicates what it re-sends within the window.
            Err(error) => debug!(%error, "outbox not trimmed"),
        }
    }

    /// Publishes undelivered audit events in order; stops at the first failure (the rest stay
    /// in the outbox and go out after the next decision or on takeover).
    async fn publish_outbox(&mut self) {
        for event in &self.entry.value.outbox {
            if self.published.contains(&event.id) {
                continue;
            }
            match self.shared.effects.publish_event(event).await {
                Ok(()) => {
                    self.published.insert(event.id.clone());
                }
                Err(error) => {
                    warn!(%error, id = %event.id, "audit event not published yet");
                    break;
                }
            }
        }
    }
}

/// Whether a decision on `input` does nothing but ask for analysis: a due tick with no audit
/// event, no route and no gate.
fn only_asks_for_analysis(input: &Input, actions: &[Action]) -> bool {
    matches!(input, Input::Tick)
        && actions
            .iter()
            .any(|a| matches!(a, Action::RequestAnalysis(_)))
        && actions
            .iter()
            .all(|a| matches!(a, Action::RequestAnalysis(_) | Action::ScheduleTick { .. }))
}

fn error_verdict(seq: u64, error: &BusError) -> aviary_core::machine::Verdict {
    aviary_core::machine::Verdict {
        seq,
        outcome: aviary_core::machine::Outcome::Error,
        checks: vec![aviary_core::machine::CheckResult {
            name: "analyzer".into(),
            outcome: aviary_core::machine::Outcome::Error,
            value: None,
            message: error.to_string(),
        }],
        fail_fast: false,
        early_promote: false,
        rollback_requested: false,
        undecided: false,
    }
}
