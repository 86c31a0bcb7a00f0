//! An in-memory Kubernetes API server for controller tests. [`FakeKube`] is a
//! `tower::Service` that a real [`kube::Client`] talks to, so controllers run their own
//! `Api<K>` calls and watchers against it; tests seed and inspect objects with
//! [`FakeKube::upsert`], [`FakeKube::get`] and [`FakeKube::list`], assert on
//! [`FakeKube::requests`] and inject errors with [`FakeKube::fail_next`].
//!
//! Flow: `kube::Client` → [`FakeKube`] → path and query decoded into kind, namespace, name and
//! subresource → one write under a mutex, which bumps the global resourceVersion and publishes
//! a change → a JSON reply, or a stream of watch events fed by a task per watch.
//!
//! Modelled as the API server does it:
//! - paths `/api/v1/…` and `/apis/{group}/{version}/…`, in a namespace and across all, for the
//!   kinds of [`FakeKube::new`], [`FakeKube::register`]ed kinds, and those of created
//!   `CustomResourceDefinition`s (served versions share one store, without conversion);
//! - create (`generateName`, uid, creationTimestamp, generation 1, 409 `AlreadyExists`), get,
//!   list (label selectors `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`; field selectors `=`,
//!   `!=` on any dotted path), replace (409 `Conflict` on a stale resourceVersion; a write that
//!   changes nothing is not stored), the `status` subresource (main writes keep the status,
//!   status writes change only the status), `metadata.generation` moving on any change outside
//!   metadata and status, patches (JSON merge, JSON patch, server-side apply as create-or-merge
//!   recording the `fieldManager`), delete with finalizers, the `scale` subresource of
//!   Deployments, 400/422 `Status` for bodies that are not an object of the path's kind;
//! - watch: replay from a resourceVersion within the last [`WATCH_HISTORY`] changes, 410
//!   `Expired` before that, selectors (an object leaving a selector is DELETED for that watch),
//!   `timeoutSeconds` ending the stream (after a BOOKMARK with `allowWatchBookmarks`);
//! - the controller manager, synchronously: after each write to a Deployment or DaemonSet it
//!   writes the status its controller would (a separate resourceVersion and watch event),
//!   ready unless [`FakeKube::set_workload_readiness`] says otherwise; CRDs become `Established`.
//!
//! Not modelled: field ownership in server-side apply (no conflicts, `force` is moot, fields
//! dropped from an applied config stay, `managedFields` hold manager names only); strategic
//! merge patch is a JSON merge patch (lists are replaced, never merged by key; no `$patch`
//! directives); admission, schema validation and defaulting beyond the above; timestamps in
//! conditions; namespace existence and deletion; garbage collection by ownerReferences
//! (`propagationPolicy` is ignored) and `DeleteOptions`; delete collection; `dryRun`; paging
//! (`limit`/`continue` are ignored: one page holds everything); `sendInitialEvents`;
//! discovery, OpenAPI, protobuf, authentication and authorization.

mod selector;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use selector::{FieldSelector, LabelSelector};

/// How many changes a watch can replay from an older resourceVersion: more than any test makes
/// between a list and its watch, few enough to test the 410 path by writing past it.
pub const WATCH_HISTORY: usize = 1000;

/// Live changes buffered per watch before it lags; a lagging watch is ended and the client
/// resumes it from its last resourceVersion, out of the history.
const BROADCAST_CAPACITY: usize = 1024;

/// The kinds of [`FakeKube::new`]: group, version, kind, plural, namespaced, status subresource.
const BUILT_IN: [(&str, &str, &str, &str, bool, bool); 14] = [
    ("", "v1", "Namespace", "namespaces", false, true),
    ("", "v1", "Service", "services", true, true),
    ("", "v1", "ConfigMap", "configmaps", true, false),
    ("", "v1", "Secret", "secrets", true, false),
    ("", "v1", "Pod", "pods", true, true),
    ("", "v1", "Event", "events", true, false),
    ("", "v1", "ServiceAccount", "serviceaccounts", true, false),
    ("apps", "v1", "Deployment", "deployments", true, true),
    ("apps", "v1", "DaemonSet", "daemonsets", true, true),
    (
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        true,
    ),
    ("coordination.k8s.io", "v1", "Lease", "leases", true, false),
    ("events.k8s.io", "v1", "Event", "events", true, false),
    (
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        true,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
    ),
];

/// A resource kind the server serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kind {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Resource name in paths, e.g. `deployments`.
    pub plural: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether status is written only through the `status` subresource.
    pub status_subresource: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        match self.group.as_str() {
            "" => self.version.clone(),
            group => format!("{group}/{}", self.version),
        }
    }

    fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The HTTP method.
    pub method: Method,
    /// The path, e.g. `/apis/apps/v1/namespaces/test/deployments/web`.
    pub path: String,
    /// The query string as sent (percent-encoded), `""` when there is none.
    pub query: String,
}

/// The in-memory API server; clones share one store. See the [module docs](self).
#[derive(Clone)]
pub struct FakeKube {
    state: Arc<Mutex<State>>,
    open_watches: Arc<AtomicUsize>,
}

/// (group, plural, namespace or `""`, name): objects in key order, as etcd lists them.
type Key = (String, String, String, String);

