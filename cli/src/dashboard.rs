//! `aviary dashboard`: a small web UI over the control API, served from this binary.
//!
//! The pages (`dashboard/index.html`, `app.js`, `style.css`, embedded with `include_str!`) read
//! JSON from `/api/...` and follow server-sent events: the rollout list is re-read from `List`
//! every `--list-interval` and pushed when it changed (the API has no list watch); a rollout's
//! page follows its `Watch` stream. Commands are POSTs that the dashboard forwards as the
//! matching RPC; a refusal comes back as the CLI prints it ([`client::describe_status`]).
//!
//! Who acts: a visitor's own API token when they present one (`Authorization: Bearer`, or the
//! sign-in form's HttpOnly, SameSite=Strict cookie), else the dashboard's `--token`, else none.
//! State-changing requests need the `x-aviary-dashboard` header (a cross-site form cannot send
//! it, and a cross-site script cannot without a CORS preflight that is never granted) and, when
//! the browser says where they come from, the same origin. Every response carries a strict
//! Content-Security-Policy; the pages insert everything from the API as text. Listening on
//! loopback, it answers only requests addressed to a loopback host, so a page of another site
//! whose name was re-pointed at 127.0.0.1 (DNS rebinding) cannot use the dashboard's token.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aviary_proto as pb;
use aviary_proto::rollout_service_client::RolloutServiceClient;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tonic::transport::Channel;

use crate::args::DashboardArgs;
use crate::client::{self, BearerToken, Client};
use crate::view::{self, ListView, RolloutView};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// The cookie the sign-in form sets: the visitor's token, hex-encoded (a token may hold
/// characters a cookie value cannot).
const TOKEN_COOKIE: &str = "aviary_token";

/// The header every state-changing request must carry (see the module docs).
const CSRF_HEADER: &str = "x-aviary-dashboard";

/// Scripts, styles and connections from this origin only; no inline script or style, no
/// frames, no plugins, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

/// What every handler shares.
struct Dashboard {
    /// One connection to the control API, opened lazily: the dashboard starts (and says why
    /// pages fail) while the scheduler is not up yet.
    channel: Channel,
    /// `--token`/`--token-file`, for visitors without their own.
    token: Option<String>,
    list_interval: Duration,
    /// Closed on shutdown, ending the event streams so connections drain.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

type Shared = Arc<Dashboard>;

/// `aviary dashboard`: serves until SIGINT or SIGTERM.
pub(crate) async fn run(args: &DashboardArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let channel = client::endpoint(&args.api)?.connect_lazy();
    let token = client::token_text(&args.api)?
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    // Checked once here, so a bad token fails at start rather than on every page.
    BearerToken::new(token.as_deref())?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let state = Arc::new(Dashboard {
        channel,
        token,
        list_interval: args.list_interval,
        shutdown,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    writeln!(
        out,
        "dashboard on http://{addr}/ (control API {})",
        view::escape(&args.api.server)
    )?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop.send(true);
    };
    let mut app = router(state);
    if args.listen.ip().is_loopback() {
        app = app.layer(axum::middleware::from_fn(loopback_only));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .context("serving the dashboard")?;
    Ok(ExitCode::SUCCESS)
}

fn router(state: Shared) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/rollouts/{namespace}/{name}", get(page))
        .route("/static/app.js", get(script))
        .route("/static/style.css", get(style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/whoami", get(who_am_i))
        .route("/api/session", post(sign_in).delete(sign_out))
        .route("/api/rollouts", get(list))
        .route("/api/rollouts/stream", get(list_stream))
        .route("/api/rollouts/{namespace}/{name}", get(rollout))
        .route("/api/rollouts/{namespace}/{name}/watch", get(watch))
        .route("/api/rollouts/{namespace}/{name}/{action}", post(command))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Refuses a request whose `Host` is not a loopback address or `localhost` (see the module
/// docs: DNS rebinding).
async fn loopback_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if host.is_some_and(is_loopback_host) {
        next.run(request).await
    } else {
        Failure::new(
            StatusCode::MISDIRECTED_REQUEST,
            "refused: the dashboard listens on loopback and answers only for 127.0.0.1, [::1] \
             or localhost",
        )
        .into_response()
    }
}

/// Whether `host` (a `Host` header: name or address, optional port) is loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

// ---- errors ------------------------------------------------------------------------------------

/// An answer other than success: an HTTP status and the text the page shows.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    text: String,
}

impl Failure {
    fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Self {
            status,
            text: text.into(),
        }
    }
}

/// A refused or failed call: the status the page can act on (401 shows the sign-in form) and
/// the CLI's text for it.
impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let http = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(http, client::describe_status(&status))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.text }))).into_response()
    }
}

