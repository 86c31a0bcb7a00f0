//! The rollout state machine for every strategy, in the "decide, then do" style.
//!
//! Owns the rules of DESIGN.md §4: apply a step's route, wait for every ingress to confirm it,
//! after `interval` request analysis of the window since confirmation, then advance (pass),
//! count a failed check and roll back at `threshold` (fail), or halt (inconclusive/error —
//! never a failed check, never a promotion). Gates hold before starting
//! (`confirm-rollout`; rollback hooks are polled while it is closed), before each weight
//! increase (`confirm-traffic-increase`) and before promotion (`confirm-promotion`); as in
//! Flagger, a canary held by either of the last two is still analysed every interval at its
//! weight, failed checks count, and only the gate moves it on. A rollout halted longer than
//! `progressDeadlineSeconds` fails and rolls back; a route no ingress confirms is sent again
//! with a doubling wait ([`route_retry_ms`]). A halt or closed gate still in force at a later
//! interval is emitted again marked [`REPEATED`], so it is notified once. Deliberate holds (a closed confirm gate, `pause`, `approval`, Pause) are not
//! halts and have no deadline.
//!
//! Flow: `Machine::new(spec)` → `machine.step(&status, input, env)` → [`Decision`] (new status +
//! actions). No I/O, no clock, no randomness: the scheduler stores the status by CAS, then
//! carries out the actions and feeds their answers back as inputs.

mod types;

#[cfg(test)]
mod ingress_tests;
#[cfg(test)]
mod tests;

pub use types::*;

use std::collections::BTreeMap;

use crate::clusters::ClusterPolicy;
use crate::error::ValidationErrors;
use crate::plan::{Hold, Plan, PlannedStep};
use crate::spec::{
    CheckStep, DEFAULT_SESSION_MAX_AGE, MatchRule, OnInconclusive, RolloutSpec, Step, Webhook,
    WebhookType,
};
use crate::strategy::Strategy;

/// How long every ingress has to acknowledge a route before advancement halts. Data planes
/// apply a split in tens of milliseconds; 30 s tolerates a slow xDS push or a restarting agent.
pub const ROUTE_ACK_TIMEOUT_MS: u64 = 30_000;
/// Shortest wait for a verdict, gate answer or finalisation: one query round trip against a
/// slow metrics backend (the wait is the analysis interval when that is longer).
pub const MIN_ANSWER_TIMEOUT_MS: u64 = 30_000;

/// Added to the longest webhook call when waiting for an answer that calls webhooks: the
/// trip over the bus and the analyzer's own work.
pub const HOOK_ANSWER_MARGIN_MS: u64 = 5_000;
/// Wait before sending a route again after an ingress reported it could not apply it: long
/// enough not to hammer a failing agent, short next to any progress deadline.
pub const ROUTE_RETRY_MS: u64 = 5_000;
/// Longest wait between two sends of a route that keeps failing: an ingress no agent serves,
/// or whose agent is gone for good, is asked every five minutes, not every few seconds for
/// ever; a progress deadline still ends the run on time (a halt's ticks never pass it).
pub const ROUTE_RETRY_MAX_MS: u64 = 300_000;

/// The wait before sending a route again after its `attempts`-th failed or unanswered send:
/// [`ROUTE_RETRY_MS`], doubled with each further attempt, at most [`ROUTE_RETRY_MAX_MS`].
pub fn route_retry_ms(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    ROUTE_RETRY_MS
        .saturating_mul(1 << doublings)
        .min(ROUTE_RETRY_MAX_MS)
}
/// Workload mode: how often the controller is asked again while a workload operation is not
/// done yet (a canary becoming ready, a primary rolling out): pods take seconds to start.
pub const WORKLOAD_POLL_MS: u64 = 2_000;

/// A rollout's machine: the (valid) spec and the plan derived from it.
#[derive(Clone, Debug)]
pub struct Machine {
    spec: RolloutSpec,
    plan: Plan,
}

/// Why [`step`] refused an input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The spec does not validate, so there is no plan to walk (gRPC `InvalidArgument`).
    #[error("invalid spec:\n{0}")]
    InvalidSpec(ValidationErrors),
    /// A command was refused; the status is unchanged.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// One-shot form of [`Machine::step`]: builds the machine from `spec` and folds `input` into
/// `status`. Errors: [`StepError::InvalidSpec`] when the spec does not validate,
/// [`StepError::Command`] when a command is refused.
pub fn step(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    input: Input,
    env: Env,
) -> Result<Decision, StepError> {
    let machine = Machine::new(spec).map_err(StepError::InvalidSpec)?;
    Ok(machine.step(status, input, env)?)
}

/// Identity of the canary being rolled out; a change means a new revision and a new run.
pub fn canary_revision(spec: &RolloutSpec) -> String {
    let base = format!("{}={}", spec.canary.name, spec.canary.endpoints.join(","));
    match &spec.canary.revision {
        Some(revision) => format!("{base}@{revision}"),
        None => base,
    }
}

impl RolloutStatus {
    /// The status of a rollout that has just been created at `generation`.
    pub fn new(spec: &RolloutSpec, generation: u64) -> Self {
        RolloutStatus {
            generation,
            primary_weight: 100,
            canary_revision: canary_revision(spec),
            ..RolloutStatus::default()
        }
    }
}

impl Machine {
    /// Builds the machine. Errors when the spec does not validate.
    pub fn new(spec: &RolloutSpec) -> Result<Self, ValidationErrors> {
        let plan = Plan::build(spec)?;
        Ok(Machine {
            spec: spec.clone(),
            plan,
        })
    }

    /// The plan the machine walks.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The spec the machine was built from.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// Folds one input into the status.
    ///
    /// Errors only for commands: [`CommandError::InvalidInPhase`] when the command makes no
    /// sense in the current phase, [`CommandError::InvalidWeight`] for `SetWeight` above 100;
    /// the status is then unchanged. Stale answers (wrong `seq`) return the status unchanged
    /// with `ignored` set.
    pub fn step(
        &self,
        status: &RolloutStatus,
        input: Input,
        env: Env,
    ) -> Result<Decision, CommandError> {
        let mut cx = Cx {
            m: self,
            st: status.clone(),
            acts: Vec::new(),
            now: env.now_ms,
            random: env.random,
            ignored: None,
        };
        cx.handle(input)?;
        if cx.ignored.is_some() {
            return Ok(Decision {
                status: status.clone(),
                actions: Vec::new(),
                ignored: cx.ignored,
            });
        }
        // A new status's first phase counts from its first decision.
        if cx.st.phase != status.phase || cx.st.phase_since_ms.is_none() {
            cx.st.phase_since_ms = Some(cx.now);
        }
        Ok(Decision {
            status: cx.st,
            actions: cx.acts,
            ignored: None,
        })
    }

    fn interval_ms(&self) -> u64 {
        self.spec.analysis.interval().as_millis().max(1)
    }

    fn answer_timeout_ms(&self) -> u64 {
        self.interval_ms().max(MIN_ANSWER_TIMEOUT_MS)
    }

    /// How long an answer that calls `webhooks` is waited for: at least the longest call of
    /// one of them (they run at once), plus [`HOOK_ANSWER_MARGIN_MS`], so a ten-minute
    /// pre-rollout test gets its ten minutes before "no answer" halts.
    fn answer_timeout_for(&self, webhooks: &[Webhook]) -> u64 {
        let longest = webhooks
            .iter()
            .map(|w| u64::try_from(w.call_budget().as_millis()).unwrap_or(u64::MAX))
            .max()
            .map_or(0, |ms| ms.saturating_add(HOOK_ANSWER_MARGIN_MS));
        self.answer_timeout_ms().max(longest)
    }

    fn deadline_ms(&self) -> u64 {
        self.spec.progress_deadline_seconds().saturating_mul(1000)
    }

    fn webhooks(&self, kind: WebhookType) -> Vec<Webhook> {
        self.spec.analysis.webhooks_of(kind).cloned().collect()
    }

