//! The agent's configuration: flags (clap, `AVIARY_…` env) and the ingress file (YAML).
//!
//! ```yaml
//! ingresses:
//!   - name: edge
//!     provider: envoy
//!     xds_addr: 127.0.0.1:18000
//!     endpoint_slices:               # optional (workload mode): backends that are Services
//!       namespace: test              # in `test` get their ready pods from EndpointSlices
//!       kubeconfig: /etc/aviary/kubeconfig   # optional, as is `context`
//!   - name: web
//!     provider: nginx
//!     main_conf: /etc/nginx/nginx.conf
//!     include_path: /etc/nginx/aviary/web.conf
//!     listen: 127.0.0.1:8080
//!   - name: lb
//!     provider: haproxy
//!     stats_socket: /run/haproxy/admin.sock
//!     backend: app
//!   - name: mesh
//!     provider: gateway-api          # or istio, smi, nginx-ingress
//!     namespace: test
//!     route: podinfo
//!     port: 9898
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use aviary_bus::NatsArgs;
use aviary_runtime::CommonArgs;

use crate::provider::envoy::EnvoySettings;
use crate::provider::haproxy::HaproxySettings;
use crate::provider::kube::{KubeKind, KubeSettings};
use crate::provider::nginx::NginxSettings;

/// Flags of `aviary-router-agent`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "aviary-router-agent", version, about)]
pub struct Config {
    /// Admin server, logging, tracing, drain.
    #[command(flatten)]
    pub common: CommonArgs,

    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Replicas of the JetStream streams and buckets created at start.
    #[command(flatten)]
    pub jetstream: aviary_bus::JetStreamArgs,

    /// The ingress file (YAML) listing the ingresses this agent owns.
    #[arg(long, env = "AVIARY_ROUTER_CONFIG")]
    pub config_file: PathBuf,

    /// The member cluster this agent serves in a multi-cluster deployment: route commands are
    /// then taken on `aviary.cluster.<cluster>.route.<ingress>`. Unset: the single-cluster
    /// subjects `aviary.route.<ingress>`.
    #[arg(long, env = "AVIARY_CLUSTER", value_parser = aviary_bus::names::parse_cluster)]
    pub cluster: Option<String>,

    /// How often every ingress is reconciled to the desired route in KV (level-triggered).
    /// (`30s`; a bare number is milliseconds.)
    #[arg(long = "reconcile-interval", alias = "reconcile-interval-ms", env = "AVIARY_RECONCILE_INTERVAL", default_value = "30s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub reconcile_interval: Duration,

    /// How long an apply may wait for the data plane to confirm the new split.
    /// (`10s`; a bare number is milliseconds.)
    #[arg(long = "apply-timeout", alias = "apply-timeout-ms", env = "AVIARY_APPLY_TIMEOUT", default_value = "10s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub apply_timeout: Duration,
}

/// The ingress file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressFile {
    /// Every ingress this agent owns.
    pub ingresses: Vec<IngressConfig>,
}

/// One ingress and its data plane.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IngressConfig {
    /// Ingress name, as rollouts name it in `spec.ingresses`.
    pub name: String,
    /// Data plane and its settings.
    #[serde(flatten)]
    pub provider: ProviderConfig,
}

/// Which data plane serves an ingress, with its settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Envoy over ADS (the default data plane).
    Envoy(EnvoySettings),
    /// NGINX with a rendered include and reloads.
    Nginx(NginxSettings),
    /// HAProxy through its runtime API.
    Haproxy(HaproxySettings),
    /// A Gateway API `HTTPRoute`.
    #[serde(rename = "gateway-api")]
    GatewayApi(KubeSettings),
    /// An Istio `VirtualService`.
    Istio(KubeSettings),
    /// An SMI `TrafficSplit`.
    Smi(KubeSettings),
    /// NGINX-ingress canary annotations on a cloned `Ingress`.
    #[serde(rename = "nginx-ingress")]
    NginxIngress(KubeSettings),
}

impl ProviderConfig {
    /// The Kubernetes object kind and its settings, for the Kubernetes providers.
    pub fn kube(&self) -> Option<(KubeKind, &KubeSettings)> {
        match self {
            Self::GatewayApi(s) => Some((KubeKind::GatewayApi, s)),
            Self::Istio(s) => Some((KubeKind::Istio, s)),
            Self::Smi(s) => Some((KubeKind::Smi, s)),
            Self::NginxIngress(s) => Some((KubeKind::NginxIngress, s)),
            Self::Envoy(_) | Self::Nginx(_) | Self::Haproxy(_) => None,
        }
    }
}