// ---- who is asking -----------------------------------------------------------------------------

/// The token a request acts with, and where it came from.
fn presented_token(state: &Dashboard, headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    bearer
        .or_else(|| cookie_token(headers))
        .or_else(|| state.token.clone())
}

/// The sign-in cookie's token, if the request has a well-formed one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .and_then(|(_, value)| hex_decode(value))
        .filter(|t| !t.is_empty())
}

fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// A control-API client acting with `token`.
fn client_with(state: &Dashboard, token: Option<&str>) -> Result<Client, Failure> {
    let token = BearerToken::new(token)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(RolloutServiceClient::with_interceptor(
        state.channel.clone(),
        token,
    ))
}

fn client_for(state: &Dashboard, headers: &HeaderMap) -> Result<Client, Failure> {
    client_with(state, presented_token(state, headers).as_deref())
}

/// Refuses a state-changing request that a page of another site could have sent: it must carry
/// [`CSRF_HEADER`], and `Origin` (or `Sec-Fetch-Site`), when the browser sends it, must say
/// this origin.
fn same_origin(headers: &HeaderMap) -> Result<(), Failure> {
    let refuse = |why: &str| Failure::new(StatusCode::FORBIDDEN, format!("refused: {why}"));
    if !headers.contains_key(CSRF_HEADER) {
        return Err(refuse(&format!("the {CSRF_HEADER} header is missing")));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(refuse("the request comes from another site"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, host)| host);
        if host.is_none() || origin_host != host {
            return Err(refuse("the request comes from another origin"));
        }
    }
    Ok(())
}

fn role_name(role: i32) -> &'static str {
    match pb::CallerRole::try_from(role) {
        Ok(pb::CallerRole::Operator) => "operator",
        Ok(pb::CallerRole::Read) => "read",
        _ => "unknown",
    }
}

fn who_json(who: &pb::WhoAmIResponse, signed_in: bool) -> serde_json::Value {
    json!({
        "role": role_name(who.role),
        "identity": who.identity,
        "authentication": who.authentication,
        "signedIn": signed_in,
    })
}

/// `GET /api/whoami`: the role and identity the visitor acts with; 401 when the API wants a
/// token the visitor has not given.
async fn who_am_i(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, Failure> {
    let who = client_for(&state, &headers)?
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    Ok(Json(who_json(&who, cookie_token(&headers).is_some())).into_response())
}

#[derive(Debug, Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /api/session {"token": "..."}`: checks the token with `WhoAmI` and keeps it in an
/// HttpOnly, SameSite=Strict cookie (Secure when the request came over HTTPS through a proxy
/// that says so).
async fn sign_in(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    same_origin(&headers)?;
    let form: SignIn = serde_json::from_slice(&body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let token = form.token.trim();
    if token.is_empty() {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "token: required"));
    }
    let who = client_with(&state, Some(token))?
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        hex_encode(token),
        if secure { "; Secure" } else { "" }
    );
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|_| Failure::new(StatusCode::BAD_REQUEST, "token: not usable in a cookie"))?;
    Ok(([(header::SET_COOKIE, cookie)], Json(who_json(&who, true))).into_response())
}

/// `DELETE /api/session`: forgets the sign-in cookie.
async fn sign_out(headers: HeaderMap) -> Result<Response, Failure> {
    same_origin(&headers)?;
    let cookie = format!("{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|_| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "cookie"))?;
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({}))).into_response())
}

// ---- reading -----------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    phase: String,
}

impl ListQuery {
    fn request(&self) -> Result<pb::ListRequest, Failure> {
        let phase = if self.phase.is_empty() {
            0
        } else {
            crate::args::parse_phase(&self.phase)
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("phase: {e}")))?
                as i32
        };
        Ok(pb::ListRequest {
            namespace: self.namespace.trim().to_owned(),
            phase,
        })
    }
}

