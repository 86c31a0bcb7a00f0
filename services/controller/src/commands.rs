//! Carrying out the scheduler's workload commands (`aviary.workload.<ns>.<name>`, queue group
//! `aviary-controller`): scale the canary up and report when it is ready, copy the canary's
//! template and configs to the primary and report when its rollout finished, scale the canary
//! down. Only the leading replica subscribes.
//!
//! Each operation is idempotent and answered at once with what was observed: `done` when the
//! state asked for is reached, otherwise the scheduler asks again a little later (and counts
//! the wait toward `progressDeadlineSeconds`). A command for another canary revision than the
//! target's current one is refused, since the target changed again and the scheduler is about
//! to get the new revision.

use aviary_bus::typed::{Received, Subscriber};
use aviary_bus::{BusMetrics, names};
use aviary_proto::{WorkloadAck, WorkloadCommand, WorkloadOp};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::Ctx;
use crate::reconcile;
use crate::resource::{self, Key};
use crate::workload::{self, Workload};

/// Serves workload commands until `stop`.
///
/// # Errors
/// The subscription could not be made.
pub async fn serve(
    ctx: Arc<Ctx>,
    client: async_nats::Client,
    metrics: Arc<BusMetrics>,
    stop: CancellationToken,
) -> Result<(), aviary_bus::BusError> {
    let mut sub = Subscriber::<WorkloadCommand>::queue_subscribe(
        &client,
        names::WORKLOAD_ALL,
        names::QUEUE_CONTROLLER,
        metrics,
    )
    .await?;
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => break,
            r = sub.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let ctx = ctx.clone();
        let client = client.clone();
        let span = received.span.clone();
        tokio::spawn(async move { answer(&ctx, &client, received).await }.instrument(span));
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

async fn answer(ctx: &Ctx, client: &async_nats::Client, received: Received<WorkloadCommand>) {
    let command = &received.message;
    let op = WorkloadOp::try_from(command.op).unwrap_or(WorkloadOp::Unspecified);
    let ack = match carry_out(ctx, command, op).await {
        Ok((done, observed)) => WorkloadAck {
            idempotency_key: command.idempotency_key.clone(),
            ok: true,
            done,
            observed,
            error: String::new(),
        },
        Err(error) => WorkloadAck {
            idempotency_key: command.idempotency_key.clone(),
            ok: false,
            done: false,
            observed: String::new(),
            error,
        },
    };
    ctx.metrics.command(op.as_str_name(), ack.ok, ack.done);
    info!(key = %command.idempotency_key, op = op.as_str_name(), ok = ack.ok, done = ack.done, observed = %ack.observed, error = %ack.error, "workload command");
    if let Err(error) = received.respond(client, &ack).await {
        warn!(%error, "workload ack not sent");
    }
}

/// Carries out one operation; `(done, observed)`, or why it cannot be carried out.
async fn carry_out(
    ctx: &Ctx,
    command: &WorkloadCommand,
    op: WorkloadOp,
) -> Result<(bool, String), String> {
    let rollout_ref = command.rollout.clone().unwrap_or_default();
    let (ns, name) = (rollout_ref.namespace.as_str(), rollout_ref.name.as_str());
    let Some((kind, obj)) = resource::find(&ctx.kube, &ctx.kinds, ns, name)
        .await
        .map_err(|e| format!("kubernetes: {e}"))?
    else {
        return Err(format!("no resource {ns}/{name}"));
    };
    let decoded = resource::decode(&ctx.kube, ctx.namespace.as_deref(), kind, &obj)
        .await
        .map_err(|e| e.join("; "))?;
    let rollout = decoded.rollout;
    let Some(target_ref) = rollout.spec.target_ref.clone() else {
        return Err(format!("{ns}/{name} is not in workload mode"));
    };
    let kube_err = |e: kube::Error| format!("kubernetes: {e}");
    let target_kind = target_ref.kind;
    let target = reconcile::target_state(&ctx.kube, &rollout)
        .await
        .map_err(kube_err)?
        .ok_or_else(|| {
            format!(
                "target {} {} not found",
                target_kind.as_str(),
                target_ref.name
            )
        })?;
    if !command.canary_revision.is_empty() && command.canary_revision != target.revision {
        return Err(format!(
            "the target changed: it is at revision {}, not {}",
            target.revision, command.canary_revision
        ));
    }
    let primary_name = workload::primary_name(name);
    let primary = reconcile::get_workload(&ctx.kube, ns, target_kind, &primary_name)
        .await
        .map_err(kube_err)?
        .ok_or_else(|| format!("{primary_name} does not exist yet"))?;
    match op {
        WorkloadOp::ScaleCanaryUp => {
            let canary = scale_to(ctx, ns, &target.workload, primary.replicas().max(1)).await?;
            Ok(canary.rollout_status())
        }
        WorkloadOp::PromotePrimary => {
            let primary = if primary.revision_annotation() != Some(target.revision.as_str()) {
                let owner = resource::owner_reference(kind, &obj);
                reconcile::copy_configs(&ctx.kube, ns, &target.configs, owner.clone())
                    .await
                    .map_err(kube_err)?;
                let desired =
                    target
                        .workload
                        .primary(name, ns, &target.revision, primary.replicas(), owner);
                reconcile::apply_workload(&ctx.kube, ns, &desired)
                    .await
                    .map_err(kube_err)?
            } else {
                primary
            };
            let (done, seen) = primary.rollout_status();
            if done {
                let key = Key::of(kind, &obj);
                resource::patch_status(
                    &ctx.kube,
                    &key,
                    json!({"lastPromotedSpec": target.revision}),
                )
                .await
                .map_err(kube_err)?;
            }
            Ok((
                done,
                format!("{primary_name} at revision {}: {seen}", target.revision),
            ))
        }
        WorkloadOp::ScaleCanaryDown => {
            let canary = scale_to(ctx, ns, &target.workload, 0).await?;
            Ok(canary.scaled_down())
        }
        WorkloadOp::Unspecified => Err("unknown workload operation".into()),
    }
}

/// Scales `target` to `replicas` unless it is there already; the target as read afterwards.
async fn scale_to(
    ctx: &Ctx,
    ns: &str,
    target: &Workload,
    replicas: i32,
) -> Result<Workload, String> {
    let kube_err = |e: kube::Error| format!("kubernetes: {e}");
    if target.replicas() == replicas {
        return Ok(target.clone());
    }
    reconcile::scale(&ctx.kube, ns, target, replicas)
        .await
        .map_err(kube_err)?;
    reconcile::get_workload(&ctx.kube, ns, target.kind(), target.name())
        .await
        .map_err(kube_err)?
        .ok_or_else(|| {
            format!(
                "target {} {} is gone",
                target.kind().as_str(),
                target.name()
            )
        })
}
