//! Data-plane providers: each applies a [`Route`] to a real data plane, reads it back, and
//! says what it can express.
//!
//! apply = check capabilities → push/render → wait until the data plane confirms → [`Observed`].

pub mod envoy;
pub mod haproxy;
pub mod kube;
pub mod nginx;

use std::path::Path;
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};

use crate::model::{self, Observed, Route, RouteSet};

/// What a provider can express; published to the agents KV so the scheduler can refuse specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Weighted primary/canary split.
    pub weights: bool,
    /// A/B routing on request headers.
    pub header_match: bool,
    /// A/B routing on cookies.
    pub cookie_match: bool,
    /// Traffic mirroring to the canary.
    pub mirror: bool,
    /// Session affinity cookies.
    pub session_affinity: bool,
    /// Primary stickiness (a second cookie keeping primary users on the primary).
    pub primary_affinity: bool,
}

impl Capabilities {
    /// Why `route` cannot be expressed, if it cannot.
    pub fn check(&self, provider: &str, route: &Route) -> Result<(), ApplyError> {
        let missing = if !self.weights && !route.canary_weight.is_multiple_of(100) {
            Some("weighted splits")
        } else if !self.header_match && route.uses_header_match() {
            Some("header matches")
        } else if !self.cookie_match && route.uses_cookie_match() {
            Some("cookie matches")
        } else if !self.mirror && route.mirror_percent > 0 {
            Some("traffic mirroring")
        } else if !self.session_affinity && route.affinity.is_some() {
            Some("session affinity")
        } else if !self.primary_affinity
            && route.affinity.as_ref().is_some_and(|a| a.primary.is_some())
        {
            Some("primary session affinity (primaryCookieName)")
        } else {
            None
        };
        match missing {
            Some(feature) => Err(ApplyError::Unsupported {
                provider: provider.to_owned(),
                feature,
            }),
            None => Ok(()),
        }
    }

    /// As the protobuf published to the agents KV.
    pub fn to_proto(self, ingress: &str, provider: &str) -> aviary_proto::AgentCapabilities {
        aviary_proto::AgentCapabilities {
            ingress: ingress.to_owned(),
            provider: provider.to_owned(),
            weights: self.weights,
            header_match: self.header_match,
            cookie_match: self.cookie_match,
            mirror: self.mirror,
            session_affinity: self.session_affinity,
        }
    }
}

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The provider cannot express part of the route.
    #[error("{provider} cannot express {feature}")]
    Unsupported {
        /// Provider kind.
        provider: String,
        /// What it cannot do.
        feature: &'static str,
    },
    /// The data plane rejected the configuration (Envoy NACK, `nginx -t`, HAProxy CLI error).
    #[error("{provider} rejected the configuration: {detail}")]
    Rejected {
        /// Provider kind.
        provider: String,
        /// The data plane's own message.
        detail: String,
    },
    /// The data plane did not confirm the new configuration in time.
    #[error("{provider} did not confirm the configuration within {after:?}: {detail}")]
    Unconfirmed {
        /// Provider kind.
        provider: String,
        /// The deadline.
        after: Duration,
        /// What was still missing.
        detail: String,
    },
    /// Talking to the data plane failed (process, socket, file).
    #[error("{provider}: {detail}")]
    Io {
        /// Provider kind.
        provider: String,
        /// What failed.
        detail: String,
    },
}

/// Why no Kubernetes client could be made from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("kubernetes configuration: {0}")]
pub struct KubeConfigError(String);

/// A Kubernetes client from the `kubeconfig` file (its `context`, else the current one),
/// without a file from the in-cluster configuration or the usual inference. No request is made.
///
/// Errors: [`KubeConfigError`] when the file cannot be read or no usable configuration is found.
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<::kube::Client, KubeConfigError> {
    let fail = |e: &dyn std::fmt::Display| KubeConfigError(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
            let options = KubeConfigOptions {
                context: context.map(str::to_owned),
                ..Default::default()
            };
            ::kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| fail(&e))?
        }
        None => ::kube::Config::infer().await.map_err(|e| fail(&e))?,
    };
    ::kube::Client::try_from(config).map_err(|e| fail(&e))
}

/// One ingress's data plane.
pub enum Provider {
    /// Envoy over ADS.
    Envoy(envoy::EnvoyProvider),
    /// NGINX: rendered include + reload.
    Nginx(nginx::NginxProvider),
    /// HAProxy: runtime API weights.
    Haproxy(haproxy::HaproxyProvider),
    /// A Kubernetes object: Gateway API, Istio, SMI or NGINX-ingress.
    Kube(kube::KubeProvider),
}

impl Provider {
    /// `envoy`, `nginx`, `haproxy`, `gateway-api`, `istio`, `smi` or `nginx-ingress`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Envoy(_) => "envoy",
            Self::Nginx(_) => "nginx",
            Self::Haproxy(_) => "haproxy",
            Self::Kube(p) => p.kind().name(),
        }
    }

    /// What this provider can express.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Self::Envoy(_) => envoy::CAPABILITIES,
            Self::Nginx(_) => nginx::CAPABILITIES,
            Self::Haproxy(_) => haproxy::CAPABILITIES,
            Self::Kube(p) => p.kind().capabilities(),
        }
    }

    /// Why this provider cannot serve `route` at all, if it cannot: a feature it cannot
    /// express, or (HAProxy) a selection no backend is configured for.
    ///
    /// Errors: [`ApplyError::Unsupported`] naming what is missing.
    pub fn can_serve(&self, route: &Route) -> Result<(), ApplyError> {
        self.capabilities().check(self.kind(), route)?;
        match self {
            Self::Haproxy(p) => p.can_serve(route),
            _ => Ok(()),
        }
    }

    /// Applies `routes`, every route of the ingress, and returns the split read back from the
    /// data plane for `route`, the one of them that changed. A Kubernetes provider owns one
    /// object, so it applies `route` alone.
    ///
    /// Errors: [`ApplyError::Unsupported`] before touching the data plane when `route` needs
    /// something the provider cannot express; otherwise what the data plane said.
    pub async fn apply_routes(
        &self,
        routes: &RouteSet,
        route: &Route,
    ) -> Result<Observed, ApplyError> {
        self.capabilities().check(self.kind(), route)?;
        match self {
            Self::Envoy(p) => p.apply_routes(routes, route).await,
            Self::Nginx(p) => p.apply(routes, route).await,
            Self::Haproxy(p) => p.apply(routes, route).await,
            Self::Kube(p) => p.apply(route).await,
        }
    }

    /// [`Provider::apply_routes`] with `route` as the ingress's only route.
    ///
    /// Errors: as [`Provider::apply_routes`].
    pub async fn apply(&self, route: &Route) -> Result<Observed, ApplyError> {
        self.apply_routes(&model::alone(route), route).await
    }

    /// Whether the data plane is confirmed serving every route of `routes` (false means drift
    /// to correct).
    pub async fn in_sync_routes(&self, routes: &RouteSet) -> bool {
        match self {
            Self::Envoy(p) => p.in_sync_routes(routes),
            Self::Nginx(p) => p.in_sync(routes).await,
            Self::Haproxy(p) => p.in_sync(routes).await,
            Self::Kube(p) => {
                for route in routes.values() {
                    if !p.in_sync(route).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// [`Provider::in_sync_routes`] with `route` as the ingress's only route.
    pub async fn in_sync(&self, route: &Route) -> bool {
        self.in_sync_routes(&model::alone(route)).await
    }
}
