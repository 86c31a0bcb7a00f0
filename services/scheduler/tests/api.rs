//! Control-API errors map to the right gRPC codes and change nothing; auth is enforced.

mod common;

use std::io::Write as _;
use std::time::Duration;

use aviary_proto as pb;
use aviary_testkit::{NatsServer, free_port};
use common::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

#[tokio::test]
async fn invalid_specs_and_wrong_phase_commands_are_refused_with_reasons() {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let mut api = api(port).await;

    let bad = "apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata: {name: x}\nspec:\n  ingresses: [{name: edge}]\n  primary: {name: a, endpoints: [\"127.0.0.1:1\"]}\n  canary: {name: b, endpoints: [\"127.0.0.1:2\"]}\n  analysis: {stepWeights: [2, 1], maxWeight: 120, threshold: 0}\n";
    let error = api
        .apply(pb::ApplyRequest {
            manifest: bad.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    for path in [
        "spec.analysis.maxWeight",
        "spec.analysis.threshold",
        "spec.analysis.stepWeights",
    ] {
        assert!(
            error.message().contains(path),
            "{path} missing from: {}",
            error.message()
        );
    }

    let missing = api
        .pause(pb::CommandRequest {
            r#ref: Some(pb::RolloutRef::new("test", "nope")),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // No router agent answers: the rollout cannot start, so it stays in Initializing, where
    // Retry is not allowed.
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 10, 50, 1),
    })
    .await
    .unwrap();
    let before = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        })
        .await
        .unwrap()
        .into_inner();
    let refused = api
        .retry(pb::CommandRequest {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("Initializing"),
        "{}",
        refused.message()
    );
    let weight = api
        .set_weight(pb::SetWeightRequest {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
            weight: 101,
        })
        .await
        .unwrap_err();
    assert_eq!(weight.code(), Code::InvalidArgument);
    let after = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.manifest, after.manifest);
    assert_eq!(after.status.unwrap().generation, 1);

    scheduler.stop().await;
}

#[tokio::test]
async fn tokens_gate_the_api_by_role() {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        tokens,
        "reader-token read auditor\noperator-token operator alice"
    )
    .unwrap();
    let path = tokens.path().to_str().unwrap().to_owned();
    let scheduler = Replica::start(&nats.url(), port, &["--tokens-file", &path]);
    let api = api(port).await;
    let with = |token: &'static str| {
        let mut request = tonic::Request::new(pb::ListRequest::default());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };

    let mut client = api.clone();
    assert_eq!(
        client
            .list(pb::ListRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        client.list(with("wrong")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(client.list(with("reader-token")).await.is_ok());

    let mut apply = tonic::Request::new(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 10, 50, 1),
    });
    apply
        .metadata_mut()
        .insert("authorization", "Bearer reader-token".parse().unwrap());
    assert_eq!(
        client.apply(apply).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut apply = tonic::Request::new(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 10, 50, 1),
    });
    apply
        .metadata_mut()
        .insert("authorization", "Bearer operator-token".parse().unwrap());
    assert!(client.apply(apply).await.unwrap().into_inner().changed);

    // A reader may not abort; the refusal is on the rollout's audit stream with who tried.
    let mut abort = tonic::Request::new(pb::CommandRequest {
        r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        reason: String::new(),
    });
    abort
        .metadata_mut()
        .insert("authorization", "Bearer reader-token".parse().unwrap());
    assert_eq!(
        client.abort(abort).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let nats_client = nats.client().await.unwrap();
    let refused = aviary_testkit::eventually(Duration::from_secs(5), "refusal audited", || {
        let nats_client = nats_client.clone();
        async move {
            audit_events(&nats_client, "podinfo")
                .await
                .into_iter()
                .find(|e| e["type"] == "dev.aviary.rollout.refused")
        }
    })
    .await;
    assert_eq!(refused["data"]["actor"], "auditor", "{refused:#}");

    scheduler.stop().await;
}

#[tokio::test]
async fn who_am_i_names_the_token_role_and_identity() {
    let nats = NatsServer::start().await.unwrap();
    let (open_port, port) = (free_port().unwrap(), free_port().unwrap());
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        tokens,
        "reader-token read auditor\noperator-token operator alice"
    )
    .unwrap();
    let path = tokens.path().to_str().unwrap().to_owned();
    // The open API on a server of its own: both replicas are replica `a`.
    let open_nats = NatsServer::start().await.unwrap();
    let open = Replica::start(&open_nats.url(), open_port, &[]);
    let scheduler = Replica::start(&nats.url(), port, &["--tokens-file", &path]);
    let mut client = api(port).await;
    let who = |token: Option<&str>| {
        let mut request = tonic::Request::new(pb::WhoAmIRequest {});
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };

    let reader = client.who_am_i(who(Some("reader-token"))).await.unwrap();
    assert_eq!(
        reader.into_inner(),
        pb::WhoAmIResponse {
            role: pb::CallerRole::Read as i32,
            identity: "auditor".into(),
            authentication: true,
        }
    );
    let operator = client.who_am_i(who(Some("operator-token"))).await.unwrap();
    assert_eq!(operator.get_ref().role(), pb::CallerRole::Operator);
    assert_eq!(operator.get_ref().identity, "alice");
    for token in [None, Some("wrong")] {
        let refused = client.who_am_i(who(token)).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{token:?}");
    }

    // Without a tokens file every caller is an anonymous operator, and is told so.
    let anyone = api(open_port).await.who_am_i(who(None)).await.unwrap();
    assert_eq!(
        anyone.into_inner(),
        pb::WhoAmIResponse {
            role: pb::CallerRole::Operator as i32,
            identity: "anonymous".into(),
            authentication: false,
        }
    );

    scheduler.stop().await;
    open.stop().await;
}

