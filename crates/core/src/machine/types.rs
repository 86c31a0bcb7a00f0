//! The machine's vocabulary: the stored status, the inputs it folds in and the actions it asks
//! the scheduler to carry out. Every type is serde, so the status lives in NATS KV as JSON and
//! actions can be logged verbatim.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{MatchRule, Metric, Webhook, WebhookType};

/// Where a rollout is in its life (DESIGN.md §4), as shown by the API, the CLI and the audit
/// stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Routing 100 % to the primary before anything else.
    #[default]
    Initializing,
    /// The primary serves everything; the run is about to start.
    Initialized,
    /// Held by a closed `confirm-rollout` gate.
    Waiting,
    /// Walking the steps.
    Progressing,
    /// Held by a closed `confirm-promotion` gate.
    WaitingPromotion,
    /// Moving the rest of the traffic to the canary.
    Promoting,
    /// The canary is becoming the primary.
    Finalising,
    /// Promoted.
    Succeeded,
    /// Rolled back to the primary.
    Failed,
    /// Paused through the API (or held at a manual weight).
    Paused,
}

impl Phase {
    /// True for `Succeeded` and `Failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the rollout is waiting for right now. Every outstanding request carries the `seq` it
/// was sent with; answers with another `seq` are stale and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "camelCase")]
pub enum Wait {
    /// Nothing outstanding (terminal, paused, or not started).
    #[default]
    Idle,
    /// An `ApplyRoute` awaiting `RouteConfirmed` from every ingress.
    #[serde(rename_all = "camelCase")]
    Route {
        /// The route's sequence number.
        seq: u64,
        /// When it was (last) sent; after a failed send, when it is sent again.
        sent_at_ms: u64,
    },
    /// Observing the confirmed split until the interval has passed.
    Interval,
    /// A `RequestAnalysis` awaiting its verdict.
    #[serde(rename_all = "camelCase")]
    Verdict {
        /// The request's sequence number.
        seq: u64,
        /// When it was sent.
        requested_at_ms: u64,
    },
    /// A gate: asked (`seq` set) or closed and to be asked again at the next tick (`seq` none).
    #[serde(rename_all = "camelCase")]
    Gate {
        /// Which gate.
        gate: WebhookType,
        /// The outstanding `CheckGate`, if any.
        seq: Option<u64>,
    },
    /// A `pause:` step; without `until_ms`, until Resume or Promote.
    #[serde(rename_all = "camelCase")]
    Pause {
        /// When the pause ends.
        until_ms: Option<u64>,
    },
    /// An `approval:` step, until Approve or Promote.
    Approval,
    /// A `check:` step: asked (`seq` set) or unanswered and to be asked again at the next tick.
    #[serde(rename_all = "camelCase")]
    Check {
        /// The outstanding `RunCheck`, if any.
        seq: Option<u64>,
    },
    /// Workload mode: a [`WorkloadOp`] awaiting its `WorkloadDone` (sent again at the next
    /// tick while not done).
    #[serde(rename_all = "camelCase")]
    Workload {
        /// Which operation.
        op: WorkloadOp,
        /// The request's sequence number.
        seq: u64,
        /// When it was (last) sent.
        sent_at_ms: u64,
    },
    /// A `Finalise` awaiting `Finalised`.
    #[serde(rename_all = "camelCase")]
    Finalise {
        /// The request's sequence number.
        seq: u64,
        /// When it was sent.
        sent_at_ms: u64,
    },
}

/// An operation on the workloads of a workload-mode rollout, carried out by the controller.
///
/// Each is idempotent and level-triggered: asked again, it does nothing more when done, and
/// its answer says whether the state it asks for is reached yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadOp {
    /// Scale the canary (the target) up and report whether all its replicas are ready.
    ScaleCanaryUp,
    /// Copy the canary's template (and its configs) to the primary and report whether the
    /// primary's rollout of it has finished.
    PromotePrimary,
    /// Scale the canary to zero.
    ScaleCanaryDown,
}

