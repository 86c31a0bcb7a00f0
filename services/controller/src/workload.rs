//! The workload lifecycle as pure functions on Kubernetes objects: what the `-primary`
//! workload, the three Services and the configs' copies look like, what a target's revision
//! is, how a workload is scaled, and whether it finished rolling out. No I/O:
//! [`crate::reconcile`] and [`crate::commands`] read the objects, call these, and write the
//! results.
//!
//! A target is a Deployment or a DaemonSet ([`Workload`]). A DaemonSet has no replica count,
//! so as in Flagger it is scaled to zero by a node selector no node matches
//! ([`SCALE_TO_ZERO`]), and scaled up by removing it; that selector is no part of its revision.
//!
//! Naming follows Flagger: for a target `podinfo`, the primary is `podinfo-primary` (selector
//! labels' values suffixed `-primary`), the Services are `podinfo` (apex, to the primary),
//! `podinfo-primary` and `podinfo-canary`, and each ConfigMap or Secret the pods use is copied
//! as `<name>-primary` for the primary, so a config change reaches the primary only with a
//! promotion.

use std::collections::{BTreeMap, BTreeSet};

use aviary_core::spec::{ServiceSpec, WorkloadKind};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PodSpec, PodTemplateSpec, Secret, Service, ServicePort, ServiceSpec as K8sService,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Suffix of the primary workload, its Service and config copies.
pub const PRIMARY_SUFFIX: &str = "-primary";
/// Suffix of the canary Service.
pub const CANARY_SUFFIX: &str = "-canary";
/// Annotation on the primary workload: the revision its template came from.
pub const REVISION_ANNOTATION: &str = "aviary.dev/revision";
/// Label on every object the controller creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "aviary");

/// `<name>-primary`.
pub fn primary_name(name: &str) -> String {
    format!("{name}{PRIMARY_SUFFIX}")
}

/// `<name>-canary`.
pub fn canary_name(name: &str) -> String {
    format!("{name}{CANARY_SUFFIX}")
}

/// The ConfigMaps and Secrets a pod template uses (env, envFrom, volumes, projected volumes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRefs {
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
    /// Secret names.
    pub secrets: BTreeSet<String>,
}

impl ConfigRefs {
    /// Collects the references of `template`.
    pub fn of(template: &PodTemplateSpec) -> Self {
        let mut refs = ConfigRefs::default();
        let Some(pod) = &template.spec else {
            return refs;
        };
        visit_refs(pod, &mut |kind, name| {
            match kind {
                RefKind::ConfigMap => refs.config_maps.insert(name.to_owned()),
                RefKind::Secret => refs.secrets.insert(name.to_owned()),
            };
        });
        refs
    }
}

#[derive(Clone, Copy)]
enum RefKind {
    ConfigMap,
    Secret,
}

/// Calls `f` for every config reference in `pod`.
fn visit_refs(pod: &PodSpec, f: &mut dyn FnMut(RefKind, &str)) {
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in containers {
        for env in c.env.iter().flatten() {
            if let Some(from) = &env.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    f(RefKind::ConfigMap, &r.name);
                }
                if let Some(r) = &from.secret_key_ref {
                    f(RefKind::Secret, &r.name);
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                f(RefKind::ConfigMap, &r.name);
            }
            if let Some(r) = &from.secret_ref {
                f(RefKind::Secret, &r.name);
            }
        }
    }
    for v in pod.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            f(RefKind::ConfigMap, &cm.name);
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            f(RefKind::Secret, s);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                f(RefKind::ConfigMap, &cm.name);
            }
            if let Some(s) = &source.secret {
                f(RefKind::Secret, &s.name);
            }
        }
    }
}