#[tokio::test]
async fn delete_removes_only_a_finished_rollout_and_audits_it() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    let podinfo = || pb::CommandRequest {
        r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        reason: "cleanup".into(),
    };

    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 50, 50, 1),
    })
    .await
    .unwrap();
    let running = api.delete(podinfo()).await.unwrap_err();
    assert_eq!(running.code(), Code::FailedPrecondition, "{running:?}");
    assert!(running.message().contains("abort it"), "{running:?}");

    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    // Refused until the finalising route is confirmed; then deleted.
    let deleted = aviary_testkit::eventually(Duration::from_secs(10), "deleted", || {
        let mut api = api.clone();
        async move { api.delete(podinfo()).await.ok() }
    })
    .await
    .into_inner();
    assert_eq!(
        deleted.status.unwrap().phase,
        pb::Phase::Succeeded as i32,
        "the rollout as it was"
    );
    let gone = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let listed = api.list(pb::ListRequest::default()).await.unwrap();
    assert!(listed.into_inner().rollouts.is_empty());
    let events = audit_events(&client, "podinfo").await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "dev.aviary.rollout.deleted", "{events:#?}");
    assert_eq!(last["data"]["reason"], "deleted: cleanup");

    // The same name again is a new rollout whose events are kept, not dropped as duplicates of
    // the deleted one's.
    let again = api
        .apply(pb::ApplyRequest {
            manifest: canary_manifest("podinfo", 50, 50, 1),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.changed);
    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let events = audit_events(&client, "podinfo").await;
    let created = events
        .iter()
        .filter(|e| e["type"] == "dev.aviary.rollout.created")
        .count();
    assert_eq!(created, 2, "{events:#?}");
    assert_eq!(
        events.last().unwrap()["type"],
        "dev.aviary.rollout.succeeded",
        "{events:#?}"
    );

    plane.stop().await;
}

#[tokio::test]
async fn a_burst_of_refused_calls_writes_a_bounded_number_of_refused_events() {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "reader-token read auditor").unwrap();
    let path = tokens.path().to_str().unwrap().to_owned();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let mut config = config(&nats.url(), port, "a", &["--tokens-file", &path]);
    config.common.admin_addr = admin.parse().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let scheduler = tokio::spawn(aviary_scheduler::run(config, shutdown.clone()));
    let mut client = api(port).await;

    for i in 0..200 {
        let mut abort = tonic::Request::new(pb::CommandRequest {
            r#ref: Some(pb::RolloutRef::new("test", "flooded")),
            reason: String::new(),
        });
        // Half without a token, half with one that may not abort.
        if i % 2 == 1 {
            abort
                .metadata_mut()
                .insert("authorization", "Bearer reader-token".parse().unwrap());
        }
        let code = client.abort(abort).await.unwrap_err().code();
        let want = if i % 2 == 1 {
            Code::PermissionDenied
        } else {
            Code::Unauthenticated
        };
        assert_eq!(code, want, "call {i}");
    }

    // Each refusal's event, if any, is published before the call returns.
    let nats_client = nats.client().await.unwrap();
    let refused: Vec<_> = audit_events(&nats_client, "flooded")
        .await
        .into_iter()
        .filter(|e| e["type"] == "dev.aviary.rollout.refused")
        .collect();
    // Two callers (unauthenticated, auditor) on one method: a few each, not 200.
    assert!(
        (2..=10).contains(&refused.len()),
        "{} refused events",
        refused.len()
    );
    assert!(refused.iter().any(|e| e["data"]["actor"] == "auditor"));
    // Every refusal left out of the stream is counted: 200 refused, the rest audited.
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let not_audited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aviary_scheduler_refusals_not_audited_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(not_audited, Some((200 - refused.len()) as f64), "{metrics}");
    assert!(
        refused
            .iter()
            .any(|e| e["data"]["actor"] == "unauthenticated")
    );

    shutdown.cancel();
    scheduler.await.unwrap().unwrap();
}

#[tokio::test]
async fn apply_returns_the_warnings_for_fields_it_ignores() {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let mut api = api(port).await;
    // Flagger accepts stepWeight beside stepWeights (stepWeight sets the steps): so does
    // Apply, and it says so with the path of what it ignores.
    let manifest = canary_manifest("both", 10, 50, 2).replace(
        "    stepWeight: 10\n",
        "    stepWeight: 10\n    stepWeights: [5, 20, 50]\n",
    );
    let applied = api
        .apply(pb::ApplyRequest { manifest })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.changed);
    assert!(
        applied
            .warnings
            .iter()
            .any(|w| w.starts_with("spec.analysis.stepWeights:")),
        "{:?}",
        applied.warnings
    );
    // A spec with nothing ignored (on its own host of the shared ingress) has no warnings.
    let clean = api
        .apply(pb::ApplyRequest {
            manifest: canary_manifest("plain", 10, 50, 2)
                .replace("spec:\n", "spec:\n  service: { hosts: [plain.example] }\n"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(clean.warnings.is_empty(), "{:?}", clean.warnings);
    scheduler.stop().await;
}