impl WorkloadOp {
    /// The name on the bus and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadOp::ScaleCanaryUp => "scale-canary-up",
            WorkloadOp::PromotePrimary => "promote-primary",
            WorkloadOp::ScaleCanaryDown => "scale-canary-down",
        }
    }

    /// Every operation.
    pub const ALL: [WorkloadOp; 3] = [
        WorkloadOp::ScaleCanaryUp,
        WorkloadOp::PromotePrimary,
        WorkloadOp::ScaleCanaryDown,
    ];
}

/// The session-affinity cookie a route sets on canary responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CookieAffinity {
    /// Cookie name from the spec.
    pub cookie_name: String,
    /// Random per run, so a new run does not inherit old stickiness.
    pub cookie_value: String,
    /// `Max-Age` in seconds; `-1` expires the cookie (end of the run).
    pub max_age_seconds: i64,
    /// Primary stickiness: primary responses set this cookie (same value) for
    /// `primary_max_age_seconds`, and a request carrying it stays on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
    /// The primary cookie's `Max-Age`: one analysis interval, as Flagger's.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub primary_max_age_seconds: i64,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// The split the router agents must serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredRoute {
    /// Sequence number; acks name it.
    pub seq: u64,
    /// Percent of live traffic to the canary.
    pub canary_weight: u8,
    /// Percent of live traffic to the primary; always `100 - canary_weight`.
    pub primary_weight: u8,
    /// Percent of requests mirrored to the canary (0 = off).
    pub mirror_percent: u8,
    /// Requests matching any rule go to the canary.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRule>,
    /// Sticky canary sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<CookieAffinity>,
    /// Policy `waves`: the wave (index into `spec.clusters`) this route moves. The clusters of
    /// earlier waves serve the canary fully, later ones the primary
    /// ([`DesiredRoute::for_cluster`]). `None`: every cluster serves this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
}

impl DesiredRoute {
    /// True when both routes ask for the same data-plane state (ignoring `seq`).
    pub fn same_split(&self, other: &DesiredRoute) -> bool {
        self.wave == other.wave
            && self.canary_weight == other.canary_weight
            && self.primary_weight == other.primary_weight
            && self.mirror_percent == other.mirror_percent
            && self.matches == other.matches
            && self.session_affinity == other.session_affinity
    }
}

/// What the router agents read back from the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedSplit {
    /// Percent to the canary.
    pub canary_weight: u8,
    /// Percent to the primary.
    pub primary_weight: u8,
    /// Percent mirrored.
    pub mirror_percent: u8,
}

/// What one ingress's router agent acknowledged for a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSplit {
    /// The ingress.
    pub ingress: String,
    /// The split its agent read back from the data plane.
    pub observed: ObservedSplit,
    /// When its agent confirmed it, epoch milliseconds.
    pub confirmed_at_ms: u64,
}

/// The result of one analysis or one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Within bounds.
    Pass,
    /// Out of bounds: a failed check.
    Fail,
    /// No data or not enough: halts, never promotes, never counts as failed.
    Inconclusive,
    /// The analyzer or a provider failed: halts like inconclusive.
    Error,
}

/// One metric's or webhook's part of a verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// Metric or webhook name.
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// The measured value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The analyzer's answer to a `RequestAnalysis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The request's sequence number.
    pub seq: u64,
    /// The folded outcome.
    pub outcome: Outcome,
    /// Per metric and per webhook.
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// The sequential judge is confident the canary is worse: roll back now.
    #[serde(default)]
    pub fail_fast: bool,
    /// The sequential judge is confident the canary is not worse than its tolerance on every
    /// metric: with `earlyPromotion: true`, promote without walking the remaining steps.
    #[serde(default)]
    pub early_promote: bool,
    /// A `rollback` webhook answered 2xx: roll back now.
    #[serde(default)]
    pub rollback_requested: bool,
    /// A pass in which a sequential metric's judge has not decided for the run: the metric
    /// passed on its `thresholdRange` alone. It passes a step, but does not end the walk
    /// before `inconclusiveHold`.
    #[serde(default)]
    pub undecided: bool,
}

