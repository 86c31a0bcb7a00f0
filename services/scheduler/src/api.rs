//! The gRPC control API. Any replica serves it: reads come from the rollouts bucket; `Apply`
//! writes a new generation by CAS; commands are checked against the current phase, queued in the
//! record by CAS and acted on by the owner, which is nudged at once. `Apply` also refuses a spec
//! that an ingress's router agent has published it cannot express ([`crate::capabilities`]).

use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use aviary_bus::kv::Bucket;
use aviary_bus::typed::Proto;
use aviary_bus::{BusError, names};
use aviary_core::machine::{Command, CommandError, Env, Input, Machine, RolloutStatus};
use aviary_proto as pb;
use aviary_proto::rollout_service_server::RolloutService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::{AuthError, Caller, Role, Tokens};
use crate::capabilities;
use crate::convert::{self, now_ms};
use crate::effects::Effects;
use crate::metrics::Metrics;
use crate::record::{Manifest, QueuedCommand, RolloutRecord};

/// The control API's state.
#[derive(Clone)]
pub struct Api {
    records: Bucket<RolloutRecord>,
    effects: Effects,
    tokens: Arc<Tokens>,
    metrics: Metrics,
    /// Router-agent capabilities, opened on the first `Apply`.
    agents: Arc<tokio::sync::OnceCell<Bucket<pb::AgentCapabilities, Proto>>>,
    /// How many refused calls are written to the events stream.
    refusals: Arc<std::sync::Mutex<RefusalLimiter>>,
}

impl Api {
    /// An API over `records`, nudging owners through `effects`, authenticating with `tokens`.
    pub fn new(
        records: Bucket<RolloutRecord>,
        effects: Effects,
        tokens: Tokens,
        metrics: Metrics,
    ) -> Self {
        Self {
            records,
            effects,
            tokens: Arc::new(tokens),
            metrics,
            agents: Arc::default(),
            refusals: Arc::new(std::sync::Mutex::new(RefusalLimiter::new(
                tokio::time::Instant::now(),
            ))),
        }
    }

    /// Refuses `spec` when an ingress's published capabilities cannot serve it: the hub's
    /// ingresses from the hub's agents bucket, each member cluster's from the agents bucket in
    /// that cluster's JetStream domain, where its router agents publish. A member whose bucket
    /// cannot be read in time (its link is down) is not checked, as an ingress no agent
    /// published for; its agents still refuse a route they cannot serve, which halts the step.
    async fn check_capabilities(&self, spec: &aviary_core::RolloutSpec) -> Result<(), Status> {
        let agents = self
            .agents
            .get_or_try_init(|| Bucket::open(self.effects.jetstream(), names::BUCKET_AGENTS))
            .await
            .map_err(internal)?;
        let hub = spec
            .ingresses
            .iter()
            .map(|i| (i.name.clone(), i.name.clone()))
            .collect();
        let mut published = capabilities::read_published(agents, hub)
            .await
            .map_err(internal)?;
        for cluster in &spec.clusters {
            let read = async {
                let bucket = self.effects.member_agents(&cluster.name).await?;
                let ingresses = cluster
                    .ingress_names()
                    .map(|i| (format!("{}/{i}", cluster.name), i.to_owned()))
                    .collect();
                capabilities::read_published(&bucket, ingresses).await
            };
            match tokio::time::timeout(self.effects.route_timeout(), read).await {
                Ok(Ok(found)) => published.extend(found),
                Ok(Err(error)) => info!(cluster = %cluster.name, %error,
                    "member cluster's router-agent capabilities unreadable; not checked"),
                Err(_) => info!(cluster = %cluster.name,
                    "member cluster's router-agent capabilities not read in time; not checked"),
            }
        }
        capabilities::check(
            spec,
            published
                .iter()
                .map(|(label, caps)| (label.as_str(), caps.as_ref())),
        )
        .map_err(|refusal| Status::invalid_argument(refusal.to_string()))
    }