    /// Gates and hooks are skipped with `skipAnalysis`, except confirm-rollout: as in
    /// Flagger, a rollout that skips its analysis still waits for permission to start.
    fn has_hook(&self, kind: WebhookType) -> bool {
        (!self.spec.skip_analysis || kind == WebhookType::ConfirmRollout)
            && self.spec.analysis.has_webhook(kind)
    }

    /// True for a multi-cluster rollout under policy `waves`.
    fn waves(&self) -> bool {
        !self.spec.clusters.is_empty() && self.spec.cluster_policy == Some(ClusterPolicy::Waves)
    }

    /// The place in `spec.clusters` of the cluster an ack names (`<cluster>/<ingress>`).
    fn cluster_of(&self, ingress: &str) -> Option<usize> {
        let (cluster, _) = ingress.split_once('/')?;
        self.spec.clusters.iter().position(|c| c.name == cluster)
    }
}

/// One decision in progress.
struct Cx<'a> {
    m: &'a Machine,
    st: RolloutStatus,
    acts: Vec<Action>,
    now: u64,
    random: u64,
    ignored: Option<&'static str>,
}

impl Cx<'_> {
    fn handle(&mut self, input: Input) -> Result<(), CommandError> {
        match input {
            Input::Tick => self.tick(),
            Input::TookOver => self.reissue(),
            Input::RouteConfirmed { seq, observed } => self.route_confirmed(seq, observed),
            Input::RouteFailed { seq, reason } => self.route_failed(seq, &reason),
            Input::Verdict(v) => self.verdict(v),
            Input::AnalysisTimeout { seq } => match self.st.wait {
                Wait::Verdict { seq: s, .. } if s == seq => self.analysis_timeout(),
                _ => self.ignore("stale analysis timeout"),
            },
            Input::GateResult { seq, gate, open } => self.gate_result(seq, gate, open),
            Input::GateUnanswered { seq, gate, reason } => self.gate_unanswered(seq, gate, &reason),
            Input::CheckResult {
                seq,
                passed,
                reason,
            } => self.check_result(seq, passed, &reason),
            Input::CheckUnanswered { seq, reason } => match self.st.wait {
                Wait::Check { seq: Some(s) } if s == seq => self.check_unanswered(&reason),
                _ => self.ignore("stale check result"),
            },
            Input::IngressesConfirmed { seq, ingresses } => {
                self.ingresses_confirmed(seq, ingresses)
            }
            Input::Finalised { seq } => match self.st.wait {
                Wait::Finalise { seq: s, .. } if s == seq => self.succeed(),
                _ => self.ignore("stale finalised"),
            },
            Input::WorkloadDone {
                seq,
                done,
                observed,
            } => self.workload_done(seq, done, observed),
            Input::RollbackRequested { seq } => match self.st.wait {
                Wait::Gate { seq: Some(s), .. } if s == seq => {
                    self.rollback("a rollback webhook asked for rollback".into())
                }
                _ => self.ignore("stale rollback request"),
            },
            Input::HookFailed { hook, reason } => {
                let mut details = BTreeMap::new();
                details.insert("hook".into(), hook.as_str().to_owned());
                self.emit_with(
                    EventKind::HookFailed,
                    format!("{} hooks failed: {reason}", hook.as_str()),
                    details,
                );
            }
            Input::Command(c) => return self.command(c),
            Input::SpecChanged { generation } => self.spec_changed(generation),
        }
        Ok(())
    }

    fn ignore(&mut self, why: &'static str) {
        self.ignored = Some(why);
    }

    fn next_seq(&mut self) -> u64 {
        self.st.seq += 1;
        self.st.seq
    }

    fn emit(&mut self, kind: EventKind, reason: impl Into<String>) {
        self.emit_with(kind, reason, BTreeMap::new());
    }

    fn emit_with(
        &mut self,
        kind: EventKind,
        reason: impl Into<String>,
        details: BTreeMap<String, String>,
    ) {
        let reason = reason.into();
        self.st.message = reason.clone();
        let canary_weight = self.st.route.as_ref().map_or(0, |r| r.canary_weight);
        let mut details = details;
        if self.m.waves()
            && let Some(cluster) = self.m.spec.clusters.get(self.st.wave)
        {
            // Policy waves: every event names the wave it happened in.
            details.insert("cluster".into(), cluster.name.clone());
            details.insert(
                "wave".into(),
                format!("{} of {}", self.st.wave + 1, self.m.spec.clusters.len()),
            );
        }
        self.acts.push(Action::Emit(AuditEvent {
            kind,
            phase: self.st.phase,
            step: self.st.step,
            canary_weight,
            reason,
            details,
        }));
    }

    /// Schedules the next tick; while halted, never later than the progress deadline.
    fn schedule(&mut self, at: u64) {
        let at = match self.st.halted_since_ms {
            Some(h) if !self.st.phase.is_terminal() => {
                at.min(h.saturating_add(self.m.deadline_ms()))
            }
            _ => at,
        };
        self.st.next_tick_at_ms = Some(at);
        self.acts.push(Action::ScheduleTick { at_ms: at });
    }

    /// Halts (toward the progress deadline). The same halt at a later interval is emitted
    /// again for the audit trail, marked [`REPEATED`], so it is notified once.
    fn halt(&mut self, reason: String) {
        let repeated = self.st.halted_since_ms.is_some()
            && self.st.halt_reason.as_deref() == Some(reason.as_str());
        if self.st.halted_since_ms.is_none() {
            self.st.halted_since_ms = Some(self.now);
        }
        self.st.halt_reason = Some(reason.clone());
        self.emit_with(EventKind::Halted, reason, repeated_details(repeated));
    }

    fn clear_halt(&mut self) {
        self.st.halted_since_ms = None;
        self.st.halt_reason = None;
    }

    // ---- routes ----------------------------------------------------------------------------

    fn cookie(&self, canary_weight: u8, expire: bool) -> Option<CookieAffinity> {
        let sa = self.m.spec.analysis.session_affinity.as_ref()?;
        if self.m.plan.strategy != Strategy::Canary {
            return None;
        }
        let value = self.st.session_cookie.clone()?;
        if canary_weight == 0 && !expire {
            return None;
        }
        let max_age =
            i64::try_from(sa.max_age.unwrap_or(DEFAULT_SESSION_MAX_AGE)).unwrap_or(i64::MAX);
        Some(CookieAffinity {
            cookie_name: sa.cookie_name.clone(),
            cookie_value: value,
            max_age_seconds: if expire { -1 } else { max_age },
            primary_cookie_name: sa.primary_cookie_name.clone().filter(|_| !expire),
            primary_max_age_seconds: if sa.primary_cookie_name.is_some() && !expire {
                i64::try_from(self.m.interval_ms() / 1000)
                    .unwrap_or(i64::MAX)
                    .max(1)
            } else {
                0
            },
        })
    }

    /// Policy `waves`: the wave the next route moves. `None` (every cluster the same route) for
    /// other policies, for the first route to the primary and for a rollback, which moves every
    /// cluster back, the promoted ones too.
    fn route_wave(&self) -> Option<usize> {
        let everywhere = matches!(self.st.phase, Phase::Initializing | Phase::Failed);
        (self.m.waves() && !everywhere).then_some(self.st.wave)
    }

    /// Requests a route; when the data plane already serves exactly that, it counts as
    /// confirmed now.
    fn go_route(&mut self, canary: u8, mirror: u8, matches: Vec<MatchRule>, expire_cookie: bool) {
        let canary = canary.min(100);
        let mut desired = DesiredRoute {
            seq: 0,
            canary_weight: canary,
            primary_weight: 100 - canary,
            mirror_percent: mirror.min(100),
            matches,
            session_affinity: self.cookie(canary, expire_cookie),
            wave: self.route_wave(),
        };
        if self.st.route_confirmed
            && self
                .st
                .route
                .as_ref()
                .is_some_and(|r| r.same_split(&desired))
        {
            // Same split: the windows judging it go on where the last one ended.
            self.route_ready();
            return;
        }
        desired.seq = self.next_seq();
        self.st.wait = Wait::Route {
            seq: desired.seq,
            sent_at_ms: self.now,
        };
        self.st.route = Some(desired.clone());
        self.st.route_confirmed = false;
        self.st.route_attempts = 0;
        self.acts.push(Action::ApplyRoute(desired));
        self.schedule(self.now + ROUTE_ACK_TIMEOUT_MS);
    }

    fn route_confirmed(&mut self, seq: u64, observed: ObservedSplit) {
        let Wait::Route { seq: want, .. } = self.st.wait else {
            return self.ignore("no route outstanding");
        };
        if want != seq {
            return self.ignore("stale route ack");
        }
        let Some(route) = self.st.route.clone() else {
            return self.ignore("no route outstanding");
        };
        if observed.canary_weight != route.canary_weight
            || observed.primary_weight != route.primary_weight
            || observed.mirror_percent != route.mirror_percent
        {
            return self.route_failed(
                seq,
                &format!(
                    "data plane serves {}/{} (mirror {}), wanted {}/{} (mirror {})",
                    observed.canary_weight,
                    observed.primary_weight,
                    observed.mirror_percent,
                    route.canary_weight,
                    route.primary_weight,
                    route.mirror_percent
                ),
            );
        }
        self.st.route_confirmed = true;
        self.st.route_attempts = 0;
        self.st.canary_weight = observed.canary_weight;
        self.st.primary_weight = observed.primary_weight;
        self.st.mirror_percent = observed.mirror_percent;
        if self
            .st
            .halt_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("route"))
        {
            self.clear_halt();
        }
        // A new split is served: its first window starts now.
        self.st.window_start_ms = Some(self.now);
        self.route_ready();
    }

    /// Every ingress's ack of route (or `Finalise`) `seq`: each must serve the split asked for;
    /// the first that does not fails the route, named.
    fn ingresses_confirmed(&mut self, seq: u64, ingresses: Vec<IngressSplit>) {
        // The finalising route: the canary serves everything as the primary.
        let finalised = ObservedSplit {
            canary_weight: 0,
            primary_weight: 100,
            mirror_percent: 0,
        };
        let route = match (&self.st.wait, &self.st.route) {
            (Wait::Route { seq: s, .. }, Some(route)) if *s == seq => Some(route.clone()),
            (Wait::Finalise { seq: s, .. }, _) if *s == seq => None,
            _ => return self.ignore("stale route ack"),
        };
        // What ingress `label` must serve: under policy waves, its cluster's part of the route.
        let want_of = |label: &str| match &route {
            Some(route) => match self.m.cluster_of(label) {
                Some(cluster) => route.split_for_cluster(cluster),
                None => route.split_for_cluster(route.wave.unwrap_or(0)),
            },
            None => finalised,
        };
        let want = route
            .as_ref()
            .map_or(finalised, |r| r.split_for_cluster(r.wave.unwrap_or(0)));
        if ingresses.is_empty() {
            return self.route_failed(seq, "no ingress acknowledged it");
        }
        if let Some((off, want)) = ingresses
            .iter()
            .map(|i| (i, want_of(&i.ingress)))
            .find(|(i, want)| i.observed != *want)
        {
            let reason = format!(
                "ingress {:?} serves {}/{} (mirror {}), wanted {}/{} (mirror {})",
                off.ingress,
                off.observed.canary_weight,
                off.observed.primary_weight,
                off.observed.mirror_percent,
                want.canary_weight,
                want.primary_weight,
                want.mirror_percent
            );
            return match self.st.wait {
                Wait::Finalise { .. } => self.ignore("finalising route not served everywhere"),
                _ => self.route_failed(seq, &reason),
            };
        }
        self.st.ingresses = ingresses;
        match self.st.wait {
            Wait::Finalise { .. } => self.succeed(),
            _ => self.route_confirmed(seq, want),
        }
    }

    fn route_failed(&mut self, seq: u64, reason: &str) {
        match self.st.wait {
            Wait::Route { seq: want, .. } if want == seq => {}
            _ => return self.ignore("stale route failure"),
        }
        // The halt counts toward the progress deadline; the next tick sends the route again,
        // later with each failure (a rolled-back rollout whose agent is gone too).
        if !self.st.phase.is_terminal() {
            self.halt(format!("route {seq} not applied: {reason}"));
        }
        self.st.route_attempts = self.st.route_attempts.saturating_add(1);
        let retry_at = self.now + route_retry_ms(self.st.route_attempts);
        // This send was answered: the ack timeout counts from the next one.
        self.st.wait = Wait::Route {
            seq,
            sent_at_ms: retry_at,
        };
        self.schedule(retry_at);
    }

    /// The requested route is served; decide what the phase does next.
    fn route_ready(&mut self) {
        self.st.step_started_at_ms = Some(self.now);
        let workload = self.m.spec.is_workload();
        match self.st.phase {
            Phase::Initializing => {
                self.st.phase = Phase::Initialized;
                self.st.wait = Wait::Idle;
                self.emit(EventKind::Initialized, "primary serves 100%");
                if workload && self.primary_runs_canary_revision() {
                    // The primary was created from the target: nothing to roll out yet.
                    self.st.next_tick_at_ms = None;
                    return;
                }
                self.start_run();
            }
            // Workload mode: the primary runs the new revision; traffic moves back to it (in
            // steps of `stepWeightPromotion`, one per interval); at 100 % the canary goes to
            // zero. After a rollback, the same at once.
            Phase::Finalising if workload && self.st.canary_weight > 0 => {
                self.st.wait = Wait::Interval;
                self.schedule(self.now + self.m.interval_ms());
            }
            Phase::Finalising | Phase::Failed if workload => {
                self.workload(WorkloadOp::ScaleCanaryDown);
            }
            Phase::Progressing => self.step_entered(),
            Phase::Promoting => {
                if self.st.promotion_step + 1 >= self.m.plan.promotion.weights.len() {
                    self.promoted();
                } else {
                    self.st.wait = Wait::Interval;
                    self.schedule(self.now + self.m.interval_ms());
                }
            }
            _ => {
                self.st.wait = Wait::Idle;
                self.st.next_tick_at_ms = None;
            }
        }
    }

    // ---- run lifecycle ---------------------------------------------------------------------

    fn start_run(&mut self) {
        self.st.gate_hold = None;
        self.st.run += 1;
        self.st.failed_checks = 0;
        self.st.iterations_done = 0;
        self.st.passed_steps.clear();
        self.st.gates_open.clear();
        self.st.step = 0;
        self.st.promotion_step = 0;
        self.st.weight_hold = None;
        self.st.paused_from = None;
        self.st.finished_at_ms = None;
        self.st.started_at_ms = Some(self.now);
        // This run's windows judge this run's canary only.
        self.st.window_start_ms = None;
        self.st.check_returns.clear();
        self.st.return_weight = None;
        self.st.undecided_since_ms = None;
        self.st.session_cookie = Some(format!("{:016x}", self.random));
        self.st.wave = 0;
        self.clear_halt();
        if self.m.has_hook(WebhookType::ConfirmRollout) {
            self.check_gate(WebhookType::ConfirmRollout);
        } else {
            self.after_confirm_rollout();
        }
    }

    fn after_confirm_rollout(&mut self) {
        if self.m.spec.is_workload() {
            self.workload(WorkloadOp::ScaleCanaryUp);
        } else {
            self.after_canary_ready();
        }
    }

    fn after_canary_ready(&mut self) {
        if self.m.spec.skip_analysis {
            self.emit(
                EventKind::AnalysisSkipped,
                "skipAnalysis: promoting without analysis",
            );
            return self.start_promoting();
        }
        if self.m.has_hook(WebhookType::PreRollout) {
            self.check_gate(WebhookType::PreRollout);
        } else {
            self.begin_progress();
        }
    }

    fn begin_progress(&mut self) {
        self.st.phase = Phase::Progressing;
        self.emit(EventKind::Progressing, "rollout started");
        self.enter_step(0);
    }

    fn enter_step(&mut self, i: usize) {
        // A step entered anew (resumed, skipped to) reports its own hold.
        self.st.gate_hold = None;
        self.st.undecided_since_ms = None;
        let Some(next) = self.m.plan.step(i).map(|s| s.canary_weight) else {
            return self.begin_promotion();
        };
        self.st.step = i;
        let current = self.st.route.as_ref().map_or(0, |r| r.canary_weight);
        if next > current && self.m.has_hook(WebhookType::ConfirmTrafficIncrease) {
            self.check_gate(WebhookType::ConfirmTrafficIncrease);
        } else {
            self.step_route();
        }
    }

    fn step_route(&mut self) {
        self.st.gate_hold = None;
        let Some(s) = self.m.plan.step(self.st.step) else {
            return self.begin_promotion();
        };
        let (canary, mirror, matches) = (
            self.served_weight(&s),
            if s.mirror {
                s.mirror_weight.unwrap_or(100)
            } else {
                0
            },
            s.matches.clone(),
        );
        let mut details = BTreeMap::new();
        details.insert("canaryWeight".into(), canary.to_string());
        details.insert("primaryWeight".into(), (100 - canary).to_string());
        if mirror > 0 {
            details.insert("mirrorPercent".into(), mirror.to_string());
        }
        self.emit_with(
            EventKind::StepStarted,
            format!(
                "step {} of {}: canary {canary}%",
                self.st.step + 1,
                self.m.plan.step_count()
            ),
            details,
        );
        self.go_route(canary, mirror, matches, false);
    }

    /// The canary weight step `s` (the current one) serves: its planned weight, unless a check
    /// sent the run back with a lower one (served from the stage until the `setWeight` after
    /// the stage's first, which it replaces).
    fn served_weight(&mut self, s: &PlannedStep) -> u8 {
        let Some((weight, replaced)) = self.st.return_weight else {
            return s.canary_weight;
        };
        let sets_weight = s
            .source
            .and_then(|i| self.m.spec.steps.as_ref().and_then(|steps| steps.get(i)))
            .is_some_and(|step| matches!(step, Step::SetWeight(_)));
        match replaced {
            _ if !sets_weight => weight,
            None => {
                self.st.return_weight = Some((weight, Some(self.st.step)));
                weight
            }
            Some(step) if step == self.st.step => weight,
            Some(_) => {
                self.st.return_weight = None;
                s.canary_weight
            }
        }
    }

    /// The current step's `check`, if it is a check step.
    fn current_check(&self) -> Option<CheckStep> {
        let source = self.m.plan.step(self.st.step)?.source?;
        match self.m.spec.steps.as_ref()?.get(source)? {
            Step::Check(c) => Some(c.clone()),
            _ => None,
        }
    }

    fn run_check(&mut self) {
        let Some(check) = self.current_check() else {
            return self.advance();
        };
        let webhook = check.webhook();
        let answer_timeout = self.m.answer_timeout_for(std::slice::from_ref(&webhook));
        let seq = self.next_seq();
        self.st.wait = Wait::Check { seq: Some(seq) };
        self.acts.push(Action::RunCheck { seq, webhook });
        self.schedule(self.now + answer_timeout);
    }

    fn check_unanswered(&mut self, reason: &str) {
        let name = self.current_check().map(|c| c.name).unwrap_or_default();
        // No answer is a halt (toward the progress deadline), never a failed check.
        self.halt(format!("check {name}: no answer: {reason}"));
        self.st.wait = Wait::Check { seq: None };
        self.schedule(self.now + self.m.interval_ms());
    }

    fn check_result(&mut self, seq: u64, passed: bool, reason: &str) {
        match self.st.wait {
            Wait::Check { seq: Some(s) } if s == seq && self.st.phase == Phase::Progressing => {}
            _ => return self.ignore("stale check result"),
        }
        let Some(check) = self.current_check() else {
            return self.ignore("not a check step");
        };
        let name = &check.name;
        if passed {
            self.clear_halt();
            self.emit(EventKind::AnalysisPassed, format!("check {name} passed"));
            return self.advance();
        }
        let why = if reason.is_empty() { "failed" } else { reason };
        let Some(back) = &check.on_failure else {
            return self.rollback(format!("check {name} failed: {why}"));
        };
        let returns = self.st.check_returns.get(name).copied().unwrap_or(0) + 1;
        if returns > back.max_returns() {
            return self.rollback(format!(
                "check {name} failed: {why}; it already sent the rollout back {} time(s)",
                back.max_returns()
            ));
        }
        let Some(stage) = self.stage_step(&back.go_to) else {
            return self.rollback(format!(
                "check {name} failed: {why}; no stage {:?}",
                back.go_to
            ));
        };
        self.st.check_returns.insert(name.clone(), returns);
        self.st.return_weight = Some((back.set_weight, None));
        let mut details = BTreeMap::new();
        details.insert("check".into(), name.clone());
        details.insert("stage".into(), back.go_to.clone());
        self.emit_with(
            EventKind::CheckFailed,
            format!(
                "check {name} failed: {why}; back to stage {} at {}% (return {returns} of {})",
                back.go_to,
                back.set_weight,
                back.max_returns()
            ),
            details,
        );
        self.st.step = stage;
        self.step_route();
    }

    /// The plan step of the `stage` named `name`.
    fn stage_step(&self, name: &str) -> Option<usize> {
        let steps = self.m.spec.steps.as_ref()?;
        let source = steps
            .iter()
            .position(|s| matches!(s, Step::Stage(n) if n == name))?;
        self.m.plan.steps().position(|s| s.source == Some(source))
    }

    /// The step's route is confirmed: hold, observe or move on.
    fn step_entered(&mut self) {
        let Some(s) = self.m.plan.step(self.st.step) else {
            return self.begin_promotion();
        };
        match s.hold {
            Some(Hold::Pause { duration: Some(d) }) => {
                let until = self.now + d.as_millis();
                self.st.wait = Wait::Pause {
                    until_ms: Some(until),
                };
                self.schedule(until);
            }
            Some(Hold::Pause { duration: None }) => {
                self.st.wait = Wait::Pause { until_ms: None };
                self.st.next_tick_at_ms = None;
                self.emit(
                    EventKind::Paused,
                    "pause step: waiting for resume or promote",
                );
            }
            Some(Hold::Approval) => {
                self.st.wait = Wait::Approval;
                self.st.next_tick_at_ms = None;
                self.emit(EventKind::Paused, "approval step: waiting for approve");
            }
            Some(Hold::Check) => self.run_check(),
            None if s.analysis => {
                self.st.wait = Wait::Interval;
                self.schedule(self.now + self.m.interval_ms());
            }
            None => self.advance(),
        }
    }

    fn advance(&mut self) {
        self.enter_step(self.st.step + 1);
    }

    fn request_analysis(&mut self) {
        let seq = self.next_seq();
        let (request, answer_timeout) = self.analysis_request(seq, self.now);
        self.st.wait = Wait::Verdict {
            seq,
            requested_at_ms: self.now,
        };
        self.acts.push(Action::RequestAnalysis(request));
        self.schedule(self.now + answer_timeout);
    }

    /// The analysis request `seq` of the current step, for the window ending at `window_end`,
    /// and how long its answer may take.
    fn analysis_request(&self, seq: u64, window_end: u64) -> (AnalysisRequest, u64) {
        // Held by a closed confirm-traffic-increase gate, the split served is the step before
        // the one the gate holds back.
        let step = match self.st.gate_hold {
            Some(WebhookType::ConfirmTrafficIncrease) => self.st.step.saturating_sub(1),
            _ => self.st.step,
        };
        let metrics = match self
            .m
            .plan
            .step(step)
            .and_then(|s| s.source)
            .and_then(|i| self.m.spec.steps.as_ref().and_then(|s| s.get(i)))
        {
            Some(Step::Analysis(a)) if a.metrics.is_some() => a.metrics.clone().unwrap_or_default(),
            _ => self.m.spec.analysis.metrics.clone(),
        };
        let mut webhooks = self.m.webhooks(WebhookType::Rollout);
        webhooks.extend(self.m.webhooks(WebhookType::Rollback));
        let answer_timeout = self.m.answer_timeout_for(&webhooks);
        let window_start = self
            .st
            .window_start_ms
            .or(self.st.step_started_at_ms)
            .unwrap_or(window_end);
        let request = AnalysisRequest {
            seq,
            step,
            window_start_ms: window_start,
            window_end_ms: window_end,
            canary_weight: self.st.route.as_ref().map_or(0, |r| r.canary_weight),
            metrics,
            webhooks,
        };
        (request, answer_timeout)
    }

    /// After a takeover, sends again what the rollout waits on (a route, a workload operation,
    /// the finalise, a gate's hooks, a check, a step's analysis), exactly as it was: the same
    /// seq, so the same idempotency key (an analyzer still working on it shares the call), and
    /// the same window. Its deadline stays as it was. The previous owner's answer can never
    /// reach the new one, so without this the rollout would sit until that deadline (for a
    /// route, [`ROUTE_ACK_TIMEOUT_MS`]).
    fn reissue(&mut self) {
        match self.st.wait.clone() {
            Wait::Route { .. } => {
                if let Some(route) = self.st.route.clone() {
                    self.acts.push(Action::ApplyRoute(route));
                }
            }
            Wait::Workload { op, seq, .. } => self.acts.push(Action::Workload { seq, op }),
            Wait::Finalise { seq, .. } => self.acts.push(Action::Finalise { seq }),
            Wait::Gate {
                gate,
                seq: Some(seq),
            } => {
                let webhooks = self.gate_webhooks(gate);
                self.acts.push(Action::CheckGate {
                    seq,
                    gate,
                    webhooks,
                });
            }
            Wait::Check { seq: Some(seq) } => {
                if let Some(check) = self.current_check() {
                    let webhook = check.webhook();
                    self.acts.push(Action::RunCheck { seq, webhook });
                }
            }
            Wait::Verdict {
                seq,
                requested_at_ms,
            } => {
                let (request, _) = self.analysis_request(seq, requested_at_ms);
                self.acts.push(Action::RequestAnalysis(request));
            }
            _ => {}
        }
    }

    /// Observe the same route for another interval; the next window starts where the last
    /// judged one ended (or, when none was judged, where the unjudged one started).
    fn observe_again(&mut self) {
        self.st.wait = Wait::Interval;
        self.schedule(self.now + self.m.interval_ms());
    }

    fn verdict(&mut self, v: Verdict) {
        let window_end = match self.st.wait {
            Wait::Verdict {
                seq,
                requested_at_ms,
            } if seq == v.seq
                && matches!(self.st.phase, Phase::Progressing | Phase::WaitingPromotion) =>
            {
                requested_at_ms
            }
            _ => return self.ignore("stale verdict"),
        };
        // A measured window is done; an unmeasured one (error, inconclusive) is judged again,
        // longer, so no request of the split goes unjudged.
        if matches!(v.outcome, Outcome::Pass | Outcome::Fail) {
            self.st.window_start_ms = Some(window_end);
        }
        let waiting_promotion = self.st.phase == Phase::WaitingPromotion;
        let not_passed: Vec<String> = v
            .checks
            .iter()
            .filter(|c| c.outcome != Outcome::Pass)
            .map(|c| c.name.clone())
            .collect();
        self.st.last_verdict = Some(VerdictSummary {
            seq: v.seq,
            step: self.st.step,
            outcome: v.outcome,
            not_passed: not_passed.clone(),
            at_ms: self.now,
        });
        let what = if not_passed.is_empty() {
            String::new()
        } else {
            format!(" ({})", not_passed.join(", "))
        };
        if v.rollback_requested {
            return self.rollback("a rollback webhook asked for rollback".into());
        }
        match v.outcome {
            // The last analysis of the walk, with a judge that has not decided: held.
            Outcome::Pass
                if v.undecided
                    && (waiting_promotion || self.ends_walk())
                    && self.hold_undecided() => {}
            // Held at max weight: a pass only lets the gate be asked again; it never promotes.
            Outcome::Pass if waiting_promotion => {
                self.clear_halt();
                self.emit(
                    EventKind::AnalysisPassed,
                    "analysis at max weight passed: asking confirm-promotion",
                );
                self.check_gate(WebhookType::ConfirmPromotion);
            }
            // Held below the next weight (as Flagger: analysed every interval while the gate
            // is closed): a pass asks the gate again; only the gate moves the weight up.
            Outcome::Pass if self.st.gate_hold == Some(WebhookType::ConfirmTrafficIncrease) => {
                self.clear_halt();
                let weight = self.st.route.as_ref().map_or(0, |r| r.canary_weight);
                self.emit(
                    EventKind::AnalysisPassed,
                    format!("analysis at {weight}% passed: asking confirm-traffic-increase"),
                );
                self.check_gate(WebhookType::ConfirmTrafficIncrease);
            }
            Outcome::Pass => {
                self.clear_halt();
                self.st.iterations_done += 1;
                self.st.passed_steps.push(self.st.step);
                if v.early_promote && self.m.spec.analysis.early_promotion {
                    self.emit(
                        EventKind::AnalysisPassed,
                        format!(
                            "step {} analysis passed decisively: early promotion",
                            self.st.step + 1
                        ),
                    );
                    return self.begin_promotion();
                }
                self.emit(
                    EventKind::AnalysisPassed,
                    format!("step {} analysis passed", self.st.step + 1),
                );
                self.advance();
            }
            Outcome::Fail => {
                self.st.failed_checks += 1;
                let threshold = self.m.spec.analysis.threshold();
                let mut details = BTreeMap::new();
                details.insert("failedChecks".into(), self.st.failed_checks.to_string());
                details.insert("threshold".into(), threshold.to_string());
                self.emit_with(
                    EventKind::CheckFailed,
                    format!(
                        "check failed{what}: {} of {threshold}",
                        self.st.failed_checks
                    ),
                    details,
                );
                if v.fail_fast {
                    self.rollback(format!("judge failed fast{what}"));
                } else if self.st.failed_checks >= threshold {
                    self.rollback(format!(
                        "{} failed checks reached threshold {threshold}",
                        self.st.failed_checks
                    ));
                } else {
                    self.observe_again();
                }
            }
            Outcome::Inconclusive | Outcome::Error => {
                let kind = if v.outcome == Outcome::Error {
                    "error"
                } else {
                    "inconclusive"
                };
                self.halt(format!("analysis {kind}{what}"));
                self.observe_again();
            }
        }
    }

    /// Whether a pass of the current step ends the walk: no step follows it, so the next thing
    /// is promotion (or, with `iterations`, the last iteration).
    fn ends_walk(&self) -> bool {
        self.st.gate_hold.is_none() && self.m.plan.step(self.st.step + 1).is_none()
    }

    /// Holds the end of the walk for an undecided judge: analysed again every interval for up
    /// to `inconclusiveHold`, then `onInconclusive` — a rollback, or the pass goes on. Returns
    /// whether the verdict was handled here (held or rolled back).
    ///
    /// The hold is not a halt toward the progress deadline, which would roll back whatever the
    /// spec chose: it has its own bound, and a decided pass or fail ends it.
    fn hold_undecided(&mut self) -> bool {
        let since = *self.st.undecided_since_ms.get_or_insert(self.now);
        let hold = self.m.spec.analysis.inconclusive_hold();
        let choice = self.m.spec.analysis.on_inconclusive();
        if self.now.saturating_sub(since) < hold.as_millis() {
            let reason = format!(
                "the judge has not decided at the end of the walk: analysed again for up to \
                 {hold} (inconclusiveHold), then {} (onInconclusive)",
                choice.as_str()
            );
            let repeated = self.st.halt_reason.as_deref() == Some(reason.as_str());
            self.st.halted_since_ms = None;
            self.st.halt_reason = Some(reason.clone());
            self.emit_with(EventKind::Halted, reason, repeated_details(repeated));
            self.observe_again();
            return true;
        }
        self.st.undecided_since_ms = None;
        match choice {
            OnInconclusive::Rollback => {
                self.rollback(format!(
                    "the judge did not decide within {hold} (inconclusiveHold): not enough \
                     evidence is not a pass (onInconclusive: rollback)"
                ));
                true
            }
            OnInconclusive::Promote => {
                self.emit(
                    EventKind::AnalysisPassed,
                    format!(
                        "the judge did not decide within {hold} (inconclusiveHold): the \
                         thresholdRange passes decide (onInconclusive: promote)"
                    ),
                );
                false
            }
        }
    }

    fn analysis_timeout(&mut self) {
        self.halt("analysis: no verdict in time".into());
        self.observe_again();
    }

    // ---- gates -----------------------------------------------------------------------------

    fn check_gate(&mut self, gate: WebhookType) {
        let seq = self.next_seq();
        self.st.wait = Wait::Gate {
            gate,
            seq: Some(seq),
        };
        let webhooks = self.gate_webhooks(gate);
        let answer_timeout = self.m.answer_timeout_for(&webhooks);
        self.acts.push(Action::CheckGate {
            seq,
            gate,
            webhooks,
        });
        self.schedule(self.now + answer_timeout);
    }

    /// The hooks a `gate` check calls.
    fn gate_webhooks(&self, gate: WebhookType) -> Vec<Webhook> {
        let mut webhooks = self.m.webhooks(gate);
        // Flagger polls rollback hooks in its Waiting phase too: a 2xx rolls back a rollout
        // still held by a closed confirm-rollout gate.
        if gate == WebhookType::ConfirmRollout
            && self.st.phase == Phase::Waiting
            && self.m.has_hook(WebhookType::Rollback)
        {
            webhooks.extend(self.m.webhooks(WebhookType::Rollback));
        }
        webhooks
    }

    fn gate_result(&mut self, seq: u64, gate: WebhookType, open: bool) {
        match self.st.wait {
            Wait::Gate {
                gate: g,
                seq: Some(s),
            } if s == seq && g == gate => {}
            _ => return self.ignore("stale gate result"),
        }
        if open {
            self.gate_open(gate, "webhooks answered 2xx");
        } else {
            self.gate_closed(gate, "webhooks refused");
        }
    }

    fn gate_unanswered(&mut self, seq: u64, gate: WebhookType, reason: &str) {
        match self.st.wait {
            Wait::Gate {
                gate: g,
                seq: Some(s),
            } if s == seq && g == gate => {}
            _ => return self.ignore("stale gate result"),
        }
        // No answer is a halt (toward the progress deadline), never a refusal.
        self.halt(format!("{} gate: no answer: {reason}", gate.as_str()));
        self.st.wait = Wait::Gate { gate, seq: None };
        self.schedule(self.now + self.m.interval_ms());
    }

    fn gate_open(&mut self, gate: WebhookType, why: &str) {
        self.clear_halt();
        self.st.gate_hold = None;
        if self.st.phase == Phase::Waiting {
            self.st.phase = Phase::Initialized;
        }
        self.st.gates_open.push(gate);
        self.emit(
            EventKind::GateOpened,
            format!("{} gate open: {why}", gate.as_str()),
        );
        match gate {
            WebhookType::ConfirmRollout => self.after_confirm_rollout(),
            WebhookType::PreRollout => self.begin_progress(),
            WebhookType::ConfirmTrafficIncrease => self.step_route(),
            WebhookType::ConfirmPromotion => self.start_promoting(),
            _ => {}
        }
    }

    fn gate_closed(&mut self, gate: WebhookType, why: &str) {
        self.st.wait = Wait::Gate { gate, seq: None };
        let reason = format!("{} gate closed: {why}", gate.as_str());
        match gate {
            WebhookType::ConfirmRollout => {
                if self.st.phase != Phase::Waiting {
                    self.st.phase = Phase::Waiting;
                    self.emit(EventKind::Waiting, reason);
                }
            }
            WebhookType::ConfirmPromotion => {
                self.hold_at_gate(gate, reason);
                // Observe the held canary for an interval; the tick analyses, then asks again.
                self.observe_again();
                return;
            }
            // As Flagger: not a halt (no deadline); the canary stays at its weight and is
            // analysed every interval (failed checks count, rollback hooks are polled), and
            // each pass asks the gate again. Before the first step nothing is served to judge.
            WebhookType::ConfirmTrafficIncrease => {
                self.hold_at_gate(gate, reason);
                let served = self
                    .st
                    .step
                    .checked_sub(1)
                    .and_then(|i| self.m.plan.step(i))
                    .is_some_and(|s| s.analysis);
                if served && self.st.route_confirmed {
                    self.observe_again();
                    return;
                }
            }
            WebhookType::PreRollout => {
                self.st.failed_checks += 1;
                let threshold = self.m.spec.analysis.threshold();
                self.emit(
                    EventKind::CheckFailed,
                    format!("{reason}: {} of {threshold}", self.st.failed_checks),
                );
                if self.st.failed_checks >= threshold {
                    return self.rollback(format!("pre-rollout checks failed {threshold} times"));
                }
            }
            _ => self.halt(reason),
        }
        self.schedule(self.now + self.m.interval_ms());
    }

    /// A closed confirm gate holds the canary: reported at the first refusal, marked
    /// [`REPEATED`] at the next ones of the same hold.
    fn hold_at_gate(&mut self, gate: WebhookType, reason: String) {
        let repeated = self.st.gate_hold == Some(gate);
        self.st.gate_hold = Some(gate);
        self.emit_with(EventKind::GateClosed, reason, repeated_details(repeated));
    }

    // ---- promotion and the end -------------------------------------------------------------

    fn begin_promotion(&mut self) {
        self.st.step = self.m.plan.step_count().saturating_sub(1);
        if self.m.has_hook(WebhookType::ConfirmPromotion) {
            self.st.phase = Phase::WaitingPromotion;
            self.emit(EventKind::WaitingPromotion, "waiting for confirm-promotion");
            self.check_gate(WebhookType::ConfirmPromotion);
        } else {
            self.start_promoting();
        }
    }

    fn start_promoting(&mut self) {
        self.st.gate_hold = None;
        self.st.phase = Phase::Promoting;
        self.st.promotion_step = 0;
        if self.m.spec.is_workload() {
            // Flagger's order: the primary gets the canary's template first; traffic moves
            // back to it once its rollout finished.
            self.emit(
                EventKind::Promoting,
                "promoting: copying the canary's template to the primary",
            );
            return self.workload(WorkloadOp::PromotePrimary);
        }
        self.emit(EventKind::Promoting, "promoting the canary");
        self.promote_route();
    }

    // ---- workload mode ---------------------------------------------------------------------

    /// True when the spec says the primary already runs the canary's revision.
    fn primary_runs_canary_revision(&self) -> bool {
        let spec = &self.m.spec;
        spec.canary.revision.is_some() && spec.canary.revision == spec.primary.revision
    }

    /// Workload mode, Finalising: the next step of traffic back to the (updated) primary.
    fn route_back(&mut self) {
        let current = self.st.route.as_ref().map_or(0, |r| r.canary_weight);
        let next = current.saturating_sub(self.m.spec.analysis.step_weight_promotion());
        self.go_route(next, 0, Vec::new(), next == 0);
    }

    fn workload(&mut self, op: WorkloadOp) {
        let seq = self.next_seq();
        self.st.wait = Wait::Workload {
            op,
            seq,
            sent_at_ms: self.now,
        };
        self.acts.push(Action::Workload { seq, op });
        self.schedule(self.now + ROUTE_ACK_TIMEOUT_MS);
    }

    fn workload_done(&mut self, seq: u64, done: bool, observed: String) {
        let Wait::Workload { op, seq: want, .. } = self.st.wait else {
            return self.ignore("no workload operation outstanding");
        };
        if want != seq {
            return self.ignore("stale workload answer");
        }
        if !done {
            // Not there yet: a halt (it counts toward the progress deadline), asked again soon.
            if !self.st.phase.is_terminal() {
                self.halt(format!("{}: {observed}", op.as_str()));
            }
            return self.schedule(self.now + WORKLOAD_POLL_MS);
        }
        if self
            .st
            .halt_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(op.as_str()))
        {
            self.clear_halt();
        }
        match op {
            // Workload mode promotes only a canary that became ready, skipAnalysis or not.
            WorkloadOp::ScaleCanaryUp => self.after_canary_ready(),
            WorkloadOp::PromotePrimary => {
                self.st.phase = Phase::Finalising;
                self.emit(
                    EventKind::Finalising,
                    format!("primary runs the canary's revision ({observed}): routing back to it"),
                );
                self.route_back();
            }
            WorkloadOp::ScaleCanaryDown if self.st.phase == Phase::Finalising => self.succeed(),
            WorkloadOp::ScaleCanaryDown => {
                self.st.wait = Wait::Idle;
                self.st.next_tick_at_ms = None;
            }
        }
    }

    fn promote_route(&mut self) {
        let weights = &self.m.plan.promotion.weights;
        let i = self.st.promotion_step.min(weights.len().saturating_sub(1));
        let w = weights.get(i).copied().unwrap_or(100);
        let last = i + 1 >= weights.len();
        self.go_route(w, 0, Vec::new(), last);
    }

    /// The canary serves everything (in the current wave's cluster, under policy `waves`):
    /// the next wave starts, or, after the last, every cluster is finalised.
    fn promoted(&mut self) {
        if self.m.waves() && self.st.wave + 1 < self.m.spec.clusters.len() {
            self.next_wave();
        } else {
            self.finalise();
        }
    }

    /// Policy `waves`: the current wave's cluster is promoted (it keeps serving the canary
    /// fully); the next cluster starts at its first step, judged alone, with the counts of a
    /// new walk. Gates before the walk (`confirm-rollout`, `pre-rollout`) were passed once
    /// for the rollout; each wave's steps and promotion ask theirs.
    fn next_wave(&mut self) {
        let done = self.m.spec.clusters[self.st.wave].name.clone();
        self.st.wave += 1;
        self.st.failed_checks = 0;
        self.st.iterations_done = 0;
        self.st.passed_steps.clear();
        self.st.promotion_step = 0;
        self.st.gate_hold = None;
        self.st.window_start_ms = None;
        self.st.check_returns.clear();
        self.st.return_weight = None;
        self.st.undecided_since_ms = None;
        self.clear_halt();
        let next = &self.m.spec.clusters[self.st.wave].name;
        let mut details = BTreeMap::new();
        details.insert("promotedCluster".into(), done.clone());
        self.st.phase = Phase::Progressing;
        self.emit_with(
            EventKind::Progressing,
            format!(
                "wave {} of {}: cluster {done} promoted, cluster {next} starts",
                self.st.wave + 1,
                self.m.spec.clusters.len()
            ),
            details,
        );
        self.enter_step(0);
    }

    fn finalise(&mut self) {
        self.st.phase = Phase::Finalising;
        let seq = self.next_seq();
        self.st.wait = Wait::Finalise {
            seq,
            sent_at_ms: self.now,
        };
        self.emit(EventKind::Finalising, "the canary becomes the primary");
        self.acts.push(Action::Finalise { seq });
        self.schedule(self.now + self.m.answer_timeout_ms());
    }

    fn succeed(&mut self) {
        self.st.phase = Phase::Succeeded;
        self.st.wait = Wait::Idle;
        self.st.next_tick_at_ms = None;
        self.st.finished_at_ms = Some(self.now);
        self.clear_halt();
        self.emit(EventKind::Succeeded, "promoted");
        self.post_rollout();
    }

    fn post_rollout(&mut self) {
        if self.m.has_hook(WebhookType::PostRollout) {
            self.acts.push(Action::RunHooks {
                hook: WebhookType::PostRollout,
                webhooks: self.m.webhooks(WebhookType::PostRollout),
            });
        }
    }

    /// Back to 100 % primary; phase Failed.
    fn rollback(&mut self, reason: String) {
        self.st.gate_hold = None;
        self.st.return_weight = None;
        self.st.phase = Phase::Failed;
        self.st.paused_from = None;
        self.st.weight_hold = None;
        self.st.finished_at_ms = Some(self.now);
        self.clear_halt();
        // The event announces the split it asks for (all traffic back on the primary), as a
        // step's event announces its split; `step` says where it failed.
        let mut details = BTreeMap::new();
        details.insert("canaryWeight".into(), "0".into());
        self.emit_with(EventKind::RolledBack, reason, details);
        if self.m.spec.analysis.has_webhook(WebhookType::Rollback) {
            self.acts.push(Action::RunHooks {
                hook: WebhookType::Rollback,
                webhooks: self.m.webhooks(WebhookType::Rollback),
            });
        }
        self.post_rollout();
        self.st.wait = Wait::Idle;
        self.st.next_tick_at_ms = None;
        self.go_route(0, 0, Vec::new(), true);
    }

    // ---- time ------------------------------------------------------------------------------

    fn tick(&mut self) {
        if !self.st.phase.is_terminal()
            && self.st.phase != Phase::Paused
            && let Some(h) = self.st.halted_since_ms
            && self.now.saturating_sub(h) >= self.m.deadline_ms()
        {
            let why = self.st.halt_reason.clone().unwrap_or_default();
            return self.rollback(format!(
                "halted longer than progressDeadlineSeconds ({}s): {why}",
                self.m.spec.progress_deadline_seconds()
            ));
        }
        if self.st.phase == Phase::Initializing && self.st.wait == Wait::Idle {
            return self.go_route(0, 0, Vec::new(), false);
        }
        if self.st.next_tick_at_ms.is_none_or(|t| self.now < t) {
            return self.ignore("not due");
        }
        match self.st.wait.clone() {
            Wait::Idle | Wait::Approval | Wait::Pause { until_ms: None } => {
                self.st.next_tick_at_ms = None;
            }
            Wait::Route { seq, sent_at_ms } => {
                if self.now.saturating_sub(sent_at_ms) >= ROUTE_ACK_TIMEOUT_MS {
                    self.st.route_attempts = self.st.route_attempts.saturating_add(1);
                    if !self.st.phase.is_terminal() {
                        self.halt(format!("route {seq} not confirmed by every ingress"));
                    }
                }
                // Level-triggered: send the same route again.
                if let Some(r) = self.st.route.clone() {
                    self.acts.push(Action::ApplyRoute(r));
                }
                self.st.wait = Wait::Route {
                    seq,
                    sent_at_ms: self.now,
                };
                let wait = ROUTE_ACK_TIMEOUT_MS.max(route_retry_ms(self.st.route_attempts));
                self.schedule(self.now + wait);
            }
            Wait::Interval => match self.st.phase {
                // WaitingPromotion: as in Flagger, a canary held at max weight by a closed
                // confirm-promotion gate is still analysed every interval.
                Phase::Progressing | Phase::WaitingPromotion => self.request_analysis(),
                Phase::Promoting => {
                    self.st.promotion_step += 1;
                    self.promote_route();
                }
                Phase::Finalising if self.m.spec.is_workload() => self.route_back(),
                _ => self.st.next_tick_at_ms = None,
            },
            Wait::Verdict { .. } => self.analysis_timeout(),
            Wait::Gate { gate, seq: None } => self.check_gate(gate),
            Wait::Check { seq: None } => self.run_check(),
            Wait::Check { seq: Some(_) } => self.check_unanswered("none in time"),
            Wait::Gate { gate, seq: Some(_) } => {
                // No answer is an unavailable analyzer: a halt, never a failed check.
                self.halt(format!("{} gate: no answer in time", gate.as_str()));
                self.st.wait = Wait::Gate { gate, seq: None };
                self.schedule(self.now + self.m.interval_ms());
            }
            Wait::Pause { until_ms: Some(_) } => self.advance(),
            Wait::Workload {
                op,
                seq,
                sent_at_ms,
            } => {
                if self.now.saturating_sub(sent_at_ms) >= ROUTE_ACK_TIMEOUT_MS
                    && !self.st.phase.is_terminal()
                {
                    self.halt(format!("{}: no answer from the controller", op.as_str()));
                }
                // Level-triggered: ask again (the operation is idempotent).
                self.acts.push(Action::Workload { seq, op });
                self.st.wait = Wait::Workload {
                    op,
                    seq,
                    sent_at_ms: self.now,
                };
                self.schedule(self.now + ROUTE_ACK_TIMEOUT_MS);
            }
            Wait::Finalise { seq, .. } => {
                self.halt("finalise not confirmed".into());
                self.acts.push(Action::Finalise { seq });
                self.st.wait = Wait::Finalise {
                    seq,
                    sent_at_ms: self.now,
                };
                self.schedule(self.now + self.m.answer_timeout_ms());
            }
        }
    }

    // ---- commands and spec changes ---------------------------------------------------------

    fn refuse(&self, c: Command) -> Result<(), CommandError> {
        Err(CommandError::InvalidInPhase {
            command: c.name(),
            phase: self.st.phase,
        })
    }

    fn command(&mut self, c: Command) -> Result<(), CommandError> {
        use Phase::*;
        let phase = self.st.phase;
        match c {
            Command::Pause => {
                if !matches!(
                    phase,
                    Initialized | Waiting | Progressing | WaitingPromotion | Promoting
                ) {
                    return self.refuse(c);
                }
                self.pause();
                self.emit(EventKind::Paused, "paused by command");
            }
            Command::Resume => {
                if phase == Paused {
                    self.unpause();
                    self.emit(EventKind::Resumed, "resumed by command");
                    self.resume_here();
                } else if phase == Progressing && self.st.wait == (Wait::Pause { until_ms: None }) {
                    self.emit(EventKind::Resumed, "pause step resumed by command");
                    self.advance();
                } else {
                    return self.refuse(c);
                }
            }
            Command::Promote { full } => {
                if !matches!(
                    phase,
                    Initialized | Waiting | Progressing | WaitingPromotion | Promoting | Paused
                ) {
                    return self.refuse(c);
                }
                if phase == Paused {
                    self.unpause();
                }
                self.clear_halt();
                self.emit(
                    EventKind::ManualPromotion,
                    if full {
                        "full promotion by command"
                    } else {
                        "step skipped by command"
                    },
                );
                if full && self.m.spec.is_workload() {
                    self.start_promoting();
                } else if full {
                    // Under policy waves, a full promotion promotes every cluster at once.
                    if self.m.waves() {
                        self.st.wave = self.m.spec.clusters.len().saturating_sub(1);
                    }
                    self.st.phase = Promoting;
                    self.st.promotion_step = self.m.plan.promotion.weights.len().saturating_sub(1);
                    self.promote_route();
                } else {
                    match self.st.phase {
                        Initialized | Waiting => self.begin_progress(),
                        Progressing => self.advance(),
                        WaitingPromotion => self.start_promoting(),
                        _ if self.m.spec.is_workload() => self.start_promoting(),
                        _ => {
                            if self.st.promotion_step + 1 >= self.m.plan.promotion.weights.len() {
                                self.promoted();
                            } else {
                                self.st.promotion_step += 1;
                                self.promote_route();
                            }
                        }
                    }
                }
            }
            Command::Abort => {
                if phase.is_terminal() || phase == Finalising {
                    return self.refuse(c);
                }
                self.emit(EventKind::Aborted, "aborted by command");
                self.rollback("aborted by command".into());
            }
            Command::Approve => match self.st.wait {
                Wait::Approval if phase == Progressing => {
                    self.emit(EventKind::Approved, "approved by command");
                    self.advance();
                }
                Wait::Gate { gate, .. }
                    if matches!(
                        gate,
                        WebhookType::ConfirmRollout
                            | WebhookType::ConfirmTrafficIncrease
                            | WebhookType::ConfirmPromotion
                    ) && phase != Paused =>
                {
                    self.emit(
                        EventKind::Approved,
                        format!("{} approved by command", gate.as_str()),
                    );
                    self.gate_open(gate, "approved by command");
                }
                // Held at max weight between two gate checks (observing or analysing).
                _ if phase == WaitingPromotion => {
                    self.emit(EventKind::Approved, "confirm-promotion approved by command");
                    self.gate_open(WebhookType::ConfirmPromotion, "approved by command");
                }
                // Held below the next weight between two gate checks (observing or analysing).
                _ if phase == Progressing
                    && self.st.gate_hold == Some(WebhookType::ConfirmTrafficIncrease) =>
                {
                    self.emit(
                        EventKind::Approved,
                        "confirm-traffic-increase approved by command",
                    );
                    self.gate_open(WebhookType::ConfirmTrafficIncrease, "approved by command");
                }
                _ => return self.refuse(c),
            },
            Command::Retry => {
                if phase != Failed {
                    return self.refuse(c);
                }
                self.st.phase = Initialized;
                self.emit(EventKind::Retried, "retry by command");
                self.start_run();
            }
            Command::SetWeight(w) => {
                if w > 100 {
                    return Err(CommandError::InvalidWeight(w));
                }
                if !matches!(phase, Progressing | WaitingPromotion | Promoting | Paused) {
                    return self.refuse(c);
                }
                if phase != Paused {
                    self.pause();
                }
                self.st.weight_hold = Some(w);
                self.emit(
                    EventKind::WeightSet,
                    format!("canary held at {w}% by command"),
                );
                self.go_route(w, 0, Vec::new(), false);
            }
        }
        Ok(())
    }

    fn pause(&mut self) {
        self.st.paused_from = Some(self.st.phase);
        self.st.phase = Phase::Paused;
        self.st.wait = Wait::Idle;
        self.st.next_tick_at_ms = None;
        self.st.gate_hold = None;
        self.clear_halt();
    }

    fn unpause(&mut self) {
        self.st.phase = self.st.paused_from.take().unwrap_or(Phase::Progressing);
        self.st.weight_hold = None;
    }

    /// Re-enters the current stage after a pause: re-sends its route (a no-op when the data
    /// plane already serves it; its windows then go on where the last one ended).
    fn resume_here(&mut self) {
        match self.st.phase {
            Phase::Initialized => self.start_run(),
            Phase::Waiting => self.check_gate(WebhookType::ConfirmRollout),
            Phase::WaitingPromotion => self.begin_promotion(),
            Phase::Promoting if self.m.spec.is_workload() => self.start_promoting(),
            Phase::Promoting => self.promote_route(),
            // Entering the step again asks confirm-traffic-increase when its weight is still
            // to be raised (paused while that gate held it back).
            _ => {
                self.st.phase = Phase::Progressing;
                self.st.step = self.st.step.min(self.m.plan.step_count().saturating_sub(1));
                self.enter_step(self.st.step);
            }
        }
    }

    fn spec_changed(&mut self, generation: u64) {
        if generation <= self.st.generation {
            return self.ignore("generation not newer");
        }
        self.st.generation = generation;
        let revision = canary_revision(&self.m.spec);
        if revision != self.st.canary_revision {
            self.st.canary_revision = revision;
            if self.st.phase == Phase::Initializing {
                return;
            }
            // A new canary: back to 100 % primary, then a fresh run.
            self.st.phase = Phase::Initializing;
            self.st.step = 0;
            self.st.paused_from = None;
            self.st.weight_hold = None;
            self.clear_halt();
            self.emit(EventKind::NewRevision, "new canary revision: restarting");
            return self.go_route(0, 0, Vec::new(), true);
        }
        let active = matches!(
            self.st.phase,
            Phase::Initialized | Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion
        );
        if self.m.spec.skip_analysis && active {
            self.clear_halt();
            self.emit(
                EventKind::AnalysisSkipped,
                "skipAnalysis set: cancelling analysis and promoting",
            );
            return self.start_promoting();
        }
        if self.st.phase == Phase::Progressing && self.st.step >= self.m.plan.step_count() {
            self.begin_promotion();
        }
    }
}

/// The details of an event that repeats one still in force, or none.
fn repeated_details(repeated: bool) -> BTreeMap<String, String> {
    let mut details = BTreeMap::new();
    if repeated {
        details.insert(REPEATED.to_owned(), "true".to_owned());
    }
    details
}