/// Renames every config reference in `pod` to its `-primary` copy.
fn rename_refs(pod: &mut PodSpec) {
    let renamed = |name: &mut String| *name = primary_name(name);
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for c in containers {
        for env in c.env.iter_mut().flatten() {
            if let Some(from) = &mut env.value_from {
                if let Some(r) = &mut from.config_map_key_ref {
                    renamed(&mut r.name);
                }
                if let Some(r) = &mut from.secret_key_ref {
                    renamed(&mut r.name);
                }
            }
        }
        for from in c.env_from.iter_mut().flatten() {
            if let Some(r) = &mut from.config_map_ref {
                renamed(&mut r.name);
            }
            if let Some(r) = &mut from.secret_ref {
                renamed(&mut r.name);
            }
        }
    }
    for v in pod.volumes.iter_mut().flatten() {
        if let Some(cm) = &mut v.config_map {
            renamed(&mut cm.name);
        }
        if let Some(s) = v.secret.as_mut().and_then(|s| s.secret_name.as_mut()) {
            renamed(s);
        }
        for source in v
            .projected
            .iter_mut()
            .flat_map(|p| p.sources.iter_mut().flatten())
        {
            if let Some(cm) = &mut source.config_map {
                renamed(&mut cm.name);
            }
            if let Some(s) = &mut source.secret {
                renamed(&mut s.name);
            }
        }
    }
}

/// The content of the configs a template uses, as read from the cluster (name → data).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Configs {
    /// ConfigMaps by name.
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, Secret>,
}

/// The revision of a target: a hash of its pod template and of the data of every config it
/// uses. Labels and annotations on the workload itself, and its replica count, are not part
/// of it, so scaling or relabelling the target starts no rollout; anything in the pod template
/// (image, env, template labels) or in a used ConfigMap or Secret does. `template` is
/// [`Workload::template`], without a DaemonSet's [`SCALE_TO_ZERO`] selector.
pub fn revision(template: &PodTemplateSpec, configs: &Configs) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(template).unwrap_or_default());
    for (name, cm) in &configs.config_maps {
        h.update(b"\0cm\0");
        h.update(name.as_bytes());
        h.update(serde_json::to_vec(&cm.data).unwrap_or_default());
        h.update(serde_json::to_vec(&cm.binary_data).unwrap_or_default());
    }
    for (name, s) in &configs.secrets {
        h.update(b"\0secret\0");
        h.update(name.as_bytes());
        h.update(serde_json::to_vec(&s.data).unwrap_or_default());
        h.update(serde_json::to_vec(&s.string_data).unwrap_or_default());
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The node selector that scales a DaemonSet to zero: a DaemonSet has no replica count, so
/// its pod template is given a node label no node carries (Flagger does the same with its own
/// label). Removing it scales the DaemonSet up again, to every node it selects.
pub const SCALE_TO_ZERO: (&str, &str) = ("aviary.dev/scale-to-zero", "true");

/// A workload a `targetRef` names, or its `-primary` copy: the operations of the lifecycle,
/// whatever its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// `apps/v1` `Deployment`: scaled by `spec.replicas`.
    Deployment(Deployment),
    /// `apps/v1` `DaemonSet`: one pod on each node it selects; scaled to zero by
    /// [`SCALE_TO_ZERO`].
    DaemonSet(DaemonSet),
}

impl Workload {
    /// Its kind.
    pub fn kind(&self) -> WorkloadKind {
        match self {
            Workload::Deployment(_) => WorkloadKind::Deployment,
            Workload::DaemonSet(_) => WorkloadKind::DaemonSet,
        }
    }

    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::DaemonSet(d) => &d.metadata,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// The revision a primary was made from ([`REVISION_ANNOTATION`]).
    pub fn revision_annotation(&self) -> Option<&str> {
        self.metadata()
            .annotations
            .as_ref()?
            .get(REVISION_ANNOTATION)
            .map(String::as_str)
    }

