//! The resource's status and Events mirror the rollout: every audit event on
//! `aviary.events.<ns>.<name>` becomes a Kubernetes Event on the resource, and the status is
//! refreshed from the scheduler (phase, canaryWeight, failedChecks, iterations,
//! lastTransitionTime, the `Promoted` condition), so `kubectl get` and `kubectl describe` show
//! what Flagger users know. Only the leading replica subscribes.

use std::sync::Arc;

use aviary_bus::typed::{Json, Subscriber};
use aviary_bus::{BusMetrics, names};
use aviary_proto::Phase;
use aviary_proto::events::AuditEvent;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Ctx;
use crate::crd::{Condition, ResourceStatus};
use crate::resource::{self, Key};

/// Mirrors audit events until `stop`.
///
/// # Errors
/// The subscription could not be made.
pub async fn serve(
    ctx: Arc<Ctx>,
    client: async_nats::Client,
    metrics: Arc<BusMetrics>,
    stop: CancellationToken,
) -> Result<(), aviary_bus::BusError> {
    let mut sub =
        Subscriber::<AuditEvent, Json>::subscribe(&client, names::EVENTS_SUBJECTS, metrics).await?;
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => break,
            r = sub.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        if let Err(error) = mirror(&ctx, &received.message).await {
            warn!(event = %received.message.id, %error, "status not mirrored");
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

/// The Flagger-style reason of an event type: `dev.aviary.rollout.rolled-back` → `RolledBack`.
pub fn reason(event_type: &str) -> String {
    let kind = event_type.rsplit('.').next().unwrap_or(event_type);
    kind.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

async fn mirror(ctx: &Ctx, event: &AuditEvent) -> anyhow::Result<()> {
    let data = &event.data;
    let Some((kind, obj)) =
        resource::find(&ctx.kube, &ctx.kinds, &data.namespace, &data.name).await?
    else {
        return Ok(());
    };
    let key = Key::of(kind, &obj);
    let reason = reason(&event.ty);
    let warning = matches!(
        reason.as_str(),
        "RolledBack" | "Halted" | "DeadlineExceeded" | "Refused"
    );
    let message = if data.reason.is_empty() {
        format!("{} (canary {}%)", data.phase, data.canary_weight)
    } else {
        data.reason.clone()
    };
    resource::record_event(
        &ctx.kube,
        &key,
        obj.metadata.uid.clone(),
        warning,
        &reason,
        &message,
    )
    .await?;
    refresh(ctx, &key, &resource::status_of(&obj), &event.time).await
}

/// Writes the scheduler's view of `key` into the resource's status.
///
/// # Errors
/// The scheduler or the API failed.
pub async fn refresh(
    ctx: &Ctx,
    key: &Key,
    current: &ResourceStatus,
    time: &str,
) -> anyhow::Result<()> {
    let Some(rollout) = ctx.scheduler.get(&key.namespace, &key.name).await? else {
        return Ok(());
    };
    let st = rollout.status.unwrap_or_default();
    let phase = Phase::try_from(st.phase).unwrap_or(Phase::Unspecified);
    let phase_name = phase_name(phase);
    let changed = current.phase.as_deref() != Some(phase_name);
    let transition = if changed {
        Some(time.to_owned())
    } else {
        current.last_transition_time.clone()
    };
    let (promoted, why) = match phase {
        Phase::Succeeded => ("True", "Succeeded"),
        Phase::Initialized => ("True", "Initialized"),
        Phase::Failed => ("False", "Failed"),
        _ => ("Unknown", phase_name),
    };
    let condition = Condition {
        type_: "Promoted".into(),
        status: promoted.into(),
        reason: Some(why.into()),
        message: Some(if st.message.is_empty() {
            phase_name.to_owned()
        } else {
            st.message.clone()
        }),
        last_transition_time: if changed {
            Some(time.to_owned())
        } else {
            current
                .conditions
                .first()
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(time.to_owned()))
        },
        last_update_time: Some(time.to_owned()),
    };
    let message = if st.halt_reason.is_empty() {
        st.message.clone()
    } else {
        st.halt_reason.clone()
    };
    // Nothing but the time would change: no write, so a status write never feeds itself
    // through the resource's own watch.
    let old = current.conditions.first();
    let same = !changed
        && current.canary_weight == st.canary_weight
        && current.failed_checks == st.failed_checks
        && current.iterations == st.iterations
        && current.message.as_deref() == Some(message.as_str())
        && old.is_some_and(|c| {
            c.status == condition.status
                && c.reason == condition.reason
                && c.message == condition.message
        });
    if same {
        return Ok(());
    }
    resource::patch_status(
        &ctx.kube,
        key,
        json!({
            "phase": phase_name,
            "canaryWeight": st.canary_weight,
            "failedChecks": st.failed_checks,
            "iterations": st.iterations,
            "lastTransitionTime": transition,
            "message": message,
            "conditions": [condition],
        }),
    )
    .await?;
    Ok(())
}

/// The phase as Flagger names it.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Unspecified => "Unknown",
        Phase::Initializing => "Initializing",
        Phase::Initialized => "Initialized",
        Phase::Waiting => "Waiting",
        Phase::Progressing => "Progressing",
        Phase::WaitingPromotion => "WaitingPromotion",
        Phase::Promoting => "Promoting",
        Phase::Finalising => "Finalising",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
        Phase::Paused => "Paused",
    }
}

#[cfg(test)]
mod tests {
    use super::reason;

    #[test]
    fn event_types_read_as_flagger_reasons() {
        assert_eq!(reason("dev.aviary.rollout.rolled-back"), "RolledBack");
        assert_eq!(reason("dev.aviary.rollout.succeeded"), "Succeeded");
        assert_eq!(reason("dev.aviary.rollout.step-advanced"), "StepAdvanced");
    }
}
