//! Reconciling one resource: initialise its workloads, detect a new revision of its target,
//! and hand the scheduler the rollout to run; and, on deletion with `revertOnDeletion`, put
//! the target back and remove what Aviary created.
//!
//! Flow for a resource in workload mode (Flagger's lifecycle, DESIGN.md §8):
//! decode → target and its configs → revision hash → no `-primary` yet: copy the configs,
//! create the primary and the Services, copy the HPA → primary ready: scale the target to zero,
//! record `lastPromotedSpec` (Initialized) → every time: apply to the scheduler the rollout
//! whose canary is the target at its current revision and whose primary is the revision the
//! primary runs. The scheduler's machine decides the rest and asks for it over the bus
//! ([`crate::commands`]); a new revision mid-run is a new canary revision, so the machine
//! restarts its run.

use std::time::Duration;

use aviary_core::spec::{Rollout, Target, WorkloadKind};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::Ctx;
use crate::crd::FINALIZER;
use crate::resource::{self, FIELD_MANAGER, Key};
use crate::workload::{self, ConfigRefs, Configs, Workload};

/// How soon to look again while waiting for a workload.
const WAIT: Duration = Duration::from_secs(2);
/// How soon to look again after a failure (a missing target, a scheduler that is down).
const RETRY: Duration = Duration::from_secs(10);

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The scheduler failed.
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::SchedulerError),
}

/// The outcome of one reconcile: when to look again, if before the next watch event.
pub type Requeue = Option<Duration>;

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `obj` (created when absent).
async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> kube::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(name, &apply_params(), &Patch::Apply(obj)).await
}

/// Reads the workload `kind` `name`; `Ok(None)` when it does not exist.
pub async fn get_workload(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
) -> kube::Result<Option<Workload>> {
    Ok(match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(Workload::Deployment),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(Workload::DaemonSet),
    })
}

/// Server-side applies `workload` (created when absent); returns it as stored.
pub async fn apply_workload(
    client: &Client,
    namespace: &str,
    workload: &Workload,
) -> kube::Result<Workload> {
    let name = workload.name();
    Ok(match workload {
        Workload::Deployment(d) => {
            Workload::Deployment(apply(&Api::namespaced(client.clone(), namespace), name, d).await?)
        }
        Workload::DaemonSet(d) => {
            Workload::DaemonSet(apply(&Api::namespaced(client.clone(), namespace), name, d).await?)
        }
    })
}

/// Scales `workload` to `replicas` with its [`Workload::scale_patch`] (for a DaemonSet, zero
/// or not).
pub async fn scale(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    replicas: i32,
) -> kube::Result<()> {
    let patch = Patch::Merge(workload.scale_patch(replicas));
    let params = PatchParams::default();
    let name = workload.name();
    match workload.kind() {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(|_| ()),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(|_| ()),
    }
}

async fn delete_workload(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
) -> kube::Result<()> {
    match kind {
        WorkloadKind::Deployment => {
            delete_opt(
                &Api::<Deployment>::namespaced(client.clone(), namespace),
                name,
            )
            .await
        }
        WorkloadKind::DaemonSet => {
            delete_opt(
                &Api::<DaemonSet>::namespaced(client.clone(), namespace),
                name,
            )
            .await
        }
    }
}

/// The target's configs, read from the cluster. A config that does not exist is left out
/// (the pods would not start either; the readiness check reports that).
pub async fn read_configs(
    client: &Client,
    namespace: &str,
    refs: &ConfigRefs,
) -> kube::Result<Configs> {
    let cms = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut configs = Configs::default();
    for name in &refs.config_maps {
        if let Some(cm) = cms.get_opt(name).await? {
            configs.config_maps.insert(name.clone(), cm);
        }
    }
    for name in &refs.secrets {
        if let Some(s) = secrets.get_opt(name).await? {
            configs.secrets.insert(name.clone(), s);
        }
    }
    Ok(configs)
}

