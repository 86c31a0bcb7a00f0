//! The in-memory API server through the real `kube::Api<K>` and `kube::runtime::watcher`: each
//! test pins behaviour of a real API server that controllers depend on.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aviary_testkit::eventually;
use aviary_testkit::kube::{FakeKube, Kind, WATCH_HISTORY};
use futures::{Stream, StreamExt};
use http::{Method, Request};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ApiResource, DeleteParams as Dp, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::{Value, json};
use tower_service::Service;

const DEADLINE: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn pp() -> PostParams {
    PostParams::default()
}

fn merge(patch: Value) -> Patch<Value> {
    Patch::Merge(patch)
}

/// A ConfigMap `name` with `labels` and `data: {a: "1"}`.
fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), json!(v)))
        .collect();
    let metadata = json!({"name": name, "labels": labels});
    serde_json::from_value(json!({"metadata": metadata, "data": {"a": "1"}})).unwrap()
}

fn data(c: &ConfigMap) -> Value {
    serde_json::to_value(&c.data).unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    let labels = json!({"app": name});
    let template =
        json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app"}]}});
    let spec =
        json!({"replicas": replicas, "selector": {"matchLabels": labels}, "template": template});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// A custom kind with a status subresource, registered as its CRD would.
fn rollouts(fake: &FakeKube) -> (Api<DynamicObject>, ApiResource) {
    fake.register(Kind {
        group: "aviary.dev".into(),
        version: "v1alpha1".into(),
        kind: "Rollout".into(),
        plural: "rollouts".into(),
        namespaced: true,
        status_subresource: true,
    });
    let gvk = GroupVersionKind::gvk("aviary.dev", "v1alpha1", "Rollout");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "rollouts");
    (Api::namespaced_with(fake.client(), "test", &ar), ar)
}

/// `(code, reason)` of the API error `result` must be.
fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => {
            let Status { code, reason, .. } = *status;
            (code, reason)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn version(meta: &ObjectMeta) -> u64 {
    meta.resource_version.as_deref().unwrap().parse().unwrap()
}

async fn next<S, T, E>(stream: &mut S) -> T
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    let item = tokio::time::timeout(DEADLINE, stream.next()).await;
    item.expect("an event before the deadline")
        .expect("the stream goes on")
        .unwrap()
}