/// What the status remembers of the last verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictSummary {
    /// The request's sequence number.
    pub seq: u64,
    /// Step it judged.
    pub step: usize,
    /// Outcome.
    pub outcome: Outcome,
    /// Names of the checks that did not pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_passed: Vec<String>,
    /// When it was folded in.
    pub at_ms: u64,
}

/// A manual command from the control API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Stop advancing; resume later.
    Pause,
    /// Continue after Pause, or past a `pause: {}` step.
    Resume,
    /// Skip the current step (`full: false`) or go straight to 100 % (`full: true`).
    Promote {
        /// Skip every remaining step and promotion increment.
        full: bool,
    },
    /// Roll back now.
    Abort,
    /// Open the current approval step or confirm gate.
    Approve,
    /// Start a failed rollout again from the first step.
    Retry,
    /// Hold the canary at this weight (pauses the rollout).
    SetWeight(u8),
}

impl Command {
    /// The command's name, for errors and events.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote { .. } => "promote",
            Command::Abort => "abort",
            Command::Approve => "approve",
            Command::Retry => "retry",
            Command::SetWeight(_) => "set-weight",
        }
    }
}

/// Something that happened, for the machine to fold into the status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Input {
    /// Time passed (the scheduler ticks at `next_tick_at_ms`, or any time).
    Tick,
    /// A new owner took the rollout over (or the same replica restarted its driver): an answer
    /// to a request the previous owner sent can no longer reach it, so the machine asks again.
    TookOver,
    /// Every ingress acknowledged the route `seq` and reported what it serves.
    RouteConfirmed {
        /// The route's sequence number.
        seq: u64,
        /// The split read back from the data plane.
        observed: ObservedSplit,
    },
    /// Some ingress could not apply route `seq`.
    RouteFailed {
        /// The route's sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The analyzer's answer.
    Verdict(Verdict),
    /// No verdict came for request `seq` in time (the scheduler may also just tick).
    AnalysisTimeout {
        /// The request's sequence number.
        seq: u64,
    },
    /// A gate's webhooks answered: open when all returned 2xx.
    GateResult {
        /// The `CheckGate`'s sequence number.
        seq: u64,
        /// Which gate.
        gate: WebhookType,
        /// Open (advance) or closed (hold).
        open: bool,
    },
    /// The gate's webhooks could not be asked (the analyzer is down, or did not answer in
    /// time). Not a refusal: the rollout halts and asks again; a closed gate or a failed
    /// pre-rollout check needs an answered refusal.
    #[serde(rename_all = "camelCase")]
    GateUnanswered {
        /// The `CheckGate`'s sequence number.
        seq: u64,
        /// Which gate.
        gate: WebhookType,
        /// Why there was no answer.
        reason: String,
    },
    /// The answer to `RunCheck` `seq`: passed, or failed with why. No answer at all (the
    /// analyzer down or timing out) is `CheckUnanswered`, a halt.
    #[serde(rename_all = "camelCase")]
    CheckResult {
        /// The `RunCheck`'s sequence number.
        seq: u64,
        /// Whether the check passed.
        passed: bool,
        /// Why it failed (empty when it passed).
        reason: String,
    },
    /// `RunCheck` `seq` got no answer: a halt; the check is asked again.
    #[serde(rename_all = "camelCase")]
    CheckUnanswered {
        /// The `RunCheck`'s sequence number.
        seq: u64,
        /// Why there was no answer.
        reason: String,
    },
    /// Every ingress acknowledged route `seq` (or the `Finalise` `seq`), each with the split it
    /// serves: every one must serve the split asked for, or the route failed at that ingress.
    IngressesConfirmed {
        /// The route's (or the `Finalise`'s) sequence number.
        seq: u64,
        /// Each ingress's acknowledgement.
        ingresses: Vec<IngressSplit>,
    },
    /// The canary became the primary (answer to `Finalise`).
    Finalised {
        /// The `Finalise`'s sequence number.
        seq: u64,
    },
    /// The controller's answer to [`Action::Workload`] `seq`.
    #[serde(rename_all = "camelCase")]
    WorkloadDone {
        /// The request's sequence number.
        seq: u64,
        /// Whether the state asked for is reached (false: asked again at the next tick, and
        /// the rollout is halted meanwhile, so a canary that never becomes ready fails at
        /// `progressDeadlineSeconds`).
        done: bool,
        /// What the controller observed, for the halt reason and the events.
        observed: String,
    },
    /// A gate's check (`seq`) found a `rollback` webhook asking for rollback (polled with a
    /// closed confirm-rollout gate, as Flagger polls them in its Waiting phase).
    RollbackRequested {
        /// The `CheckGate`'s sequence number.
        seq: u64,
    },
    /// A hook run by [`Action::RunHooks`] (post-rollout, or rollback at a rollback) did not
    /// answer 2xx or could not be reached: reported, nothing else changes.
    HookFailed {
        /// Which hooks.
        hook: WebhookType,
        /// Each failing hook and what it answered.
        reason: String,
    },
    /// A manual command.
    Command(Command),
    /// The stored spec changed; the machine was built from the new one.
    SpecChanged {
        /// The new generation.
        generation: u64,
    },
}