struct State {
    kinds: Vec<Kind>,
    objects: BTreeMap<Key, Value>,
    /// The global resourceVersion: the version of the last change.
    version: u64,
    uids: u64,
    history: VecDeque<Arc<Change>>,
    /// The newest version no longer in `history`: a watch from before it gets 410.
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
    requests: Vec<RequestRecord>,
    faults: Vec<(Method, String, u16)>,
    /// (namespace, name) of workloads the controller reports as not ready.
    unready: HashSet<(String, String)>,
}

#[derive(Clone, Copy)]
enum Verb {
    Added,
    Modified,
    Deleted,
}

/// One stored change, as watches see it.
struct Change {
    version: u64,
    key: Key,
    verb: Verb,
    object: Value,
    old: Option<Value>,
}

impl Default for FakeKube {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKube {
    /// An empty server that serves the built-in kinds: core/v1 Namespace, Service, ConfigMap,
    /// Secret, Pod, Event, ServiceAccount; apps/v1 Deployment and DaemonSet;
    /// autoscaling/v2 HorizontalPodAutoscaler; coordination.k8s.io/v1 Lease; events.k8s.io/v1
    /// Event; networking.k8s.io/v1 Ingress; apiextensions.k8s.io/v1 CustomResourceDefinition.
    pub fn new() -> Self {
        let kinds = BUILT_IN
            .iter()
            .map(|&(group, version, kind, plural, namespaced, status)| Kind {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                namespaced,
                status_subresource: status,
            });
        let state = State {
            kinds: kinds.collect(),
            objects: BTreeMap::new(),
            // Not 0: a list's version must be one a watch can start from, and "0" means "any".
            version: 1,
            uids: 0,
            history: VecDeque::new(),
            compacted: 0,
            changes: broadcast::channel(BROADCAST_CAPACITY).0,
            requests: Vec::new(),
            faults: Vec::new(),
            unready: HashSet::new(),
        };
        let open_watches = Arc::new(AtomicUsize::new(0));
        Self {
            state: Arc::new(Mutex::new(state)),
            open_watches,
        }
    }

    /// A new client over this server, with default namespace `default`.
    ///
    /// # Panics
    /// Outside a tokio runtime (the client spawns its request buffer).
    pub fn client(&self) -> ::kube::Client {
        ::kube::Client::new(self.clone(), "default")
    }

    /// Serves a custom resource kind (as if its CRD were installed), replacing a kind with the
    /// same group, version and plural.
    pub fn register(&self, r: Kind) {
        self.lock().register(r);
    }

    /// The stored object, as a GET would return it; `namespace` is `None` for cluster-scoped
    /// kinds.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let state = self.lock();
        let kind = state.kind_of(api_version, kind)?;
        let key = key(&kind, namespace.unwrap_or_default(), name);
        state.objects.get(&key).map(|o| present(&kind, o))
    }

    /// The stored objects of a kind, in one namespace or (`None`) in all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let state = self.lock();
        let Some(kind) = state.kind_of(api_version, kind) else {
            return Vec::new();
        };
        let (labels, fields) = Default::default();
        state.select(&Filter {
            kind,
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    /// Writes an object from the test side, like `kubectl apply` without the three-way merge:
    /// creates it, or replaces it whatever its resourceVersion. Server-owned metadata (uid,
    /// creationTimestamp, …) is kept, so is the status unless `object` has one; generation and
    /// resourceVersion move and watches see the change. A namespaced object without a
    /// namespace goes to `default`. Returns the object as stored.
    ///
    /// # Panics
    /// When the kind is not served or the object is invalid: a bug in the test.
    pub fn upsert(&self, object: Value) -> Value {
        let mut state = self.lock();
        let (api_version, kind) = (&object["apiVersion"], &object["kind"]);
        let served = state.kind_of(
            api_version.as_str().unwrap_or_default(),
            kind.as_str().unwrap_or_default(),
        );
        let Some(kind) = served else {
            panic!("upsert: {api_version} {kind} is not served")
        };
        state
            .upsert(&kind, object)
            .unwrap_or_else(|e| panic!("upsert of a {}: {}", kind.kind, e.message))
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// The next request with this method whose path starts with `path_prefix` is answered with
    /// a `Status` error of code `status` (reason as the server would name it) and not applied.
    pub fn fail_next(&self, method: Method, path_prefix: &str, status: u16) {
        self.lock()
            .faults
            .push((method, path_prefix.to_owned(), status));
    }

    /// Whether the workload controller reports the Deployment or DaemonSet `namespace/name` as
    /// ready (the default) or its pods as unavailable; its status is rewritten at once.
    pub fn set_workload_readiness(&self, namespace: &str, name: &str, ready: bool) {
        let mut state = self.lock();
        let workload = (namespace.to_owned(), name.to_owned());
        if ready {
            state.unready.remove(&workload);
        } else {
            state.unready.insert(workload);
        }
        for kind in ["Deployment", "DaemonSet"] {
            if let Some(kind) = state.kind_of("apps/v1", kind) {
                state.reconcile(&kind, namespace, name);
            }
        }
    }

    /// Serves this API over plain HTTP on an ephemeral loopback port, for a controller running
    /// as its own process (it reads [`FakeKube::kubeconfig`]). Runs until the runtime stops.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn serve_http(&self) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let fake = self.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let mut fake = fake.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = axum::body::to_bytes(body, 64 << 20)
                    .await
                    .unwrap_or_default();
                let request = Request::from_parts(parts, ::kube::client::Body::from(bytes));
                let response = match tower_service::Service::call(&mut fake, request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let (parts, body) = response.into_parts();
                axum::response::Response::from_parts(parts, axum::body::Body::new(body))
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(addr)
    }

    /// A kubeconfig that points a client at [`FakeKube::serve_http`]'s `addr`.
    pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        )
    }

    /// How many watch streams are open: one per watch until its `timeoutSeconds` passes or the
    /// client drops it. Lets a test wait for the server to end a watch.
    pub fn open_watches(&self) -> usize {
        self.open_watches.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(&self, parts: &http::request::Parts, body: &[u8]) -> Reply {
        let (method, path) = (&parts.method, parts.uri.path());
        let query = parts.uri.query().unwrap_or_default();
        let mut state = self.lock();
        let record = RequestRecord {
            method: method.clone(),
            path: path.into(),
            query: query.into(),
        };
        state.requests.push(record);
        let fault = state
            .faults
            .iter()
            .position(|(m, prefix, _)| m == method && path.starts_with(prefix.as_str()));
        if let Some(i) = fault {
            let (_, _, code) = state.faults.remove(i);
            return ApiError::new(code, reason_of(code), "injected by FakeKube::fail_next").into();
        }
        let query = Query(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        );
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let reply = state.dispatch(method, path, &query, content_type.unwrap_or_default(), body);
        reply.unwrap_or_else(Reply::from)
    }
}

impl tower_service::Service<Request<::kube::client::Body>> for FakeKube {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<::kube::client::Body>) -> Self::Future {
        let fake = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let reply = match body.collect_bytes().await {
                Ok(body) => fake.handle(&parts, &body),
                Err(e) => ApiError::bad_request(format!("reading the body: {e}")).into(),
            };
            let (status, body) = match reply {
                Reply::Json(code, value) => (code, Inner::Full(Some(value.to_string().into()))),
                Reply::Watch(watch) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(forward(Open::new(&fake.open_watches), *watch, tx));
                    (200, Inner::Stream(rx))
                }
            };
            let mut response = Response::new(ResponseBody(body));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        })
    }
}