/// `(type, name)` of the next raw watch event.
async fn next_raw<S, K>(stream: &mut S) -> (&'static str, String)
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
    K: kube::Resource,
{
    let (verb, object) = match next(stream).await {
        WatchEvent::Added(o) => ("ADDED", o),
        WatchEvent::Modified(o) => ("MODIFIED", o),
        WatchEvent::Deleted(o) => ("DELETED", o),
        other => panic!("unexpected {other:?}"),
    };
    (verb, object.meta().name.clone().unwrap())
}

/// A request straight to the service, to see the raw reply.
async fn raw(fake: &FakeKube, method: Method, path: &str, body: &str) -> (u16, Value) {
    let body = kube::client::Body::from(body.as_bytes().to_vec());
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(body)
        .unwrap();
    let response = fake.clone().call(request).await.unwrap();
    let code = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn create_sets_server_fields_and_get_and_create_fail_with_a_status() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let a = api.create(&pp(), &config_map("a", &[])).await?.metadata;
    assert_eq!(a.namespace.as_deref(), Some("test"));
    assert!(a.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(a.creation_timestamp.is_some());
    assert_eq!(a.generation, Some(1));
    let conflict = api.create(&pp(), &config_map("a", &[])).await;
    assert_eq!(api_error(conflict), (409, "AlreadyExists".into()));
    assert_eq!(api_error(api.get("nope").await), (404, "NotFound".into()));
    assert!(api.get_opt("nope").await?.is_none());

    let generated = ConfigMap {
        metadata: ObjectMeta {
            generate_name: Some("gen-".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let g1 = api.create(&pp(), &generated).await?.metadata;
    let g2 = api.create(&pp(), &generated).await?.metadata;
    let n1 = g1.name.clone().unwrap();
    assert!(n1.starts_with("gen-") && n1.len() == 9, "{n1}");
    assert_ne!(g1.name, g2.name);
    assert_ne!(a.uid, g1.uid);
    assert!(
        version(&a) < version(&g1) && version(&g1) < version(&g2),
        "one global counter"
    );
    Ok(())
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors() -> TestResult {
    let fake = FakeKube::new();
    let test: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    test.create(
        &pp(),
        &config_map("a", &[("app", "web"), ("tier", "front")]),
    )
    .await?;
    test.create(&pp(), &config_map("b", &[("app", "db")]))
        .await?;
    test.create(&pp(), &config_map("c", &[])).await?;
    let other: Api<ConfigMap> = Api::namespaced(fake.client(), "other");
    let d = other
        .create(&pp(), &config_map("d", &[("app", "web")]))
        .await?;

    let names = |list: kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    for (selector, want) in [
        ("app=web", vec!["a"]),
        ("app!=web", vec!["b", "c"]),
        ("app in (web, db)", vec!["a", "b"]),
        ("app notin (web)", vec!["b", "c"]),
        ("tier", vec!["a"]),
        ("!app", vec!["c"]),
    ] {
        let list = test.list(&ListParams::default().labels(selector)).await?;
        assert_eq!(names(list), want, "{selector}");
    }
    let by_name = test
        .list(&ListParams::default().fields("metadata.name=b"))
        .await?;
    assert_eq!(names(by_name), ["b"]);

    let all: Api<ConfigMap> = Api::all(fake.client());
    let everywhere = all.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(
        everywhere.metadata.resource_version,
        d.metadata.resource_version
    );
    assert_eq!(names(everywhere), ["d", "a"], "namespace, then name order");

    // Paging is not modelled: one page without a continue token, so kube's pagers stop.
    let page = test.list(&ListParams::default().limit(1)).await?;
    assert_eq!((page.items.len(), page.metadata.continue_), (3, None));
    let bad = test
        .list(&ListParams::default().labels("app in (web"))
        .await;
    assert_eq!(api_error(bad).0, 400);
    Ok(())
}

#[tokio::test]
async fn replace_requires_the_stored_resource_version_and_moves_generation() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let stale = api.create(&pp(), &config_map("a", &[])).await?;

    let mut relabelled = stale.clone();
    relabelled.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    let relabelled = api.replace("a", &pp(), &relabelled).await?;
    assert_eq!(
        relabelled.metadata.generation,
        Some(1),
        "metadata-only change"
    );
    assert!(version(&relabelled.metadata) > version(&stale.metadata));

    let mut changed = relabelled.clone();
    changed.data = Some([("a".to_owned(), "2".to_owned())].into());
    let changed = api.replace("a", &pp(), &changed).await?;
    assert_eq!(changed.metadata.generation, Some(2));

    assert_eq!(
        api_error(api.replace("a", &pp(), &stale).await),
        (409, "Conflict".into())
    );
    assert_eq!(data(&api.get("a").await?), json!({"a": "2"}));
    Ok(())
}

#[tokio::test]
async fn status_subresource_separates_spec_and_status_writes() -> TestResult {
    let fake = FakeKube::new();
    let (api, ar) = rollouts(&fake);
    let object = json!({"spec": {"weight": 0}, "status": {"phase": "Invented"}});
    let created = api
        .create(&pp(), &DynamicObject::new("r", &ar).data(object))
        .await?;
    assert_eq!(created.data.get("status"), None, "create drops the status");

    let mut write = created.clone();
    write.data = json!({"spec": {"weight": 99}, "status": {"phase": "Progressing"}});
    let written = api.replace_status("r", &pp(), &write).await?;
    assert_eq!(
        written.data["spec"]["weight"], 0,
        "a status write keeps the spec"
    );
    assert_eq!(written.data["status"]["phase"], "Progressing");
    assert_eq!(written.metadata.generation, Some(1));

    let mut write = written.clone();
    write.data = json!({"spec": {"weight": 10}, "status": {"phase": "Bogus"}});
    let written = api.replace("r", &pp(), &write).await?;
    assert_eq!(written.data["spec"]["weight"], 10);
    assert_eq!(
        written.data["status"]["phase"], "Progressing",
        "a main write keeps the status"
    );
    assert_eq!(written.metadata.generation, Some(2));

    let patch = merge(json!({"status": {"phase": "Succeeded"}, "spec": {"weight": 50}}));
    let patched = api
        .patch_status("r", &PatchParams::default(), &patch)
        .await?;
    assert_eq!(patched.data["status"]["phase"], "Succeeded");
    assert_eq!(patched.data["spec"]["weight"], 10);
    assert_eq!(
        patched.metadata.generation,
        Some(2),
        "status writes never move generation"
    );
    Ok(())
}

#[tokio::test]
async fn merge_patches_merge_maps_and_replace_lists() -> TestResult {
    let fake = FakeKube::new();
    let pp_ = PatchParams::default();
    let configs: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    configs.create(&pp(), &config_map("a", &[])).await?;
    let patched = configs
        .patch("a", &pp_, &merge(json!({"data": {"a": null, "b": "2"}})))
        .await?;
    assert_eq!(data(&patched), json!({"b": "2"}));

    // Strategic merge is a merge patch here: the container list is replaced, not merged by name.
    let deployments: Api<Deployment> = Api::namespaced(fake.client(), "test");
    deployments.create(&pp(), &deployment("web", 1)).await?;
    let sidecar = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar"}]}}}});
    let patched = deployments
        .patch("web", &pp_, &Patch::Strategic(sidecar))
        .await?;
    let containers = patched.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(
        containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["sidecar"]
    );
    assert_eq!(patched.metadata.generation, Some(2));
    Ok(())
}

#[tokio::test]
async fn json_patches_apply_in_full_or_not_and_stale_versions_conflict() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let pp_ = PatchParams::default();
    let created = api.create(&pp(), &config_map("a", &[])).await?;
    let ops = |ops: Value| Patch::<()>::Json(serde_json::from_value(ops).unwrap());
    let patch = ops(json!([
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/a", "value": "x"},
        {"op": "add", "path": "/data/c", "value": "3"},
        {"op": "remove", "path": "/data/c"},
    ]));
    let patched = api.patch("a", &pp_, &patch).await?;
    assert_eq!(data(&patched), json!({"a": "x", "b": "2"}));

    let failing = ops(json!([
        {"op": "remove", "path": "/data/b"},
        {"op": "test", "path": "/data/a", "value": "1"},
    ]));
    assert_eq!(api_error(api.patch("a", &pp_, &failing).await).0, 422);
    let stale = created.metadata.resource_version;
    let stale = merge(json!({"metadata": {"resourceVersion": stale}, "data": {"a": "3"}}));
    assert_eq!(
        api_error(api.patch("a", &pp_, &stale).await),
        (409, "Conflict".into())
    );
    let now = api.get("a").await?;
    assert_eq!(data(&now), json!({"a": "x", "b": "2"}));
    assert_eq!(
        now.metadata.resource_version,
        patched.metadata.resource_version
    );
    Ok(())
}

#[tokio::test]
async fn server_side_apply_creates_then_merges_and_records_managers() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let apply = |data: Value| {
        let metadata = json!({"name": "cfg"});
        Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}),
        )
    };
    let aviary = PatchParams::apply("aviary").force();
    let created = api.patch("cfg", &aviary, &apply(json!({"a": "1"}))).await?;
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.metadata.namespace.as_deref(), Some("test"));

    let other = PatchParams::apply("other");
    let merged = api.patch("cfg", &other, &apply(json!({"b": "2"}))).await?;
    assert_eq!(data(&merged), json!({"a": "1", "b": "2"}));
    let managers = merged
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|f| f.manager.unwrap());
    assert_eq!(managers.collect::<Vec<_>>(), ["aviary", "other"]);
    assert_eq!(merged.metadata.generation, Some(2));

    // The same configuration again changes nothing, not even the resourceVersion.
    let again = api.patch("cfg", &other, &apply(json!({"b": "2"}))).await?;
    assert_eq!(
        again.metadata.resource_version,
        merged.metadata.resource_version
    );
    Ok(())
}