    /// Refuses `spec` (the rollout at `key`) when it would take a host and path prefix of an
    /// ingress that another rollout holds, naming that rollout.
    async fn check_routes(&self, key: &str, spec: &aviary_core::RolloutSpec) -> Result<(), Status> {
        for other_key in self.records.keys().await.map_err(internal)? {
            if other_key == key {
                continue;
            }
            let Some(other) = self.records.get(&other_key).await.map_err(internal)? else {
                continue;
            };
            if let Some(taken) = aviary_core::route::taken(spec, &other.value.rollout.spec) {
                return Err(Status::failed_precondition(format!(
                    "spec.service.hosts: on ingress {:?}, {} is held by rollout {}/{}",
                    taken.ingress,
                    taken.conflict,
                    other.value.namespace(),
                    other.value.name()
                )));
            }
        }
        Ok(())
    }

    fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        needs: Role,
    ) -> Result<Caller, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.tokens
            .authorize(header, method, needs)
            .map_err(|error| {
                self.metrics.refused_calls.inc();
                warn!(method, %error, "call refused");
                match error {
                    AuthError::Unauthenticated => Status::unauthenticated(error.to_string()),
                    AuthError::PermissionDenied { .. } => {
                        Status::permission_denied(error.to_string())
                    }
                }
            })
    }

    /// [`Api::authorize`] for a call about one rollout: a refusal is also written to that
    /// rollout's audit stream, with the identity when the token was known.
    async fn authorize_for<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        needs: Role,
        reference: Option<&pb::RolloutRef>,
    ) -> Result<Caller, Status> {
        let refused = match self.authorize(request, method, needs) {
            Ok(caller) => return Ok(caller),
            Err(status) => status,
        };
        if let Some(reference) = reference {
            let actor = match refused.code() {
                tonic::Code::PermissionDenied => refused
                    .message()
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                _ => "unauthenticated".to_owned(),
            };
            let peer = request
                .remote_addr()
                .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
            let decision = match self.refusals.lock() {
                Ok(mut limiter) => limiter.decide(
                    format!("{peer} {actor}"),
                    method,
                    tokio::time::Instant::now(),
                ),
                // A panic elsewhere poisoned the lock: fail closed on the stream, not the call.
                Err(_) => RefusalAudit::Suppress,
            };
            let reason = format!("{method} refused: {}", refused.message());
            match decision {
                RefusalAudit::Suppress => {
                    self.metrics.refusals_not_audited.inc();
                }
                RefusalAudit::Record => {
                    self.audit_refusal(reference, reason, actor.clone()).await;
                }
                RefusalAudit::RecordWithSummary(left_out) => {
                    let summary = format!(
                        "{left_out} more {method} calls from {peer} ({actor}) refused and not \
                         audited in the last {}s",
                        REFUSAL_WINDOW.as_secs()
                    );
                    warn!(method, %peer, %actor, left_out, "refused calls not audited");
                    self.audit_refusal(reference, summary, actor.clone()).await;
                    self.audit_refusal(reference, reason, actor).await;
                }
            }
        }
        Err(refused)
    }

    /// Writes a `refused` event with `reason` and `actor` to `reference`'s audit stream.
    async fn audit_refusal(&self, reference: &pb::RolloutRef, reason: String, actor: String) {
        let now = now_ms();
        let data = aviary_proto::events::EventData {
            namespace: reference.namespace.clone(),
            name: reference.name.clone(),
            reason,
            actor,
            ..Default::default()
        };
        let id = format!(
            "{}/{}/refused-{now}-{:08x}",
            reference.namespace,
            reference.name,
            rand::random::<u32>()
        );
        let event = aviary_proto::events::AuditEvent::new(
            aviary_proto::events::EventKind::Refused,
            id,
            convert::rfc3339(now),
            data,
        );
        if let Err(error) = self.effects.publish_event(&event).await {
            warn!(%error, "refusal not audited");
        }
    }

    /// An operator command about one rollout: authorized (a refusal is audited), then queued.
    async fn operator<T: Sync>(
        &self,
        request: &Request<T>,
        method: &'static str,
        reference: Option<&pb::RolloutRef>,
        command: Command,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = self
            .authorize_for(request, method, Role::Operator, reference)
            .await?;
        self.command(reference, command, caller).await
    }

    async fn load(
        &self,
        reference: Option<&pb::RolloutRef>,
    ) -> Result<aviary_bus::kv::Entry<RolloutRecord>, Status> {
        let reference = reference.ok_or_else(|| Status::invalid_argument("ref: required"))?;
        let key = names::rollout_key(&reference.namespace, &reference.name)
            .map_err(|e| Status::invalid_argument(format!("ref: {e}")))?;
        self.records
            .get(&key)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("rollout {reference} not found")))
    }

    /// Checks `command` against the current phase, queues it by CAS and wakes the owner, in a
    /// span (`api.command`) whose trace the owner's decision on the command joins.
    async fn command(
        &self,
        reference: Option<&pb::RolloutRef>,
        command: Command,
        caller: Caller,
    ) -> Result<Response<pb::Rollout>, Status> {
        let span = tracing::info_span!(
            "api.command",
            otel.kind = "server",
            command = command.name(),
            actor = %caller.identity,
        );
        tracing::Instrument::instrument(self.queue(reference, command, caller), span).await
    }

    async fn queue(
        &self,
        reference: Option<&pb::RolloutRef>,
        command: Command,
        caller: Caller,
    ) -> Result<Response<pb::Rollout>, Status> {
        let traceparent = aviary_bus::trace::traceparent(&tracing::Span::current());
        let entry = self.load(reference).await?;
        let key = entry.key.clone();
        let mut refusal = None;
        let now = now_ms();
        let id = format!("{now}-{:08x}", rand::random::<u32>());
        let written = self
            .records
            .update_with(&key, |current| {
                let mut record = current?;
                // Decide on the status the command will meet: the stored one with the queued
                // commands applied, so two quick commands are judged in order.
                let machine = Machine::new(&record.rollout.spec).ok()?;
                let mut status: RolloutStatus = record.status.clone();
                for queued in &record.commands {
                    if let Ok(d) = machine.step(
                        &status,
                        Input::Command(queued.command),
                        Env {
                            now_ms: now,
                            random: 0,
                        },
                    ) {
                        status = d.status;
                    }
                }
                match machine.step(
                    &status,
                    Input::Command(command),
                    Env {
                        now_ms: now,
                        random: 0,
                    },
                ) {
                    Ok(_) => {
                        refusal = None;
                        record.commands.push(QueuedCommand {
                            id: id.clone(),
                            command,
                            actor: caller.identity.clone(),
                            at_ms: now,
                            traceparent: traceparent.clone(),
                        });
                        Some(record)
                    }
                    Err(error) => {
                        refusal = Some(error);
                        None
                    }
                }
            })
            .await
            .map_err(internal)?;
        if let Some(error) = refusal {
            return Err(match error {
                CommandError::InvalidInPhase { .. } => {
                    Status::failed_precondition(error.to_string())
                }
                CommandError::InvalidWeight(_) => {
                    Status::invalid_argument(format!("weight: {error}"))
                }
            });
        }
        let entry = written.ok_or_else(|| Status::not_found("rollout vanished"))?;
        info!(rollout = %key, command = command.name(), actor = %caller.identity, "command queued");
        self.effects
            .wake(entry.value.namespace(), entry.value.name())
            .await;
        Ok(Response::new(convert::rollout(
            &entry.value,
            entry.revision,
        )))
    }
}