/// Why the ingress file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not parse.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_yaml::Error,
    },
    /// It parses but is not usable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl IngressFile {
    /// Reads and checks the file at `path`.
    ///
    /// Errors: [`ConfigError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            ConfigError::Invalid { reason, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and checks YAML text.
    ///
    /// Errors: [`ConfigError::Parse`] or [`ConfigError::Invalid`] (with an empty path).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: Self = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: PathBuf::new(),
            reason,
        };
        if file.ingresses.is_empty() {
            return Err(invalid("no ingresses".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for ingress in &file.ingresses {
            aviary_bus::names::agent_key(&ingress.name)
                .map_err(|e| invalid(format!("ingress {:?}: {e}", ingress.name)))?;
            if !seen.insert(ingress.name.as_str()) {
                return Err(invalid(format!("ingress {:?} listed twice", ingress.name)));
            }
            if let ProviderConfig::Envoy(envoy) = &ingress.provider
                && envoy
                    .endpoint_slices
                    .as_ref()
                    .is_some_and(|s| s.namespace.is_empty())
            {
                return Err(invalid(format!(
                    "ingress {:?}: endpoint_slices.namespace is empty",
                    ingress.name
                )));
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_provider() {
        let file = IngressFile::parse(
            r#"
ingresses:
  - name: edge
    provider: envoy
    xds_addr: 127.0.0.1:18000
  - name: web
    provider: nginx
    main_conf: /etc/nginx/nginx.conf
    include_path: /etc/nginx/aviary/web.conf
    listen: 127.0.0.1:8080
  - name: lb
    provider: haproxy
    stats_socket: /run/haproxy/admin.sock
    backend: app
  - name: mesh
    provider: gateway-api
    namespace: test
    route: podinfo
    port: 9898
  - name: ing
    provider: nginx-ingress
    namespace: test
    route: podinfo
"#,
        )
        .unwrap();
        assert_eq!(file.ingresses.len(), 5);
        let (kind, settings) = file.ingresses[3].provider.kube().unwrap();
        assert_eq!((kind, settings.port), (KubeKind::GatewayApi, Some(9898)));
        assert!(matches!(
            file.ingresses[4].provider,
            ProviderConfig::NginxIngress(_)
        ));
        assert!(matches!(
            file.ingresses[0].provider,
            ProviderConfig::Envoy(_)
        ));
        let ProviderConfig::Haproxy(h) = &file.ingresses[2].provider else {
            panic!("not haproxy")
        };
        assert_eq!(h.primary_server, "primary");
    }

    #[test]
    fn envoy_follows_endpoint_slices_only_when_asked() {
        let file = IngressFile::parse(
            r#"
ingresses:
  - name: edge
    provider: envoy
    xds_addr: 127.0.0.1:18000
    endpoint_slices: { namespace: test, kubeconfig: /etc/aviary/kubeconfig }
  - name: plain
    provider: envoy
    xds_addr: 127.0.0.1:18001
"#,
        )
        .unwrap();
        let envoy = |i: usize| match &file.ingresses[i].provider {
            ProviderConfig::Envoy(e) => e.clone(),
            _ => panic!("not envoy"),
        };
        let slices = envoy(0).endpoint_slices.unwrap();
        assert_eq!(slices.namespace, "test");
        assert_eq!(
            slices.kubeconfig.as_deref(),
            Some(Path::new("/etc/aviary/kubeconfig"))
        );
        assert!(envoy(1).endpoint_slices.is_none());
        let typo = "ingresses:\n  - {name: a, provider: envoy, xds_addr: '127.0.0.1:1', endpoint_slices: {namespce: test}}\n";
        assert!(matches!(
            IngressFile::parse(typo),
            Err(ConfigError::Parse { .. })
        ));
        let empty = "ingresses:\n  - {name: a, provider: envoy, xds_addr: '127.0.0.1:1', endpoint_slices: {namespace: ''}}\n";
        assert!(matches!(
            IngressFile::parse(empty),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn rejects_duplicates_and_bad_names() {
        let dup = "ingresses:\n  - {name: a, provider: envoy, xds_addr: '127.0.0.1:1'}\n  - {name: a, provider: envoy, xds_addr: '127.0.0.1:2'}\n";
        assert!(matches!(
            IngressFile::parse(dup),
            Err(ConfigError::Invalid { .. })
        ));
        let bad = "ingresses:\n  - {name: a.b, provider: envoy, xds_addr: '127.0.0.1:1'}\n";
        assert!(matches!(
            IngressFile::parse(bad),
            Err(ConfigError::Invalid { .. })
        ));
        let unknown = "ingresses:\n  - {name: a, provider: traefik}\n";
        assert!(matches!(
            IngressFile::parse(unknown),
            Err(ConfigError::Parse { .. })
        ));
    }
}