#[tokio::test]
async fn delete_waits_for_finalizers() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let mut guarded = config_map("guarded", &[]);
    guarded.metadata.finalizers = Some(vec!["aviary.dev/cleanup".into()]);
    let from = api
        .create(&pp(), &guarded)
        .await?
        .metadata
        .resource_version
        .unwrap();
    api.create(&pp(), &config_map("plain", &[])).await?;
    let mut events = api.watch(&WatchParams::default(), &from).await?.boxed();
    assert_eq!(next_raw(&mut events).await, ("ADDED", "plain".into()));

    let marked = api.delete("guarded", &Dp::default()).await?.left().unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        api.get("guarded")
            .await?
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert_eq!(next_raw(&mut events).await, ("MODIFIED", "guarded".into()));

    let release = merge(json!({"metadata": {"finalizers": null}}));
    api.patch("guarded", &PatchParams::default(), &release)
        .await?;
    assert!(api.get_opt("guarded").await?.is_none());
    assert_eq!(next_raw(&mut events).await, ("DELETED", "guarded".into()));

    let gone = api.delete("plain", &Dp::default()).await?;
    assert!(gone.is_right(), "deleted at once: a success Status");
    assert_eq!(next_raw(&mut events).await, ("DELETED", "plain".into()));
    Ok(())
}

