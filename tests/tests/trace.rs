//! One trace across the services: every service exports its spans over OTLP to an
//! in-process receiver (`aviary_testkit::otlp`), as it would to a collector. A `promote`
//! through the control API is one trace: the API call's span, the owner's decision on the
//! queued command as its child, the router agent's receipt of the route command and the
//! notifier's receipt of the audit events as children of that decision. And the analyzer's work
//! on an analysis request is a child of the scheduler's decision that asked for it.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::Duration;

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_testkit::otlp::{OtlpReceiver, ReceivedSpan};

/// One analysis a second at 50 %: the windows have no traffic, so each is inconclusive and the
/// canary waits there until it is promoted by hand.
const ANALYSIS: &str = "    interval: 1s
    threshold: 2
    maxWeight: 50
    stepWeight: 50
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }";

/// The span of `service` named `name` in `spans` whose parent is `parent`.
fn child<'a>(
    spans: &'a [ReceivedSpan],
    parent: &ReceivedSpan,
    service: &str,
    name: &str,
) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| {
        s.service == service
            && s.name == name
            && s.trace_id == parent.trace_id
            && s.parent_span_id == parent.span_id
    })
}

/// Every span of `spans` under `root` (itself included): its trace's spans reachable by parents.
fn under<'a>(spans: &'a [ReceivedSpan], root: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut found = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for span in spans {
            if span.trace_id == root.trace_id
                && !found.iter().any(|f| f.span_id == span.span_id)
                && found.iter().any(|f| f.span_id == span.parent_span_id)
            {
                found.push(span);
                grew = true;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_is_one_trace_from_the_api_call_through_every_service() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let stack = Stack::start(StackOptions {
        notifier: true,
        otlp_endpoint: Some(otlp.endpoint()),
        ..StackOptions::default()
    })
    .await;
    stack.apply(&stack.manifest("podinfo", ANALYSIS, "")).await;
    stack
        .wait_status(
            "podinfo",
            "the canary at 50 %, judged once",
            Duration::from_secs(60),
            |s| s.canary_weight == 50 && s.last_verdict.is_some(),
        )
        .await;
    stack
        .api()
        .await
        .promote(pb::PromoteRequest {
            r#ref: Some(pb::RolloutRef::new(NS, "podinfo")),
            full: true,
        })
        .await
        .unwrap();
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(60))
        .await;

    // Spans are exported in batches (every few seconds): wait until the whole chain is in.
    let chain = eventually(
        Duration::from_secs(30),
        "the promotion's trace across scheduler, router agent and notifier",
        || {
            let spans = otlp.spans();
            async move {
                let api = spans
                    .iter()
                    .find(|s| s.service == "aviary-scheduler" && s.name == "api.command")?;
                let decide = child(&spans, api, "aviary-scheduler", "rollout.decide")?;
                let agent = child(&spans, decide, "aviary-router-agent", "bus.receive")?;
                let notifier = child(&spans, decide, "aviary-notifier", "notify")?;
                Some((api.clone(), decide.clone(), agent.clone(), notifier.clone()))
            }
        },
    )
    .await;
    let (api, decide, agent, notifier) = chain;
    assert!(
        api.parent_span_id.is_empty(),
        "the API call starts the trace: {api:?}"
    );
    for span in [&decide, &agent, &notifier] {
        assert_eq!(span.trace_id, api.trace_id, "{span:?}");
    }
    // The agent's and the notifier's own work happened inside their receipts.
    let spans = otlp.spans();
    let trace: Vec<_> = under(&spans, &api)
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert!(
        trace.contains(&("aviary-router-agent", "bus.receive"))
            && trace.contains(&("aviary-notifier", "notify")),
        "{trace:?}"
    );

    // The analyzer's work on a request is a child of the decision that asked for it.
    let analysis = eventually(
        Duration::from_secs(30),
        "an analysis span under a scheduler decision",
        || {
            let spans = otlp.spans();
            async move {
                spans
                    .iter()
                    .filter(|s| s.service == "aviary-scheduler" && s.name == "rollout.decide")
                    .find_map(|d| child(&spans, d, "aviary-analyzer", "analysis").cloned())
            }
        },
    )
    .await;
    assert!(!analysis.parent_span_id.is_empty(), "{analysis:?}");
}
