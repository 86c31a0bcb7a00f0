//! The workload lifecycle as pure functions on Kubernetes objects: what the `-primary`
//! Deployment, the three Services and the configs' copies look like, what a target's revision
//! is, and whether a Deployment finished rolling out. No I/O: [`crate::reconcile`] and
//! [`crate::commands`] read the objects, call these, and write the results.
//!
//! Naming follows Flagger: for a target `podinfo`, the primary is `podinfo-primary` (selector
//! labels' values suffixed `-primary`), the Services are `podinfo` (apex, to the primary),
//! `podinfo-primary` and `podinfo-canary`, and each ConfigMap or Secret the pods use is copied
//! as `<name>-primary` for the primary, so a config change reaches the primary only with a
//! promotion.

use std::collections::{BTreeMap, BTreeSet};

use aviary_core::spec::ServiceSpec;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PodSpec, PodTemplateSpec, Secret, Service, ServicePort, ServiceSpec as K8sService,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

/// Suffix of the primary Deployment, its Service and config copies.
pub const PRIMARY_SUFFIX: &str = "-primary";
/// Suffix of the canary Service.
pub const CANARY_SUFFIX: &str = "-canary";
/// Annotation on the primary Deployment: the revision its template came from.
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
/// uses. Labels and annotations on the Deployment itself, and its replica count, are not part
/// of it, so scaling or relabelling the target starts no rollout; anything in the pod template
/// (image, env, template labels) or in a used ConfigMap or Secret does.
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

/// The target's selector labels (`spec.selector.matchLabels`).
pub fn selector_labels(target: &Deployment) -> BTreeMap<String, String> {
    target
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
}

/// The primary's selector labels: the target's, each value suffixed `-primary`.
pub fn primary_labels(target: &Deployment) -> BTreeMap<String, String> {
    selector_labels(target)
        .into_iter()
        .map(|(k, v)| (k, primary_name(&v)))
        .collect()
}

/// The primary's pod template made from the target's: its selector labels renamed, its
/// config references pointed at the `-primary` copies.
pub fn primary_template(target: &Deployment) -> PodTemplateSpec {
    let mut template = target
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let primary = primary_labels(target);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in primary {
        labels.insert(k, v);
    }
    if let Some(pod) = &mut template.spec {
        rename_refs(pod);
    }
    template
}

fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])
}

/// The `-primary` Deployment for `target` at `revision`, with `replicas`, owned by `owner`.
pub fn primary_deployment(
    target: &Deployment,
    name: &str,
    namespace: &str,
    revision: &str,
    replicas: i32,
    owner: Option<OwnerReference>,
) -> Deployment {
    let spec = target.spec.clone().unwrap_or_default();
    Deployment {
        metadata: ObjectMeta {
            name: Some(primary_name(name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(managed_labels()),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_owned(),
                revision.to_owned(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(primary_labels(target)),
                ..LabelSelector::default()
            },
            template: primary_template(target),
            strategy: spec.strategy,
            min_ready_seconds: spec.min_ready_seconds,
            progress_deadline_seconds: spec.progress_deadline_seconds,
            revision_history_limit: spec.revision_history_limit,
            paused: None,
        }),
        status: None,
    }
}

/// The three Services of a workload-mode rollout: `<name>` and `<name>-primary` select the
/// primary's pods, `<name>-canary` the target's.
pub fn services(
    target: &Deployment,
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
        make(name.to_owned(), primary_labels(target)),
        make(primary_name(name), primary_labels(target)),
        make(canary_name(name), selector_labels(target)),
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

/// Whether a Deployment finished rolling out `want` replicas, and what was seen.
///
/// Done means the controller manager observed the latest generation and every replica is
/// updated, ready and available — what `kubectl rollout status` waits for.
pub fn rollout_status(d: &Deployment, want: i32) -> (bool, String) {
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
    let done = updated >= want && ready >= want && available >= want && total <= want.max(total);
    (
        done,
        format!("{ready}/{want} replicas ready, {updated} updated"),
    )
}

/// Whether a Deployment is scaled to zero.
pub fn scaled_down(d: &Deployment) -> (bool, String) {
    let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let running = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    (
        spec == 0 && running == 0,
        format!("{running} replicas running, {spec} wanted"),
    )
}

/// The replica count of a Deployment (`spec.replicas`, default 1).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
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
        let p = primary_deployment(&t, "podinfo", "test", "r1", 2, None);
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
        let [apex, primary, canary] = services(&target(), "podinfo", "test", &svc, None);
        let sel = |s: &Service| s.spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(apex.metadata.name.as_deref(), Some("podinfo"));
        assert_eq!(sel(&apex)["app"], "podinfo-primary");
        assert_eq!(sel(&primary)["app"], "podinfo-primary");
        assert_eq!(canary.metadata.name.as_deref(), Some("podinfo-canary"));
        assert_eq!(sel(&canary)["app"], "podinfo");
    }

    #[test]
    fn rollout_status_waits_for_the_observed_generation_and_ready_replicas() {
        let mut d = target();
        d.metadata.generation = Some(3);
        assert!(!rollout_status(&d, 2).0);
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        });
        assert!(!rollout_status(&d, 2).0, "generation 3 not observed yet");
        d.status.as_mut().unwrap().observed_generation = Some(3);
        assert!(rollout_status(&d, 2).0);
        d.status.as_mut().unwrap().ready_replicas = Some(1);
        let (done, seen) = rollout_status(&d, 2);
        assert!(!done);
        assert!(seen.contains("1/2"), "{seen}");
    }
}
