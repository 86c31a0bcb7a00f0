//! Workload mode end to end: the controller against the in-memory Kubernetes API, with the real
//! scheduler, analyzer, router agent (Gateway API) and NATS. Each test is a scenario a
//! Kubernetes team runs: `kubectl apply` of a new image and what the cluster shows afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aviary_router_agent::provider::kube::KubeKind;
use aviary_testkit::eventually;
use common::{DEADLINE, NAME, NS, World};
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::json;

const AVIARY: &str = "aviary.dev/v1alpha1";

/// Starts a controller and brings a `Rollout` of `podinfo:1` with `spec` to Initialized.
async fn initialized(world: &World, spec: serde_json::Value) -> common::Controller {
    world.config_map("hello");
    world.deployment("podinfo:1");
    let controller = world.controller("a").await;
    world.rollout(spec);
    world.wait_phase(AVIARY, "Rollout", "Initialized").await;
    controller
}

#[tokio::test]
async fn a_new_image_is_rolled_out_then_copied_to_the_primary_and_the_canary_ends_at_zero() {
    let world = World::start().await;
    let spec = world.rollout_spec(1);
    let controller = initialized(&world, spec).await;

    // Initialized: the primary is a copy of the target, with its own labels and configs; the
    // target is scaled to zero; the three Services exist.
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:1"));
    let primary = world.get_deployment("podinfo-primary").unwrap();
    assert_eq!(
        primary["spec"]["selector"]["matchLabels"]["app"],
        "podinfo-primary"
    );
    assert_eq!(
        primary["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        "podinfo-env-primary"
    );
    assert_eq!(world.replicas(NAME), Some(0));
    for svc in ["podinfo", "podinfo-primary", "podinfo-canary"] {
        assert!(
            world.kube.get("v1", "Service", Some(NS), svc).is_some(),
            "{svc}"
        );
    }
    let copy = world
        .kube
        .get("v1", "ConfigMap", Some(NS), "podinfo-env-primary")
        .unwrap();
    assert_eq!(copy["data"]["GREETING"], "hello");

    // A new image is all a user does.
    world.deployment("podinfo:2");
    let status = world.wait_phase(AVIARY, "Rollout", "Succeeded").await;
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:2"));
    assert_eq!(world.replicas(NAME), Some(0), "the canary ends at zero");
    assert_eq!(
        world.route_backends(),
        [
            ("podinfo-primary".to_owned(), 100),
            ("podinfo-canary".to_owned(), 0)
        ],
        "all traffic on the primary, which runs the new version"
    );
    assert_eq!(status["lastAppliedSpec"], status["lastPromotedSpec"]);
    assert_eq!(status["canaryWeight"], 0);
    assert_eq!(status["conditions"][0]["type"], "Promoted");
    assert_eq!(status["conditions"][0]["status"], "True");
    let reasons = world.event_reasons("Rollout");
    for want in [
        "Initializing",
        "Initialized",
        "Synced",
        "Started",
        "StepAdvanced",
        "Promoting",
        "Succeeded",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} Event in {reasons:?}"
        );
    }
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_config_map_change_starts_a_rollout_and_a_label_change_does_not() {
    let world = World::start().await;
    let spec = world.rollout_spec(1);
    let controller = initialized(&world, spec).await;
    let revision = world.status(AVIARY, "Rollout")["lastAppliedSpec"].clone();

    // Relabel and rescale the target: no new revision, however many reconciles pass.
    world.kube.upsert(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "platform"}},
        "spec": world.get_deployment(NAME).unwrap()["spec"].clone(),
    }));
    let before = controller.running.metrics.reconciles("ok");
    eventually(DEADLINE, "three more reconciles", || {
        let n = controller.running.metrics.reconciles("ok");
        async move { (n >= before + 3).then_some(()) }
    })
    .await;
    let status = world.status(AVIARY, "Rollout");
    assert_eq!(status["lastAppliedSpec"], revision);
    assert_eq!(status["phase"], "Initialized");

    // A config the pods use changes: that is a new revision, promoted with its copy.
    world.config_map("bonjour");
    let status = world.wait_phase(AVIARY, "Rollout", "Succeeded").await;
    assert_ne!(status["lastPromotedSpec"], revision);
    let copy = world
        .kube
        .get("v1", "ConfigMap", Some(NS), "podinfo-env-primary")
        .unwrap();
    assert_eq!(copy["data"]["GREETING"], "bonjour");
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_with_the_primary_untouched_and_the_canary_at_zero() {
    let world = World::start().await;
    let spec = world.rollout_spec(2);
    let controller = initialized(&world, spec).await;
    world.hook.failing(true);
    world.deployment("podinfo:2");
    let status = world.wait_phase(AVIARY, "Rollout", "Failed").await;
    assert_eq!(status["failedChecks"], 2);
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:1"));
    eventually(DEADLINE, "the canary scaled to zero", || {
        let r = world.replicas(NAME);
        async move { (r == Some(0)).then_some(()) }
    })
    .await;
    assert_eq!(
        world.route_backends(),
        [
            ("podinfo-primary".to_owned(), 100),
            ("podinfo-canary".to_owned(), 0)
        ]
    );
    assert!(
        world
            .event_reasons("Rollout")
            .iter()
            .any(|r| r == "RolledBack")
    );
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_canary_that_never_becomes_ready_fails_at_the_progress_deadline() {
    let world = World::start().await;
    let mut spec = world.rollout_spec(1);
    spec["progressDeadlineSeconds"] = json!(3);
    let controller = initialized(&world, spec).await;
    world.kube.set_workload_readiness(NS, NAME, false);
    world.deployment("podinfo:2");
    let status = world.wait_phase(AVIARY, "Rollout", "Failed").await;
    let events = world.event_reasons("Rollout");
    assert!(events.iter().any(|r| r == "Halted"), "{events:?}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("progressDeadlineSeconds")
            || events.iter().any(|r| r == "RolledBack"),
        "{status}"
    );
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:1"));
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_new_revision_mid_run_restarts_the_analysis_and_the_latest_is_promoted() {
    let world = World::start().await;
    let mut spec = world.rollout_spec(1);
    spec["analysis"]["stepWeight"] = json!(10);
    let controller = initialized(&world, spec).await;
    world.deployment("podinfo:2");
    world.wait_phase(AVIARY, "Rollout", "Progressing").await;
    world.deployment("podinfo:3");
    world.wait_phase(AVIARY, "Rollout", "Succeeded").await;
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:3"));
    let started = world
        .event_reasons("Rollout")
        .iter()
        .filter(|r| *r == "Started")
        .count();
    assert_eq!(started, 2, "the run restarted for the newer revision");
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn deleting_with_revert_on_deletion_restores_the_target_and_removes_what_aviary_made() {
    let world = World::start().await;
    let mut spec = world.rollout_spec(1);
    spec["revertOnDeletion"] = json!(true);
    let controller = initialized(&world, spec).await;
    let obj = world.kube.get(AVIARY, "Rollout", Some(NS), NAME).unwrap();
    assert_eq!(
        obj["metadata"]["finalizers"],
        json!(["aviary.dev/finalizer"])
    );

    let api: Api<DynamicObject> = Api::namespaced_with(
        world.kube.client(),
        NS,
        &aviary_controller::resource::Kind::Rollout.api_resource(),
    );
    api.delete(NAME, &DeleteParams::default()).await.unwrap();
    eventually(DEADLINE, "the Rollout gone", || {
        let gone = world.kube.get(AVIARY, "Rollout", Some(NS), NAME).is_none();
        async move { gone.then_some(()) }
    })
    .await;
    assert_eq!(world.replicas(NAME), Some(2), "the target serves again");
    assert!(world.get_deployment("podinfo-primary").is_none());
    assert!(
        world
            .kube
            .get("v1", "Service", Some(NS), "podinfo-canary")
            .is_none()
    );
    assert!(
        world
            .kube
            .get("v1", "ConfigMap", Some(NS), "podinfo-env-primary")
            .is_none()
    );
    let apex = world.kube.get("v1", "Service", Some(NS), NAME).unwrap();
    assert_eq!(
        apex["spec"]["selector"]["app"], NAME,
        "the apex Service selects the target"
    );
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn of_two_controller_replicas_exactly_one_acts_and_the_other_takes_over() {
    let world = World::start().await;
    world.config_map("hello");
    world.deployment("podinfo:1");
    let a = world.controller("a").await;
    let b = world.controller("b").await;
    eventually(DEADLINE, "one leader", || {
        let n = usize::from(a.leads()) + usize::from(b.leads());
        async move { (n == 1).then_some(()) }
    })
    .await;
    world.rollout(world.rollout_spec(1));
    world.wait_phase(AVIARY, "Rollout", "Initialized").await;
    let (leader, follower) = if a.leads() { (a, b) } else { (b, a) };
    assert!(leader.running.metrics.reconciles("ok") > 0);
    assert_eq!(
        follower.running.metrics.reconciles("ok"),
        0,
        "the follower did nothing"
    );
    assert!(!follower.leads());

    // The leader goes; the other takes the Lease and runs the next revision.
    leader.stop().await;
    eventually(Duration::from_secs(30), "the follower leads", || {
        let leads = follower.leads();
        async move { leads.then_some(()) }
    })
    .await;
    world.deployment("podinfo:2");
    world.wait_phase(AVIARY, "Rollout", "Succeeded").await;
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:2"));
    follower.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_flagger_canary_from_the_corpus_runs_the_same_way_with_flaggers_status() {
    let ingress = aviary_core::flagger::ingress_name(Some("gatewayapi:v1"), NS, NAME);
    let world = World::start_for(&ingress).await;
    // The corpus's Gateway API Canary, pointed at this test's Deployment and webhook: one
    // minute intervals become one second, and the metrics (no Prometheus here) a webhook.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/flagger/session-affinity-gateway-api.yaml"
    );
    let mut canary: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    canary["metadata"] = json!({"name": NAME, "namespace": NS});
    let spec = &mut canary["spec"];
    spec["targetRef"]["name"] = json!(NAME);
    spec.as_object_mut().unwrap().remove("metricsServer");
    let analysis = &mut spec["analysis"];
    analysis.as_object_mut().unwrap().remove("sessionAffinity");
    analysis["interval"] = json!("1s");
    analysis["threshold"] = json!(1);
    analysis["metrics"] = json!([]);
    analysis["webhooks"] = json!([{"name": "check", "type": "rollout", "url": world.hook_url()}]);

    world.config_map("hello");
    world.deployment("podinfo:1");
    let controller = world.controller("a").await;
    world.kube.upsert(canary);
    world
        .wait_phase("flagger.app/v1beta1", "Canary", "Initialized")
        .await;
    world.deployment("podinfo:2");
    let status = world
        .wait_phase("flagger.app/v1beta1", "Canary", "Succeeded")
        .await;
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:2"));
    assert_eq!(world.replicas(NAME), Some(0));
    assert_eq!(
        world.route_backends(),
        [
            ("podinfo-primary".to_owned(), 100),
            ("podinfo-canary".to_owned(), 0)
        ]
    );
    // Flagger's status fields, as `kubectl get canaries` reads them.
    for field in [
        "phase",
        "canaryWeight",
        "failedChecks",
        "iterations",
        "lastAppliedSpec",
        "lastPromotedSpec",
        "lastTransitionTime",
        "conditions",
    ] {
        assert!(
            status.get(field).is_some(),
            "status.{field} missing: {status}"
        );
    }
    assert_eq!(status["conditions"][0]["type"], "Promoted");
    assert!(
        world
            .event_reasons("Canary")
            .iter()
            .any(|r| r == "Succeeded")
    );
    controller.stop().await;
    world.stop().await;
}

/// Promotion on `kind`: traffic ends 100 % on the primary Service, whose Deployment runs the
/// new version — no role swap, whatever carries the split.
async fn promotion_serves_the_new_version_on(kind: KubeKind, primary_service: &str) {
    let world = World::start_with(common::INGRESS, kind).await;
    let controller = initialized(&world, world.rollout_spec(1)).await;
    world.deployment("podinfo:2");
    world.wait_phase(AVIARY, "Rollout", "Succeeded").await;
    assert_eq!(world.image("podinfo-primary").as_deref(), Some("podinfo:2"));
    let split = world.served_split(kind);
    assert!(
        split.contains(&(primary_service.to_owned(), 100))
            && split.iter().any(|(s, w)| s == "podinfo-canary" && *w == 0),
        "{kind:?} serves {split:?}"
    );
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn promotion_serves_the_new_version_on_istio() {
    promotion_serves_the_new_version_on(KubeKind::Istio, "podinfo-primary").await;
}

#[tokio::test]
async fn promotion_serves_the_new_version_on_smi() {
    promotion_serves_the_new_version_on(KubeKind::Smi, "podinfo-primary").await;
}

#[tokio::test]
async fn promotion_serves_the_new_version_on_nginx_ingress() {
    // The user's Ingress sends the apex name to the Service that selects the primary's pods.
    promotion_serves_the_new_version_on(KubeKind::NginxIngress, NAME).await;
}

#[tokio::test]
async fn promotion_serves_the_new_version_on_gateway_api() {
    promotion_serves_the_new_version_on(KubeKind::GatewayApi, "podinfo-primary").await;
}

/// Starts a controller and brings a `Rollout` of the DaemonSet `podinfo:1` to Initialized.
async fn daemonset_initialized(world: &World, spec: serde_json::Value) -> common::Controller {
    world.config_map("hello");
    world.daemonset("podinfo:1");
    let controller = world.controller("a").await;
    world.rollout(spec);
    world.wait_phase(AVIARY, "Rollout", "Initialized").await;
    controller
}

#[tokio::test]
async fn a_daemonset_target_initialises_with_a_primary_daemonset_and_the_target_at_zero_by_node_selector()
 {
    let world = World::start().await;
    let spec = world.daemonset_rollout_spec(1);
    let controller = daemonset_initialized(&world, spec).await;

    // The primary is a DaemonSet copy with its own labels and configs, running on its node.
    let primary = world.get_daemonset("podinfo-primary").unwrap();
    assert_eq!(
        world.daemonset_image("podinfo-primary").as_deref(),
        Some("podinfo:1")
    );
    assert_eq!(
        primary["spec"]["selector"]["matchLabels"]["app"],
        "podinfo-primary"
    );
    let pod = &primary["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        "podinfo-env-primary"
    );
    assert!(
        pod.pointer("/nodeSelector/aviary.dev~1scale-to-zero")
            .is_none(),
        "the primary runs: {pod}"
    );
    assert_eq!(primary["status"]["desiredNumberScheduled"], 1);
    assert_eq!(primary["status"]["numberReady"], 1);
    assert!(world.get_deployment("podinfo-primary").is_none());
    // The target is scaled to zero the only way a DaemonSet can be: no node matches its pods.
    assert!(
        world.daemonset_at_zero(NAME),
        "{:?}",
        world.get_daemonset(NAME)
    );
    let canary = world
        .kube
        .get("v1", "Service", Some(NS), "podinfo-canary")
        .unwrap();
    assert_eq!(canary["spec"]["selector"]["app"], NAME);
    let apex = world.kube.get("v1", "Service", Some(NS), NAME).unwrap();
    assert_eq!(apex["spec"]["selector"]["app"], "podinfo-primary");

    // Scaling the target to zero changed its pod template, but that is no new revision.
    let before = controller.running.metrics.reconciles("ok");
    eventually(DEADLINE, "three more reconciles", || {
        let n = controller.running.metrics.reconciles("ok");
        async move { (n >= before + 3).then_some(()) }
    })
    .await;
    let status = world.status(AVIARY, "Rollout");
    assert_eq!(status["phase"], "Initialized");
    assert_eq!(status["lastAppliedSpec"], status["lastPromotedSpec"]);
    assert!(
        !world.event_reasons("Rollout").iter().any(|r| r == "Synced"),
        "no new revision detected"
    );
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_new_image_on_a_daemonset_is_promoted_to_the_primary_daemonset_and_the_canary_ends_at_zero()
 {
    let world = World::start().await;
    let spec = world.daemonset_rollout_spec(1);
    let controller = daemonset_initialized(&world, spec).await;
    let first = world.status(AVIARY, "Rollout")["lastPromotedSpec"].clone();

    // The new image keeps the scale-to-zero selector (as `kubectl apply` would): the run
    // reaches Succeeded only if the controller scaled the canary up and found it ready.
    world.daemonset("podinfo:2");
    assert!(world.daemonset_at_zero(NAME));
    let status = world.wait_phase(AVIARY, "Rollout", "Succeeded").await;
    assert_eq!(
        world.daemonset_image("podinfo-primary").as_deref(),
        Some("podinfo:2")
    );
    assert_ne!(status["lastPromotedSpec"], first);
    assert_eq!(status["lastAppliedSpec"], status["lastPromotedSpec"]);
    eventually(DEADLINE, "the canary scaled to zero", || {
        let zero = world.daemonset_at_zero(NAME);
        async move { zero.then_some(()) }
    })
    .await;
    assert_eq!(
        world.route_backends(),
        [
            ("podinfo-primary".to_owned(), 100),
            ("podinfo-canary".to_owned(), 0)
        ],
        "all traffic on the primary, which runs the new version"
    );
    let primary = world.get_daemonset("podinfo-primary").unwrap();
    assert_eq!(primary["status"]["numberReady"], 1);
    assert_eq!(status["conditions"][0]["status"], "True");
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_failing_daemonset_canary_is_rolled_back_with_the_primary_daemonset_untouched() {
    let world = World::start().await;
    let spec = world.daemonset_rollout_spec(2);
    let controller = daemonset_initialized(&world, spec).await;
    let primary_before = world.get_daemonset("podinfo-primary").unwrap()["spec"].clone();
    world.hook.failing(true);
    world.daemonset("podinfo:2");
    let status = world.wait_phase(AVIARY, "Rollout", "Failed").await;
    assert_eq!(status["failedChecks"], 2);
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(
        world.get_daemonset("podinfo-primary").unwrap()["spec"],
        primary_before,
        "the primary is untouched"
    );
    eventually(DEADLINE, "the canary scaled to zero", || {
        let zero = world.daemonset_at_zero(NAME);
        async move { zero.then_some(()) }
    })
    .await;
    assert_eq!(
        world.daemonset_image(NAME).as_deref(),
        Some("podinfo:2"),
        "scaled to zero, not reverted"
    );
    assert_eq!(
        world.route_backends(),
        [
            ("podinfo-primary".to_owned(), 100),
            ("podinfo-canary".to_owned(), 0)
        ]
    );
    assert!(
        world
            .event_reasons("Rollout")
            .iter()
            .any(|r| r == "RolledBack")
    );
    controller.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn a_canarys_template_ref_resolves_from_the_clusters_metric_templates() {
    let ingress = aviary_core::flagger::ingress_name(Some("gatewayapi:v1"), NS, NAME);
    let world = World::start_for(&ingress).await;
    world.config_map("hello");
    world.deployment("podinfo:1");
    let controller = world.controller("a").await;
    let canary = json!({
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "service": {"port": 9898},
            "analysis": {
                "interval": "1s", "threshold": 1, "maxWeight": 50, "stepWeight": 25,
                "metrics": [{"name": "errors", "templateRef": {"name": "errors"}, "thresholdRange": {"max": 1}}]
            }
        }
    });
    // No such template yet: the spec is invalid, and the status says why.
    world.kube.upsert(canary.clone());
    eventually(DEADLINE, "the missing template reported", || {
        let message = world.status("flagger.app/v1beta1", "Canary")["message"].clone();
        async move {
            message
                .as_str()
                .is_some_and(|m| m.contains("templateRef") && m.contains("not found"))
                .then_some(())
        }
    })
    .await;
    // The template appears in the cluster: the Canary decodes and is initialised.
    world.kube.upsert(json!({
        "apiVersion": "flagger.app/v1beta1",
        "kind": "MetricTemplate",
        "metadata": {"name": "errors", "namespace": NS},
        "spec": {
            "provider": {"type": "prometheus", "address": "http://127.0.0.1:1"},
            "query": "sum(rate(errors{app=\"{{ target }}\"}[{{ interval }}]))"
        }
    }));
    let mut changed = canary;
    changed["spec"]["analysis"]["threshold"] = json!(2);
    world.kube.upsert(changed);
    world
        .wait_phase("flagger.app/v1beta1", "Canary", "Initialized")
        .await;
    controller.stop().await;
    world.stop().await;
}
