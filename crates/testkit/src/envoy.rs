//! A real Envoy for one test, driven over ADS by a control plane the test runs.
//!
//! The bootstrap is generated into a temporary directory: admin and the ingress listener on
//! ephemeral loopback ports, a static `xds` cluster pointing at the test's control plane, CDS
//! over ADS, and the listener's routes over RDS (ADS) by `route_config_name`. Readiness is the
//! admin `/ready` endpoint answering 200, i.e. Envoy has received its initial CDS and RDS.

use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{Process, free_port, tool_path};
use crate::{Result, TestkitError};

/// How long Envoy may take to start and fetch its initial configuration; it normally takes well
/// under a second, the margin is for a machine busy compiling.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How Envoy is started.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Port of the ADS server on 127.0.0.1.
    pub xds_port: u16,
    /// RDS name the listener asks for.
    pub route_config_name: String,
    /// Envoy's node id.
    pub node_id: String,
}

impl EnvoyOptions {
    /// Options for a control plane on `xds_port` serving RDS as `route_config_name`.
    pub fn new(xds_port: u16, route_config_name: impl Into<String>) -> Self {
        Self {
            xds_port,
            route_config_name: route_config_name.into(),
            node_id: "aviary-test".into(),
        }
    }
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    // Declared before `dir` so the process dies before its files are removed.
    process: Process,
    admin_port: u16,
    listener_port: u16,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy and waits until `/ready` answers 200 (initial xDS fetch done).
    ///
    /// The binary is `$AVIARY_ENVOY`, else `<workspace>/.tools/bin/envoy`, else the system's.
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`] without Envoy; [`TestkitError::Exited`] /
    /// [`TestkitError::NotReady`] when it does not come up (e.g. no control plane answers).
    pub async fn start(options: EnvoyOptions) -> Result<Self> {
        let bin = tool_path("envoy")?;
        let dir = tempfile::Builder::new()
            .prefix("aviary-envoy-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir", e))?;
        let (admin_port, listener_port) = (free_port()?, free_port()?);
        let bootstrap = bootstrap(&options, admin_port, listener_port);
        let config_path = dir.path().join("bootstrap.json");
        std::fs::write(&config_path, bootstrap.to_string())
            .map_err(|e| TestkitError::io("writing the Envoy bootstrap", e))?;
        let args: Vec<std::ffi::OsString> = vec![
            "-c".into(),
            config_path.into(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "-l".into(),
            "info".into(),
        ];
        let mut process = Process::spawn("envoy", &bin, args, &dir.path().join("envoy.log"))?;
        process
            .wait_ready(READY_DEADLINE, || async move {
                matches!(admin_get(admin_port, "/ready").await, Ok((200, _)))
            })
            .await?;
        Ok(Self {
            process,
            admin_port,
            listener_port,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<listener port>`: where test clients send traffic.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listener_port)
    }

    /// The ingress listener's port.
    pub fn listener_port(&self) -> u16 {
        self.listener_port
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `GET <path>` on the admin API: status and body.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the admin API does not answer.
    pub async fn admin(&self, path: &str) -> Result<(u16, String)> {
        admin_get(self.admin_port, path)
            .await
            .map_err(|e| TestkitError::io(format!("GET admin {path}"), e))
    }

    /// The admin `/config_dump` as JSON.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when it cannot be fetched or parsed.
    pub async fn config_dump(&self) -> Result<serde_json::Value> {
        let (_, body) = self.admin("/config_dump").await?;
        serde_json::from_str(&body)
            .map_err(|e| TestkitError::io("parsing /config_dump", std::io::Error::other(e)))
    }

    /// The dynamic route configurations in `/config_dump`.
    ///
    /// # Errors
    /// As [`Envoy::config_dump`].
    pub async fn dynamic_routes(&self) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .dump_section("RoutesConfigDump", "dynamic_route_configs")
            .await?
            .into_iter()
            .filter_map(|entry| entry.get("route_config").cloned())
            .collect())
    }

    /// The names of the dynamic (CDS) clusters in `/config_dump` that are active.
    ///
    /// # Errors
    /// As [`Envoy::config_dump`].
    pub async fn dynamic_cluster_names(&self) -> Result<Vec<String>> {
        Ok(self
            .dump_section("ClustersConfigDump", "dynamic_active_clusters")
            .await?
            .into_iter()
            .filter_map(|entry| {
                entry
                    .pointer("/cluster/name")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .collect())
    }

    async fn dump_section(&self, kind: &str, field: &str) -> Result<Vec<serde_json::Value>> {
        let dump = self.config_dump().await?;
        let configs = dump
            .get("configs")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default();
        Ok(configs
            .into_iter()
            .filter(|c| {
                c.get("@type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with(kind))
            })
            .filter_map(|c| c.get(field).and_then(|v| v.as_array()).cloned())
            .flatten()
            .collect())
    }
}

/// The bootstrap: static listener + `xds` cluster, CDS and RDS over ADS.
fn bootstrap(options: &EnvoyOptions, admin_port: u16, listener_port: u16) -> serde_json::Value {
    let socket = |port: u16| serde_json::json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    serde_json::json!({
        "node": {"id": options.node_id, "cluster": "aviary-test"},
        "admin": {"address": socket(admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": "xds",
                    // Reconnect fast when a test restarts the control plane.
                    "retry_policy": {"retry_back_off": {
                        "base_interval": "0.05s", "max_interval": "0.5s"
                    }}
                }}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": socket(listener_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "rds": {
                            "route_config_name": options.route_config_name,
                            "config_source": {"ads": {}, "resource_api_version": "V3"}
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(options.xds_port)}}]}]
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                }
            }]
        }
    })
}

/// A minimal HTTP/1.1 GET against the admin API (`Connection: close`, chunked or not).
async fn admin_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(ADMIN_TIMEOUT, request)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin request"))?
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        out
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
