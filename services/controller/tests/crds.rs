//! The CRDs shipped in the chart are the ones generated from the Rust types: this fails when
//! a spec type changes and `deploy/helm/aviary/crds/` (or the Flagger CRDs template) was not
//! regenerated with `aviary-controller crds` (see docs/kubernetes.md).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use aviary_controller::crd;

fn chart(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/helm/aviary")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_chart_ships_the_generated_rollout_crd() {
    let want = crd::to_yaml(&crd::aviary_crds()).unwrap();
    assert!(
        chart("crds/rollouts.aviary.dev.yaml") == want,
        "deploy/helm/aviary/crds/rollouts.aviary.dev.yaml drifted from the types: run \
         `cargo run -p aviary-controller -- crds > deploy/helm/aviary/crds/rollouts.aviary.dev.yaml`"
    );
}

#[test]
fn the_chart_ships_the_generated_flagger_crds_behind_its_option() {
    let text = chart("templates/flagger-crds.yaml");
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(body, crd::to_yaml(&crd::flagger_crds()).unwrap());
    assert!(text.starts_with("{{- if .Values.controller.flagger.installCRDs }}"));
}

#[test]
fn the_rollout_crd_has_the_status_subresource_and_printer_columns() {
    let crds = crd::aviary_crds();
    let v = &crds[0].spec.versions[0];
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Phase", "Weight", "FailedChecks", "Age"]);
    let schema = serde_json::to_value(&v.schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in [
        "targetRef",
        "service",
        "provider",
        "autoscalerRef",
        "ingressRef",
        "progressDeadlineSeconds",
        "revertOnDeletion",
        "suspend",
        "analysis",
    ] {
        assert!(
            spec.get(field).is_some(),
            "spec.{field} missing from the schema"
        );
    }
}
