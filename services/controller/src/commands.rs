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
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::Ctx;
use crate::reconcile;
use crate::resource::{self, FIELD_MANAGER, Key};
use crate::workload;

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
    let target = reconcile::target_state(&ctx.kube, &rollout)
        .await
        .map_err(|e| format!("kubernetes: {e}"))?
        .ok_or_else(|| format!("target Deployment {} not found", target_ref.name))?;
    if !command.canary_revision.is_empty() && command.canary_revision != target.revision {
        return Err(format!(
            "the target changed: it is at revision {}, not {}",
            target.revision, command.canary_revision
        ));
    }
    let deployments = Api::<Deployment>::namespaced(ctx.kube.clone(), ns);
    let primary_name = workload::primary_name(name);
    let primary = deployments
        .get_opt(&primary_name)
        .await
        .map_err(|e| format!("kubernetes: {e}"))?
        .ok_or_else(|| format!("{primary_name} does not exist yet"))?;
    let kube_err = |e: kube::Error| format!("kubernetes: {e}");
    match op {
        WorkloadOp::ScaleCanaryUp => {
            let want = workload::replicas(&primary).max(1);
            if workload::replicas(&target.deployment) != want {
                reconcile::scale(&ctx.kube, ns, &target_ref.name, want)
                    .await
                    .map_err(kube_err)?;
                let d = deployments.get(&target_ref.name).await.map_err(kube_err)?;
                return Ok(workload::rollout_status(&d, want));
            }
            Ok(workload::rollout_status(&target.deployment, want))
        }
        WorkloadOp::PromotePrimary => {
            let at = primary
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(workload::REVISION_ANNOTATION));
            let primary = if at != Some(&target.revision) {
                let owner = resource::owner_reference(kind, &obj);
                reconcile::copy_configs(&ctx.kube, ns, &target.configs, owner.clone())
                    .await
                    .map_err(kube_err)?;
                let desired = workload::primary_deployment(
                    &target.deployment,
                    name,
                    ns,
                    &target.revision,
                    workload::replicas(&primary),
                    owner,
                );
                deployments
                    .patch(
                        &primary_name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&desired),
                    )
                    .await
                    .map_err(kube_err)?
            } else {
                primary
            };
            let (done, seen) = workload::rollout_status(&primary, workload::replicas(&primary));
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
            if workload::replicas(&target.deployment) != 0 {
                reconcile::scale(&ctx.kube, ns, &target_ref.name, 0)
                    .await
                    .map_err(kube_err)?;
                let d = deployments.get(&target_ref.name).await.map_err(kube_err)?;
                return Ok(workload::scaled_down(&d));
            }
            Ok(workload::scaled_down(&target.deployment))
        }
        WorkloadOp::Unspecified => Err("unknown workload operation".into()),
    }
}