impl Input {
    /// The input's name, for logs and traces (`tick`, `verdict`, `command:promote`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Input::Tick => "tick",
            Input::TookOver => "took-over",
            Input::RouteConfirmed { .. } => "route-confirmed",
            Input::RouteFailed { .. } => "route-failed",
            Input::Verdict(_) => "verdict",
            Input::AnalysisTimeout { .. } => "analysis-timeout",
            Input::GateResult { .. } => "gate-result",
            Input::GateUnanswered { .. } => "gate-unanswered",
            Input::CheckResult { .. } => "check-result",
            Input::CheckUnanswered { .. } => "check-unanswered",
            Input::IngressesConfirmed { .. } => "ingresses-confirmed",
            Input::Finalised { .. } => "finalised",
            Input::WorkloadDone { .. } => "workload-done",
            Input::RollbackRequested { .. } => "rollback-requested",
            Input::HookFailed { .. } => "hook-failed",
            Input::Command(_) => "command",
            Input::SpecChanged { .. } => "spec-changed",
        }
    }
}

/// What the machine wants analysed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRequest {
    /// Sequence number; the verdict names it (idempotency key `<rollout>/<generation>/<seq>`).
    pub seq: u64,
    /// Plan step being judged.
    pub step: usize,
    /// Start of the window: when this step's weights were confirmed.
    pub window_start_ms: u64,
    /// End of the window.
    pub window_end_ms: u64,
    /// Canary weight during the window.
    pub canary_weight: u8,
    /// Metrics to evaluate.
    pub metrics: Vec<Metric>,
    /// `rollout` and `rollback` webhooks to call.
    pub webhooks: Vec<Webhook>,
}