/// The body of a [`FakeKube`] response: one JSON document, or newline-delimited watch events.
/// (`kube::client::Body` cannot be built from a stream outside kube.)
pub struct ResponseBody(Inner);

enum Inner {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.0 {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// Counts an open watch stream while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Feeds one watch stream until it times out, lags, or its client goes away.
async fn forward(_open: Open, watch: Watch, tx: mpsc::UnboundedSender<Bytes>) {
    let Watch {
        filter,
        lines,
        changes,
        timeout,
        bookmarks,
        mut seen,
    } = watch;
    if lines.into_iter().any(|line| tx.send(line).is_err()) {
        return;
    }
    let Some(mut changes) = changes else { return };
    let expiry = async move {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            () = &mut expiry => break,
            () = tx.closed() => return,
            change = changes.recv() => {
                // Lagged or closed: end the stream; the client resumes from its last version.
                let Ok(change) = change else { return };
                seen = change.version;
                if let Some(line) = filter.line(&change) && tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
    if bookmarks {
        // Every change up to `seen` went through this stream: resuming there loses nothing.
        let bookmark = json!({
            "apiVersion": filter.kind.api_version(),
            "kind": filter.kind.kind,
            "metadata": {"resourceVersion": seen.to_string()},
        });
        let _ = tx.send(event("BOOKMARK", &bookmark));
    }
}

enum Reply {
    Json(u16, Value),
    Watch(Box<Watch>),
}

/// A watch to start: lines to send first, then live changes until the timeout.
struct Watch {
    filter: Filter,
    lines: Vec<Bytes>,
    changes: Option<broadcast::Receiver<Arc<Change>>>,
    timeout: Option<Duration>,
    bookmarks: bool,
    /// The version the lines bring the client to.
    seen: u64,
}

/// What a list or watch selects.
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn parse(kind: &Kind, namespace: Option<&str>, query: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default());
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default());
        Ok(Self {
            kind: kind.clone(),
            namespace: namespace.map(str::to_owned),
            labels: labels.map_err(ApiError::bad_request)?,
            fields: fields.map_err(ApiError::bad_request)?,
        })
    }

    fn in_scope(&self, key: &Key) -> bool {
        (&key.0, &key.1) == (&self.kind.group, &self.kind.plural)
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.2)
    }

    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// The event line this watch sends for `change`, if any: an object entering the selector
    /// is ADDED, one leaving it DELETED.
    fn line(&self, change: &Change) -> Option<Bytes> {
        if !self.in_scope(&change.key) {
            return None;
        }
        let before = change.old.as_ref().is_some_and(|o| self.matches(o));
        let verb = match (change.verb, before, self.matches(&change.object)) {
            (Verb::Added, _, true) | (Verb::Modified, false, true) => "ADDED",
            (Verb::Modified, true, true) => "MODIFIED",
            (Verb::Deleted, _, true) | (Verb::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(event(verb, &present(&self.kind, &change.object)))
    }
}

fn event(verb: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": verb, "object": object})))
}

/// The decoded query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let value = self.get(name).filter(|v| !v.is_empty());
        let parse = |v: &str| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("{name}={v:?}: not a number")))
        };
        value.map(parse).transpose()
    }
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// Everything but the status, when the kind has a status subresource.
    Main,
    /// The status only.
    Status,
    /// Everything: a test-side write.
    Upsert,
}

