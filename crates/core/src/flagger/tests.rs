use super::*;
use crate::parse_rollout;
use crate::plan::Plan;
use crate::spec::StringMatch;
use crate::strategy::Strategy;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../../../tests/fixtures/flagger/", $name)),
        )
    };
}

/// Our own Flagger resources: one Canary per strategy and per provider, templates and alert
/// providers; together they use every field of the three schemas.
const CORPUS: &[(&str, &str)] = &[
    fixture!("canary-istio.yaml"),
    fixture!("canary-linkerd-stepweights.yaml"),
    fixture!("ab-testing-nginx.yaml"),
    fixture!("blue-green-kubernetes.yaml"),
    fixture!("blue-green-mirror-istio.yaml"),
    fixture!("session-affinity-gateway-api.yaml"),
    fixture!("canary-other-providers.yaml"),
    fixture!("metric-templates.yaml"),
    fixture!("alert-providers.yaml"),
];

fn fixture(name: &str) -> &'static str {
    CORPUS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .unwrap_or_default()
}

fn decoded(name: &str) -> Decoded {
    decode(fixture(name)).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match decode(text) {
        Ok(d) => panic!("expected errors, decoded {d:#?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn has(lines: &[String], prefix: &str) -> bool {
    lines.iter().any(|l| l.starts_with(prefix))
}

#[test]
fn corpus_decodes_with_the_expected_warnings() {
    let expected: &[(&str, &[&str])] = &[
        (
            "canary-istio.yaml",
            &[
                "spec.autoscalerRef.primaryScalerQueries",
                "spec.autoscalerRef.primaryScalerReplicas",
                "spec.service.appProtocol",
                "spec.service.trafficDistribution",
                "spec.service.timeout",
                "spec.service.delegation",
                "spec.service.match",
                "spec.service.retries",
                "spec.service.rewrite",
                "spec.service.headers",
                "spec.service.corsPolicy",
                "spec.service.trafficPolicy",
                "spec.service.apex",
                "spec.service.primary",
                "spec.service.canary",
                "spec.service.unmanagedMetadata",
                "spec.analysis.webhooks[0].muteAlert",
                "spec.analysis.webhooks[1].disableTLS",
            ],
        ),
        ("canary-linkerd-stepweights.yaml", &[]),
        (
            "ab-testing-nginx.yaml",
            &[
                "spec.analysis.match[2].queryParams",
                "spec.analysis.match[2].sourceLabels",
            ],
        ),
        (
            "blue-green-kubernetes.yaml",
            &[
                "spec.service.portDiscovery",
                "spec.service.headless",
                "spec.analysis.primaryReadyThreshold",
                "spec.analysis.canaryReadyThreshold",
            ],
        ),
        (
            "blue-green-mirror-istio.yaml",
            &["spec.service.trafficPolicy"],
        ),
        (
            "session-affinity-gateway-api.yaml",
            &[
                "spec.service.backendTimeout",
                "spec.service.mirror",
                "spec.service.gatewayRefs[0].group",
                "spec.service.gatewayRefs[0].kind",
                "spec.service.gatewayRefs[0].port",
                "spec.analysis.sessionAffinity.domain",
                "spec.analysis.sessionAffinity.httpOnly",
                "spec.analysis.sessionAffinity.partitioned",
                "spec.analysis.sessionAffinity.path",
                "spec.analysis.sessionAffinity.sameSite",
                "spec.analysis.sessionAffinity.secure",
            ],
        ),
        (
            "canary-other-providers.yaml",
            &[
                "spec.service.targetPort",
                "documents[2].spec.upstreamRef",
                "documents[3].spec.service.meshName",
                "documents[3].spec.service.backends",
            ],
        ),
        (
            "metric-templates.yaml",
            &[
                "spec.provider.secretRef",
                "spec.provider.insecureSkipVerify",
                "spec.provider.headers",
                "documents[1].spec.provider.secretRef",
                "documents[2].spec.provider.region",
                "documents[3].spec.provider.secretRef",
            ],
        ),
        ("alert-providers.yaml", &[]),
    ];
    assert_eq!(expected.len(), CORPUS.len());
    for (name, paths) in expected {
        let d = decoded(name);
        let got: Vec<&str> = d.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(got, *paths, "{name}");
        for r in &d.rollouts {
            assert_eq!(r.validate(), Ok(()), "{name}");
        }
    }
    let w = &decoded("canary-istio.yaml").warnings;
    assert_eq!(
        w[11].to_string(),
        "spec.service.trafficPolicy: accepted, has no effect in Aviary (route settings are the \
         router agent's)"
    );
}

/// Records the schema path of every field `v` uses, `[]` standing for list items.
fn used_paths(v: &Value, schema: &str, out: &mut Vec<String>) {
    match v {
        Value::Mapping(map) => {
            for (k, child) in map {
                let path = field(schema, k.as_str().unwrap_or("?"));
                used_paths(child, &path, out);
                out.push(path);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                used_paths(item, &format!("{schema}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn corpus_uses_every_field_of_the_schemas() {
    let mut used: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (_, text) in CORPUS {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(doc).unwrap_or(Value::Null);
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?");
            let kind = match kind {
                "Canary" => "Canary",
                "MetricTemplate" => "MetricTemplate",
                _ => "AlertProvider",
            };
            used_paths(&v, "", used.entry(kind).or_default());
        }
    }
    for (kind, table) in [
        ("Canary", CANARY_FIELDS),
        ("MetricTemplate", METRIC_TEMPLATE_FIELDS),
        ("AlertProvider", ALERT_PROVIDER_FIELDS),
    ] {
        let used = &used[kind];
        for (path, use_) in table {
            if *use_ != Quiet {
                assert!(used.iter().any(|p| p == path), "{kind} {path} unused");
            }
        }
        // No field in the table twice, and every child's parent is in it.
        for (i, (path, _)) in table.iter().enumerate() {
            assert!(table[..i].iter().all(|(p, _)| p != path), "{path} twice");
            if let Some((parent, _)) = path.rsplit_once('.') {
                let parent = parent.trim_end_matches("[]");
                assert!(table.iter().any(|(p, _)| *p == parent), "{path}: no parent");
            }
        }
    }
}

fn plan(r: &Rollout) -> Plan {
    Plan::build(&r.spec).unwrap_or_else(|e| panic!("{}: {e}", r.metadata.name))
}

#[test]
fn corpus_plans_follow_flaggers_documentation() {
    // maxWeight 50, stepWeight 20: 20, 40, 60, then promotion (20 points per interval here).
    let d = decoded("canary-istio.yaml");
    let p = plan(&d.rollouts[0]);
    assert_eq!(p.strategy, Strategy::Canary);
    assert_eq!(p.weights(), [20, 40, 60]);
    assert_eq!(p.promotion.weights, [80, 100]);
    assert_eq!(p.rollback_min_seconds(), 5 * 60);

    let p = plan(&decoded("canary-linkerd-stepweights.yaml").rollouts[0]);
    assert_eq!(p.weights(), [1, 2, 10, 80]);
    assert_eq!(p.promotion_min_seconds(), 4 * 30);

    // A/B and blue/green: promotion after interval × iterations, rollback after
    // interval × threshold.
    let p = plan(&decoded("ab-testing-nginx.yaml").rollouts[0]);
    assert_eq!(p.strategy, Strategy::AbTesting);
    assert_eq!(p.weights(), [0; 10]);
    assert!(p.steps().all(|s| s.matched()));
    assert_eq!(p.promotion_min_seconds(), 600);
    assert_eq!(p.rollback_min_seconds(), 120);

    let p = plan(&decoded("blue-green-kubernetes.yaml").rollouts[0]);
    assert_eq!(p.strategy, Strategy::BlueGreen);
    assert_eq!(p.weights(), [0; 5]);
    assert_eq!(p.promotion_min_seconds(), 5 * 120);

    let p = plan(&decoded("blue-green-mirror-istio.yaml").rollouts[0]);
    assert_eq!(p.strategy, Strategy::BlueGreenMirror);
    assert!(p.steps().all(|s| s.mirror && s.mirror_weight == Some(50)));

    let d = decoded("session-affinity-gateway-api.yaml");
    let p = plan(&d.rollouts[0]);
    assert_eq!(p.strategy, Strategy::Canary);
    assert_eq!(p.weights(), [10, 20, 30, 40, 50]);

    let d = decoded("canary-other-providers.yaml");
    let weights: Vec<Vec<u8>> = d.rollouts.iter().map(|r| plan(r).weights()).collect();
    assert_eq!(
        weights,
        [
            vec![10, 20, 30],
            vec![50, 100],
            vec![25, 50, 75, 100],
            vec![34, 68, 100]
        ]
    );
}

#[test]
fn corpus_maps_fields_as_documented() {
    let d = decoded("canary-istio.yaml");
    let r = &d.rollouts[0];
    assert_eq!(
        (r.api_version.as_str(), r.kind.as_str()),
        (spec::API_VERSION, spec::KIND)
    );
    assert_eq!(r.spec.ingresses[0].name, "istio-shop-checkout");
    assert_eq!(r.spec.provider.as_deref(), Some("istio"));
    assert!(r.spec.revert_on_deletion);
    let svc = r.spec.service.as_ref().expect("service");
    assert_eq!(
        (svc.port, svc.target_port(), svc.port_name()),
        (8080, 8080, "http-api")
    );
    assert_eq!(svc.gateways.len(), 2);
    let a = &r.spec.analysis;
    assert_eq!(a.webhooks[0].kind, WebhookType::PreRollout);
    assert_eq!(a.webhooks[1].kind, WebhookType::Rollout);
    assert_eq!(a.alerts[0].provider_ref.name, "on-call");
    assert_eq!(a.alerts[0].severity, Severity::Error);
    assert_eq!(d.templates[0].name, "error-ratio");
    assert_eq!(d.providers[0].kind, AlertProviderType::Slack);

    // Header names are lower-cased; the cookie regex stays a header regex.
    let d = decoded("ab-testing-nginx.yaml");
    let m = &d.rollouts[0].spec.analysis.matches;
    assert_eq!(
        m[0].headers["x-canary"],
        StringMatch::Exact("insider".into())
    );
    assert_eq!(
        m[1].headers["cookie"],
        StringMatch::Regex("^(.*?;)?(canary=always)(;.*)?$".into())
    );
    assert_eq!(m[2].headers.len(), 2);

    // Legacy thresholds: a lower bound for the success rate, an upper one otherwise.
    let d = decoded("canary-linkerd-stepweights.yaml");
    let r = &d.rollouts[0].spec.analysis.metrics[0].threshold_range;
    assert_eq!(r.as_ref().map(|r| (r.min, r.max)), Some((Some(99.5), None)));
    let d = decoded("blue-green-kubernetes.yaml");
    let r = &d.rollouts[0].spec.analysis.metrics[0].threshold_range;
    assert_eq!(
        r.as_ref().map(|r| (r.min, r.max)),
        Some((None, Some(500.0)))
    );

    // metricsServer is the backend of metrics without a template.
    let d = decoded("session-affinity-gateway-api.yaml");
    let m = &d.rollouts[0].spec.analysis.metrics[0];
    assert_eq!(
        m.provider.as_ref().and_then(|p| p.address.as_deref()),
        Some("http://prometheus.accounts:9090")
    );
    assert_eq!(
        d.rollouts[0].spec.ingresses[0].name,
        "gateway-api-accounts-profile"
    );

    let d = decoded("alert-providers.yaml");
    let kinds: Vec<&str> = d.providers.iter().map(|p| p.kind.as_str()).collect();
    assert_eq!(kinds, ["slack", "msteams", "discord", "rocket", "gchat"]);
    assert_eq!(d.providers[1].secret_ref.as_deref(), Some("teams-webhook"));
    let d = decoded("metric-templates.yaml");
    assert!(d.templates[0].provider.insecure_skip_verify);
    assert_eq!(d.templates.len(), 4);
}

#[test]
fn corpus_rollouts_survive_the_manifest_apply_reads() {
    for (name, text) in CORPUS {
        for r in decode(text).map(|d| d.rollouts).unwrap_or_default() {
            let yaml = to_manifest(&r).unwrap_or_default();
            assert_eq!(parse_rollout(&yaml).as_ref(), Ok(&r), "{name}:\n{yaml}");
        }
    }
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
        templateVariables: { code: "5.." }
        thresholdRange: { max: 1 }
"#;

const TEMPLATE: &str = r#"apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: { name: errors, namespace: test }
spec:
  provider: { type: prometheus, address: "http://prom:9090" }
  query: sum(rate(http{ns="{{ namespace }}",app="{{ target }}",code=~"{{ variables.code }}"}[{{interval}}]))
"#;

fn with_template() -> String {
    format!("{CANARY}---\n{TEMPLATE}")
}

#[test]
fn unknown_field_is_an_error_with_its_path() {
    let text = with_template().replace("stepWeight: 10", "stepWieght: 10");
    let errs = errors(&text);
    assert!(
        has(
            &errs,
            "spec.analysis.stepWieght: unknown field (did you mean `stepWeight`?)"
        ),
        "{errs:#?}"
    );
    // In a later document, the path names the document.
    let text = with_template().replace("query:", "querry:");
    let errs = errors(&text);
    assert!(
        has(&errs, "documents[1].spec.querry: unknown field"),
        "{errs:#?}"
    );
    assert!(has(&errs, "documents[1].spec.query: required"), "{errs:#?}");
    // Not in Flagger's schema at all.
    let errs = errors(&CANARY.replace("  service:", "  strategy: canary\n  service:"));
    assert!(has(&errs, "spec.strategy: unknown field"), "{errs:#?}");
}

#[test]
fn ignored_field_warns_with_its_path() {
    let text = with_template().replace(
        "  service: { port: 9898 }",
        "  service: { port: 9898, trafficPolicy: { tls: { mode: DISABLE } } }",
    );
    let d = decode(&text).expect("valid");
    assert_eq!(
        d.warnings,
        [Warning {
            path: "spec.service.trafficPolicy".into(),
            message: "accepted, has no effect in Aviary (route settings are the router agent's)"
                .into(),
        }]
    );
    let text = format!("{TEMPLATE}---\n{CANARY}")
        .replace("threshold: 5", "threshold: 5\n    canaryReadyThreshold: 80");
    let d = decode(&text).expect("valid");
    assert_eq!(
        d.warnings[0].path,
        "documents[1].spec.analysis.canaryReadyThreshold"
    );
}

#[test]
fn canary_combinations_flagger_accepts_decode_with_warnings() {
    let text = with_template().replace(
        "    stepWeight: 10\n",
        "    stepWeight: 10\n    stepWeights: [5, 30]\n    stepWeightPromotion: 0\n    mirror: true\n    mirrorWeight: 0\n",
    );
    let d = decode(&text).unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<&str> = d.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.analysis.stepWeights",
            "spec.analysis.maxWeight",
            "spec.analysis.stepWeightPromotion",
            "spec.analysis.mirrorWeight",
        ]
    );
    let p = plan(&d.rollouts[0]);
    // Flagger: mirror step, then stepWeight steps up to the last of stepWeights.
    assert_eq!(p.weights(), vec![0, 10, 20, 30]);
    assert_eq!(p.step(0).and_then(|s| s.mirror_weight), Some(100));
    assert_eq!(p.promotion.weights, vec![100]);

    let bg = with_template().replace(
        "    stepWeight: 10\n",
        "    stepWeight: 10\n    iterations: 4\n",
    );
    let d = decode(&bg).unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<&str> = d.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        ["spec.analysis.stepWeight", "spec.analysis.maxWeight"]
    );
    assert_eq!(plan(&d.rollouts[0]).weights(), vec![0; 4]);
}

#[test]
fn template_ref_resolves_and_renders() {
    let d = decode(&with_template()).expect("valid");
    let m = &d.rollouts[0].spec.analysis.metrics[0];
    assert_eq!(
        m.query.as_deref(),
        Some(r#"sum(rate(http{ns="test",app="podinfo",code=~"5.."}[{{ interval }}]))"#)
    );
    let p = m.provider.as_ref().expect("provider");
    assert_eq!(
        (p.kind.as_str(), p.address.as_deref()),
        ("prometheus", Some("http://prom:9090"))
    );
    // An explicit namespace, in either order of documents.
    let text = format!("{TEMPLATE}---\n{CANARY}")
        .replace("name: errors }", "name: errors, namespace: test }")
        .replace(
            "metadata: { name: podinfo, namespace: test }",
            "metadata: { name: podinfo }",
        );
    let d = decode(&text).expect("valid");
    assert!(d.rollouts[0].spec.analysis.metrics[0].query.is_some());
}

#[test]
fn unresolved_template_ref_is_an_error() {
    let errs = errors(CANARY);
    assert_eq!(
        errs,
        ["spec.analysis.metrics[0].templateRef: MetricTemplate test/errors not found in the file"]
    );
    // Another namespace than the template's.
    let text = with_template().replace("name: errors }", "name: errors, namespace: other }");
    assert!(has(
        &errors(&text),
        "spec.analysis.metrics[0].templateRef: MetricTemplate other/errors not found"
    ));
}

#[test]
fn a_template_source_supplies_templates_the_file_lacks() {
    let fetched = decode(TEMPLATE).expect("template").templates;
    let d = decode_with(CANARY, &fetched).expect("resolved from the source");
    assert!(d.rollouts[0].spec.analysis.metrics[0].query.is_some());
    let errs = match decode_with(CANARY, &Vec::new()) {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    assert!(
        errs.ends_with("not found in the file or the template source"),
        "{errs}"
    );
}

#[test]
fn template_variables_render() {
    let vars = TemplateVars {
        name: "podinfo".into(),
        namespace: "test".into(),
        target: "podinfo-deploy".into(),
        service: "podinfo-svc".into(),
        ingress: "podinfo-ing".into(),
        route: "podinfo-route".into(),
    };
    let mut variables = BTreeMap::new();
    variables.insert("dir".to_owned(), "inbound".to_owned());
    let q = "{{name}}/{{ namespace }}/{{ target }}/{{ service }}/{{ ingress }}/{{ route }}/\
             {{ variables.dir }}[{{interval}}]";
    assert_eq!(
        render(q, &vars, &variables).as_deref(),
        Ok(
            "podinfo/test/podinfo-deploy/podinfo-svc/podinfo-ing/podinfo-route/inbound[{{ interval }}]"
        )
    );
    for (bad, why) in [
        ("{{ variables.nope }}", "templateVariables has no `nope`"),
        ("{{ .Target }}", "which Aviary cannot fill"),
        ("{{ target | upper }}", "which Aviary cannot fill"),
        ("x {{ target", "without its `}}`"),
    ] {
        let e = render(bad, &vars, &variables).err().unwrap_or_default();
        assert!(e.contains(why), "{bad}: {e}");
    }
    variables.insert("q".to_owned(), "a\"b".to_owned());
    assert!(render("{{ variables.q }}", &vars, &variables).is_err());
    // In a Canary, a rendering problem is an error at the templateRef.
    let text = with_template().replace("code: \"5..\"", "kode: \"5..\"");
    assert!(has(
        &errors(&text),
        "spec.analysis.metrics[0].templateRef: MetricTemplate test/errors: the query uses \
         `{{ variables.code }}`"
    ));
}

#[test]
fn alert_provider_refs_resolve_or_warn() {
    let alert = "    alerts: [{ name: ops, severity: warn, providerRef: { name: chat } }]\n";
    let provider = "apiVersion: flagger.app/v1beta1\nkind: AlertProvider\n\
                    metadata: { name: chat, namespace: test }\n\
                    spec: { type: msteams, address: \"https://teams.example.com/hook\" }\n";
    let canary = format!("{CANARY}{alert}---\n{TEMPLATE}");
    let d = decode(&canary).expect("valid");
    assert_eq!(d.warnings[0].path, "spec.analysis.alerts[0].providerRef");
    assert!(
        d.warnings[0]
            .message
            .contains("test/chat is not in the file")
    );
    let d = decode(&format!("{canary}---\n{provider}")).expect("valid");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.providers[0].kind, AlertProviderType::MsTeams);
    // Checked: a type from Flagger's list, and a hook URL or a Secret.
    let errs = errors(&provider.replace(
        "type: msteams, address: \"https://teams.example.com/hook\"",
        "type: pager",
    ));
    assert!(has(&errs, "spec.type: unknown type \"pager\""), "{errs:#?}");
    assert!(has(&errs, "spec: needs address or secretRef"), "{errs:#?}");
}

#[test]
fn documents_mix_and_names_are_unique() {
    let aviary = "apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata: { name: web }\n\
                  spec:\n  ingresses: [{ name: edge }]\n\
                  \x20 primary: { name: web-v1, endpoints: [\"127.0.0.1:9001\"] }\n\
                  \x20 canary: { name: web-v2, endpoints: [\"127.0.0.1:9002\"] }\n\
                  \x20 analysis: { stepWeight: 50 }\n";
    let text = format!("{aviary}---\n{}\n---\n", with_template());
    let d = decode(&text).expect("valid");
    let names: Vec<&str> = d
        .rollouts
        .iter()
        .map(|r| r.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["web", "podinfo"]);
    let errs = errors(&format!("{}---\n{CANARY}", with_template()));
    assert_eq!(
        errs,
        ["documents[2].metadata.name: rollout test/podinfo is also defined by documents[0]"]
    );
    let errs = errors(&format!(
        "{aviary}---\n{}",
        aviary.replace("stepWeight: 50", "stepWeight: 0")
    ));
    assert!(
        has(
            &errs,
            "documents[1].spec.analysis.stepWeight: must be between 1 and 100"
        ),
        "{errs:#?}"
    );
    let errs = errors(
        "apiVersion: flagger.app/v1alpha1\nkind: Canary\n---\napiVersion: flagger.app/v1beta1\nkind: Deployment\n",
    );
    assert_eq!(
        errs,
        [
            "apiVersion: must be flagger.app/v1beta1, the Flagger version Aviary reads",
            "documents[1].kind: must be Canary, MetricTemplate or AlertProvider for flagger.app/v1beta1"
        ]
    );
}

#[test]
fn one_aviary_document_decodes_as_parse_rollout_reads_it() {
    let good = RolloutSpec::test().into_rollout("podinfo");
    let text = to_manifest(&good).unwrap_or_default();
    assert_eq!(decode(&text).map(|d| d.rollouts), Ok(vec![good]));
    for text in [
        text.replace("stepWeight: 10", "stepWeight: 0"),
        text.replace("kind: Rollout", "kind: Canary"),
        "spec: 3".to_owned(),
        "a: [".to_owned(),
    ] {
        assert_eq!(decode(&text).err(), parse_rollout(&text).err(), "{text}");
    }
    assert!(decode("").is_err());
    assert!(decode("---\n---\n").is_err());
}

#[test]
fn workload_values_are_checked() {
    let errs = errors(&CANARY.replace("kind: Deployment", "kind: Service"));
    assert!(
        has(&errs, "spec.targetRef.kind: unsupported kind \"Service\""),
        "{errs:#?}"
    );
    let errs = errors(&CANARY.replace(
        "  targetRef: { apiVersion: apps/v1, kind: Deployment, name: podinfo }\n",
        "",
    ));
    assert!(has(&errs, "spec.targetRef: required"), "{errs:#?}");
    let errs = errors(&with_template().replace("service: { port: 9898 }", "service: { port: 0 }"));
    assert!(
        has(&errs, "spec.service.port: must be between 1 and 65535"),
        "{errs:#?}"
    );
    let errs = errors(
        &with_template().replace("  service:", "  metricsServer: prometheus:9090\n  service:"),
    );
    assert!(
        has(
            &errs,
            "spec.metricsServer: \"prometheus:9090\" must be an http"
        ),
        "{errs:#?}"
    );
}

#[test]
fn ingress_names_follow_the_provider() {
    for (provider, want) in [
        (None, "mesh-test-podinfo"),
        (Some("istio"), "istio-test-podinfo"),
        (Some("linkerd"), "smi-test-podinfo"),
        (Some("smi:v1alpha3"), "smi-test-podinfo"),
        (Some("gatewayapi:v1beta1"), "gateway-api-test-podinfo"),
        (Some("nginx"), "nginx-ingress-test-podinfo"),
        (Some("appmesh:v1beta2"), "appmesh-test-podinfo"),
        (Some("Odd_Name"), "odd-name-test-podinfo"),
    ] {
        assert_eq!(ingress_name(provider, "test", "podinfo"), want);
    }
    let long = ingress_name(Some("istio"), "test", &"a".repeat(80));
    assert!(spec::is_dns1123_label(&long), "{long}");
}

use proptest::prelude::{Just, any, prop_oneof, proptest};
use proptest::strategy::Strategy as PropStrategy;

/// Field names of the three schemas, for random trees that get past the first keys.
fn keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = CANARY_FIELDS
        .iter()
        .chain(METRIC_TEMPLATE_FIELDS)
        .chain(ALERT_PROVIDER_FIELDS)
        .chain(OBJECT_META)
        .filter_map(|(p, _)| p.rsplit(['.', ']']).next())
        .collect();
    keys.extend([
        "exact", "regex", "prefix", "suffix", "min", "max", "x-canary",
    ]);
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn yaml_value() -> impl PropStrategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        "[a-z0-9:./{} ()-]{0,16}".prop_map(Value::String),
        prop_oneof![
            Just(API_VERSION),
            Just("Canary"),
            Just("MetricTemplate"),
            Just("AlertProvider"),
            Just("1m"),
            Just("{{ variables.x }}"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            proptest::collection::vec((proptest::sample::select(keys()), inner), 0..6).prop_map(
                |kvs| {
                    let mut m = serde_yaml::Mapping::new();
                    for (k, v) in kvs {
                        m.insert(Value::String(k.to_string()), v);
                    }
                    Value::Mapping(m)
                }
            ),
        ]
    })
}

proptest! {
    /// Arbitrary text never panics the multi-document decoder.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = decode(&s);
    }

    /// Junk spliced into a corpus file never panics, and every problem has a path.
    #[test]
    fn mutated_corpus_never_panics(
        file in 0usize..9,
        at in 0usize..4000,
        junk in "[a-zA-Z0-9:{}\\[\\],\"' \n-]{0,24}",
    ) {
        let text = CORPUS[file % CORPUS.len()].1;
        let at = at.min(text.len());
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let doc = format!("{}{}{}", &text[..at], junk, &text[at..]);
        if let Err(e) = decode(&doc) {
            proptest::prop_assert!(e.0.iter().all(|f| !f.path.is_empty() && !f.message.is_empty()));
        }
    }

    /// Trees of Flagger field names, alone or after a valid document, never panic it.
    #[test]
    fn arbitrary_flagger_trees_never_panic(v in yaml_value(), kind in 0usize..3) {
        let mut v = v;
        if let Value::Mapping(m) = &mut v {
            m.insert("apiVersion".into(), API_VERSION.into());
            m.insert("kind".into(), ["Canary", "MetricTemplate", "AlertProvider"][kind].into());
        }
        if let Ok(text) = serde_yaml::to_string(&v) {
            let _ = decode(&text);
            let _ = decode(&format!("{TEMPLATE}---\n{text}"));
        }
    }
}