/// The kind of an audit event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The primary serves all traffic; the run can start.
    Initialized,
    /// A new canary revision was detected; the run restarts.
    NewRevision,
    /// Held by a closed confirm-rollout gate.
    Waiting,
    /// The run started.
    Progressing,
    /// A step's route was requested.
    StepStarted,
    /// A gate opened.
    GateOpened,
    /// A gate was closed.
    GateClosed,
    /// A step's analysis passed.
    AnalysisPassed,
    /// A check failed (counts toward `threshold`).
    CheckFailed,
    /// Advancement halted (no failed check).
    Halted,
    /// Paused through the API.
    Paused,
    /// Resumed through the API.
    Resumed,
    /// Approved through the API.
    Approved,
    /// Held at a manual weight.
    WeightSet,
    /// Analysis skipped (`skipAnalysis`).
    AnalysisSkipped,
    /// Promotion forced through the API.
    ManualPromotion,
    /// Held by a closed confirm-promotion gate.
    WaitingPromotion,
    /// Promotion started.
    Promoting,
    /// The canary is becoming the primary.
    Finalising,
    /// Promoted.
    Succeeded,
    /// Rolled back to the primary.
    RolledBack,
    /// Aborted through the API (followed by rolled-back).
    Aborted,
    /// A failed rollout was started again.
    Retried,
    /// A `post-rollout` hook, or a `rollback` hook called at a rollback, did not answer 2xx.
    HookFailed,
}

/// The key of [`AuditEvent::details`] marking an event that repeats one already emitted and
/// still in force (the same halt at a later interval, a gate still closed): kept in the audit
/// trail, notified once.
pub const REPEATED: &str = "repeated";

/// An audit record of one transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// What happened.
    pub kind: EventKind,
    /// Phase after the transition.
    pub phase: Phase,
    /// Current plan step.
    pub step: usize,
    /// Canary weight of the current route.
    pub canary_weight: u8,
    /// Why, for people.
    pub reason: String,
    /// Extra facts (failed checks, gate, seq…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

/// Work for the scheduler to do (publish, call, store) after it stored the new status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Send this split to every ingress; answer with `RouteConfirmed`/`RouteFailed`.
    ApplyRoute(DesiredRoute),
    /// Ask the analyzer; answer with `Verdict`.
    RequestAnalysis(AnalysisRequest),
    /// Call the gate's webhooks; answer with `GateResult`.
    #[serde(rename_all = "camelCase")]
    CheckGate {
        /// Sequence number for the answer.
        seq: u64,
        /// Which gate.
        gate: WebhookType,
        /// The webhooks to call (empty for gates held by the API only).
        webhooks: Vec<Webhook>,
    },
    /// Call a `check` step's HTTP check; answer with `CheckResult` or `CheckUnanswered`.
    #[serde(rename_all = "camelCase")]
    RunCheck {
        /// Sequence number for the answer.
        seq: u64,
        /// The check, as a webhook.
        webhook: Webhook,
    },
    /// Call these hooks and do not wait (post-rollout, rollback notification).
    #[serde(rename_all = "camelCase")]
    RunHooks {
        /// Which hooks.
        hook: WebhookType,
        /// The webhooks to call.
        webhooks: Vec<Webhook>,
    },
    /// Append to the audit stream (and to `event` webhooks).
    Emit(AuditEvent),
    /// Deliver `Tick` at this time (also stored as `next_tick_at_ms`).
    #[serde(rename_all = "camelCase")]
    ScheduleTick {
        /// Epoch milliseconds.
        at_ms: u64,
    },
    /// Workload mode: ask the controller to carry out `op`; answer with `WorkloadDone`.
    #[serde(rename_all = "camelCase")]
    Workload {
        /// Sequence number for the answer.
        seq: u64,
        /// What to do.
        op: WorkloadOp,
    },
    /// Make the canary the primary (endpoint mode: the primary's endpoints become the
    /// canary's, serving 100 %); answer with `Finalised`.
    #[serde(rename_all = "camelCase")]
    Finalise {
        /// Sequence number for the answer.
        seq: u64,
    },
}