fn internal(error: BusError) -> Status {
    Status::unavailable(error.to_string())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

impl Api {
    /// `Delete` and `ForceDelete`: removes the record by revision and audits it. Without
    /// `force`, a rollout that still needs its driver (moving traffic, or waiting for a route
    /// ack) is refused with `FailedPrecondition`.
    async fn delete_rollout(
        &self,
        request: Request<pb::CommandRequest>,
        force: bool,
    ) -> Result<Response<pb::Rollout>, Status> {
        let method = if force { "ForceDelete" } else { "Delete" };
        let reference = request.get_ref().r#ref.clone();
        let caller = self
            .authorize_for(&request, method, Role::Operator, reference.as_ref())
            .await?;
        let entry = self.load(reference.as_ref()).await?;
        let record = &entry.value;
        if record.needs_driver() && !force {
            return Err(Status::failed_precondition(format!(
                "rollout is {} ({}): abort it or let it finish before deleting it, or delete \
                 it with force",
                record.status.phase,
                convert::outstanding(&record.status.wait)
            )));
        }
        // By revision: a rollout re-applied or commanded since it was read is not deleted.
        self.records
            .delete(&entry.key, Some(entry.revision))
            .await
            .map_err(|error| match error {
                BusError::Conflict { .. } => {
                    Status::aborted("the rollout changed while deleting it; try again")
                }
                error => internal(error),
            })?;
        info!(rollout = %entry.key, actor = %caller.identity, force, "rollout deleted");
        let reason = &request.get_ref().reason;
        let event = convert::deleted_event(record, &caller.identity, reason, force, now_ms());
        if let Err(error) = self.effects.publish_event(&event).await {
            warn!(%error, rollout = %entry.key, "deletion not audited");
        }
        Ok(Response::new(convert::rollout(record, entry.revision)))
    }
}

#[tonic::async_trait]
impl RolloutService for Api {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.authorize(&request, "Apply", Role::Operator)?;
        let text = request.into_inner().manifest;
        let (rollout, warnings) =
            aviary_core::parse_rollout_with_warnings(&text).map_err(|errors| {
                let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
                Status::invalid_argument(lines.join("\n"))
            })?;
        let key = names::rollout_key(rollout.namespace(), &rollout.metadata.name)
            .map_err(|e| Status::invalid_argument(format!("metadata: {e}")))?;
        self.check_capabilities(&rollout.spec).await?;
        self.check_routes(&key, &rollout.spec).await?;
        let manifest = Manifest::new(&text);
        let mut changed = false;
        let written = self
            .records
            .update_with(&key, |current| match current {
                None => {
                    changed = true;
                    Some(RolloutRecord {
                        // Ids continue past any earlier rollout of the same name (deleted
                        // since), whose ids the events stream would drop as duplicates.
                        event_seq: now_ms(),
                        ..RolloutRecord::new(manifest.clone(), rollout.clone())
                    })
                }
                Some(record) if record.rollout.spec == rollout.spec => {
                    changed = false;
                    None
                }
                Some(mut record) => {
                    changed = true;
                    record.manifest = manifest.clone();
                    record.rollout = rollout.clone();
                    record.generation += 1;
                    Some(record)
                }
            })
            .await
            .map_err(internal)?;
        let entry = written.ok_or_else(|| Status::unavailable("rollout vanished during apply"))?;
        if changed {
            info!(rollout = %key, generation = entry.value.generation, actor = %caller.identity, "applied");
            self.effects
                .wake(entry.value.namespace(), entry.value.name())
                .await;
        }
        Ok(Response::new(pb::ApplyResponse {
            rollout: Some(convert::rollout(&entry.value, entry.revision)),
            changed,
            warnings: warnings.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Rollout>, Status> {
        self.authorize_for(
            &request,
            "Get",
            Role::Read,
            request.get_ref().r#ref.as_ref(),
        )
        .await?;
        let entry = self.load(request.get_ref().r#ref.as_ref()).await?;
        Ok(Response::new(convert::rollout(
            &entry.value,
            entry.revision,
        )))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.authorize(&request, "List", Role::Read)?;
        let filter = request.into_inner();
        let mut rollouts = Vec::new();
        for key in self.records.keys().await.map_err(internal)? {
            let Ok(Some(entry)) = self.records.get(&key).await else {
                continue;
            };
            let rollout = convert::rollout(&entry.value, entry.revision);
            let phase = rollout.status.as_ref().map_or(0, |s| s.phase);
            if (!filter.namespace.is_empty() && entry.value.namespace() != filter.namespace)
                || (filter.phase != 0 && phase != filter.phase)
            {
                continue;
            }
            rollouts.push(rollout);
        }
        rollouts.sort_by(|a, b| {
            a.r#ref
                .as_ref()
                .map(ToString::to_string)
                .cmp(&b.r#ref.as_ref().map(ToString::to_string))
        });
        Ok(Response::new(pb::ListResponse { rollouts }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize_for(
            &request,
            "Watch",
            Role::Read,
            request.get_ref().r#ref.as_ref(),
        )
        .await?;
        let entry = self.load(request.get_ref().r#ref.as_ref()).await?;
        let (namespace, name) = (
            entry.value.namespace().to_owned(),
            entry.value.name().to_owned(),
        );
        let status_updates = self
            .records
            .store()
            .watch(&entry.key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let statuses = status_updates.filter_map(|update| async move {
            let update = update.ok()?;
            let record: RolloutRecord = serde_json::from_slice(&update.value).ok()?;
            Some(Ok(pb::WatchEvent {
                kind: Some(pb::watch_event::Kind::Rollout(convert::rollout(
                    &record,
                    update.revision,
                ))),
            }))
        });
        let subject = names::events_subject(&namespace, &name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let js = self.effects.jetstream().clone();
        let stream = js
            .get_stream(names::STREAM_EVENTS)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                filter_subject: subject,
                deliver_policy: DeliverPolicy::All,
                deliver_subject: self.effects.client().new_inbox(),
                ..Default::default()
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let events = messages.filter_map(|message| async move {
            let message = message.ok()?;
            let text = String::from_utf8(message.payload.to_vec()).ok()?;
            Some(Ok(pb::WatchEvent {
                kind: Some(pb::watch_event::Kind::AuditEvent(text)),
            }))
        });
        let first = futures::stream::once(async move {
            Ok(pb::WatchEvent {
                kind: Some(pb::watch_event::Kind::Rollout(convert::rollout(
                    &entry.value,
                    entry.revision,
                ))),
            })
        });
        Ok(Response::new(Box::pin(
            first.chain(futures::stream::select(statuses, events)),
        )))
    }

    async fn pause(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let reference = request.get_ref().r#ref.as_ref();
        self.operator(&request, "Pause", reference, Command::Pause)
            .await
    }

    async fn resume(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let reference = request.get_ref().r#ref.as_ref();
        self.operator(&request, "Resume", reference, Command::Resume)
            .await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let reference = request.get_ref().r#ref.as_ref();
        let full = request.get_ref().full;
        self.operator(&request, "Promote", reference, Command::Promote { full })
            .await
    }

    async fn abort(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let reference = request.get_ref().r#ref.as_ref();
        self.operator(&request, "Abort", reference, Command::Abort)
            .await
    }

    async fn approve(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let reference = request.get_ref().r#ref.as_ref();
        self.operator(&request, "Approve", reference, Command::Approve)
            .await
    }

    async fn retry(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let reference = request.get_ref().r#ref.as_ref();
        self.operator(&request, "Retry", reference, Command::Retry)
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.delete_rollout(request, false).await
    }

    async fn force_delete(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.delete_rollout(request, true).await
    }

    async fn set_weight(
        &self,
        request: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = self
            .authorize_for(
                &request,
                "SetWeight",
                Role::Operator,
                request.get_ref().r#ref.as_ref(),
            )
            .await?;
        let weight = request.get_ref().weight;
        let weight = u8::try_from(weight)
            .ok()
            .filter(|w| *w <= 100)
            .ok_or_else(|| {
                Status::invalid_argument(format!("weight: {weight} is out of range 0..=100"))
            })?;
        self.command(
            request.get_ref().r#ref.as_ref(),
            Command::SetWeight(weight),
            caller,
        )
        .await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.authorize(&request, "WhoAmI", Role::Read)?;
        let role = match caller.role {
            Role::Read => pb::CallerRole::Read,
            Role::Operator => pb::CallerRole::Operator,
        };
        Ok(Response::new(pb::WhoAmIResponse {
            role: role as i32,
            identity: caller.identity,
            authentication: self.tokens.enabled(),
        }))
    }
}

/// Refusals of one caller (peer address and identity) on one method audited per window: enough
/// to see who is knocking, too few for a flood to fill the events stream.
const REFUSALS_AUDITED: u32 = 5;
/// Refusals audited per window across all callers, so rotating tokens or source addresses
/// cannot get around [`REFUSALS_AUDITED`] either.
const REFUSALS_AUDITED_TOTAL: u32 = 100;
/// The audit window: a summary of what was left out is written once per window and caller.
const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Callers tracked at once; beyond it, new callers share one overflow entry (memory stays
/// bounded whatever an attacker sends).
const REFUSAL_CALLERS: usize = 4096;

/// What to write about one refused call.
#[derive(Debug, PartialEq, Eq)]
enum RefusalAudit {
    /// Write the refusal.
    Record,
    /// Write nothing: the caller is over its allowance this window.
    Suppress,
    /// Write the refusal and a summary: `n` refusals of this caller were left out in the window
    /// that just ended.
    RecordWithSummary(u64),
}

#[derive(Debug)]
struct Window {
    start: tokio::time::Instant,
    recorded: u32,
    suppressed: u64,
}

impl Window {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            start: now,
            recorded: 0,
            suppressed: 0,
        }
    }
}

/// Fixed-window limits on refused-call audit events, per caller and method and in total.
/// Deciding never waits: the refusal itself is returned whatever is decided here.
#[derive(Debug)]
struct RefusalLimiter {
    callers: std::collections::HashMap<(String, &'static str), Window>,
    total: Window,
}

impl RefusalLimiter {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            callers: std::collections::HashMap::new(),
            total: Window::new(now),
        }
    }

    fn decide(
        &mut self,
        caller: String,
        method: &'static str,
        now: tokio::time::Instant,
    ) -> RefusalAudit {
        if now.duration_since(self.total.start) >= REFUSAL_WINDOW {
            self.total = Window::new(now);
            self.callers
                .retain(|_, w| now.duration_since(w.start) < REFUSAL_WINDOW || w.suppressed > 0);
        }
        let key = if self.callers.len() < REFUSAL_CALLERS
            || self.callers.contains_key(&(caller.clone(), method))
        {
            (caller, method)
        } else {
            ("overflow".to_owned(), "*")
        };
        let window = self.callers.entry(key).or_insert_with(|| Window::new(now));
        let mut summary = 0;
        if now.duration_since(window.start) >= REFUSAL_WINDOW {
            summary = window.suppressed;
            *window = Window::new(now);
        }
        if window.recorded >= REFUSALS_AUDITED || self.total.recorded >= REFUSALS_AUDITED_TOTAL {
            window.suppressed += 1;
            self.total.suppressed += 1;
            return RefusalAudit::Suppress;
        }
        window.recorded += 1;
        self.total.recorded += 1;
        match summary {
            0 => RefusalAudit::Record,
            n => RefusalAudit::RecordWithSummary(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_audited_a_few_per_caller_and_window_then_summarised() {
        let start = tokio::time::Instant::now();
        let mut limiter = RefusalLimiter::new(start);
        let decisions: Vec<RefusalAudit> = (0..200)
            .map(|_| limiter.decide("10.0.0.1 unauthenticated".into(), "Abort", start))
            .collect();
        let recorded = decisions
            .iter()
            .filter(|d| **d != RefusalAudit::Suppress)
            .count();
        assert_eq!(recorded, REFUSALS_AUDITED as usize);
        // Another method of the same caller has its own allowance.
        assert_eq!(
            limiter.decide("10.0.0.1 unauthenticated".into(), "Pause", start),
            RefusalAudit::Record
        );
        let later = start + REFUSAL_WINDOW;
        assert_eq!(
            limiter.decide("10.0.0.1 unauthenticated".into(), "Abort", later),
            RefusalAudit::RecordWithSummary(195)
        );
        assert_eq!(
            limiter.decide("10.0.0.1 unauthenticated".into(), "Abort", later),
            RefusalAudit::Record
        );
    }

    #[test]
    fn rotating_callers_stay_under_the_total() {
        let start = tokio::time::Instant::now();
        let mut limiter = RefusalLimiter::new(start);
        let recorded = (0..10_000)
            .filter(|i| {
                limiter.decide(format!("10.0.{i}.1 x"), "Abort", start) != RefusalAudit::Suppress
            })
            .count();
        assert_eq!(recorded, REFUSALS_AUDITED_TOTAL as usize);
        assert!(limiter.callers.len() <= REFUSAL_CALLERS + 1);
    }
}