impl Part {
    fn of(sub: Option<&str>) -> Self {
        if sub == Some("status") {
            Part::Status
        } else {
            Part::Main
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum PatchStyle {
    Merge,
    Json,
    Apply,
}

/// Server-owned metadata that a write cannot change.
const SERVER_FIELDS: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "managedFields",
];

type Manager<'a> = Option<(&'a str, &'a str)>;

/// A path decoded: kind, namespace, name, subresource.
type Target = (Kind, Option<String>, Option<String>, Option<String>);

impl State {
    fn register(&mut self, kind: Kind) {
        let same = |k: &&mut Kind| {
            (&k.group, &k.version, &k.plural) == (&kind.group, &kind.version, &kind.plural)
        };
        match self.kinds.iter_mut().find(same) {
            Some(k) => *k = kind,
            None => self.kinds.push(kind),
        }
    }

    fn kind_of(&self, api_version: &str, kind: &str) -> Option<Kind> {
        self.kinds
            .iter()
            .find(|k| k.api_version() == api_version && k.kind == kind)
            .cloned()
    }

    /// Decodes a path into (kind, namespace, name, subresource).
    fn target(&self, path: &str) -> Result<Target, ApiError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return Err(ApiError::no_such_path()),
        };
        let find = |plural: &str| {
            let kind = self.kinds.iter().find(|k| {
                (k.group.as_str(), k.version.as_str(), k.plural.as_str())
                    == (group, version, plural)
            });
            kind.cloned().ok_or_else(ApiError::no_such_path)
        };
        let (kind, namespace, rest) = match rest {
            ["namespaces", ns, plural, rest @ ..] if find(plural).is_ok_and(|k| k.namespaced) => {
                (find(plural)?, Some((*ns).to_owned()), rest)
            }
            [plural, rest @ ..] => (find(plural)?, None, rest),
            [] => return Err(ApiError::no_such_path()),
        };
        let (name, sub) = match rest {
            [] => (None, None),
            [name] => (Some((*name).to_owned()), None),
            [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
            _ => return Err(ApiError::no_such_path()),
        };
        let served = match sub.as_deref() {
            None => true,
            Some("status") => kind.status_subresource,
            Some("scale") => kind.is("apps", "Deployment"),
            Some(_) => false,
        };
        if !served || (kind.namespaced && namespace.is_none() && name.is_some()) {
            return Err(ApiError::no_such_path());
        }
        Ok((kind, namespace, name, sub))
    }

    fn dispatch(
        &mut self,
        method: &Method,
        path: &str,
        query: &Query,
        content_type: &str,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        let (kind, namespace, name, sub) = self.target(path)?;
        let (kind, ns, sub) = (&kind, namespace.as_deref(), sub.as_deref());
        let manager = query.get("fieldManager").map(|m| (m, "Update"));
        let ok = |value| Ok(Reply::Json(200, value));
        match (method, name.as_deref()) {
            (&Method::GET, None) if query.flag("watch") => Ok(Reply::Watch(Box::new(
                self.watch(Filter::parse(kind, ns, query)?, query)?,
            ))),
            (&Method::GET, None) => {
                let items = self.select(&Filter::parse(kind, ns, query)?);
                ok(json!({
                    "apiVersion": kind.api_version(),
                    "kind": format!("{}List", kind.kind),
                    "metadata": {"resourceVersion": self.version.to_string()},
                    "items": items,
                }))
            }
            (&Method::GET, Some(name)) if sub == Some("scale") => {
                ok(scale_of(&self.fetch(kind, ns, name)?))
            }
            (&Method::GET, Some(name)) => ok(present(kind, &self.fetch(kind, ns, name)?)),
            (&Method::POST, None) if sub.is_none() && kind.namespaced == ns.is_some() => {
                let mut object = decode(body)?;
                check_types(kind, &mut object)?;
                Ok(Reply::Json(
                    201,
                    self.create_object(kind, ns, object, false, manager)?,
                ))
            }
            (&Method::PUT, Some(name)) => {
                let (old, mut new) = (self.fetch(kind, ns, name)?, decode(body)?);
                if sub == Some("scale") {
                    return ok(self.rescale(kind, old, &new, manager)?);
                }
                check_types(kind, &mut new)?;
                check_identity(kind, &mut new, ns, name)?;
                ok(self.update(kind, old, new, Part::of(sub), manager)?)
            }
            (&Method::PATCH, Some(name)) => {
                self.patch(kind, (ns, name, sub), content_type, body, query)
            }
            (&Method::DELETE, Some(name)) if sub.is_none() => {
                let object = self.fetch(kind, ns, name)?;
                ok(self.remove(kind, object))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    fn fetch(&self, kind: &Kind, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let found = self
            .objects
            .get(&key(kind, ns.unwrap_or_default(), name))
            .cloned();
        found.ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", resource(kind)),
            )
        })
    }

    fn select(&self, filter: &Filter) -> Vec<Value> {
        let selected = self
            .objects
            .iter()
            .filter(|(key, object)| filter.in_scope(key) && filter.matches(object));
        selected
            .map(|(_, object)| present(&filter.kind, object))
            .collect()
    }

    fn watch(&mut self, filter: Filter, query: &Query) -> Result<Watch, ApiError> {
        let timeout = query.number("timeoutSeconds")?.map(Duration::from_secs);
        let lines = match query.number("resourceVersion")?.filter(|v| *v != 0) {
            None => self
                .select(&filter)
                .iter()
                .map(|o| event("ADDED", o))
                .collect(),
            Some(from) if from < self.compacted => {
                let message = format!("too old resource version: {from} ({})", self.compacted);
                let gone = event("ERROR", &ApiError::new(410, "Expired", message).status());
                return Ok(Watch {
                    filter,
                    lines: vec![gone],
                    changes: None,
                    timeout,
                    bookmarks: false,
                    seen: 0,
                });
            }
            Some(from) => self
                .history
                .iter()
                .filter(|c| c.version > from)
                .filter_map(|c| filter.line(c))
                .collect(),
        };
        let (changes, bookmarks) = (
            Some(self.changes.subscribe()),
            query.flag("allowWatchBookmarks"),
        );
        Ok(Watch {
            filter,
            lines,
            changes,
            timeout,
            bookmarks,
            seen: self.version,
        })
    }

    fn upsert(&mut self, kind: &Kind, mut object: Value) -> Result<Value, ApiError> {
        check_types(kind, &mut object)?;
        let ns = namespace_of(kind, None, &object)?;
        set_or_remove(slot(&mut object, "metadata"), "resourceVersion", None);
        let name = meta_str(&object, "name").unwrap_or_default();
        match self
            .objects
            .get(&key(kind, ns.as_deref().unwrap_or_default(), name))
            .cloned()
        {
            None => self.create_object(kind, ns.as_deref(), object, true, None),
            Some(old) => {
                if object.get("status").is_none() {
                    set_or_remove(&mut object, "status", old.get("status").cloned());
                }
                self.update(kind, old, object, Part::Upsert, None)
            }
        }
    }

    /// Stores a new object: names it, sets server-owned metadata, and drops the status if it
    /// has a subresource (unless `keep_status`).
    fn create_object(
        &mut self,
        kind: &Kind,
        ns: Option<&str>,
        mut object: Value,
        keep_status: bool,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        let namespace = namespace_of(kind, ns, &object)?;
        let ns = namespace.as_deref().unwrap_or_default();
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => self.generate_name(kind, ns, prefix),
            _ => {
                return Err(ApiError::invalid(
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        if self.objects.contains_key(&key(kind, ns, &name)) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", resource(kind)),
            ));
        }
        self.uids += 1;
        let (n, r) = (self.uids, RandomState::new().hash_one(self.uids));
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            r >> 32,
            (r >> 16) & 0xffff,
            r & 0xfff,
            n >> 48,
            n & 0xffff_ffff_ffff
        );
        let meta = slot(&mut object, "metadata");
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "namespace",
        ] {
            set_or_remove(meta, field, None);
        }
        if let Some(ns) = namespace {
            *slot(meta, "namespace") = json!(ns);
        }
        *slot(meta, "name") = json!(name);
        *slot(meta, "uid") = json!(uid);
        *slot(meta, "creationTimestamp") = now();
        *slot(meta, "generation") = json!(1);
        if kind.status_subresource && !keep_status {
            set_or_remove(&mut object, "status", None);
        }
        if let Some((manager, operation)) = manager {
            add_manager(kind, &mut object, manager, operation);
        }
        Ok(present(kind, &self.store(kind, object)))
    }

    fn patch(
        &mut self,
        kind: &Kind,
        (ns, name, sub): (Option<&str>, &str, Option<&str>),
        content_type: &str,
        body: &[u8],
        query: &Query,
    ) -> Result<Reply, ApiError> {
        let style = match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                PatchStyle::Merge
            }
            "application/json-patch+json" => PatchStyle::Json,
            "application/apply-patch+yaml" => PatchStyle::Apply,
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("unknown patch type {other:?}"),
                ));
            }
        };
        let operation = if style == PatchStyle::Apply {
            "Apply"
        } else {
            "Update"
        };
        let manager = query.get("fieldManager").map(|m| (m, operation));
        if style == PatchStyle::Apply && manager.is_none() {
            return Err(ApiError::invalid(
                "fieldManager: Required value: is required for apply patch",
            ));
        }
        let old = match self.fetch(kind, ns, name) {
            Err(_) if style == PatchStyle::Apply && sub.is_none() => {
                let mut object = decode_apply(body)?;
                check_types(kind, &mut object)?;
                check_identity(kind, &mut object, ns, name)?;
                return Ok(Reply::Json(
                    201,
                    self.create_object(kind, ns, object, false, manager)?,
                ));
            }
            old => old?,
        };
        if sub == Some("scale") {
            let scale = patched(style, scale_of(&old), body, None)?;
            return Ok(Reply::Json(200, self.rescale(kind, old, &scale, manager)?));
        }
        let mut new = patched(style, old.clone(), body, Some(kind))?;
        check_types(kind, &mut new)?;
        check_identity(kind, &mut new, ns, name)?;
        Ok(Reply::Json(
            200,
            self.update(kind, old, new, Part::of(sub), manager)?,
        ))
    }

    /// Sets a Deployment's `spec.replicas` from an autoscaling/v1 `Scale`; returns the new one.
    fn rescale(
        &mut self,
        kind: &Kind,
        old: Value,
        scale: &Value,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        if scale["apiVersion"] != "autoscaling/v1" || scale["kind"] != "Scale" {
            return Err(ApiError::bad_request("expected an autoscaling/v1 Scale"));
        }
        check_resource_version(kind, scale, &old)?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .filter(|r| (0..=i64::from(i32::MAX)).contains(r));
        let replicas = replicas.ok_or_else(|| {
            ApiError::invalid("spec.replicas: Invalid value: must be a non-negative integer")
        })?;
        let mut new = old.clone();
        *slot(slot(&mut new, "spec"), "replicas") = json!(replicas);
        let stored = self.update(kind, old, new, Part::Main, manager)?;
        // The controller has written the status since: read it back.
        Ok(scale_of(
            self.objects.get(&key_of(kind, &stored)).unwrap_or(&stored),
        ))
    }

    /// Stores `new` over `old` as a write to `part`: checks the resourceVersion, keeps
    /// server-owned metadata, moves the generation; a write that changes nothing is not stored.
    fn update(
        &mut self,
        kind: &Kind,
        old: Value,
        mut new: Value,
        part: Part,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        check_resource_version(kind, &new, &old)?;
        if part == Part::Status {
            let status = new.get("status").cloned();
            new = old.clone();
            set_or_remove(&mut new, "status", status);
        } else {
            if part == Part::Main && kind.status_subresource {
                set_or_remove(&mut new, "status", old.get("status").cloned());
            }
            for field in SERVER_FIELDS {
                set_or_remove(
                    slot(&mut new, "metadata"),
                    field,
                    old["metadata"].get(field).cloned(),
                );
            }
        }
        if without_meta(&old) != without_meta(&new) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            *slot(slot(&mut new, "metadata"), "generation") = json!(generation + 1);
        }
        if let Some((manager, operation)) = manager {
            add_manager(kind, &mut new, manager, operation);
        }
        set_or_remove(
            slot(&mut new, "metadata"),
            "resourceVersion",
            old["metadata"].get("resourceVersion").cloned(),
        );
        if new == old {
            return Ok(present(kind, &old));
        }
        let stored = if part == Part::Status {
            self.commit(kind, new, false)
        } else {
            self.store(kind, new)
        };
        Ok(present(kind, &stored))
    }

    /// Deletes `object`, or marks it deleted while it has finalizers; returns the object, or a
    /// success `Status` once it is gone.
    fn remove(&mut self, kind: &Kind, mut object: Value) -> Value {
        if has_finalizers(&object) {
            if object
                .pointer("/metadata/deletionTimestamp")
                .is_none_or(Value::is_null)
            {
                *slot(slot(&mut object, "metadata"), "deletionTimestamp") = now();
                *slot(slot(&mut object, "metadata"), "deletionGracePeriodSeconds") = json!(0);
                object = self.commit(kind, object, false);
            }
            return present(kind, &object);
        }
        let object = self.commit(kind, object, true);
        let (name, uid) = (meta_str(&object, "name"), meta_str(&object, "uid"));
        let details = json!({"name": name, "group": kind.group, "kind": kind.plural, "uid": uid});
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
    }

    /// Stores a written object (removing it if its deletion waits for nothing any more), then
    /// lets the controllers react.
    fn store(&mut self, kind: &Kind, object: Value) -> Value {
        let deleting = object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null());
        let delete = deleting && !has_finalizers(&object);
        let stored = self.commit(kind, object, delete);
        let (_, _, ns, name) = key_of(kind, &stored);
        self.reconcile(kind, &ns, &name);
        stored
    }

    /// The one place the store changes: a new global version, history, and watch event.
    fn commit(&mut self, kind: &Kind, mut object: Value, delete: bool) -> Value {
        self.version += 1;
        *slot(slot(&mut object, "metadata"), "resourceVersion") = json!(self.version.to_string());
        let key = key_of(kind, &object);
        let old = if delete {
            self.objects.remove(&key)
        } else {
            self.objects.insert(key.clone(), object.clone())
        };
        let verb = match (delete, &old) {
            (true, _) => Verb::Deleted,
            (false, Some(_)) => Verb::Modified,
            (false, None) => Verb::Added,
        };
        let change = Arc::new(Change {
            version: self.version,
            key,
            verb,
            object: object.clone(),
            old,
        });
        self.history.push_back(change.clone());
        while self.history.len() > WATCH_HISTORY {
            self.compacted = self
                .history
                .pop_front()
                .map_or(self.compacted, |c| c.version);
        }
        // No receiver (no open watch) is fine.
        let _ = self.changes.send(change);
        object
    }

    /// The controller manager: workloads get the status their controller would write, CRDs
    /// are served and established.
    fn reconcile(&mut self, kind: &Kind, ns: &str, name: &str) {
        let Some(object) = self.objects.get(&key(kind, ns, name)).cloned() else {
            return;
        };
        let ready = !self.unready.contains(&(ns.to_owned(), name.to_owned()));
        let status = if kind.is("apps", "Deployment") {
            deployment_status(&object, ready)
        } else if kind.is("apps", "DaemonSet") {
            daemonset_status(&object, ready)
        } else if kind.is("apiextensions.k8s.io", "CustomResourceDefinition") {
            self.serve_crd(&object)
        } else {
            return;
        };
        if object.get("status") != Some(&status) {
            let mut updated = object;
            *slot(&mut updated, "status") = status;
            self.commit(kind, updated, false);
        }
    }

    /// Registers the served versions of a CRD; returns its established status.
    fn serve_crd(&mut self, crd: &Value) -> Value {
        let spec = &crd["spec"];
        let text = |pointer: &str| {
            spec.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        for version in versions.iter().filter(|v| v["served"] != false) {
            self.register(Kind {
                group: text("/group"),
                version: version["name"].as_str().unwrap_or_default().to_owned(),
                kind: text("/names/kind"),
                plural: text("/names/plural"),
                namespaced: spec["scope"] == "Namespaced",
                status_subresource: version.pointer("/subresources/status").is_some(),
            });
        }
        let stored: Vec<&Value> = versions
            .iter()
            .filter(|v| v["storage"] == true)
            .map(|v| &v["name"])
            .collect();
        json!({
            "acceptedNames": spec["names"],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
            ],
            "storedVersions": stored,
        })
    }

    /// `prefix` and five characters from the alphabet the server uses, not yet taken.
    fn generate_name(&self, kind: &Kind, ns: &str, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            let mut r = RandomState::new().hash_one(self.version) as usize;
            let suffix: String = (0..5)
                .map(|_| (ALPHABET[r % ALPHABET.len()], r /= ALPHABET.len()).0 as char)
                .collect();
            let name = format!("{prefix}{suffix}");
            if !self.objects.contains_key(&key(kind, ns, &name)) {
                return name;
            }
        }
    }
}