/// The rollout's whole mutable state, stored in KV and written by compare-and-swap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Spec generation this status was decided with.
    pub generation: u64,
    /// Current phase.
    pub phase: Phase,
    /// The phase to return to on Resume when `phase` is `Paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_from: Option<Phase>,
    /// What is outstanding.
    pub wait: Wait,
    /// Current plan step (index into `Plan::steps`).
    pub step: usize,
    /// Current promotion increment (index into `Plan::promotion.weights`).
    pub promotion_step: usize,
    /// Last sequence number handed out; never reset, so answers are never confused.
    pub seq: u64,
    /// The route last requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<DesiredRoute>,
    /// Whether every ingress confirmed `route`.
    pub route_confirmed: bool,
    /// Canary weight last confirmed by the data plane.
    pub canary_weight: u8,
    /// Primary weight last confirmed by the data plane.
    pub primary_weight: u8,
    /// Mirror percent last confirmed.
    pub mirror_percent: u8,
    /// Failed checks in this run.
    pub failed_checks: u32,
    /// Analyses passed in this run (A/B and blue/green iterations).
    pub iterations_done: u32,
    /// Plan steps whose analysis passed in this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_steps: Vec<usize>,
    /// Gates opened in this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates_open: Vec<WebhookType>,
    /// Times each `check` step (by name) sent this run back to an earlier stage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub check_returns: BTreeMap<String, u32>,
    /// After a check sent the run back: the weight it returned with, served from the stage
    /// until the `setWeight` after the stage's first one; the plan step of the `setWeight` it
    /// replaced, once entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_weight: Option<(u8, Option<usize>)>,
    /// When the current step's weights were confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at_ms: Option<u64>,
    /// Where the next analysis window starts: when the split it judges was confirmed, then
    /// where the last judged window ended, so a split's windows tile its time with no gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start_ms: Option<u64>,
    /// When the scheduler must tick next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_tick_at_ms: Option<u64>,
    /// Since when advancement is halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_since_ms: Option<u64>,
    /// Why it is halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_reason: Option<String>,
    /// Since when the end of the walk has been held for a sequential judge that has not
    /// decided (`inconclusiveHold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undecided_since_ms: Option<u64>,
    /// The last verdict folded in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verdict: Option<VerdictSummary>,
    /// Session-affinity cookie value of this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cookie: Option<String>,
    /// Identity of the canary being rolled out (name + endpoints); a change starts a new run.
    pub canary_revision: String,
    /// Manual weight hold (`SetWeight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_hold: Option<u8>,
    /// Runs started (1 for the first).
    pub run: u32,
    /// When the current run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When the current run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// When the rollout entered its current phase (the control API's
    /// `lastTransitionAtMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since_ms: Option<u64>,
    /// Last human-readable reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The split each ingress acknowledged for the last confirmed route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingresses: Vec<IngressSplit>,
    /// Sends of the current route that failed or went unanswered: the wait before the next
    /// send doubles with each (see [`super::route_retry_ms`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub route_attempts: u32,
    /// A closed `confirm-traffic-increase` or `confirm-promotion` gate holding the canary at
    /// its weight while it is analysed every interval (reported once per hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_hold: Option<WebhookType>,
    /// Policy `waves`: the wave in progress, an index into `spec.clusters` (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub wave: usize,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

/// Why a command was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command makes no sense in this phase (gRPC `FailedPrecondition`).
    #[error("cannot {command} a rollout in phase {phase}")]
    InvalidInPhase {
        /// The command's name.
        command: &'static str,
        /// The phase it was refused in.
        phase: Phase,
    },
    /// `SetWeight` above 100 (gRPC `InvalidArgument`).
    #[error("weight {0} is out of range 0..=100")]
    InvalidWeight(u8),
}

/// The result of one step of the machine: the status to store (by CAS) and the actions to
/// carry out once it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The new status.
    pub status: RolloutStatus,
    /// Work to do, in order.
    pub actions: Vec<Action>,
    /// Set when the input was stale or irrelevant and changed nothing (for a counted drop).
    pub ignored: Option<&'static str>,
}

/// Values from outside the pure machine: the clock and a fresh random number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Env {
    /// Current time, epoch milliseconds.
    pub now_ms: u64,
    /// A fresh random value; used for the session cookie when a run starts.
    pub random: u64,
}