#[tokio::test]
async fn watcher_sees_create_modify_delete_in_order() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut stream).await, Event::Init));
    assert!(matches!(next(&mut stream).await, Event::InitDone));

    let mut changed = api.create(&pp(), &config_map("a", &[])).await?;
    changed.data = Some([("a".to_owned(), "2".to_owned())].into());
    api.replace("a", &pp(), &changed).await?;
    api.delete("a", &Dp::default()).await?;
    let seen = |event: Event<ConfigMap>| match event {
        Event::Apply(c) => ("apply", data(&c)),
        Event::Delete(c) => ("delete", data(&c)),
        other => panic!("{other:?}"),
    };
    assert_eq!(seen(next(&mut stream).await), ("apply", json!({"a": "1"})));
    assert_eq!(seen(next(&mut stream).await), ("apply", json!({"a": "2"})));
    assert_eq!(seen(next(&mut stream).await), ("delete", json!({"a": "2"})));
    Ok(())
}

#[tokio::test]
async fn watcher_resumes_without_loss_after_the_server_ends_a_watch() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let mut stream = watcher(api.clone(), watcher::Config::default().timeout(1)).boxed();
    assert!(matches!(next(&mut stream).await, Event::Init));
    assert!(matches!(next(&mut stream).await, Event::InitDone));
    api.create(&pp(), &config_map("a", &[])).await?;
    assert!(matches!(next(&mut stream).await, Event::Apply(_)));
    assert_eq!(fake.open_watches(), 1);

    let ended = || async { (fake.open_watches() == 0).then_some(()) };
    eventually(
        DEADLINE,
        "the server ends the watch after timeoutSeconds",
        ended,
    )
    .await;
    // No watch is open while these happen: the watcher must resume from its last version.
    api.patch(
        "a",
        &PatchParams::default(),
        &merge(json!({"data": {"a": "2"}})),
    )
    .await?;
    api.delete("a", &Dp::default()).await?;
    match next(&mut stream).await {
        Event::Apply(c) => assert_eq!(data(&c), json!({"a": "2"})),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut stream).await, Event::Delete(_)));

    let requests = fake.requests();
    let watches: Vec<_> = requests
        .iter()
        .filter(|r| r.query.contains("watch=true"))
        .collect();
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert!(watches.iter().all(|w| w.query.contains("timeoutSeconds=1")));
    Ok(())
}