fn key(kind: &Kind, ns: &str, name: &str) -> Key {
    (
        kind.group.clone(),
        kind.plural.clone(),
        ns.to_owned(),
        name.to_owned(),
    )
}

fn key_of(kind: &Kind, object: &Value) -> Key {
    key(
        kind,
        meta_str(object, "namespace").unwrap_or_default(),
        meta_str(object, "name").unwrap_or_default(),
    )
}

/// `deployments.apps`, `configmaps`: how the server names a resource in messages.
fn resource(kind: &Kind) -> String {
    [kind.plural.as_str(), kind.group.as_str()]
        .join(".")
        .trim_end_matches('.')
        .to_owned()
}

/// The object as served under `kind`'s version (versions share objects; no conversion).
fn present(kind: &Kind, object: &Value) -> Value {
    let mut object = object.clone();
    *slot(&mut object, "apiVersion") = json!(kind.api_version());
    *slot(&mut object, "kind") = json!(kind.kind);
    object
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// `value[field]`, making `value` an object first if it is not one (never panics).
fn slot<'a>(value: &'a mut Value, field: &str) -> &'a mut Value {
    if !value.is_object() {
        *value = json!({});
    }
    match value {
        Value::Object(map) => map.entry(field).or_insert(Value::Null),
        _ => unreachable!("made an object above"),
    }
}

