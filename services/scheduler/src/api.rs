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
use crate::capabilities::{self, CheckError};
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
        }
    }

    /// Refuses `spec` when an ingress's published capabilities cannot serve it.
    async fn check_capabilities(&self, spec: &aviary_core::RolloutSpec) -> Result<(), Status> {
        let agents = self
            .agents
            .get_or_try_init(|| Bucket::open(self.effects.jetstream(), names::BUCKET_AGENTS))
            .await
            .map_err(internal)?;
        capabilities::check_published(agents, spec)
            .await
            .map_err(|error| match error {
                CheckError::Unsupported(refusal) => Status::invalid_argument(refusal.to_string()),
                CheckError::Bus(error) => internal(error),
            })
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
            let now = now_ms();
            let data = aviary_proto::events::EventData {
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                reason: format!("{method} refused: {}", refused.message()),
                actor: match refused.code() {
                    tonic::Code::PermissionDenied => refused
                        .message()
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                    _ => "unauthenticated".to_owned(),
                },
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
        Err(refused)
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

    /// Checks `command` against the current phase, queues it by CAS and wakes the owner.
    async fn command(
        &self,
        reference: Option<&pb::RolloutRef>,
        command: Command,
        caller: Caller,
    ) -> Result<Response<pb::Rollout>, Status> {
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

#[tonic::async_trait]
impl RolloutService for Api {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.authorize(&request, "Apply", Role::Operator)?;
        let text = request.into_inner().manifest;
        let rollout = aviary_core::parse_rollout(&text).map_err(|errors| {
            let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
            Status::invalid_argument(lines.join("\n"))
        })?;
        let key = names::rollout_key(rollout.namespace(), &rollout.metadata.name)
            .map_err(|e| Status::invalid_argument(format!("metadata: {e}")))?;
        self.check_capabilities(&rollout.spec).await?;
        let manifest = Manifest::new(&text);
        let mut changed = false;
        let written = self
            .records
            .update_with(&key, |current| match current {
                None => {
                    changed = true;
                    Some(RolloutRecord {
                        manifest: manifest.clone(),
                        status: RolloutStatus::new(&rollout.spec, 1),
                        rollout: rollout.clone(),
                        generation: 1,
                        commands: Vec::new(),
                        outbox: Vec::new(),
                        // Ids continue past any earlier rollout of the same name (deleted
                        // since), whose ids the events stream would drop as duplicates.
                        event_seq: now_ms(),
                        last_checks: Vec::new(),
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
        let reference = request.get_ref().r#ref.clone();
        let caller = self
            .authorize_for(&request, "Delete", Role::Operator, reference.as_ref())
            .await?;
        let entry = self.load(reference.as_ref()).await?;
        let record = &entry.value;
        if record.needs_driver() {
            return Err(Status::failed_precondition(format!(
                "rollout is {}: abort it or let it finish before deleting it",
                record.status.phase
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
        info!(rollout = %entry.key, actor = %caller.identity, "rollout deleted");
        let reason = &request.get_ref().reason;
        let event = convert::deleted_event(record, &caller.identity, reason, now_ms());
        if let Err(error) = self.effects.publish_event(&event).await {
            warn!(%error, rollout = %entry.key, "deletion not audited");
        }
        Ok(Response::new(convert::rollout(record, entry.revision)))
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
}
