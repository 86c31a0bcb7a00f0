//! Runs the built `aviary` binary over the example files and over broken files, asserting on
//! exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn aviary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args(args)
        .output()
        .expect("run aviary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn example(name: &str) -> String {
    examples().join(name).to_string_lossy().into_owned()
}

const EXAMPLES: &[&str] = &[
    "canary-stepweight.yaml",
    "canary-maxweight-overshoot.yaml",
    "canary-stepweights.yaml",
    "ab-testing.yaml",
    "blue-green.yaml",
    "blue-green-mirror.yaml",
    "session-affinity.yaml",
    "steps.yaml",
    "campaign.yaml",
    "multi-cluster.yaml",
    "multi-cluster-waves.yaml",
];

#[test]
fn every_example_is_valid_and_plans() {
    for name in EXAMPLES {
        let o = aviary(&["validate", "-f", &example(name)]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stdout(&o));
        assert_eq!(stdout(&o), "valid\n");
        for fmt in ["table", "json"] {
            let o = aviary(&["plan", "-f", &example(name), "-o", fmt]);
            assert_eq!(o.status.code(), Some(0), "{name} {fmt}");
            assert!(!stdout(&o).is_empty());
        }
    }
}

fn plan_json(name: &str) -> serde_json::Value {
    let o = aviary(&["plan", "-f", &example(name), "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    serde_json::from_slice(&o.stdout).expect("json plan")
}

fn weights(plan: &serde_json::Value) -> Vec<(u64, u64)> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["canaryWeight"].as_u64().unwrap_or(999),
                s["primaryWeight"].as_u64().unwrap_or(999),
            )
        })
        .collect()
}

#[test]
fn plan_stepweight_2_to_50() {
    let p = plan_json("canary-stepweight.yaml");
    assert_eq!(p["strategy"], "canary");
    let want: Vec<(u64, u64)> = (1..=25).map(|k| (2 * k, 100 - 2 * k)).collect();
    assert_eq!(weights(&p), want);
    assert_eq!(p["promotion"]["minSeconds"], 1500);
    assert_eq!(p["rollback"]["minSeconds"], 600);
    assert_eq!(p["steps"][0]["mirror"], false);
}

#[test]
fn plan_other_examples() {
    let p = plan_json("canary-maxweight-overshoot.yaml");
    assert_eq!(weights(&p), vec![(20, 80), (40, 60), (60, 40)]);
    let p = plan_json("canary-stepweights.yaml");
    assert_eq!(weights(&p), vec![(1, 99), (2, 98), (10, 90), (80, 20)]);
    assert_eq!(p["promotion"]["weights"], serde_json::json!([90, 100]));
    let p = plan_json("ab-testing.yaml");
    assert_eq!(p["strategy"], "ab");
    assert_eq!(weights(&p), vec![(0, 100); 10]);
    assert!(p["steps"][0]["match"].is_array());
    assert_eq!(p["promotion"]["minSeconds"], 600);
    assert_eq!(p["rollback"]["minSeconds"], 120);
    let p = plan_json("blue-green.yaml");
    assert_eq!(p["strategy"], "bluegreen");
    assert_eq!(weights(&p), vec![(0, 100); 5]);
    let p = plan_json("blue-green-mirror.yaml");
    assert_eq!(p["strategy"], "bluegreen-mirror");
    assert_eq!(p["steps"][0]["mirror"], true);
    assert_eq!(p["steps"][0]["mirrorWeight"], 50);
    let p = plan_json("session-affinity.yaml");
    assert_eq!(p["strategy"], "canary");
    let p = plan_json("steps.yaml");
    assert_eq!(p["strategy"], "steps");
}

#[test]
fn plan_table_is_human() {
    let o = aviary(&["plan", "-f", &example("canary-stepweight.yaml")]);
    let text = stdout(&o);
    assert!(text.contains("strategy:  canary"), "{text}");
    assert!(text.contains("promotion: at least 25m (1500s)"), "{text}");
    assert!(text.contains("rollback:  at least 10m (600s)"), "{text}");
    assert!(text.contains("50%"));
}

const BASE: &str = r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata:
  name: podinfo
spec:
  ingresses: [{name: edge}]
  primary: { name: podinfo-v1, endpoints: ["127.0.0.1:9001"] }
  canary:  { name: podinfo-v2, endpoints: ["127.0.0.1:9002"] }
  analysis:
    interval: 1m
    threshold: 10
    maxWeight: 50
    stepWeight: 2
"#;