fn set_or_remove(value: &mut Value, field: &str, new: Option<Value>) {
    match (new, value.as_object_mut()) {
        (Some(new), _) => *slot(value, field) = new,
        (None, Some(map)) => _ = map.remove(field),
        (None, None) => {}
    }
}

/// What moves `metadata.generation`: everything but metadata and status.
fn without_meta(object: &Value) -> Vec<(&String, &Value)> {
    let fields = object.as_object().into_iter().flatten();
    fields
        .filter(|(k, _)| *k != "metadata" && *k != "status")
        .collect()
}

fn has_finalizers(object: &Value) -> bool {
    let finalizers = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array);
    finalizers.is_some_and(|f| !f.is_empty())
}

fn now() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default()
}

fn add_manager(kind: &Kind, object: &mut Value, manager: &str, operation: &str) {
    let fields = slot(slot(object, "metadata"), "managedFields");
    if !fields.is_array() {
        *fields = json!([]);
    }
    if let Value::Array(entries) = fields
        && !entries
            .iter()
            .any(|e| e["manager"] == manager && e["operation"] == operation)
    {
        let (api_version, time) = (kind.api_version(), now());
        entries.push(json!({"manager": manager, "operation": operation, "apiVersion": api_version, "time": time}));
    }
}

fn decode(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// An applied configuration: YAML, of which JSON (what kube sends) is a subset.
fn decode_apply(body: &[u8]) -> Result<Value, ApiError> {
    let yaml = |_| serde_yaml::from_slice(body);
    serde_json::from_slice(body)
        .or_else(yaml)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))
}

