//! Runs the built `aviary` binary against a real control plane (nats-server + an in-process
//! scheduler + fake data plane and analyzer): apply, get, watch, commands, events, errors.

mod common;

use std::io::Write as _;
use std::process::{Output, Stdio};
use std::time::Duration;

use aviary_proto as pb;
use common::{ControlPlane, stored_events};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Upper bound for one CLI call; `watch` of the test canary needs a few seconds.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// A canary that moves 25 → 50 → promoted, one step per 300 ms while analysis passes.
const CANARY: &str = r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: { name: podinfo, namespace: test }
spec:
  ingresses: [{ name: edge }]
  primary: { name: podinfo-v1, endpoints: ["127.0.0.1:9001"] }
  canary: { name: podinfo-v2, endpoints: ["127.0.0.1:9002"] }
  progressDeadlineSeconds: 60
  analysis:
    interval: 300ms
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
"#;

/// Runs `aviary args…` against `plane`, bounded by [`CALL_DEADLINE`].
async fn aviary(plane: &ControlPlane, args: &[&str]) -> Output {
    aviary_with(plane, args, &[]).await
}

/// [`aviary`] with extra environment variables.
async fn aviary_with(plane: &ControlPlane, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_aviary"));
    command
        .args(args)
        .env("AVIARY_SERVER", &plane.server)
        .env("AVIARY_NATS_URL", plane.nats.url())
        .env_remove("AVIARY_TOKEN")
        .env_remove("AVIARY_TOKEN_FILE")
        .env_remove("AVIARY_NAMESPACE")
        .env_remove("AVIARY_OUTPUT")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let child = command.output();
    tokio::time::timeout(CALL_DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("aviary {args:?} did not finish in {CALL_DEADLINE:?}"))
        .expect("run aviary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn manifest_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(contents.as_bytes()).expect("write manifest");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_applied_watched_to_success_and_audited() {
    let plane = ControlPlane::start(&[]).await;
    let file = manifest_file(CANARY);
    let path = file.path().to_string_lossy().into_owned();

    // Started before the rollout exists: `--follow` must print events as they are stored.
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args(["events", "--follow", "-n", "test"])
        .env("AVIARY_NATS_URL", plane.nats.url())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aviary events --follow");
    let mut followed = BufReader::new(follower.stdout.take().expect("piped stdout")).lines();

    let applied = aviary(&plane, &["apply", "-f", &path]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    assert!(
        text(&applied.stdout).contains("test/podinfo applied"),
        "{}",
        text(&applied.stdout)
    );

    let got = aviary(&plane, &["get", "-n", "test", "podinfo", "-o", "json"]).await;
    assert_eq!(got.status.code(), Some(0), "{}", text(&got.stderr));
    let json: serde_json::Value = serde_json::from_slice(&got.stdout).expect("get -o json");
    assert_eq!(json["ref"]["namespace"], "test");
    assert_eq!(json["ref"]["name"], "podinfo");
    assert_eq!(json["strategy"], "Canary");
    assert_eq!(json["status"]["generation"], 1);
    let plan: Vec<u64> = json["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .filter_map(|s| s["canaryWeight"].as_u64())
        .collect();
    assert_eq!(plan, [25, 50], "{json}");

    let watched = aviary(&plane, &["watch", "test/podinfo", "--timeout", "45s"]).await;
    let out = text(&watched.stdout);
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{out}\n{}",
        text(&watched.stderr)
    );
    for weight in ["canary  25%", "canary  50%"] {
        assert!(out.contains(weight), "{weight} missing from:\n{out}");
    }
    assert!(out.contains("Succeeded"), "{out}");
    let at = |needle: &str| out.find(needle).unwrap_or(usize::MAX);
    assert!(at("canary  25%") < at("canary  50%"), "{out}");

    let described = aviary(&plane, &["describe", "test/podinfo"]).await;
    let page = text(&described.stdout);
    assert_eq!(
        described.status.code(),
        Some(0),
        "{}",
        text(&described.stderr)
    );
    for needle in [
        "Phase:",
        "Succeeded",
        "Plan:",
        "=>",
        "Last verdict:",
        "Pass",
    ] {
        assert!(page.contains(needle), "{needle} missing from:\n{page}");
    }

    let listed = aviary(&plane, &["list", "--phase", "succeeded", "-o", "yaml"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&listed.stdout).expect("list -o yaml");
    assert_eq!(yaml["rollouts"][0]["ref"]["name"].as_str(), Some("podinfo"));
    let none = aviary(&plane, &["list", "-n", "test", "--phase", "Failed"]).await;
    assert_eq!(text(&none.stdout), "no rollouts\n");

    let refused = aviary(&plane, &["pause", "test/podinfo"]).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.starts_with("error: FailedPrecondition: "),
        "{stderr}"
    );

    // `events` reads the stream itself: the same events, in the stored order.
    let client = plane.nats.client().await.expect("nats client");
    let stored: Vec<String> = stored_events(&client, "test", "podinfo")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(stored.len() >= 4, "{stored:?}");
    let listed = aviary(&plane, &["events", "test/podinfo", "-o", "json"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let ids: Vec<String> = text(&listed.stdout)
        .lines()
        .map(|l| {
            let event: serde_json::Value = serde_json::from_str(l).expect("one event per line");
            event["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(ids.starts_with(&stored), "{ids:?} vs {stored:?}");

    let mut kinds = Vec::new();
    tokio::time::timeout(CALL_DEADLINE, async {
        while let Some(line) = followed.next_line().await.expect("read events --follow") {
            let done = line.contains(" succeeded ");
            kinds.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("events --follow printed the succeeded event");
    assert_eq!(kinds.len(), stored.len(), "{kinds:?}");
    follower.kill().await.expect("stop events --follow");

    let table = aviary(&plane, &["events", "-n", "test", "podinfo"]).await;
    let lines: Vec<String> = text(&table.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), ids.len(), "{lines:?}");
    assert!(lines[0].contains("created"), "{lines:?}");
    let position = |kind: &str| {
        lines
            .iter()
            .position(|l| l.contains(kind))
            .unwrap_or_else(|| panic!("no {kind} event in {lines:?}"))
    };
    assert!(position("created") < position("step-advanced"));
    assert!(position("step-advanced") < position("succeeded"));

    // Deletable once its last route is confirmed.
    let deleted = aviary_testkit::eventually(CALL_DEADLINE, "rollout deleted", || async {
        let out = aviary(&plane, &["delete", "test/podinfo", "--reason", "done"]).await;
        (out.status.code() == Some(0)).then_some(out)
    })
    .await;
    assert!(
        text(&deleted.stdout).starts_with("test/podinfo: deleted (was Succeeded"),
        "{}",
        text(&deleted.stdout)
    );
    let gone = aviary(&plane, &["get", "test/podinfo"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        text(&gone.stderr).contains("NotFound"),
        "{}",
        text(&gone.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_authenticated_and_refusals_name_the_code() {
    let tokens = manifest_file("op-token operator ci\n");
    let tokens_path = tokens.path().to_string_lossy().into_owned();
    let plane = ControlPlane::start(&["--tokens-file", &tokens_path]).await;

    let anonymous = aviary(&plane, &["list"]).await;
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        text(&anonymous.stderr).starts_with("error: Unauthenticated: "),
        "{}",
        text(&anonymous.stderr)
    );
    let token_file = manifest_file("op-token\n");
    let token_path = token_file.path().to_string_lossy().into_owned();
    let listed = aviary(&plane, &["list", "--token-file", &token_path]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));

    let bad = CANARY
        .replace("maxWeight: 50", "maxWeight: 120")
        .replace("threshold: 2", "threshold: 0");
    let file = manifest_file(&bad);
    let path = file.path().to_string_lossy().into_owned();
    let token = [("AVIARY_TOKEN", "op-token")];
    let refused = aviary_with(&plane, &["apply", "-f", &path], &token).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.starts_with("error: InvalidArgument"), "{stderr}");
    for field in ["spec.analysis.maxWeight", "spec.analysis.threshold"] {
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(field)),
            "{field} not on a line of its own:\n{stderr}"
        );
    }

    let missing = aviary_with(&plane, &["get", "test/nope"], &token).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).starts_with("error: NotFound: "),
        "{}",
        text(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_1_when_the_rollout_is_rolled_back() {
    let plane = ControlPlane::start_judging(pb::Outcome::Fail, &[]).await;
    let file = manifest_file(CANARY);
    let path = file.path().to_string_lossy().into_owned();
    let applied = aviary(&plane, &["apply", "-f", &path, "-o", "json"]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    let json: serde_json::Value = serde_json::from_slice(&applied.stdout).expect("apply -o json");
    assert_eq!(json["changed"], true);

    let watched = aviary(&plane, &["watch", "test/podinfo", "--timeout", "45s"]).await;
    let out = text(&watched.stdout);
    assert_eq!(
        watched.status.code(),
        Some(1),
        "{out}\n{}",
        text(&watched.stderr)
    );
    assert!(out.contains("Failed"), "{out}");
    assert!(out.contains("rolled-back"), "{out}");

    // The same spec again changes nothing.
    let again = aviary(&plane, &["apply", "-f", &path]).await;
    assert_eq!(
        text(&again.stdout),
        "test/podinfo unchanged (generation 1)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_resources_are_applied_as_the_rollouts_they_decode_to() {
    let plane = ControlPlane::start(&[]).await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/flagger/canary-istio.yaml"
    );
    let applied = aviary(&plane, &["apply", "-f", path]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    assert!(
        text(&applied.stdout).starts_with("shop/checkout applied (generation 1, "),
        "{}",
        text(&applied.stdout)
    );
    assert!(text(&applied.stderr).contains("warning: spec.service.trafficPolicy"));

    let got = aviary(&plane, &["get", "shop/checkout", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&got.stdout).expect("get -o json");
    let plan: Vec<u64> = (json["plan"].as_array().expect("plan").iter())
        .filter_map(|s| s["canaryWeight"].as_u64())
        .collect();
    assert_eq!(plan, [20, 40, 60], "{json}");

    // Several rollouts: one Apply each; the same file again changes nothing.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/flagger/canary-other-providers.yaml"
    );
    let applied = aviary(&plane, &["apply", "-f", path, "-o", "json"]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    let json: serde_json::Value = serde_json::from_slice(&applied.stdout).expect("a list");
    assert_eq!(json.as_array().map(Vec::len), Some(4), "{json}");
    let again = aviary(&plane, &["apply", "-f", path]).await;
    assert_eq!(
        text(&again.stdout)
            .matches(" unchanged (generation 1)")
            .count(),
        4
    );

    // A file with a problem is refused before anything is sent.
    let broken = manifest_file(
        &std::fs::read_to_string(path)
            .expect("fixture")
            .replace("stepWeight: 34", "stepWeight: 340"),
    );
    let refused = aviary(&plane, &["apply", "-f", &broken.path().to_string_lossy()]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("documents[4].spec.analysis.stepWeight: must be between"),
        "{}",
        text(&refused.stderr)
    );
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    let port = aviary_testkit::free_port().expect("free port");
    let server = format!("http://127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args([
            "get",
            "test/podinfo",
            "--server",
            &server,
            "--connect-timeout",
            "2s",
        ])
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(CALL_DEADLINE, child)
        .await
        .expect("aviary get finished")
        .expect("run aviary");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with(&format!("error: cannot connect to {server}")),
        "{}",
        text(&o.stderr)
    );
}

/// An OSC title change, a bell and a clear-screen: what a hostile payload would print.
const HOSTILE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J";

fn assert_no_raw_controls(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.iter().any(|b| matches!(b, 0x1b | 0x07)),
        "{what} printed a raw ESC or BEL:\n{}",
        String::from_utf8_lossy(bytes).escape_debug()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_the_bus_and_the_server_reaches_the_terminal_escaped() {
    let plane = ControlPlane::start(&[]).await;
    let file = manifest_file(CANARY);
    let path = file.path().to_string_lossy().into_owned();
    let applied = aviary(&plane, &["apply", "-f", &path]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    let watched = aviary(&plane, &["watch", "test/podinfo", "--timeout", "45s"]).await;
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched.stdout));

    // Anyone who may publish on the events subjects can write this.
    let client = plane.nats.client().await.expect("nats client");
    let event = serde_json::json!({
        "specversion": "1.0", "id": "test/podinfo/hostile", "source": "elsewhere",
        "type": "dev.aviary.rollout.halted", "subject": "test/podinfo", "time": "now",
        "datacontenttype": "application/json",
        "data": {
            "namespace": "test", "name": "podinfo", "generation": 1, "step": 0,
            "phase": HOSTILE, "canaryWeight": 0, "primaryWeight": 100,
            "reason": HOSTILE, "actor": HOSTILE,
        },
    });
    let js = async_nats::jetstream::new(client.clone());
    for payload in [event.to_string(), format!("not an event {HOSTILE}")] {
        js.publish(
            aviary_bus::names::events_subject("test", "podinfo").expect("subject"),
            payload.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    for format in ["table", "json", "yaml"] {
        let events = aviary(&plane, &["events", "test/podinfo", "-o", format]).await;
        assert_eq!(events.status.code(), Some(0), "{}", text(&events.stderr));
        assert_no_raw_controls(&format!("events -o {format}"), &events.stdout);
        assert!(
            text(&events.stdout).contains("pwned"),
            "the hostile event is shown, escaped:\n{}",
            text(&events.stdout)
        );
    }
    let table = text(&aviary(&plane, &["events", "test/podinfo"]).await.stdout);
    assert!(table.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"), "{table}");

    // A record whose status carries the same text (the rollout has finished: nobody rewrites it).
    let records: aviary_bus::kv::Bucket<serde_json::Value> =
        aviary_bus::kv::Bucket::open(&js, aviary_bus::names::BUCKET_ROLLOUTS)
            .await
            .expect("rollouts bucket");
    let key = aviary_bus::names::rollout_key("test", "podinfo").expect("key");
    let mut record = records
        .get(&key)
        .await
        .expect("read")
        .expect("record")
        .value;
    record["status"]["message"] = HOSTILE.into();
    record["status"]["haltReason"] = HOSTILE.into();
    records.put(&key, &record).await.expect("write");
    for args in [
        &["list"][..],
        &["get", "test/podinfo"],
        &["describe", "test/podinfo"],
        &["list", "-o", "json"],
        &["list", "-o", "yaml"],
    ] {
        let out = aviary(&plane, args).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_no_raw_controls(&format!("{args:?}"), &out.stdout);
        assert!(text(&out.stdout).contains("pwned"), "{}", text(&out.stdout));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_sent_to_a_server_that_requires_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    aviary_testkit::tls::make_pki(dir.path()).unwrap();
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let plane = ControlPlane::start_tls(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ])
    .await;
    let (client_cert, client_key) = (file("client.pem"), file("client.key"));
    let with_cert = aviary(
        &plane,
        &[
            "list",
            "--ca-file",
            &ca,
            "--cert-file",
            &client_cert,
            "--key-file",
            &client_key,
        ],
    )
    .await;
    assert_eq!(
        with_cert.status.code(),
        Some(0),
        "{}",
        text(&with_cert.stderr)
    );
    assert_eq!(text(&with_cert.stdout).trim(), "no rollouts");

    let env = [
        ("AVIARY_CERT_FILE", client_cert.as_str()),
        ("AVIARY_KEY_FILE", client_key.as_str()),
    ];
    let from_env = aviary_with(&plane, &["list", "--ca-file", &ca], &env).await;
    assert_eq!(
        from_env.status.code(),
        Some(0),
        "{}",
        text(&from_env.stderr)
    );

    let without = aviary(&plane, &["list", "--ca-file", &ca]).await;
    assert_eq!(without.status.code(), Some(1), "{}", text(&without.stdout));
    let stderr = text(&without.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let half = aviary(
        &plane,
        &["list", "--ca-file", &ca, "--cert-file", &client_cert],
    )
    .await;
    assert_eq!(half.status.code(), Some(2), "--cert-file needs --key-file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_no_router_agent_acks_is_deleted_only_with_force() {
    let plane = ControlPlane::start(&[]).await;
    let file = manifest_file(
        &CANARY
            .replace("name: podinfo,", "name: stuck,")
            .replace("name: edge", "name: nowhere"),
    );
    let path = file.path().to_string_lossy().into_owned();
    let applied = aviary(&plane, &["apply", "-f", &path]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));

    // No agent serves `nowhere`: the first route is never acknowledged.
    let refused = aviary(&plane, &["delete", "test/stuck"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let why = text(&refused.stderr);
    assert!(
        why.contains("FailedPrecondition")
            && why.contains("not acknowledged")
            && why.contains("force"),
        "{why}"
    );
    let forced = aviary(
        &plane,
        &[
            "delete",
            "--force",
            "test/stuck",
            "--reason",
            "ingress retired",
        ],
    )
    .await;
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert!(
        text(&forced.stdout).starts_with("test/stuck: deleted (was Initializing"),
        "{}",
        text(&forced.stdout)
    );
    let gone = aviary(&plane, &["get", "test/stuck"]).await;
    assert!(
        text(&gone.stderr).contains("NotFound"),
        "{}",
        text(&gone.stderr)
    );
    let client = plane.nats.client().await.expect("nats client");
    let events = stored_events(&client, "test", "stuck").await;
    let last = events.last().expect("events");
    assert_eq!(last["type"], "dev.aviary.rollout.deleted", "{events:#?}");
    let reason = last["data"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("deleted by force (Initializing, route ")
            && reason.ends_with(": ingress retired"),
        "{reason}"
    );
}