/// Writes the `-primary` copies of `configs`.
pub async fn copy_configs(
    client: &Client,
    namespace: &str,
    configs: &Configs,
    owner: Option<OwnerReference>,
) -> kube::Result<()> {
    let cms = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    for (name, cm) in &configs.config_maps {
        let copy = workload::primary_config_map(cm, owner.clone());
        apply(&cms, &workload::primary_name(name), &copy).await?;
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    for (name, s) in &configs.secrets {
        let copy = workload::primary_secret(s, owner.clone());
        apply(&secrets, &workload::primary_name(name), &copy).await?;
    }
    Ok(())
}

/// The target workload and the revision of its template and configs.
pub struct TargetState {
    /// The Deployment or DaemonSet.
    pub workload: Workload,
    /// Its configs' content.
    pub configs: Configs,
    /// [`workload::revision`] of both.
    pub revision: String,
}

/// Reads the target of `rollout` and computes its revision; `Ok(None)` when it is missing.
///
/// # Errors
/// The API failed.
pub async fn target_state(
    client: &Client,
    rollout: &Rollout,
) -> Result<Option<TargetState>, kube::Error> {
    let Some(target) = &rollout.spec.target_ref else {
        return Ok(None);
    };
    let ns = rollout.namespace();
    let Some(workload) = get_workload(client, ns, target.kind, &target.name).await? else {
        return Ok(None);
    };
    let template = workload.template();
    let configs = read_configs(client, ns, &ConfigRefs::of(&template)).await?;
    let revision = workload::revision(&template, &configs);
    Ok(Some(TargetState {
        workload,
        configs,
        revision,
    }))
}

/// The rollout the scheduler runs for a workload-mode resource: the two sides are the
/// `-primary` and `-canary` Services, the canary at the target's revision, the primary at the
/// revision it runs.
pub fn scheduler_rollout(
    decoded: &Rollout,
    canary_revision: &str,
    primary_revision: &str,
) -> Rollout {
    let mut r = decoded.clone();
    r.api_version = aviary_core::spec::API_VERSION.to_owned();
    r.kind = aviary_core::spec::KIND.to_owned();
    let ns = decoded.namespace().to_owned();
    r.metadata.namespace = Some(ns.clone());
    let name = &decoded.metadata.name;
    let port = decoded.spec.service.as_ref().map_or(80, |s| s.port);
    let side = |service: String, revision: &str| Target {
        endpoints: vec![format!("{service}.{ns}:{port}")],
        name: service,
        revision: Some(revision.to_owned()),
    };
    r.spec.primary = side(workload::primary_name(name), primary_revision);
    r.spec.canary = side(workload::canary_name(name), canary_revision);
    r
}

/// Reconciles the resource `key`.
///
/// # Errors
/// The API or the scheduler failed; the caller retries.
pub async fn reconcile(ctx: &Ctx, key: &Key) -> Result<Requeue, ReconcileError> {
    let client = &ctx.kube;
    let Some(obj) = key
        .kind
        .api(client, &key.namespace)
        .get_opt(&key.name)
        .await?
    else {
        return Ok(None);
    };
    let decoded = match resource::decode(client, ctx.namespace.as_deref(), key.kind, &obj).await {
        Ok(d) => d,
        Err(errors) => {
            invalid(ctx, key, &obj, &errors).await?;
            return Ok(None);
        }
    };
    let rollout = decoded.rollout;
    if obj.metadata.deletion_timestamp.is_some() {
        return finalize(ctx, key, &obj, &rollout).await;
    }
    let Some(target_ref) = rollout.spec.target_ref.clone() else {
        // Endpoint mode: the resource is the rollout as it stands.
        ctx.scheduler.apply(yaml(&rollout)).await?;
        return Ok(None);
    };
    if rollout.spec.revert_on_deletion && !obj.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = obj.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        key.kind
            .api(client, &key.namespace)
            .patch(
                &key.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
            )
            .await?;
    }
    let Some(target) = target_state(client, &rollout).await? else {
        note(
            ctx,
            key,
            &obj,
            &format!(
                "target {} {} not found",
                target_ref.kind.as_str(),
                target_ref.name
            ),
        )
        .await?;
        return Ok(Some(RETRY));
    };
    let ns = &key.namespace;
    let name = &key.name;
    let owner = resource::owner_reference(key.kind, &obj);
    let primary_name = workload::primary_name(name);
    let status = resource::status_of(&obj);

    let primary = get_workload(client, ns, target_ref.kind, &primary_name).await?;
    let Some(primary) = primary else {
        // Initializing: the primary is a copy of the target as it is now.
        copy_configs(client, ns, &target.configs, owner.clone()).await?;
        let replicas = initial_replicas(client, ns, &rollout, &target.workload).await?;
        let desired = target
            .workload
            .primary(name, ns, &target.revision, replicas, owner.clone());
        apply_workload(client, ns, &desired).await?;
        ensure_services(client, &target.workload, &rollout, owner.clone()).await?;
        copy_hpa(client, &rollout, owner.clone()).await?;
        info!(resource = %key, revision = %target.revision, "primary created");
        resource::patch_status(
            client,
            key,
            json!({"phase": "Initializing", "message": "creating the primary", "observedGeneration": obj.metadata.generation}),
        )
        .await?;
        resource::record_event(
            client,
            key,
            obj.metadata.uid.clone(),
            false,
            "Initializing",
            &format!("{primary_name} created from {}", target_ref.name),
        )
        .await?;
        return Ok(Some(WAIT));
    };
    ensure_services(client, &target.workload, &rollout, owner.clone()).await?;

    let promoted = match status.last_promoted_spec.clone() {
        Some(p) => p,
        None => {
            let (ready, seen) = primary.rollout_status();
            if !ready {
                note(
                    ctx,
                    key,
                    &obj,
                    &format!("waiting for {primary_name}: {seen}"),
                )
                .await?;
                return Ok(Some(WAIT));
            }
            scale(client, ns, &target.workload, 0).await?;
            let revision = primary
                .revision_annotation()
                .map_or_else(|| target.revision.clone(), str::to_owned);
            resource::patch_status(
                client,
                key,
                json!({"lastPromotedSpec": revision, "message": "primary ready; target scaled to zero"}),
            )
            .await?;
            resource::record_event(
                client,
                key,
                obj.metadata.uid.clone(),
                false,
                "Initialized",
                &format!(
                    "{primary_name} is ready; {} scaled to zero",
                    target_ref.name
                ),
            )
            .await?;
            revision
        }
    };
    if rollout.spec.suspend && status.last_applied_spec.as_deref() != Some(target.revision.as_str())
    {
        note(
            ctx,
            key,
            &obj,
            "suspended: the new revision waits until suspend is false",
        )
        .await?;
        return Ok(None);
    }
    let manifest = yaml(&scheduler_rollout(&rollout, &target.revision, &promoted));
    let changed = match ctx.scheduler.apply(manifest).await {
        Ok(changed) => changed,
        Err(error) => {
            note(ctx, key, &obj, &format!("not applied: {error}")).await?;
            return Ok(Some(RETRY));
        }
    };
    if status.last_applied_spec.as_deref() != Some(target.revision.as_str()) {
        resource::patch_status(
            client,
            key,
            json!({"lastAppliedSpec": target.revision, "observedGeneration": obj.metadata.generation}),
        )
        .await?;
        if promoted != target.revision {
            resource::record_event(
                client,
                key,
                obj.metadata.uid.clone(),
                false,
                "Synced",
                &format!("New revision detected! Scaling up {}.{ns}", target_ref.name),
            )
            .await?;
        }
    }
    if changed {
        info!(resource = %key, canary = %target.revision, primary = %promoted, "applied to the scheduler");
    }
    for w in &decoded.warnings {
        warn!(resource = %key, warning = %w, "field without effect");
    }
    Ok(None)
}