fn patched(
    style: PatchStyle,
    mut target: Value,
    body: &[u8],
    kind: Option<&Kind>,
) -> Result<Value, ApiError> {
    match style {
        PatchStyle::Merge => json_patch::merge(&mut target, &decode(body)?),
        PatchStyle::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("not a JSON patch: {e}")))?;
            json_patch::patch(&mut target, &patch).map_err(|e| ApiError::invalid(e.to_string()))?;
        }
        PatchStyle::Apply => {
            let mut applied = decode_apply(body)?;
            if let Some(kind) = kind {
                check_types(kind, &mut applied)?;
            }
            json_patch::merge(&mut target, &applied);
        }
    }
    Ok(target)
}

/// The body is an object of this kind (apiVersion and kind filled in when absent) with
/// well-formed metadata.
fn check_types(kind: &Kind, object: &mut Value) -> Result<(), ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    };
    for (field, want) in [
        ("apiVersion", kind.api_version()),
        ("kind", kind.kind.clone()),
    ] {
        match map.entry(field).or_insert_with(|| json!(want)) {
            Value::String(got) if *got == want => {}
            got => {
                return Err(ApiError::bad_request(format!(
                    "{field} {got} does not match {want:?} of the request"
                )));
            }
        }
    }
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata is not an object"));
    }
    for (field, map) in [
        ("labels", true),
        ("annotations", true),
        ("finalizers", false),
    ] {
        let strings = match meta.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::Object(m)) if map => m.values().all(Value::is_string),
            Some(Value::Array(a)) if !map => a.iter().all(Value::is_string),
            Some(_) => false,
        };
        if !strings {
            return Err(ApiError::invalid(format!(
                "metadata.{field}: Invalid value: must hold strings"
            )));
        }
    }
    Ok(())
}