#[tokio::test]
async fn watches_replay_recent_versions_expire_old_ones_and_follow_selectors() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    let metadata = json!({"name": "busy", "namespace": "test"});
    for i in 0..WATCH_HISTORY + 10 {
        let data = json!({"i": i.to_string()});
        fake.upsert(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}),
        );
    }
    let mut old = api.watch(&WatchParams::default(), "1").await?.boxed();
    match next(&mut old).await {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    let latest = api.get("busy").await?.metadata.resource_version.unwrap();
    let from = (latest.parse::<u64>()? - 3).to_string();
    let mut recent = api.watch(&WatchParams::default(), &from).await?.boxed();
    for _ in 0..3 {
        assert_eq!(next_raw(&mut recent).await, ("MODIFIED", "busy".into()));
    }

    // A selector watch sees the object leave the selection as DELETED and return as ADDED.
    let labelled = WatchParams::default().labels("app=web");
    let mut selected = api.watch(&labelled, &latest).await?.boxed();
    for app in ["web", "db", "web"] {
        let label = merge(json!({"metadata": {"labels": {"app": app}}}));
        api.patch("busy", &PatchParams::default(), &label).await?;
    }
    for verb in ["ADDED", "DELETED", "ADDED"] {
        assert_eq!(next_raw(&mut selected).await, (verb, "busy".into()));
    }
    Ok(())
}

#[tokio::test]
async fn deployment_scale_subresource_maps_to_spec_replicas() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<Deployment> = Api::namespaced(fake.client(), "test");
    api.create(&pp(), &deployment("web", 2)).await?;
    let scale = api.get_scale("web").await?;
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(2));
    let status = scale.status.clone().unwrap();
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (2, Some("app=web"))
    );

    let mut bigger = scale.clone();
    bigger.spec.as_mut().unwrap().replicas = Some(5);
    let scaled = api.replace_scale("web", &pp(), &bigger).await?;
    assert_eq!(scaled.status.unwrap().replicas, 5);
    let stored = api.get("web").await?;
    assert_eq!(
        (stored.spec.unwrap().replicas, stored.metadata.generation),
        (Some(5), Some(2))
    );
    let stale = api.replace_scale("web", &pp(), &scale).await;
    assert_eq!(
        api_error(stale).0,
        409,
        "the Scale carried a stale resourceVersion"
    );

    let zero = merge(json!({"spec": {"replicas": 0}}));
    api.patch_scale("web", &PatchParams::default(), &zero)
        .await?;
    assert_eq!(api.get("web").await?.spec.unwrap().replicas, Some(0));
    Ok(())
}

#[tokio::test]
async fn workload_controller_reports_readiness() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<Deployment> = Api::namespaced(fake.client(), "test");
    let mut events = api.watch(&WatchParams::default(), "0").await?.boxed();
    let created = api.create(&pp(), &deployment("web", 3)).await?;
    assert!(
        created.status.is_none(),
        "the controller writes the status separately"
    );
    assert_eq!(next_raw(&mut events).await, ("ADDED", "web".into()));
    assert_eq!(next_raw(&mut events).await, ("MODIFIED", "web".into()));

    let counts = |s: &DeploymentStatus| {
        let (ready, available) = (s.ready_replicas, s.available_replicas);
        (
            s.replicas,
            s.updated_replicas,
            ready,
            available,
            s.unavailable_replicas,
        )
    };
    let condition = |s: &DeploymentStatus, kind: &str| {
        let c = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap();
        (c.status.clone(), c.reason.clone().unwrap())
    };
    let status = api.get("web").await?.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(counts(&status), (Some(3), Some(3), Some(3), Some(3), None));
    let available = ("True".to_owned(), "MinimumReplicasAvailable".to_owned());
    assert_eq!(condition(&status, "Available"), available);
    let progressing = ("True".to_owned(), "NewReplicaSetAvailable".to_owned());
    assert_eq!(condition(&status, "Progressing"), progressing);

    fake.set_workload_readiness("test", "web", false);
    assert_eq!(next_raw(&mut events).await, ("MODIFIED", "web".into()));
    let status = api.get("web").await?.status.unwrap();
    assert_eq!(counts(&status), (Some(3), Some(3), None, None, Some(3)));
    assert_eq!(condition(&status, "Available").0, "False");

    api.patch(
        "web",
        &PatchParams::default(),
        &merge(json!({"spec": {"replicas": 4}})),
    )
    .await?;
    let status = api.get("web").await?.status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(counts(&status), (Some(4), Some(4), None, None, Some(4)));
    fake.set_workload_readiness("test", "web", true);
    let status = api.get("web").await?.status.unwrap();
    assert_eq!(counts(&status), (Some(4), Some(4), Some(4), Some(4), None));

    let daemonsets: Api<DaemonSet> = Api::namespaced(fake.client(), "test");
    // A Deployment's spec minus replicas (ignored as an unknown field) is a DaemonSet's.
    let spec = serde_json::to_value(deployment("agent", 1).spec)?;
    let agent: DaemonSet =
        serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": spec}))?;
    daemonsets.create(&pp(), &agent).await?;
    let status = daemonsets.get_status("agent").await?.status.unwrap();
    assert_eq!(
        (status.desired_number_scheduled, status.number_ready),
        (1, 1)
    );
    assert_eq!(
        (status.observed_generation, status.number_available),
        (Some(1), Some(1))
    );
    fake.set_workload_readiness("test", "agent", false);
    let status = daemonsets.get("agent").await?.status.unwrap();
    assert_eq!(
        (status.number_ready, status.number_unavailable),
        (0, Some(1))
    );
    Ok(())
}