/// The manifest the control API's `Apply` reads (enums as mappings, as users write them).
fn yaml(rollout: &Rollout) -> String {
    aviary_core::flagger::to_manifest(rollout).unwrap_or_default()
}

/// The primary's replicas at creation: the target's (at least one), or the HPA's minimum.
/// (A DaemonSet has no replicas: it runs on every node it selects.)
async fn initial_replicas(
    client: &Client,
    ns: &str,
    rollout: &Rollout,
    target: &Workload,
) -> kube::Result<i32> {
    if target.kind() == WorkloadKind::Deployment
        && let Some(hpa) = &rollout.spec.autoscaler_ref
        && let Some(h) = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
            .get_opt(&hpa.name)
            .await?
    {
        return Ok(h.spec.and_then(|s| s.min_replicas).unwrap_or(1).max(1));
    }
    Ok(target.replicas().max(1))
}

async fn ensure_services(
    client: &Client,
    target: &Workload,
    rollout: &Rollout,
    owner: Option<OwnerReference>,
) -> kube::Result<()> {
    let Some(svc) = &rollout.spec.service else {
        return Ok(());
    };
    let api = Api::<Service>::namespaced(client.clone(), rollout.namespace());
    for service in workload::services(
        target,
        &rollout.metadata.name,
        rollout.namespace(),
        svc,
        owner,
    ) {
        let name = service.name_any();
        apply(&api, &name, &service).await?;
    }
    Ok(())
}

