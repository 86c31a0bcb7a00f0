//! `aviary dashboard` in a real headless Chromium against a real stack: the list shows a
//! rollout applied after the page loaded, its page follows the weight live, abort (confirmed
//! in the page's dialog) rolls it back, a refused command shows the API's words, and a
//! read-only token signs in and sees no commands. Screenshots of each page are saved under
//! `<target>/dashboard-screenshots/` for a person to look at.

#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_testkit::browser::Browser;
use aviary_testkit::{Process, free_port};
use serde_json::{Value, json};

/// Slow enough (eight steps of 4 s) that the page can be watched advancing, refuse a command
/// and be aborted well before the canary would be promoted.
const CANARY: &str = "    interval: 4s
    threshold: 2
    maxWeight: 80
    stepWeight: 10
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 5
      - name: request-duration
        thresholdRange: { max: 500 }";

/// How long the page may take to show what the API already says (an SSE push, a render).
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// An `aviary dashboard` process on a free port, killed on drop.
struct Dashboard {
    _process: Process,
    url: String,
    port: u16,
}

impl Dashboard {
    async fn start(dir: &std::path::Path, grpc_port: u16, extra: &[&str]) -> Self {
        let port = free_port().unwrap();
        let mut args = vec![
            "dashboard".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--server".into(),
            format!("http://127.0.0.1:{grpc_port}"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut process = Process::spawn(
            "dashboard",
            &bin("aviary"),
            args,
            &dir.join(format!("dashboard-{port}.log")),
        )
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/healthz");
        process
            .wait_ready(Duration::from_secs(30), || {
                let health = health.clone();
                async move {
                    reqwest::get(&health)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .await
            .unwrap();
        Self {
            _process: process,
            url,
            port,
        }
    }
}

/// `<target>/dashboard-screenshots/<name>.png`.
async fn screenshot(browser: &Browser, name: &str) -> PathBuf {
    let dir = bin_dir()
        .parent()
        .expect("<target>/debug has a parent")
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    browser.screenshot(&path).await.unwrap();
    path
}

/// The text of the first element matching `css`, or `None` when there is none.
async fn text(browser: &Browser, css: &str) -> Option<String> {
    let value = browser
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            &[json!(css)],
        )
        .await
        .unwrap();
    value.as_str().map(str::to_owned)
}

/// Waits until the text of `css` satisfies `pred`, and returns it.
async fn wait_text(
    browser: &Browser,
    css: &str,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    eventually(PAGE_DEADLINE, what, || async {
        text(browser, css).await.filter(|t| pred(t))
    })
    .await
}

/// Whether the section with id `id` is shown.
async fn shown(browser: &Browser, id: &str) -> bool {
    browser
        .execute(
            "const e = document.getElementById(arguments[0]); return !!e && !e.hidden;",
            &[json!(id)],
        )
        .await
        .unwrap()
        == json!(true)
}

/// Clicks the command button `action`, then Confirm in the dialog it opens.
async fn command(browser: &Browser, action: &str) {
    let button = browser
        .find(&format!("#actions button[data-action=\"{action}\"]"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no {action} button"));
    browser.click(&button).await.unwrap();
    let confirm = eventually(PAGE_DEADLINE, "the confirmation dialog", || async {
        let open = browser
            .execute("return document.getElementById('confirm').open;", &[])
            .await
            .ok()?;
        if open != json!(true) {
            return None;
        }
        browser.find("#confirm-ok").await.ok()?
    })
    .await;
    browser.click(&confirm).await.unwrap();
}

/// The percentage in the rollout page's weight line (`25% canary, 75% primary`).
fn canary_weight(text: &str) -> Option<u32> {
    text.split('%').next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_follow_a_rollout_live_and_abort_rolls_it_back() {
    let stack = Stack::start(StackOptions::default()).await;
    let grpc_port = stack.schedulers[0].grpc_port;
    // The stack's API is open: the dashboard acts as an anonymous operator.
    let dashboard = Dashboard::start(stack.dir(), grpc_port, &[]).await;
    let browser = Browser::start().await.unwrap();
    browser.set_window_size(1400, 1200).await.unwrap();

    // The list, loaded before the rollout exists.
    browser.goto(&format!("{}/", dashboard.url)).await.unwrap();
    eventually(PAGE_DEADLINE, "the empty list", || async {
        (shown(&browser, "list").await && shown(&browser, "list-empty").await).then_some(())
    })
    .await;
    assert_eq!(
        text(&browser, "#who").await.as_deref(),
        Some("anonymous (operator)")
    );
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    let row = "tr[data-rollout=\"e2e/podinfo\"]";
    wait_text(
        &browser,
        &format!("{row} td.phase"),
        "the rollout listed",
        |t| !t.is_empty(),
    )
    .await;
    wait_text(
        &browser,
        &format!("{row} td.weight"),
        "the list's weight moving",
        |t| t.trim() != "0%",
    )
    .await;
    screenshot(&browser, "rollouts").await;

    // Its page, by the link in the list; then the weight advances without a reload.
    let link = browser
        .find(&format!("{row} a"))
        .await
        .unwrap()
        .expect("a link to the rollout");
    browser.click(&link).await.unwrap();
    wait_text(&browser, "#title", "the rollout page", |t| {
        t == "e2e/podinfo"
    })
    .await;
    browser
        .execute("window.notReloaded = true; return null;", &[])
        .await
        .unwrap();
    let first = wait_text(&browser, "#weight", "a weight shown", |t| {
        canary_weight(t).is_some()
    })
    .await;
    let first = canary_weight(&first).unwrap();
    let later = wait_text(&browser, "#weight", "the weight advancing", |t| {
        canary_weight(t).is_some_and(|w| w > first)
    })
    .await;
    assert_eq!(
        browser
            .execute("return window.notReloaded === true;", &[])
            .await
            .unwrap(),
        json!(true),
        "the page was reloaded"
    );
    assert!(later.contains("primary"), "{later}");
    wait_text(&browser, "#timeline", "audit events on the timeline", |t| {
        t.contains("step-advanced")
    })
    .await;
    wait_text(
        &browser,
        "#plan tr.current",
        "the current step marked",
        |t| t.starts_with('▶'),
    )
    .await;
    wait_text(&browser, "#ingresses tbody", "the observed split", |t| {
        t.contains("edge")
    })
    .await;
    // Three analysed steps on the chart, judged live (the page was not reloaded).
    eventually(PAGE_DEADLINE, "a metric chart of three steps", || async {
        let points = browser
            .find_all("#charts svg[data-metric=\"request-success-rate\"] circle.canary")
            .await
            .ok()?;
        (points.len() >= 3).then_some(())
    })
    .await;
    assert!(
        text(&browser, "#charts")
            .await
            .unwrap()
            .contains("request-success-rate"),
        "the chart names its metric"
    );
    screenshot(&browser, "rollout").await;

    // A command the phase forbids: the page shows the API's refusal as the CLI prints it.
    command(&browser, "retry").await;
    let refusal = wait_text(&browser, "#action-error", "the refusal shown", |t| {
        !t.is_empty()
    })
    .await;
    let cli = tokio::process::Command::new(bin("aviary"))
        .args([
            "retry",
            "--server",
            &format!("http://127.0.0.1:{grpc_port}"),
            "e2e/podinfo",
        ])
        .output()
        .await
        .unwrap();
    assert!(!cli.status.success());
    let cli_text = String::from_utf8(cli.stderr).unwrap();
    assert_eq!(
        format!("error: {refusal}\n"),
        cli_text,
        "the page and the CLI say the same"
    );
    assert!(refusal.starts_with("FailedPrecondition: "), "{refusal}");
    screenshot(&browser, "rollout-refused").await;

    // Abort, confirmed in the dialog: rolled back, and the page shows it.
    command(&browser, "abort").await;
    wait_text(&browser, "#action-result", "abort accepted", |t| {
        t.contains("abort accepted")
    })
    .await;
    wait_text(&browser, "#phase-now", "the page showing Failed", |t| {
        t == "Failed"
    })
    .await;
    let status = stack.get("podinfo").await.status.unwrap();
    assert_eq!(status.phase(), pb::Phase::Failed);
    assert_eq!(status.canary_weight, 0);
    wait_text(&browser, "#weight", "the weight back to the primary", |t| {
        canary_weight(t) == Some(0)
    })
    .await;
    wait_serving(&stack.url(), &[], "v1", Duration::from_secs(15)).await;
    let aborted = stack
        .wait_event_where(
            "podinfo",
            "the abort audited",
            Duration::from_secs(10),
            |e| {
                e.kind() == Some(aviary_proto::events::EventKind::Command)
                    && e.data.reason.starts_with("aborted")
            },
        )
        .await;
    assert_eq!(aborted.data.actor, "anonymous", "{}", describe(&aborted));
    screenshot(&browser, "rollout-aborted").await;
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_signs_in_and_sees_no_commands() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;

    // A second replica with tokens, on the same bus: any replica serves the API.
    let mut tokens = tempfile::NamedTempFile::new_in(stack.dir()).unwrap();
    writeln!(tokens, "reader-token read auditor\nop-token operator alice").unwrap();
    let grpc_port = free_port().unwrap();
    let mut secured = Service::new(
        "scheduler-tokens",
        "aviary-scheduler",
        stack.dir(),
        vec![
            "--nats-url".into(),
            stack.nats.url(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc_port}"),
            "--replica-id".into(),
            "scheduler-tokens".into(),
            "--lease-ttl-ms".into(),
            LEASE_TTL_MS.to_string(),
            "--tokens-file".into(),
            tokens.path().display().to_string(),
        ]
        .into_iter()
        .chain(nats_identity("scheduler"))
        .collect(),
    );
    secured.start().await;
    // No token of its own: visitors sign in with theirs.
    let dashboard = Dashboard::start(stack.dir(), grpc_port, &[]).await;
    let browser = Browser::start().await.unwrap();
    browser.set_window_size(1400, 1200).await.unwrap();

    browser.goto(&format!("{}/", dashboard.url)).await.unwrap();
    eventually(PAGE_DEADLINE, "the sign-in form", || async {
        shown(&browser, "sign-in").await.then_some(())
    })
    .await;
    let input = browser.find("#token").await.unwrap().unwrap();
    browser.type_text(&input, "wrong-token").await.unwrap();
    let submit = browser.find("#sign-in-form button").await.unwrap().unwrap();
    browser.click(&submit).await.unwrap();
    wait_text(
        &browser,
        "#sign-in-error",
        "an unknown token refused",
        |t| t.starts_with("Unauthenticated: "),
    )
    .await;
    screenshot(&browser, "sign-in").await;
    browser
        .execute(
            "document.getElementById('token').value = ''; return null;",
            &[],
        )
        .await
        .unwrap();
    browser.type_text(&input, "reader-token").await.unwrap();
    browser.click(&submit).await.unwrap();
    wait_text(&browser, "#who", "signed in as the reader", |t| {
        t == "auditor (read)"
    })
    .await;
    // The token is in an HttpOnly cookie: the page's scripts cannot read it.
    assert_eq!(
        browser
            .execute("return document.cookie;", &[])
            .await
            .unwrap(),
        json!("")
    );
    wait_text(
        &browser,
        "tr[data-rollout=\"e2e/podinfo\"] td.phase",
        "the rollout listed for the reader",
        |t| !t.is_empty(),
    )
    .await;

    browser
        .goto(&format!("{}/rollouts/e2e/podinfo", dashboard.url))
        .await
        .unwrap();
    wait_text(
        &browser,
        "#phase-now",
        "the rollout page for the reader",
        |t| !t.is_empty(),
    )
    .await;
    wait_text(&browser, "#who", "still the reader", |t| {
        t == "auditor (read)"
    })
    .await;
    assert!(
        !shown(&browser, "actions").await,
        "a reader sees no commands"
    );
    for button in browser.find_all("#actions button").await.unwrap() {
        assert_eq!(browser.text(&button).await.unwrap(), "", "a visible button");
    }
    screenshot(&browser, "rollout-read-only").await;

    // What the page does not offer, the dashboard refuses too: a reader's command, a
    // request without the dashboard's header, one from another origin.
    let http = reqwest::Client::new();
    let abort = format!("{}/api/rollouts/e2e/podinfo/abort", dashboard.url);
    let cookie = ("cookie", format!("aviary_token={}", hex("reader-token")));
    let refused = http
        .post(&abort)
        .header(cookie.0, &cookie.1)
        .header("x-aviary-dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"],
        "PermissionDenied: auditor has role Read, which may not call Abort"
    );
    let no_header = http
        .post(&abort)
        .header("authorization", "Bearer op-token")
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), 403);
    let elsewhere = http
        .post(&abort)
        .header("authorization", "Bearer op-token")
        .header("x-aviary-dashboard", "1")
        .header("origin", "http://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    let rebound = http
        .get(format!("{}/api/rollouts", dashboard.url))
        .header("host", format!("attacker.example:{}", dashboard.port))
        .header("authorization", "Bearer op-token")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421, "a request for another host name");
    let page = http
        .get(format!("{}/", dashboard.url))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let status = stack.get("podinfo").await.status.unwrap();
    assert_ne!(status.phase(), pb::Phase::Failed, "nothing aborted it");
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