#[tokio::test]
async fn a_daemonset_selecting_the_scale_to_zero_label_is_scheduled_on_no_node() -> TestResult {
    let fake = FakeKube::new();
    let daemonsets: Api<DaemonSet> = Api::namespaced(fake.client(), "test");
    let spec = serde_json::to_value(deployment("agent", 1).spec)?;
    let agent: DaemonSet =
        serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": spec}))?;
    daemonsets.create(&pp(), &agent).await?;
    let scheduled = |d: DaemonSet| {
        let s = d.status.unwrap();
        let generation = s.observed_generation;
        let counts = (s.desired_number_scheduled, s.current_number_scheduled);
        (generation, counts, s.number_ready, s.number_available)
    };
    assert_eq!(
        scheduled(daemonsets.get("agent").await?),
        (Some(1), (1, 1), 1, Some(1))
    );

    // What the controller patches to scale it to zero: a node label no node has.
    let selector = |value: Value| {
        let selector = json!({"aviary.dev/scale-to-zero": value});
        merge(json!({"spec": {"template": {"spec": {"nodeSelector": selector}}}}))
    };
    let params = PatchParams::default();
    daemonsets
        .patch("agent", &params, &selector(json!("true")))
        .await?;
    assert_eq!(
        scheduled(daemonsets.get("agent").await?),
        (Some(2), (0, 0), 0, None)
    );
    // Readiness is about pods; with none there is nothing to be unready.
    fake.set_workload_readiness("test", "agent", false);
    let status = daemonsets.get("agent").await?.status.unwrap();
    assert_eq!((status.number_ready, status.number_unavailable), (0, None));

    // Removing the key schedules it again, ready as the readiness says.
    daemonsets
        .patch("agent", &params, &selector(Value::Null))
        .await?;
    let status = daemonsets.get("agent").await?.status.unwrap();
    assert_eq!(
        (status.observed_generation, status.desired_number_scheduled),
        (Some(3), 1)
    );
    assert_eq!(
        (status.number_ready, status.number_unavailable),
        (0, Some(1))
    );
    fake.set_workload_readiness("test", "agent", true);
    assert_eq!(
        scheduled(daemonsets.get("agent").await?),
        (Some(3), (1, 1), 1, Some(1))
    );
    Ok(())
}

#[tokio::test]
async fn faults_are_injected_once_and_requests_recorded() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "test");
    fake.fail_next(Method::POST, "/api/v1/namespaces/test/configmaps", 503);
    let failed = api.create(&pp(), &config_map("a", &[])).await;
    assert_eq!(api_error(failed), (503, "ServiceUnavailable".into()));
    assert!(
        api.get_opt("a").await?.is_none(),
        "the failed create was not applied"
    );
    api.create(&pp(), &config_map("a", &[])).await?;
    api.list(&ListParams::default().labels("app=web")).await?;

    let requests = fake.requests();
    assert_eq!(
        requests.iter().filter(|r| r.method == Method::POST).count(),
        2
    );
    assert_eq!(requests[1].path, "/api/v1/namespaces/test/configmaps/a");
    assert!(
        requests[3].query.contains("labelSelector=app%3Dweb"),
        "{:?}",
        requests[3]
    );
    Ok(())
}