/// Copies the target's HPA as `<hpa>-primary`, scaling the primary.
async fn copy_hpa(
    client: &Client,
    rollout: &Rollout,
    owner: Option<OwnerReference>,
) -> kube::Result<()> {
    let Some(r) = &rollout.spec.autoscaler_ref else {
        return Ok(());
    };
    let api = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), rollout.namespace());
    let Some(hpa) = api.get_opt(&r.name).await? else {
        return Ok(());
    };
    let mut spec = hpa.spec.unwrap_or_default();
    spec.scale_target_ref.name = workload::primary_name(&rollout.metadata.name);
    let copy = HorizontalPodAutoscaler {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(workload::primary_name(&r.name)),
            namespace: Some(rollout.namespace().to_owned()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    apply(&api, &workload::primary_name(&r.name), &copy)
        .await
        .map(|_| ())
}

/// Shows why the resource cannot go on, in its status and (once per message) as an Event.
async fn note(ctx: &Ctx, key: &Key, obj: &DynamicObject, message: &str) -> kube::Result<()> {
    let status = resource::status_of(obj);
    if status.message.as_deref() == Some(message) {
        return Ok(());
    }
    resource::patch_status(&ctx.kube, key, json!({"message": message})).await?;
    resource::record_event(
        &ctx.kube,
        key,
        obj.metadata.uid.clone(),
        true,
        "Waiting",
        message,
    )
    .await
}

/// An invalid spec: every problem in the status, and one Warning Event per generation.
async fn invalid(ctx: &Ctx, key: &Key, obj: &DynamicObject, errors: &[String]) -> kube::Result<()> {
    let message = format!("invalid spec: {}", errors.join("; "));
    let status = resource::status_of(obj);
    if status.message.as_deref() == Some(message.as_str())
        && status.observed_generation == obj.metadata.generation
    {
        return Ok(());
    }
    resource::patch_status(
        &ctx.kube,
        key,
        json!({"message": message, "observedGeneration": obj.metadata.generation}),
    )
    .await?;
    resource::record_event(
        &ctx.kube,
        key,
        obj.metadata.uid.clone(),
        true,
        "InvalidSpec",
        &message,
    )
    .await
}

/// Deletion with the finalizer: abort a running rollout, put the target back (scaled up,
/// the apex Service selecting its pods), remove what Aviary created and the scheduler's
/// record, then release the finalizer.
async fn finalize(
    ctx: &Ctx,
    key: &Key,
    obj: &DynamicObject,
    rollout: &Rollout,
) -> Result<Requeue, ReconcileError> {
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let client = &ctx.kube;
    let ns = &key.namespace;
    let name = &key.name;
    // First the scheduler lets go (aborted, finished, deleted), so no workload command of the
    // run scales the target down again after it was put back.
    if let Some(current) = ctx.scheduler.get(ns, name).await? {
        let phase = current.status.as_ref().map_or(0, |s| s.phase);
        let terminal = [
            aviary_proto::Phase::Succeeded as i32,
            aviary_proto::Phase::Failed as i32,
        ]
        .contains(&phase);
        if !terminal {
            if let Err(e) = ctx.scheduler.abort(ns, name, "resource deleted").await {
                info!(resource = %key, error = %e, "abort on deletion");
            }
            return Ok(Some(WAIT));
        }
        if let Err(e) = ctx.scheduler.delete(ns, name, "resource deleted").await {
            info!(resource = %key, error = %e, "scheduler record not deleted yet");
            return Ok(Some(WAIT));
        }
    }
    if let Some(target_ref) = &rollout.spec.target_ref {
        let kind = target_ref.kind;
        let primary = get_workload(client, ns, kind, &workload::primary_name(name)).await?;
        if let Some(target) = get_workload(client, ns, kind, &target_ref.name).await? {
            let want = primary.as_ref().map_or(1, Workload::replicas).max(1);
            if target.replicas() != want {
                scale(client, ns, &target, want).await?;
                return Ok(Some(WAIT));
            }
            let (ready, _) = target.rollout_status();
            if !ready {
                return Ok(Some(WAIT));
            }
            // Traffic for the apex name goes to the target's pods again.
            let services = Api::<Service>::namespaced(client.clone(), ns);
            if services.get_opt(name).await?.is_some() {
                services
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"selector": target.selector_labels()}})),
                    )
                    .await?;
            }
            let refs = ConfigRefs::of(&target.template());
            let cms = Api::<ConfigMap>::namespaced(client.clone(), ns);
            for cm in &refs.config_maps {
                delete_opt(&cms, &workload::primary_name(cm)).await?;
            }
            let secrets = Api::<Secret>::namespaced(client.clone(), ns);
            for s in &refs.secrets {
                delete_opt(&secrets, &workload::primary_name(s)).await?;
            }
        }
        delete_workload(client, ns, kind, &workload::primary_name(name)).await?;
        let services = Api::<Service>::namespaced(client.clone(), ns);
        delete_opt(&services, &workload::primary_name(name)).await?;
        delete_opt(&services, &workload::canary_name(name)).await?;
        if let Some(hpa) = &rollout.spec.autoscaler_ref {
            let api = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns);
            delete_opt(&api, &workload::primary_name(&hpa.name)).await?;
        }
    }
    let finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    key.kind
        .api(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
        )
        .await?;
    info!(resource = %key, "reverted and released");
    Ok(None)
}

async fn delete_opt<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
