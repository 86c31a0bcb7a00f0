//! The NGINX provider: renders an `http`-level include for one ingress, validates it with
//! `nginx -t`, swaps it in atomically and reloads; the read-back is a status location in the
//! rendered default server that echoes each rollout's split and the config version the
//! workers serve.
//!
//! Every rollout routing the ingress is rendered at once: a `server` per host name the routes
//! name, the default server for the routes that take any host, and a `location` per path
//! prefix ([`render`]).
//!
//! apply: render → write `<include>.aviary-tmp` → `nginx -t` on a copy of the main config
//! that includes the candidate → rename over the include → `nginx -s reload` → poll
//! `/__aviary/status` until it reports the new version.
//!
//! Splits use `split_clients` on `$request_id` (random per request); A/B matches and the
//! affinity pin are `map`s that override the split; mirroring is the `mirror` module with a
//! second `split_clients` deciding which requests are copied.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ApplyError, Capabilities};
use crate::model::{self, Backend, ConditionKind, Observed, Route, RouteSet, StringMatch};

/// NGINX expresses weights, header and cookie matches, mirroring and session affinity.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: true,
    cookie_match: true,
    mirror: true,
    session_affinity: true,
    primary_affinity: false,
};

const KIND: &str = "nginx";

/// Path of the status location in the rendered server (loopback clients only).
pub const STATUS_PATH: &str = "/__aviary/status";

/// How often the status location is polled while waiting for a reload to take effect.
const POLL: Duration = Duration::from_millis(5);

/// Settings of an NGINX ingress in the agent's config file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NginxSettings {
    /// The nginx binary.
    #[serde(default = "default_bin")]
    pub bin: PathBuf,
    /// The main configuration (its `http` block includes `include_path`).
    pub main_conf: PathBuf,
    /// The file this agent owns and rewrites.
    pub include_path: PathBuf,
    /// `-p` prefix, when the main configuration uses relative paths.
    #[serde(default)]
    pub prefix: Option<PathBuf>,
    /// `listen` of the rendered server, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// The master's pid file; when set, an apply also waits for the old workers to stop
    /// accepting (no worker "is shutting down"), so no new connection reaches the old split.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
}

fn default_bin() -> PathBuf {
    PathBuf::from("nginx")
}

/// Drives one NGINX ingress.
pub struct NginxProvider {
    settings: NginxSettings,
    apply_timeout: Duration,
    http: reqwest::Client,
    apply_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, serde::Deserialize)]
struct Status {
    version: String,
    /// Each rollout's split, by `<namespace>/<name>`.
    routes: std::collections::BTreeMap<String, StatusSplit>,
}

#[derive(Debug, serde::Deserialize)]
struct StatusSplit {
    primary: u32,
    canary: u32,
    mirror: u32,
}

impl NginxProvider {
    /// A provider for `settings`; applies wait up to `apply_timeout` for the reload.
    pub fn new(settings: NginxSettings, apply_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            // A fresh connection per poll: an old worker must not answer for the new config.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Self {
            settings,
            apply_timeout,
            http,
            apply_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn status_url(&self) -> String {
        let listen = self.settings.listen.split_whitespace().next().unwrap_or("");
        let addr = if listen.contains(':') {
            listen.replace("0.0.0.0", "127.0.0.1")
        } else {
            format!("127.0.0.1:{listen}")
        };
        format!("http://{addr}{STATUS_PATH}")
    }

    async fn status(&self) -> Option<Status> {
        let response = self.http.get(self.status_url()).send().await.ok()?;
        response.json().await.ok()
    }

    /// Whether the workers serve the configuration rendered from `routes`.
    pub async fn in_sync(&self, routes: &RouteSet) -> bool {
        self.status()
            .await
            .is_some_and(|s| s.version == model::fingerprint(routes))
    }

    /// Renders, validates, swaps in and reloads `routes`, then waits for the workers to serve
    /// them, and returns the split they serve for `route` (one of them).
    ///
    /// Errors: [`ApplyError::Rejected`] with `nginx -t`'s output; [`ApplyError::Io`] when
    /// files or the reload fail; [`ApplyError::Unconfirmed`] when the status location does not
    /// report the new version (with `route`'s split) in time.
    pub async fn apply(&self, routes: &RouteSet, route: &Route) -> Result<Observed, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let version = model::fingerprint(routes);
        let key = route.key();
        let text = render(routes, &self.settings.listen, &version);
        let include = &self.settings.include_path;
        let unchanged = tokio::fs::read_to_string(include)
            .await
            .is_ok_and(|current| current == text);
        if !unchanged {
            let candidate = with_suffix(include, ".aviary-tmp");
            tokio::fs::write(&candidate, &text)
                .await
                .map_err(|e| io(format!("writing {}: {e}", candidate.display())))?;
            if let Err(error) = self.validate(&candidate).await {
                let _ = tokio::fs::remove_file(&candidate).await;
                return Err(error);
            }
            tokio::fs::rename(&candidate, include)
                .await
                .map_err(|e| io(format!("renaming over {}: {e}", include.display())))?;
            let old_workers = self.accepting_workers().await;
            self.nginx(&["-s", "reload"], &self.settings.main_conf)
                .await
                .map_err(io)?;
            return self.wait_serving(&version, &key, &old_workers).await;
        }
        self.wait_serving(&version, &key, &[]).await
    }