#[tokio::test]
async fn upsert_writes_like_kubectl_apply() -> TestResult {
    let fake = FakeKube::new();
    let api: Api<Deployment> = Api::namespaced(fake.client(), "default");
    let mut object = serde_json::to_value(deployment("web", 1))?;
    let first = fake.upsert(object.clone());
    assert_eq!(first["metadata"]["namespace"], "default");
    let stored = api.get("web").await?;
    assert_eq!(stored.spec.unwrap().replicas, Some(1));

    let from = stored.metadata.resource_version.unwrap();
    let mut events = api.watch(&WatchParams::default(), &from).await?.boxed();
    object["spec"]["replicas"] = json!(3);
    fake.upsert(object);
    assert_eq!(next_raw(&mut events).await, ("MODIFIED", "web".into()));
    let stored = fake
        .get("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(stored["metadata"]["generation"], 2);
    assert_eq!(stored["status"]["readyReplicas"], 3);
    assert_eq!(stored["metadata"]["uid"], first["metadata"]["uid"]);
    assert_eq!(fake.list("apps/v1", "Deployment", None).len(), 1);
    assert!(fake.list("apps/v1", "Deployment", Some("other")).is_empty());
    Ok(())
}

#[tokio::test]
async fn crds_created_through_the_api_are_served_and_established() -> TestResult {
    let fake = FakeKube::new();
    let crds: Api<CustomResourceDefinition> = Api::all(fake.client());
    let version =
        json!({"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}});
    let names = json!({"kind": "Canary", "plural": "canaries"});
    let spec = json!({"group": "aviary.dev", "names": names, "scope": "Namespaced", "versions": [version]});
    let crd =
        serde_json::from_value(json!({"metadata": {"name": "canaries.aviary.dev"}, "spec": spec}))?;
    crds.create(&pp(), &crd).await?;
    let status = crds.get("canaries.aviary.dev").await?.status.unwrap();
    let established = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Established");
    assert_eq!(established.unwrap().status, "True");

    let gvk = GroupVersionKind::gvk("aviary.dev", "v1", "Canary");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "canaries");
    let canaries: Api<DynamicObject> = Api::namespaced_with(fake.client(), "test", &ar);
    canaries
        .create(
            &pp(),
            &DynamicObject::new("c", &ar).data(json!({"spec": {}})),
        )
        .await?;
    assert_eq!(canaries.list(&ListParams::default()).await?.items.len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_bodies_are_rejected_with_a_status() -> TestResult {
    let fake = FakeKube::new();
    let (rollouts, ar) = rollouts(&fake);
    for wrong in [
        ApiResource {
            kind: "Canary".into(),
            ..ar.clone()
        },
        ApiResource {
            api_version: "aviary.dev/v2".into(),
            ..ar.clone()
        },
    ] {
        let created = rollouts
            .create(&pp(), &DynamicObject::new("x", &wrong))
            .await;
        assert_eq!(api_error(created), (400, "BadRequest".into()));
    }
    rollouts
        .create(&pp(), &DynamicObject::new("x", &ar))
        .await?;
    let renamed = rollouts
        .replace("x", &pp(), &DynamicObject::new("y", &ar))
        .await;
    assert_eq!(api_error(renamed).0, 400, "name mismatch");
    let bad_labels = merge(json!({"metadata": {"labels": {"n": 1}}}));
    let patched = rollouts
        .patch("x", &PatchParams::default(), &bad_labels)
        .await;
    assert_eq!(api_error(patched), (422, "Invalid".into()));

    let path = "/apis/aviary.dev/v1alpha1/namespaces/test/rollouts";
    let (code, body) = raw(&fake, Method::POST, path, "{not json").await;
    assert_eq!(
        (code, &body["kind"], &body["code"]),
        (400, &json!("Status"), &json!(400))
    );
    let (code, body) = raw(&fake, Method::POST, path, "[1, 2]").await;
    assert_eq!((code, &body["reason"]), (400, &json!("BadRequest")));
    let (code, _) = raw(&fake, Method::GET, "/apis/aviary.dev/v1alpha1/nothings", "").await;
    assert_eq!(code, 404);
    Ok(())
}