fn validate_text(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rollout.yaml");
    std::fs::write(&path, yaml).expect("write");
    let o = aviary(&["validate", "-f", &path.to_string_lossy()]);
    (o.status.code(), stdout(&o))
}

fn assert_invalid(yaml: &str, expected: &[&str]) {
    let (code, out) = validate_text(yaml);
    assert_eq!(
        code,
        Some(1),
        "expected failure for:\n{yaml}\noutput:\n{out}"
    );
    for e in expected {
        assert!(
            out.lines().any(|l| l.starts_with(e)),
            "missing {e:?} in:\n{out}"
        );
    }
}

#[test]
fn base_is_valid() {
    assert_eq!(validate_text(BASE), (Some(0), "valid\n".to_string()));
}

#[test]
fn each_kind_of_error() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "stepWeight: 2",
            "stepWieght: 2",
            &[
                "spec.analysis.stepWieght: unknown field",
                "spec.analysis.stepWeight: required",
            ],
        ),
        (
            "threshold: 10",
            "threshold: ten",
            &["spec.analysis.threshold: expected an integer, found a string"],
        ),
        (
            "stepWeight: 2",
            "stepWeight: 120",
            &["spec.analysis.stepWeight: must be between 1 and 100, got 120"],
        ),
        (
            "maxWeight: 50",
            "maxWeight: 101",
            &["spec.analysis.maxWeight: must be between 1 and 100"],
        ),
        (
            "maxWeight: 50\n    stepWeight: 2",
            "stepWeights: [1, 5, 5, 3]",
            &[
                "spec.analysis.stepWeights[2]: weights must increase",
                "spec.analysis.stepWeights[3]: weights must increase",
            ],
        ),
        (
            "interval: 1m",
            "interval: 0s",
            &["spec.analysis.interval: duration must be greater than zero"],
        ),
        (
            "interval: 1m",
            "interval: -1m",
            &["spec.analysis.interval: duration must be positive"],
        ),
        (
            "interval: 1m",
            "interval: soon",
            &["spec.analysis.interval: invalid duration"],
        ),
        (
            "threshold: 10",
            "threshold: 0",
            &["spec.analysis.threshold: must be at least 1"],
        ),
        (
            "stepWeight: 2",
            "stepWeight: 2\n    match: [{headers: {x-canary: {exact: a}}}]",
            &["spec.analysis.match: requires iterations"],
        ),
        (
            "maxWeight: 50\n    stepWeight: 2",
            "iterations: 3\n    match: [{headers: {x-canary: {regex: \"a(b\"}}}]",
            &["spec.analysis.match[0].headers.x-canary.regex: invalid regex"],
        ),
        (
            "  name: podinfo\n",
            "  namespace: x\n",
            &["metadata.name: required"],
        ),
        (
            "  name: podinfo\n",
            "  name: Pod_Info\n",
            &["metadata.name: \"Pod_Info\" is not a DNS-1123 label"],
        ),
        (
            "  ingresses: [{name: edge}]\n",
            "",
            &["spec.ingresses: at least one ingress is required"],
        ),
        (
            "  primary: { name: podinfo-v1, endpoints: [\"127.0.0.1:9001\"] }\n",
            "",
            &["spec.primary: required"],
        ),
        (
            "  canary:  { name: podinfo-v2, endpoints: [\"127.0.0.1:9002\"] }\n",
            "",
            &["spec.canary: required"],
        ),
        (
            "name: podinfo-v2",
            "name: PodInfo",
            &["spec.canary.name: \"PodInfo\" is not a DNS-1123 label"],
        ),
        (
            "maxWeight: 50\n    stepWeight: 2",
            "maxWeight: 50",
            &["spec.analysis.stepWeight: required for the canary strategy"],
        ),
        (
            "  analysis:",
            "  strategy: ab\n  analysis:",
            &["spec.strategy: ab contradicts"],
        ),
        (
            "  analysis:",
            "  steps: [{setWeight: 10}]\n  analysis:",
            &["spec.steps: cannot be used together with spec.analysis.stepWeight"],
        ),
        (
            "  analysis:",
            "  skipAnalysis: maybe\n  analysis:",
            &["spec.skipAnalysis: expected true or false"],
        ),
        (
            "127.0.0.1:9002",
            "127.0.0.1",
            &["spec.canary.endpoints[0]: \"127.0.0.1\" must be host:port"],
        ),
        (
            "kind: Rollout",
            "kind: Deployment",
            &["kind: must be Rollout"],
        ),
    ];
    for (from, to, expected) in cases {
        assert!(BASE.contains(from), "fixture does not contain {from:?}");
        assert_invalid(&BASE.replacen(from, to, 1), expected);
    }
}