/// The body's name is the one in the path (filled in when absent), its namespace the path's.
fn check_identity(
    kind: &Kind,
    object: &mut Value,
    ns: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    match meta_str(object, "name") {
        None | Some("") => *slot(slot(object, "metadata"), "name") = json!(name),
        Some(got) if got == name => {}
        Some(got) => {
            let message = format!(
                "the name of the object ({got}) does not match the name on the URL ({name})"
            );
            return Err(ApiError::bad_request(message));
        }
    }
    namespace_of(kind, ns, object).map(drop)
}

/// The namespace an object is written to: the path's, which the body may repeat but not
/// contradict; `None` for cluster-scoped kinds.
fn namespace_of(
    kind: &Kind,
    path: Option<&str>,
    object: &Value,
) -> Result<Option<String>, ApiError> {
    match (
        kind.namespaced,
        path,
        meta_str(object, "namespace").filter(|ns| !ns.is_empty()),
    ) {
        (false, _, _) => Ok(None),
        (true, Some(path), Some(body)) if path != body => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (true, Some(ns), _) | (true, None, Some(ns)) => Ok(Some(ns.to_owned())),
        (true, None, None) => Ok(Some("default".to_owned())),
    }
}

fn check_resource_version(kind: &Kind, new: &Value, old: &Value) -> Result<(), ApiError> {
    match meta_str(new, "resourceVersion") {
        Some(v) if !v.is_empty() && Some(v) != meta_str(old, "resourceVersion") => {
            let name = meta_str(old, "name").unwrap_or_default();
            let message = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                resource(kind)
            );
            Err(ApiError::new(409, "Conflict", message))
        }
        _ => Ok(()),
    }
}

/// A Deployment as an autoscaling/v1 `Scale`.
fn scale_of(deployment: &Value) -> Value {
    let labels = deployment
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object);
    let selector: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let meta = &deployment["metadata"];
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": deployment.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": deployment.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector.join(","),
        },
    })
}

/// `{"type": …, "status": …, "reason": …, "message": …}`
fn condition(kind: &str, status: &str, reason: &str, message: String) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message})
}

/// Sets the counts that are not zero, as the API's `omitempty` does.
fn counts(status: &mut Value, counts: &[(&str, i64)]) {
    for &(field, value) in counts.iter().filter(|(_, v)| *v != 0) {
        status[field] = json!(value);
    }
}

fn deployment_status(deployment: &Value, ready: bool) -> Value {
    let n = deployment
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let name = meta_str(deployment, "name").unwrap_or_default();
    let conditions = if ready {
        [
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{name}\" has successfully progressed."),
            ),
        ]
    } else {
        [
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{name}\" is progressing."),
            ),
        ]
    };
    let generation = &deployment["metadata"]["generation"];
    let mut status = json!({"observedGeneration": generation, "conditions": conditions});
    let (up, down) = if ready { (n, 0) } else { (0, n) };
    let replicas = [
        ("replicas", n),
        ("updatedReplicas", n),
        ("readyReplicas", up),
        ("availableReplicas", up),
    ];
    counts(&mut status, &replicas);
    counts(&mut status, &[("unavailableReplicas", down)]);
    status
}

/// The node label no node of the one-node cluster carries: a DaemonSet whose pod template
/// selects it is scheduled nowhere. It is what Aviary's controller uses to scale a DaemonSet
/// to zero.
const NO_NODE_LABEL: &str = "aviary.dev/scale-to-zero";

/// A DaemonSet on a one-node cluster: one pod, ready or not; none when its pod template's
/// node selector asks for [`NO_NODE_LABEL`].
fn daemonset_status(daemonset: &Value, ready: bool) -> Value {
    let nowhere = daemonset
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .is_some_and(|selector| selector.contains_key(NO_NODE_LABEL));
    let desired = i64::from(!nowhere);
    let up = if ready { desired } else { 0 };
    // The first four are required fields of DaemonSetStatus: always present.
    let mut status = json!({
        "currentNumberScheduled": desired,
        "desiredNumberScheduled": desired,
        "numberMisscheduled": 0,
        "numberReady": up,
        "observedGeneration": daemonset["metadata"]["generation"],
        "updatedNumberScheduled": desired,
    });
    counts(
        &mut status,
        &[("numberAvailable", up), ("numberUnavailable", desired - up)],
    );
    status
}

/// An error the server answers with a `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    fn no_such_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn status(&self) -> Value {
        let (code, reason, message) = (self.code, self.reason, &self.message);
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(e.code, e.status())
    }
}

/// The reason the API server gives with a status code.
fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