    /// The pod template as the user wrote it: without [`SCALE_TO_ZERO`], so a DaemonSet
    /// scaled down or up has the same template, and the same [`revision`].
    pub fn template(&self) -> PodTemplateSpec {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| s.template.clone()),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| {
                let mut template = s.template.clone();
                if let Some(pod) = &mut template.spec {
                    if let Some(selector) = &mut pod.node_selector {
                        selector.remove(SCALE_TO_ZERO.0);
                    }
                    // What the API server stores for an empty map: none.
                    if pod.node_selector.as_ref().is_some_and(BTreeMap::is_empty) {
                        pod.node_selector = None;
                    }
                }
                template
            }),
        }
        .unwrap_or_default()
    }

    /// Its selector labels (`spec.selector.matchLabels`).
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        let selector = match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.selector),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| &s.selector),
        };
        selector
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default()
    }

    /// The primary's selector labels: this workload's, each value suffixed `-primary`.
    pub fn primary_labels(&self) -> BTreeMap<String, String> {
        self.selector_labels()
            .into_iter()
            .map(|(k, v)| (k, primary_name(&v)))
            .collect()
    }

    /// The primary's pod template made from this workload's [`Workload::template`]: its
    /// selector labels renamed, its config references pointed at the `-primary` copies.
    pub fn primary_template(&self) -> PodTemplateSpec {
        let mut template = self.template();
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in self.primary_labels() {
            labels.insert(k, v);
        }
        if let Some(pod) = &mut template.spec {
            rename_refs(pod);
        }
        template
    }

    /// The `-primary` copy of this workload, of the same kind, at `revision`, owned by
    /// `owner`; a Deployment copy gets `replicas` (a DaemonSet has none).
    pub fn primary(
        &self,
        name: &str,
        namespace: &str,
        revision: &str,
        replicas: i32,
        owner: Option<OwnerReference>,
    ) -> Workload {
        let metadata = ObjectMeta {
            name: Some(primary_name(name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(managed_labels()),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_owned(),
                revision.to_owned(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        };
        let selector = LabelSelector {
            match_labels: Some(self.primary_labels()),
            ..LabelSelector::default()
        };
        match self {
            Workload::Deployment(d) => {
                let spec = d.spec.clone().unwrap_or_default();
                Workload::Deployment(Deployment {
                    metadata,
                    spec: Some(DeploymentSpec {
                        replicas: Some(replicas),
                        selector,
                        template: self.primary_template(),
                        strategy: spec.strategy,
                        min_ready_seconds: spec.min_ready_seconds,
                        progress_deadline_seconds: spec.progress_deadline_seconds,
                        revision_history_limit: spec.revision_history_limit,
                        paused: None,
                    }),
                    status: None,
                })
            }
            Workload::DaemonSet(d) => {
                let spec = d.spec.clone().unwrap_or_default();
                Workload::DaemonSet(DaemonSet {
                    metadata,
                    spec: Some(DaemonSetSpec {
                        selector,
                        template: self.primary_template(),
                        update_strategy: spec.update_strategy,
                        min_ready_seconds: spec.min_ready_seconds,
                        revision_history_limit: spec.revision_history_limit,
                    }),
                    status: None,
                })
            }
        }
    }

    /// How far it is scaled: a Deployment's `spec.replicas` (default 1); for a DaemonSet,
    /// which has no count, 0 when scaled to zero by [`SCALE_TO_ZERO`] and 1 otherwise (a pod
    /// on every node it selects).
    pub fn replicas(&self) -> i32 {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            Workload::DaemonSet(d) => i32::from(!daemonset_scaled_to_zero(d)),
        }
    }

    /// The JSON merge patch that scales it to `replicas`: `spec.replicas` of a Deployment; for
    /// a DaemonSet, zero adds [`SCALE_TO_ZERO`] to its pod template's node selector and any
    /// other count removes it (the user's own node selector stays as it is).
    pub fn scale_patch(&self, replicas: i32) -> Value {
        match self {
            Workload::Deployment(_) => json!({"spec": {"replicas": replicas}}),
            Workload::DaemonSet(_) => {
                let value = (replicas == 0).then_some(SCALE_TO_ZERO.1);
                json!({"spec": {"template": {"spec": {"nodeSelector": {SCALE_TO_ZERO.0: value}}}}})
            }
        }
    }

    /// Whether it finished rolling out at its own scale, and what was seen.
    ///
    /// A Deployment is done when the controller manager observed the latest generation and
    /// every replica is updated, ready and available — what `kubectl rollout status` waits
    /// for. A DaemonSet likewise, on every node it is scheduled on; one scheduled on no node
    /// (scaled to zero, or selecting no node) is not done: it runs nothing.
    pub fn rollout_status(&self) -> (bool, String) {
        match self {
            Workload::Deployment(d) => deployment_rollout_status(d, self.replicas()),
            Workload::DaemonSet(d) => daemonset_rollout_status(d),
        }
    }

    /// Whether it is scaled to zero and runs no pod any more, and what was seen.
    pub fn scaled_down(&self) -> (bool, String) {
        match self {
            Workload::Deployment(d) => {
                let spec = self.replicas();
                let running = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                (
                    spec == 0 && running == 0,
                    format!("{running} replicas running, {spec} wanted"),
                )
            }
            Workload::DaemonSet(d) => {
                let scaled = daemonset_scaled_to_zero(d);
                let generation = d.metadata.generation.unwrap_or(0);
                let observed = d
                    .status
                    .as_ref()
                    .is_some_and(|st| st.observed_generation.unwrap_or(0) >= generation);
                let running = d
                    .status
                    .as_ref()
                    .map_or(0, |st| st.current_number_scheduled + st.number_misscheduled);
                let wanted = if scaled {
                    "scaled to zero"
                } else {
                    "not scaled to zero"
                };
                (
                    scaled && observed && running == 0,
                    format!("pods on {running} nodes, {wanted}"),
                )
            }
        }
    }
}

/// Whether a DaemonSet's pod template carries [`SCALE_TO_ZERO`].
fn daemonset_scaled_to_zero(d: &DaemonSet) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|pod| pod.node_selector.as_ref())
        .is_some_and(|selector| selector.contains_key(SCALE_TO_ZERO.0))
}

fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])
}

/// The three Services of a workload-mode rollout: `<name>` and `<name>-primary` select the
/// primary's pods, `<name>-canary` the target's.
pub fn services(
    target: &Workload,
    name: &str,
    namespace: &str,
    svc: &ServiceSpec,
    owner: Option<OwnerReference>,
) -> [Service; 3] {
    let port = ServicePort {
        name: Some(svc.port_name().to_owned()),
        port: i32::from(svc.port),
        target_port: Some(IntOrString::Int(i32::from(svc.target_port()))),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    let make = |service_name: String, selector: BTreeMap<String, String>| Service {
        metadata: ObjectMeta {
            name: Some(service_name),
            namespace: Some(namespace.to_owned()),
            labels: Some(managed_labels()),
            owner_references: owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(K8sService {
            selector: Some(selector),
            ports: Some(vec![port.clone()]),
            type_: Some("ClusterIP".to_owned()),
            ..K8sService::default()
        }),
        status: None,
    };
    [
        make(name.to_owned(), target.primary_labels()),
        make(primary_name(name), target.primary_labels()),
        make(canary_name(name), target.selector_labels()),
    ]
}

/// The `-primary` copy of a ConfigMap.
pub fn primary_config_map(cm: &ConfigMap, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: copy_meta(&cm.metadata, owner),
        data: cm.data.clone(),
        binary_data: cm.binary_data.clone(),
        immutable: None,
    }
}

/// The `-primary` copy of a Secret.
pub fn primary_secret(s: &Secret, owner: Option<OwnerReference>) -> Secret {
    Secret {
        metadata: copy_meta(&s.metadata, owner),
        data: s.data.clone(),
        string_data: s.string_data.clone(),
        type_: s.type_.clone(),
        immutable: None,
    }
}

fn copy_meta(meta: &ObjectMeta, owner: Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.as_deref().map(primary_name),
        namespace: meta.namespace.clone(),
        labels: Some(managed_labels()),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn deployment_rollout_status(d: &Deployment, want: i32) -> (bool, String) {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = &d.status else {
        return (false, format!("0/{want} replicas ready (no status yet)"));
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return (false, "waiting for the rollout to be observed".to_owned());
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    // Done when the old replicas are gone too, as `kubectl rollout status` waits for.
    let done = updated >= want && ready >= want && available >= want && total <= want;
    (
        done,
        format!("{ready}/{want} replicas ready, {updated} updated"),
    )
}

fn daemonset_rollout_status(d: &DaemonSet) -> (bool, String) {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = &d.status else {
        return (false, "no pods ready (no status yet)".to_owned());
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return (false, "waiting for the rollout to be observed".to_owned());
    }
    let desired = st.desired_number_scheduled;
    if desired == 0 {
        let why = if daemonset_scaled_to_zero(d) {
            "scaled to zero"
        } else {
            "its pod template matches no node"
        };
        return (false, format!("scheduled on no node: {why}"));
    }
    let updated = st.updated_number_scheduled.unwrap_or(0);
    let ready = st.number_ready;
    let available = st.number_available.unwrap_or(0);
    let done = updated == desired && ready == desired && available == desired;
    (
        done,
        format!("{ready}/{desired} nodes ready, {updated} updated"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn target() -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "podinfo", "namespace": "test", "labels": {"team": "a"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "podinfo"}},
                "template": {
                    "metadata": {"labels": {"app": "podinfo"}},
                    "spec": {
                        "containers": [{
                            "name": "app", "image": "podinfo:1",
                            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}}],
                            "envFrom": [{"secretRef": {"name": "creds"}}]
                        }],
                        "volumes": [{"name": "v", "configMap": {"name": "files"}}]
                    }
                }
            }
        }))
        .unwrap()
    }

    #[test]
    fn config_references_are_found_and_renamed_for_the_primary() {
        let t = target();
        let refs = ConfigRefs::of(&t.spec.as_ref().unwrap().template);
        assert_eq!(
            refs.config_maps.into_iter().collect::<Vec<_>>(),
            ["cfg", "files"]
        );
        assert_eq!(refs.secrets.into_iter().collect::<Vec<_>>(), ["creds"]);
        let Workload::Deployment(p) =
            Workload::Deployment(t.clone()).primary("podinfo", "test", "r1", 2, None)
        else {
            panic!("a Deployment's primary is a Deployment");
        };
        let primary_refs = ConfigRefs::of(&p.spec.as_ref().unwrap().template);
        assert_eq!(
            primary_refs.config_maps.into_iter().collect::<Vec<_>>(),
            ["cfg-primary", "files-primary"]
        );
        assert_eq!(
            p.spec.as_ref().unwrap().selector.match_labels,
            Some(BTreeMap::from([("app".into(), "podinfo-primary".into())]))
        );
        let labels = p.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app"], "podinfo-primary");
    }

    #[test]
    fn the_revision_follows_the_template_and_configs_but_not_deployment_labels() {
        let t = target();
        let template = &t.spec.as_ref().unwrap().template;
        let mut configs = Configs::default();
        let base = revision(template, &configs);

        let mut relabelled = t.clone();
        relabelled.metadata.labels = Some(BTreeMap::from([("team".into(), "b".into())]));
        relabelled.spec.as_mut().unwrap().replicas = Some(5);
        assert_eq!(
            revision(&relabelled.spec.as_ref().unwrap().template, &configs),
            base
        );

        let mut new_image = t.clone();
        new_image
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("podinfo:2".into());
        assert_ne!(
            revision(&new_image.spec.as_ref().unwrap().template, &configs),
            base
        );

        configs.config_maps.insert(
            "cfg".into(),
            ConfigMap {
                data: Some(BTreeMap::from([("a".into(), "1".into())])),
                ..ConfigMap::default()
            },
        );
        let with_config = revision(template, &configs);
        assert_ne!(with_config, base);
        configs.config_maps.get_mut("cfg").unwrap().data =
            Some(BTreeMap::from([("a".into(), "2".into())]));
        assert_ne!(revision(template, &configs), with_config);
    }

    #[test]
    fn services_select_primary_and_canary_pods() {
        let svc = ServiceSpec {
            port: 9898,
            ..ServiceSpec::default()
        };
        let target = Workload::Deployment(target());
        let [apex, primary, canary] = services(&target, "podinfo", "test", &svc, None);
        let sel = |s: &Service| s.spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(apex.metadata.name.as_deref(), Some("podinfo"));
        assert_eq!(sel(&apex)["app"], "podinfo-primary");
        assert_eq!(sel(&primary)["app"], "podinfo-primary");
        assert_eq!(canary.metadata.name.as_deref(), Some("podinfo-canary"));
        assert_eq!(sel(&canary)["app"], "podinfo");
    }

    #[test]
    fn rollout_status_waits_for_the_observed_generation_and_ready_replicas() {
        let rollout_status = |d: &Deployment| Workload::Deployment(d.clone()).rollout_status();
        let mut d = target();
        d.metadata.generation = Some(3);
        assert!(!rollout_status(&d).0);
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        });
        assert!(!rollout_status(&d).0, "generation 3 not observed yet");
        d.status.as_mut().unwrap().observed_generation = Some(3);
        assert!(rollout_status(&d).0);
        d.status.as_mut().unwrap().ready_replicas = Some(1);
        let (done, seen) = rollout_status(&d);
        assert!(!done);
        assert!(seen.contains("1/2"), "{seen}");
    }

    /// The target of the tests as a DaemonSet with a node selector of its own.
    fn daemonset() -> DaemonSet {
        let mut spec = serde_json::to_value(target().spec).unwrap();
        spec.as_object_mut().unwrap().remove("replicas");
        spec["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "podinfo", "namespace": "test", "generation": 1},
            "spec": spec
        }))
        .unwrap()
    }

    /// `d` with [`SCALE_TO_ZERO`] added to its node selector, as the scale patch adds it.
    fn scaled_to_zero(mut d: DaemonSet) -> DaemonSet {
        let pod = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(SCALE_TO_ZERO.0.into(), SCALE_TO_ZERO.1.into());
        d
    }

    fn node_selector(template: &PodTemplateSpec) -> Option<BTreeMap<String, String>> {
        template.spec.as_ref().unwrap().node_selector.clone()
    }

    #[test]
    fn a_daemonset_primary_is_a_daemonset_copy_without_the_scale_to_zero_selector() {
        let target = Workload::DaemonSet(scaled_to_zero(daemonset()));
        let Workload::DaemonSet(p) = target.primary("podinfo", "test", "r1", 1, None) else {
            panic!("a DaemonSet's primary is a DaemonSet");
        };
        let primary = Workload::DaemonSet(p.clone());
        assert_eq!(primary.revision_annotation(), Some("r1"));
        let spec = p.spec.unwrap();
        assert_eq!(
            spec.selector.match_labels,
            Some(BTreeMap::from([("app".into(), "podinfo-primary".into())]))
        );
        let labels = spec.template.metadata.as_ref().unwrap().labels.clone();
        assert_eq!(labels.unwrap()["app"], "podinfo-primary");
        assert_eq!(
            node_selector(&spec.template),
            Some(BTreeMap::from([("disk".into(), "ssd".into())])),
            "the user's node selector is copied, the scale-to-zero one is not"
        );
        let refs = ConfigRefs::of(&spec.template);
        assert_eq!(
            refs.config_maps.into_iter().collect::<Vec<_>>(),
            ["cfg-primary", "files-primary"]
        );
        assert_eq!(primary.replicas(), 1, "the primary runs on its nodes");
    }

    #[test]
    fn scaling_a_daemonset_moves_the_scale_to_zero_selector_and_is_no_new_revision() {
        let up = Workload::DaemonSet(daemonset());
        let down = Workload::DaemonSet(scaled_to_zero(daemonset()));
        assert_eq!((up.replicas(), down.replicas()), (1, 0));
        let configs = Configs::default();
        assert_eq!(
            revision(&down.template(), &configs),
            revision(&up.template(), &configs)
        );
        // Without a selector of its own, the one left after scaling up is an empty map.
        let mut bare = daemonset();
        let pod = bare.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.node_selector = None;
        let mut emptied = bare.clone();
        let pod = emptied
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod.node_selector = Some(BTreeMap::new());
        let (bare, emptied) = (Workload::DaemonSet(bare), Workload::DaemonSet(emptied));
        assert_eq!(
            revision(&emptied.template(), &configs),
            revision(&bare.template(), &configs)
        );

        let selector = |patch: Value| patch["spec"]["template"]["spec"]["nodeSelector"].clone();
        assert_eq!(
            selector(up.scale_patch(0)),
            json!({"aviary.dev/scale-to-zero": "true"})
        );
        assert_eq!(
            selector(down.scale_patch(3)),
            json!({"aviary.dev/scale-to-zero": null}),
            "a merge patch that removes only this key"
        );
        let deployment = Workload::Deployment(target());
        assert_eq!(deployment.scale_patch(0), json!({"spec": {"replicas": 0}}));
    }

    #[test]
    fn a_daemonset_is_ready_on_every_scheduled_node_and_scaled_down_on_none() {
        use k8s_openapi::api::apps::v1::DaemonSetStatus;
        let with = |d: DaemonSet, status: DaemonSetStatus| {
            Workload::DaemonSet(DaemonSet {
                status: Some(status),
                ..d
            })
        };
        let running = DaemonSetStatus {
            observed_generation: Some(1),
            desired_number_scheduled: 3,
            current_number_scheduled: 3,
            updated_number_scheduled: Some(3),
            number_ready: 3,
            number_available: Some(3),
            ..DaemonSetStatus::default()
        };
        assert!(
            !Workload::DaemonSet(daemonset()).rollout_status().0,
            "no status yet"
        );
        let ready = with(daemonset(), running.clone());
        assert!(ready.rollout_status().0);
        assert!(!ready.scaled_down().0);

        let stale = with(
            daemonset(),
            DaemonSetStatus {
                observed_generation: Some(0),
                ..running.clone()
            },
        );
        assert!(!stale.rollout_status().0, "generation 1 not observed yet");
        let partly = with(
            daemonset(),
            DaemonSetStatus {
                number_ready: 2,
                number_available: Some(2),
                ..running.clone()
            },
        );
        let (done, seen) = partly.rollout_status();
        assert!(!done);
        assert!(seen.contains("2/3 nodes"), "{seen}");
        let old_pods = with(
            daemonset(),
            DaemonSetStatus {
                updated_number_scheduled: Some(1),
                ..running.clone()
            },
        );
        assert!(
            !old_pods.rollout_status().0,
            "two nodes run the old template"
        );

        // Scaled to zero: nothing is desired, which is scaled down, not ready.
        let zero = DaemonSetStatus {
            observed_generation: Some(1),
            ..DaemonSetStatus::default()
        };
        let down = with(scaled_to_zero(daemonset()), zero.clone());
        let (done, seen) = down.rollout_status();
        assert!(!done);
        assert!(seen.contains("scaled to zero"), "{seen}");
        assert!(down.scaled_down().0);
        let leaving = with(
            scaled_to_zero(daemonset()),
            DaemonSetStatus {
                number_misscheduled: 1,
                ..zero.clone()
            },
        );
        assert!(!leaving.scaled_down().0, "a pod still runs on a node");
        let nowhere = with(daemonset(), zero);
        assert!(!nowhere.rollout_status().0);
        assert!(!nowhere.scaled_down().0, "not scaled to zero by Aviary");
    }
}