#[test]
fn reports_all_errors_at_once() {
    let yaml = BASE
        .replace("stepWeight: 2", "stepWieght: 2")
        .replace("threshold: 10", "threshold: 0")
        .replace("interval: 1m", "interval: 0s");
    let (code, out) = validate_text(&yaml);
    assert_eq!(code, Some(1));
    assert!(out.lines().count() >= 3, "{out}");
}

#[test]
fn yaml_syntax_error_has_a_line_number() {
    let (code, out) =
        validate_text("apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: [oops\n");
    assert_eq!(code, Some(1));
    assert!(out.starts_with("yaml: line "), "{out}");
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn garbage_never_panics() {
    for text in [
        "",
        "\0\0\0",
        "- - -",
        "{",
        "spec: 3",
        ":::",
        "apiVersion: [1, {a: b}]",
    ] {
        let (code, out) = validate_text(text);
        assert_eq!(code, Some(1), "{text:?} -> {out}");
        assert!(!out.is_empty());
    }
}

#[test]
fn unreadable_file_and_usage() {
    let o = aviary(&["validate", "-f", "/nonexistent/rollout.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read /nonexistent/rollout.yaml"),
        "{err}"
    );
    let o = aviary(&["validate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = aviary(&["plan", "-f", &example("steps.yaml"), "-o", "xml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn plan_of_invalid_file_lists_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, BASE.replace("stepWeight: 2", "stepWeight: 0")).expect("write");
    let o = aviary(&["plan", "-f", &path.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).starts_with("spec.analysis.stepWeight: must be between 1 and 100"));
}

fn flagger(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flagger")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

const FLAGGER_CORPUS: &[&str] = &[
    "canary-istio.yaml",
    "canary-linkerd-stepweights.yaml",
    "ab-testing-nginx.yaml",
    "blue-green-kubernetes.yaml",
    "blue-green-mirror-istio.yaml",
    "session-affinity-gateway-api.yaml",
    "canary-other-providers.yaml",
    "metric-templates.yaml",
    "alert-providers.yaml",
];

#[test]
fn flagger_files_validate_with_their_warnings() {
    for name in FLAGGER_CORPUS {
        let o = aviary(&["validate", "-f", &flagger(name)]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {out}");
        assert!(
            out.ends_with("\nvalid\n") || out == "valid\n",
            "{name}: {out}"
        );
    }
    let out = stdout(&aviary(&["validate", "-f", &flagger("canary-istio.yaml")]));
    for line in [
        "warning: spec.service.trafficPolicy: accepted, has no effect in Aviary (route settings \
         are the router agent's)",
        "warning: spec.analysis.webhooks[0].muteAlert: accepted, has no effect in Aviary",
        "rollout shop/checkout (Deployment/checkout, ingress istio-shop-checkout)",
        "metric template shop/error-ratio (prometheus at http://prometheus.monitoring:9090)",
        "alert provider shop/on-call (slack, channel payments-alerts)",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{out}"
        );
    }
    let out = stdout(&aviary(&[
        "validate",
        "-f",
        &flagger("canary-other-providers.yaml"),
    ]));
    assert!(
        out.contains("warning: documents[2].spec.upstreamRef: accepted"),
        "{out}"
    );
}

#[test]
fn plan_of_a_canary_shows_flaggers_weights() {
    let o = aviary(&["plan", "-f", &flagger("canary-istio.yaml"), "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json plan");
    assert_eq!(weights(&p), vec![(20, 80), (40, 60), (60, 40)]);
    assert_eq!(p["promotion"]["weights"], serde_json::json!([80, 100]));
    // Warnings go to stderr, so stdout stays JSON.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: spec.service.trafficPolicy"), "{err}");

    let o = aviary(&["plan", "-f", &flagger("canary-istio.yaml")]);
    let text = stdout(&o);
    assert!(
        text.contains(
            "target:    Deployment/checkout (provider istio, ingress istio-shop-checkout)"
        ),
        "{text}"
    );
    assert!(text.contains("60%"), "{text}");
}

#[test]
fn plan_of_several_rollouts_shows_each() {
    let o = aviary(&[
        "plan",
        "-f",
        &flagger("canary-other-providers.yaml"),
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json plans");
    let names: Vec<&str> = all
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["rollout"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "edge/gateway",
            "edge/catalog",
            "mesh/agent",
            "default/billing"
        ]
    );
    assert_eq!(weights(&all[3]["plan"]), vec![(34, 66), (68, 32), (100, 0)]);
    let text = stdout(&aviary(&[
        "plan",
        "-f",
        &flagger("canary-other-providers.yaml"),
    ]));
    assert_eq!(text.matches("rollout:   ").count(), 4, "{text}");

    let o = aviary(&["plan", "-f", &flagger("metric-templates.yaml")]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "no rollouts in the file\n");
}

const CANARY: &str = r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata: { name: podinfo, namespace: test }
spec:
  targetRef: { apiVersion: apps/v1, kind: Deployment, name: podinfo }
  service: { port: 9898 }
  analysis:
    interval: 1m
    threshold: 5
    maxWeight: 50
    stepWeight: 10
    metrics:
      - name: errors
        templateRef: { name: errors }
        thresholdRange: { max: 1 }
"#;

#[test]
fn canary_errors_have_paths() {
    let (code, out) = validate_text(CANARY);
    assert_eq!(code, Some(1));
    assert_eq!(
        out,
        "spec.analysis.metrics[0].templateRef: MetricTemplate test/errors not found in the file\n"
    );
    let text = format!(
        "{BASE}---\n{}",
        CANARY.replace("stepWeight: 10", "stepWieght: 10")
    );
    assert_invalid(
        &text,
        &[
            "documents[1].spec.analysis.stepWieght: unknown field (did you mean `stepWeight`?)",
            "documents[1].spec.analysis.metrics[0].templateRef: MetricTemplate test/errors not found",
        ],
    );
}

#[test]
fn text_from_the_file_is_escaped() {
    let text = CANARY.replace("  service:", "  \"evil\\e[2J\\r\": 1\n  service:");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("canary.yaml");
    std::fs::write(&path, text).expect("write");
    for command in ["validate", "plan"] {
        let o = aviary(&[command, "-f", &path.to_string_lossy()]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            !o.stdout.iter().any(|b| *b == 0x1b || *b == b'\r'),
            "{command}"
        );
        assert!(
            stdout(&o).contains("spec.evil\\u{1b}[2J\\u{d}: unknown field"),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn flagger_combinations_are_accepted_with_a_warning_at_their_path() {
    let yaml = BASE.replace(
        "stepWeight: 2\n",
        "stepWeight: 2\n    stepWeights: [10, 40]\n    stepWeightPromotion: 0\n",
    );
    let (code, out) = validate_text(&yaml);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "warning: spec.analysis.stepWeights: only its last weight (40) is used",
        "warning: spec.analysis.maxWeight: ignored, stepWeights is set",
        "warning: spec.analysis.stepWeightPromotion: 0 means unset",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{out}"
        );
    }
    assert!(out.ends_with("\nvalid\n"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rollout.yaml");
    std::fs::write(
        &path,
        BASE.replace("stepWeight: 2\n", "stepWeight: 2\n    iterations: 3\n"),
    )
    .expect("write");
    let o = aviary(&["plan", "-f", &path.to_string_lossy(), "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json plan");
    assert_eq!(p["strategy"], "bluegreen");
    assert_eq!(weights(&p), vec![(0, 100), (0, 100), (0, 100)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: spec.analysis.stepWeight: ignored, iterations is set"),
        "{err}"
    );
}

#[test]
fn a_campaign_plan_shows_its_stages_and_where_a_failing_check_returns() {
    let o = aviary(&["plan", "-f", &example("campaign.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let table = stdout(&o);
    assert!(
        table.contains("check e2e (failed: back to small at 2%, 2x)"),
        "{table}"
    );
    assert!(table.contains("check final (failed: rollback)"), "{table}");
}

#[test]
fn a_multi_cluster_plan_names_its_clusters_and_waves_is_refused_with_its_path() {
    let o = aviary(&["plan", "-f", &example("multi-cluster.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("clusters:  eu (edge), us (edge) (policy all)"),
        "{}",
        stdout(&o)
    );
    let o = aviary(&["plan", "-f", &example("multi-cluster-waves.yaml")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("clusters:  eu (edge), us (edge) (policy waves)"),
        "{}",
        stdout(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(examples().join("multi-cluster.yaml")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replace("clusterPolicy: all", "clusterPolicy: rolling"),
    )
    .unwrap();
    let o = aviary(&["validate", "-f", &bad.to_string_lossy()]);
    assert_ne!(o.status.code(), Some(0));
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(
        all.contains(
            "spec.clusterPolicy: unknown cluster policy \"rolling\"; expected all or waves"
        ),
        "{all}"
    );
}