    /// Waits until the status location reports `version` with a split for `key`, and none of
    /// `old_workers` still accepts connections (the master signals them only after starting the
    /// new ones).
    async fn wait_serving(
        &self,
        version: &str,
        key: &str,
        old_workers: &[String],
    ) -> Result<Observed, ApplyError> {
        let deadline = tokio::time::Instant::now() + self.apply_timeout;
        loop {
            let status = self.status().await;
            if let Some(s) = &status
                && s.version == version
                && let Some(split) = s.routes.get(key)
                && !self
                    .accepting_workers()
                    .await
                    .iter()
                    .any(|w| old_workers.contains(w))
            {
                return Ok(Observed {
                    primary_weight: split.primary,
                    canary_weight: split.canary,
                    mirror_percent: split.mirror,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApplyError::Unconfirmed {
                    provider: KIND.into(),
                    after: self.apply_timeout,
                    detail: format!(
                        "{} reports {:?}, want version {version}",
                        self.status_url(),
                        status.map(|s| s.version)
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Pids of the master's workers that still accept connections (not "shutting down"),
    /// read from Linux `/proc`; empty without a pid file.
    async fn accepting_workers(&self) -> Vec<String> {
        let mut workers = Vec::new();
        let Some(pid_file) = &self.settings.pid_file else {
            return workers;
        };
        let Ok(master) = tokio::fs::read_to_string(pid_file).await else {
            return workers;
        };
        let master = master.trim().to_owned();
        let Ok(mut entries) = tokio::fs::read_dir("/proc").await else {
            return workers;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let Ok(stat) = tokio::fs::read_to_string(path.join("stat")).await else {
                continue;
            };
            // pid (comm) state ppid ...: the comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid != Some(master.as_str()) {
                continue;
            }
            let shutting_down = tokio::fs::read(path.join("cmdline"))
                .await
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("shutting down"));
            if !shutting_down {
                workers.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        workers
    }

    /// `nginx -t` on a copy of the main configuration that includes `candidate` instead.
    async fn validate(&self, candidate: &Path) -> Result<(), ApplyError> {
        let main = &self.settings.main_conf;
        let text = tokio::fs::read_to_string(main)
            .await
            .map_err(|e| io(format!("reading {}: {e}", main.display())))?;
        let include = self.settings.include_path.to_string_lossy();
        if !text.contains(include.as_ref()) {
            return Err(io(format!("{} does not include {include}", main.display())));
        }
        let check = with_suffix(main, ".aviary-check");
        let replaced = text.replace(include.as_ref(), &candidate.to_string_lossy());
        tokio::fs::write(&check, replaced)
            .await
            .map_err(|e| io(format!("writing {}: {e}", check.display())))?;
        let result = self.nginx(&["-t", "-q"], &check).await;
        let _ = tokio::fs::remove_file(&check).await;
        result.map_err(|detail| ApplyError::Rejected {
            provider: KIND.into(),
            detail,
        })
    }

    /// Runs nginx with `args` on `conf`; the error is its output.
    async fn nginx(&self, args: &[&str], conf: &Path) -> Result<(), String> {
        let mut command = tokio::process::Command::new(&self.settings.bin);
        command.args(args).arg("-c").arg(conf);
        if let Some(prefix) = &self.settings.prefix {
            command.arg("-p").arg(prefix);
        }
        let output = command
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", self.settings.bin.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }
}

fn io(detail: String) -> ApplyError {
    ApplyError::Io {
        provider: KIND.into(),
        detail,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// An NGINX quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A regex over a `cookie` header finding `name=<value_regex>`.
fn cookie_regex(name: &str, value_regex: &str) -> String {
    format!("~(^|;\\s*){}=({value_regex})(;|$)", regex::escape(name))
}

fn upstream(out: &mut String, backend: &Backend) {
    let _ = writeln!(out, "upstream {} {{", backend.cluster);
    for endpoint in &backend.endpoints {
        let _ = writeln!(out, "    server {endpoint};");
    }
    let _ = writeln!(out, "}}");
}

/// Renders the include for `routes`, listening on `listen`, tagged with `version`.
///
/// One `server` per host name the routes name (`server_name`), and a first, default server for
/// every other host, which also holds the status location. A server has one `location` per path
/// prefix, taken by the most specific route that takes its host with that prefix.
pub fn render(routes: &RouteSet, listen: &str, version: &str) -> String {
    let ingress = routes.values().next().map_or("", |r| r.ingress.as_str());
    let ingress_id: String = ingress
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by aviary-router-agent for ingress {ingress}; do not edit. version {version}"
    );
    let mut upstreams = std::collections::BTreeSet::new();
    for route in routes.values() {
        for backend in [&route.primary, &route.canary] {
            if upstreams.insert(backend.cluster.clone()) {
                upstream(&mut out, backend);
            }
        }
    }
    let mut rendered: Vec<(&Route, RouteVars)> = Vec::new();
    for (n, route) in routes.values().enumerate() {
        let vars = route_maps(&mut out, route, &format!("{ingress_id}_r{n}"));
        rendered.push((route, vars));
    }

    let status_routes: Vec<String> = routes
        .values()
        .map(|r| {
            format!(
                "\"{}\":{{\"primary\":{},\"canary\":{},\"mirror\":{}}}",
                r.key(),
                r.primary_weight,
                r.canary_weight,
                r.mirror_percent
            )
        })
        .collect();
    let status = format!(
        "{{\"version\":\"{version}\",\"routes\":{{{}}}}}",
        status_routes.join(",")
    );
    // The default server comes first: it answers every host no other server names.
    let _ = writeln!(out, "server {{\n    listen {listen};");
    let _ = writeln!(
        out,
        "    location = {STATUS_PATH} {{\n        allow 127.0.0.1;\n        allow ::1;\n        deny all;\n        default_type application/json;\n        return 200 '{status}';\n    }}"
    );
    let catch_all = locations(&mut out, &rendered, None);
    if !catch_all {
        let _ = writeln!(out, "    location / {{\n        return 404;\n    }}");
    }
    let _ = writeln!(out, "}}");
    let named: std::collections::BTreeSet<&str> = routes
        .values()
        .flat_map(|r| r.selector.hosts.iter().map(String::as_str))
        .collect();
    for host in named {
        let _ = writeln!(
            out,
            "server {{\n    listen {listen};\n    server_name {host};"
        );
        if !locations(&mut out, &rendered, Some(host)) {
            let _ = writeln!(out, "    location / {{\n        return 404;\n    }}");
        }
        let _ = writeln!(out, "}}");
    }
    out
}

/// The variables one route's maps define.
struct RouteVars {
    upstream: String,
    cookie_header: Option<String>,
    mirror: Option<String>,
}

/// How a route takes `host` (`None`: the default server): 0 names it, 1 by a wildcard, 2 takes
/// any host; `None` when it does not take it.
fn host_rank(route: &Route, host: Option<&str>) -> Option<u8> {
    let hosts = &route.selector.hosts;
    match host {
        _ if hosts.is_empty() => Some(2),
        None => None,
        Some(host) if hosts.iter().any(|h| h == host) => Some(0),
        Some(host) if !host.starts_with("*.") => hosts
            .iter()
            .filter_map(|h| h.strip_prefix('*'))
            .any(|suffix| host.ends_with(suffix))
            .then_some(1),
        Some(_) => None,
    }
}

/// Writes the locations of the server for `host`: per path prefix, the most specific route
/// taking the host. Whether any location was written for `/`.
fn locations(out: &mut String, rendered: &[(&Route, RouteVars)], host: Option<&str>) -> bool {
    let mut by_prefix: std::collections::BTreeMap<&str, (u8, &Route, &RouteVars)> =
        std::collections::BTreeMap::new();
    for (route, vars) in rendered {
        let Some(rank) = host_rank(route, host) else {
            continue;
        };
        let prefix = route.selector.path_prefix.as_str();
        let better = by_prefix
            .get(prefix)
            .is_none_or(|(r, held, _)| (rank, route.key()) < (*r, held.key()));
        if better {
            by_prefix.insert(prefix, (rank, route, vars));
        }
    }
    for (prefix, (_, route, vars)) in &by_prefix {
        let _ = writeln!(out, "    location {prefix} {{");
        let _ = writeln!(out, "        proxy_pass http://{};", vars.upstream);
        let _ = writeln!(out, "        proxy_http_version 1.1;");
        let _ = writeln!(out, "        proxy_set_header Connection \"\";");
        if let Some(cookie) = &vars.cookie_header {
            let _ = writeln!(out, "        add_header Set-Cookie {cookie};");
        }
        if vars.mirror.is_some() {
            let _ = writeln!(out, "        mirror {};", mirror_location(route));
            let _ = writeln!(out, "        mirror_request_body on;");
        }
        let _ = writeln!(out, "    }}");
        if let Some(mirror) = &vars.mirror {
            let _ = writeln!(
                out,
                "    location = {} {{\n        internal;\n        if ({mirror} = 0) {{\n            return 204;\n        }}\n        proxy_pass http://{}$request_uri;\n    }}",
                mirror_location(route),
                route.canary.cluster
            );
        }
    }
    by_prefix.contains_key("/")
}

/// The internal location mirroring one route's requests.
fn mirror_location(route: &Route) -> String {
    format!("/__aviary/mirror/{}/{}", route.namespace, route.rollout)
}

/// Writes the `split_clients` and `map`s deciding one route's upstream, with variables named
/// `$aviary_<id>_…`.
fn route_maps(out: &mut String, route: &Route, id: &str) -> RouteVars {
    let var = |name: &str| format!("$aviary_{id}_{name}");
    let _ = writeln!(out, "split_clients \"${{request_id}}\" {} {{", var("split"));
    match route.canary_weight {
        0 => {}
        100 => {}
        w => {
            let _ = writeln!(out, "    {w}% canary;");
        }
    }
    let rest = if route.canary_weight == 100 {
        "canary"
    } else {
        "primary"
    };
    let _ = writeln!(out, "    * {rest};\n}}");

    // Overrides of the split: each A/B rule and the affinity pin yields 0/1.
    let mut overrides = Vec::new();
    for (i, rule) in route.matches.iter().enumerate() {
        let mut parts = Vec::new();
        for (j, c) in rule.iter().enumerate() {
            let name = var(&format!("m{i}_{j}"));
            let (source, key) = match c.kind {
                ConditionKind::Header => {
                    let key = match &c.value {
                        StringMatch::Exact(v) => v.clone(),
                        StringMatch::Prefix(v) => format!("~^{}", regex::escape(v)),
                        StringMatch::Suffix(v) => format!("~{}$", regex::escape(v)),
                        StringMatch::Regex(v) => format!("~{v}"),
                    };
                    (format!("$http_{}", c.name.replace('-', "_")), key)
                }
                ConditionKind::Cookie => {
                    let value = match &c.value {
                        StringMatch::Exact(v) => regex::escape(v),
                        StringMatch::Prefix(v) => format!("{}[^;]*", regex::escape(v)),
                        StringMatch::Suffix(v) => format!("[^;]*{}", regex::escape(v)),
                        StringMatch::Regex(v) => {
                            let v = v.strip_prefix('^').unwrap_or(v);
                            v.strip_suffix('$').unwrap_or(v).to_owned()
                        }
                    };
                    ("$http_cookie".to_owned(), cookie_regex(&c.name, &value))
                }
            };
            let _ = writeln!(
                out,
                "map {source} {name} {{\n    default 0;\n    {} 1;\n}}",
                quote(&key)
            );
            parts.push(name);
        }
        let all_ones = "1".repeat(parts.len());
        let rule_var = var(&format!("r{i}"));
        let _ = writeln!(
            out,
            "map \"{}\" {rule_var} {{\n    default 0;\n    \"{all_ones}\" 1;\n}}",
            parts.join("")
        );
        overrides.push(rule_var);
    }
    if let Some(a) = route.affinity.as_ref().filter(|a| !a.expired) {
        let pin = var("pin");
        let key = cookie_regex(&a.cookie_name, &regex::escape(&a.cookie_value));
        let _ = writeln!(
            out,
            "map $http_cookie {pin} {{\n    default 0;\n    {} 1;\n}}",
            quote(&key)
        );
        overrides.push(pin);
    }
    let target = var("target");
    if overrides.is_empty() {
        let _ = writeln!(
            out,
            "map {} {target} {{\n    default {};\n}}",
            var("split"),
            var("split")
        );
    } else {
        let _ = writeln!(
            out,
            "map \"{}\" {target} {{\n    default {};\n    \"~1\" canary;\n}}",
            overrides.join(""),
            var("split")
        );
    }
    let _ = writeln!(
        out,
        "map {target} {} {{\n    canary {};\n    default {};\n}}",
        var("upstream"),
        route.canary.cluster,
        route.primary.cluster
    );
    let cookie_header = match &route.affinity {
        Some(a) if !a.expired => {
            let _ = writeln!(
                out,
                "map {target} {} {{\n    canary {};\n    default \"\";\n}}",
                var("cookie"),
                quote(&a.set_cookie())
            );
            Some(var("cookie"))
        }
        Some(a) => Some(quote(&a.set_cookie())),
        None => None,
    };
    let mirror = (route.mirror_percent > 0).then(|| {
        let _ = writeln!(
            out,
            "split_clients \"${{request_id}}mirror\" {} {{\n    {}% 1;\n    * 0;\n}}",
            var("mirror"),
            route.mirror_percent
        );
        var("mirror")
    });
    RouteVars {
        upstream: var("upstream"),
        cookie_header,
        mirror,
    }
}