/// `GET /api/rollouts?namespace=&phase=`: [`ListView`].
async fn list(
    State(state): State<Shared>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let request = query.request()?;
    let response = client_for(&state, &headers)?
        .list(request)
        .await?
        .into_inner();
    Ok(Json(ListView::from(&response)).into_response())
}

fn failure_event(text: &str) -> Event {
    Event::default()
        .event("failure")
        .json_data(json!({ "error": text }))
        .unwrap_or_else(|_| Event::default().event("failure"))
}

/// An event stream that ends when the dashboard shuts down.
fn until_shutdown<S>(state: &Dashboard, stream: S) -> Response
where
    S: Stream<Item = Event> + Send + 'static,
{
    let mut shutdown = state.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let stream = stream
        .take_until(Box::pin(stopped))
        .map(Ok::<_, std::convert::Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/rollouts/stream?namespace=&phase=`: a `rollouts` event ([`ListView`]) at once and
/// whenever the list changed; a `failure` event when a read fails (reading goes on).
async fn list_stream(
    State(state): State<Shared>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let request = query.request()?;
    let api = client_for(&state, &headers)?;
    let interval = state.list_interval;
    // (client, request, the list last sent, whether to wait before reading again)
    let stream = futures::stream::unfold(
        (api, request, String::new(), false),
        move |(mut api, request, last, wait)| async move {
            if wait {
                tokio::time::sleep(interval).await;
            }
            loop {
                let event = match api.list(request.clone()).await {
                    Ok(response) => {
                        let text = serde_json::to_string(&ListView::from(response.get_ref()))
                            .unwrap_or_default();
                        if text == last {
                            tokio::time::sleep(interval).await;
                            continue;
                        }
                        let event = Event::default().event("rollouts").data(&text);
                        return Some((event, (api, request, text, true)));
                    }
                    Err(status) => failure_event(&client::describe_status(&status)),
                };
                return Some((event, (api, request, String::new(), true)));
            }
        },
    );
    Ok(until_shutdown(&state, stream))
}

/// `GET /api/rollouts/{namespace}/{name}`: [`RolloutView`].
async fn rollout(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let rollout = client_for(&state, &headers)?
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new(&namespace, &name)),
        })
        .await?
        .into_inner();
    Ok(Json(RolloutView::from(&rollout)).into_response())
}

/// `GET /api/rollouts/{namespace}/{name}/watch`: the rollout's `Watch` stream as events:
/// `rollout` ([`RolloutView`]) for each status change, `audit` (the CloudEvent as stored) for
/// each audit event, and `failure` when the watch fails or ends (the page then reconnects).
async fn watch(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let mut api = client_for(&state, &headers)?;
    let request = pb::WatchRequest {
        r#ref: Some(pb::RolloutRef::new(&namespace, &name)),
    };
    let stream = match api.watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let text = client::describe_status(&status);
            return Ok(until_shutdown(
                &state,
                futures::stream::once(async move { failure_event(&text) }),
            ));
        }
    };
    let events = futures::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        loop {
            return match stream.message().await {
                Ok(Some(message)) => match message.kind {
                    Some(pb::watch_event::Kind::Rollout(rollout)) => {
                        let event = Event::default()
                            .event("rollout")
                            .json_data(RolloutView::from(&rollout))
                            .unwrap_or_else(|_| failure_event("a rollout did not encode"));
                        Some((event, Some(stream)))
                    }
                    Some(pb::watch_event::Kind::AuditEvent(text)) => {
                        // As JSON on one line; text that is not JSON goes as a JSON string.
                        let value = serde_json::from_str::<serde_json::Value>(&text)
                            .unwrap_or(serde_json::Value::String(text));
                        let event = Event::default()
                            .event("audit")
                            .json_data(value)
                            .unwrap_or_else(|_| failure_event("an event did not encode"));
                        Some((event, Some(stream)))
                    }
                    None => continue,
                },
                Ok(None) => Some((failure_event("the server ended the watch"), None)),
                Err(status) => Some((failure_event(&client::describe_status(&status)), None)),
            };
        }
    });
    Ok(until_shutdown(&state, events))
}

// ---- commands ----------------------------------------------------------------------------------

/// The body of a command: all optional.
#[derive(Debug, Default, Deserialize)]
struct CommandBody {
    /// Why, recorded with the command.
    #[serde(default)]
    reason: String,
    /// `set-weight`'s weight.
    weight: Option<u32>,
}

/// `POST /api/rollouts/{namespace}/{name}/{action}`: `promote`, `promote-full`, `pause`,
/// `resume`, `abort`, `approve`, `retry` or `set-weight` (body `{"weight": N}`). Answers
/// `{"message", "rollout"}` as `aviary <command>` prints it, or the API's refusal.
async fn command(
    State(state): State<Shared>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    same_origin(&headers)?;
    let body: CommandBody = if body.is_empty() {
        CommandBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?
    };
    let reference = Some(pb::RolloutRef::new(&namespace, &name));
    let request = pb::CommandRequest {
        r#ref: reference.clone(),
        reason: body.reason.clone(),
    };
    let mut api = client_for(&state, &headers)?;
    let (label, rollout) = match action.as_str() {
        "pause" => ("pause".to_owned(), api.pause(request).await),
        "resume" => ("resume".to_owned(), api.resume(request).await),
        "abort" => ("abort".to_owned(), api.abort(request).await),
        "approve" => ("approve".to_owned(), api.approve(request).await),
        "retry" => ("retry".to_owned(), api.retry(request).await),
        "promote" | "promote-full" => {
            let full = action == "promote-full";
            let request = pb::PromoteRequest {
                r#ref: reference,
                full,
            };
            let label = if full { "full promote" } else { "promote" };
            (label.to_owned(), api.promote(request).await)
        }
        "set-weight" => {
            let weight = body
                .weight
                .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "weight: required"))?;
            let request = pb::SetWeightRequest {
                r#ref: reference,
                weight,
            };
            (
                format!("set-weight {weight}"),
                api.set_weight(request).await,
            )
        }
        other => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("unknown command {other:?}"),
            ));
        }
    };
    let rollout = rollout?.into_inner();
    let status = rollout.status.clone().unwrap_or_default();
    let message = format!(
        "{}: {label} accepted (phase {}, canary {}%)",
        rollout.r#ref.clone().unwrap_or_default(),
        view::phase_name(status.phase),
        status.canary_weight
    );
    Ok(Json(json!({ "message": message, "rollout": RolloutView::from(&rollout) })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn state_changes_need_the_header_and_this_origin() {
        assert!(same_origin(&headers(&[])).is_err());
        assert!(same_origin(&headers(&[(CSRF_HEADER, "1")])).is_ok());
        let here = [
            (CSRF_HEADER, "1"),
            ("host", "127.0.0.1:8470"),
            ("origin", "http://127.0.0.1:8470"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(same_origin(&headers(&here)).is_ok());
        let mut elsewhere = here;
        elsewhere[2] = ("origin", "http://evil.example");
        assert!(same_origin(&headers(&elsewhere)).is_err());
        let mut cross = here;
        cross[3] = ("sec-fetch-site", "cross-site");
        assert!(same_origin(&headers(&cross)).is_err());
    }

    #[test]
    fn only_loopback_hosts_pass_on_a_loopback_listener() {
        for host in [
            "127.0.0.1:8470",
            "localhost:8470",
            "[::1]:8470",
            "127.0.0.1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8470",
            "10.0.0.1:8470",
            "localhost.evil.example",
            "[::2]:1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn the_cookie_keeps_any_token_and_ignores_garbage() {
        let token = "a;b=c d\u{e9}";
        let cookie = format!("other=1; {TOKEN_COOKIE}={}", hex_encode(token));
        assert_eq!(
            cookie_token(&headers(&[("cookie", &cookie)])).as_deref(),
            Some(token)
        );
        for bad in ["zz", "abc", ""] {
            let cookie = format!("{TOKEN_COOKIE}={bad}");
            assert_eq!(
                cookie_token(&headers(&[("cookie", &cookie)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_keep_the_cli_text_and_map_to_http() {
        let failure = Failure::from(tonic::Status::failed_precondition(
            "resume is not allowed in phase Failed",
        ));
        assert_eq!(failure.status, StatusCode::CONFLICT);
        assert_eq!(
            failure.text,
            "FailedPrecondition: resume is not allowed in phase Failed"
        );
        assert_eq!(
            Failure::from(tonic::Status::unauthenticated("x")).status,
            StatusCode::UNAUTHORIZED
        );
    }
}
