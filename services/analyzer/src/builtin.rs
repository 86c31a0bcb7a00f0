//! Built-in metrics (`request-success-rate`, `request-duration`) as query templates, one set per
//! data plane, plus the canary request count that `minRequests` is checked against.
//!
//! Every template is written for the *canary* (`{{ canary }}`, `{{ canary_cluster }}`); the
//! primary's value is the same template rendered with the primary's names in those variables
//! (see [`crate::analysis`]), so canary and primary are always measured the same way.
//!
//! Success rate is `100 × (1 − 5xx / all)`: written that way (with `or vector(0)` on the 5xx
//! side) so a canary that answers *only* 5xx yields 0 %, not an empty result judged as no data.

use std::fmt;
use std::str::FromStr;

/// Which data plane's metrics the built-in queries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mesh {
    /// Envoy driven by Aviary's router agent; clusters named `<namespace>_<backend>`.
    #[default]
    Envoy,
    /// Istio sidecars (`istio_requests_total`, destination reporter).
    Istio,
    /// Linkerd proxies (`response_total`, inbound).
    Linkerd,
    /// ingress-nginx controller (`nginx_ingress_controller_requests`, by service).
    Nginx,
    /// Contour (Envoy; clusters `<namespace>_<service>_<port…>`).
    Contour,
    /// Gateway API served by an Envoy-based implementation with Contour's cluster naming.
    GatewayApi,
}

impl FromStr for Mesh {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "" | "envoy" => Self::Envoy,
            "istio" => Self::Istio,
            "linkerd" => Self::Linkerd,
            "nginx" | "ingress-nginx" => Self::Nginx,
            "contour" => Self::Contour,
            "gatewayapi" | "gateway-api" | "gateway" => Self::GatewayApi,
            other => return Err(format!("unknown mesh provider `{other}`")),
        })
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Envoy => "envoy",
            Self::Istio => "istio",
            Self::Linkerd => "linkerd",
            Self::Nginx => "nginx",
            Self::Contour => "contour",
            Self::GatewayApi => "gatewayapi",
        })
    }
}

/// The built-in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Percent of requests that did not end in a 5xx.
    RequestSuccessRate,
    /// 99th percentile request duration, milliseconds.
    RequestDuration,
}

impl Builtin {
    /// The built-in metric called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "request-success-rate" => Some(Self::RequestSuccessRate),
            "request-duration" => Some(Self::RequestDuration),
            _ => None,
        }
    }

    /// Whether a lower value is worse (success rate) rather than a higher one (latency).
    pub fn lower_is_worse(self) -> bool {
        matches!(self, Self::RequestSuccessRate)
    }

    /// The query template for the canary on `mesh`.
    pub fn template(self, mesh: Mesh) -> String {
        let s = selectors(mesh);
        match self {
            Self::RequestSuccessRate => match s.completed {
                Some(completed) => format!(
                    "100 * ((sum(rate({total}{{{sel},{ok}}}[{{{{ interval }}}}])) or vector(0)) \
                     / sum(rate({completed}{{{sel}}}[{{{{ interval }}}}])))",
                    total = s.requests,
                    sel = s.selector,
                    ok = s.failure.replacen('=', "!=", 1),
                ),
                None => format!(
                    "100 * (1 - ((sum(rate({total}{{{sel},{fail}}}[{{{{ interval }}}}])) or vector(0)) \
                     / sum(rate({total}{{{sel}}}[{{{{ interval }}}}]))))",
                    total = s.requests,
                    sel = s.selector,
                    fail = s.failure,
                ),
            },
            Self::RequestDuration => format!(
                "histogram_quantile(0.99, sum by (le) (rate({bucket}{{{sel}}}[{{{{ interval }}}}]))){scale}",
                bucket = s.bucket,
                sel = s.selector,
                scale = s.to_ms,
            ),
        }
    }
}

/// The query template counting the canary's requests in the window (for `minRequests`).
pub fn request_count_template(mesh: Mesh) -> String {
    let s = selectors(mesh);
    format!(
        "sum(increase({total}{{{sel}}}[{{{{ interval }}}}]))",
        total = s.completed.unwrap_or(s.requests),
        sel = s.selector
    )
}

/// The query templates counting the canary's requests and failed requests (5xx) since the
/// run started (`{{ run }}`), for the sequential judge: cumulative counts, so no request is
/// counted twice across looks.
pub fn run_count_templates(mesh: Mesh) -> (String, String) {
    let s = selectors(mesh);
    match s.completed {
        // Failures are what completed without a non-5xx answer, for the reason on `completed`.
        Some(completed) => (
            format!(
                "sum(increase({completed}{{{sel}}}[{{{{ run }}}}]))",
                sel = s.selector
            ),
            format!(
                "clamp_min(sum(increase({completed}{{{sel}}}[{{{{ run }}}}])) \
                 - (sum(increase({total}{{{sel},{ok}}}[{{{{ run }}}}])) or vector(0)), 0)",
                total = s.requests,
                sel = s.selector,
                ok = s.failure.replacen('=', "!=", 1),
            ),
        ),
        None => (
            format!(
                "sum(increase({total}{{{sel}}}[{{{{ run }}}}]))",
                total = s.requests,
                sel = s.selector
            ),
            format!(
                "sum(increase({total}{{{sel},{fail}}}[{{{{ run }}}}])) or vector(0)",
                total = s.requests,
                sel = s.selector,
                fail = s.failure,
            ),
        ),
    }
}

/// The quantile the built-in `request-duration` reports (p99), also the one its sequential
/// judge compares the tails at.
pub const DURATION_QUANTILE: f64 = 0.99;

/// The query template reading the canary's latency histogram since the run started
/// (`{{ run }}`), one series per bucket bound (`le`), for the sequential latency judge:
/// cumulative counts per bucket, so no request is counted twice across looks. Bounds are in
/// the data plane's own unit (only the shares slower than each bound are compared).
pub fn run_bucket_template(mesh: Mesh) -> String {
    let s = selectors(mesh);
    format!(
        "sum by (le) (increase({bucket}{{{sel}}}[{{{{ run }}}}]))",
        bucket = s.bucket,
        sel = s.selector
    )
}

struct Selectors {
    requests: &'static str,
    /// A counter of every completed request that exists from the moment the backend does
    /// (Envoy's `upstream_rq_completed`). Per-class counters such as the 5xx one appear only
    /// with their first request, so a 5xx series born inside a window has too few samples for
    /// `rate()`; dividing the successes by this counter instead never hides those errors.
    completed: Option<&'static str>,
    selector: &'static str,
    failure: &'static str,
    bucket: &'static str,
    to_ms: &'static str,
}

fn selectors(mesh: Mesh) -> Selectors {
    match mesh {
        Mesh::Envoy => Selectors {
            requests: "envoy_cluster_upstream_rq_xx",
            completed: Some("envoy_cluster_upstream_rq_completed"),
            selector: r#"envoy_cluster_name="{{ canary_cluster }}""#,
            failure: r#"envoy_response_code_class="5""#,
            bucket: "envoy_cluster_upstream_rq_time_bucket",
            to_ms: "",
        },
        Mesh::Contour | Mesh::GatewayApi => Selectors {
            requests: "envoy_cluster_upstream_rq_xx",
            completed: Some("envoy_cluster_upstream_rq_completed"),
            // Service names are DNS labels (no `_`), so `<ns>_<svc>_` cannot match another
            // service that merely starts with the same name.
            selector: r#"envoy_cluster_name=~"{{ namespace }}_{{ canary }}_[0-9a-zA-Z_-]+""#,
            failure: r#"envoy_response_code_class="5""#,
            bucket: "envoy_cluster_upstream_rq_time_bucket",
            to_ms: "",
        },
        Mesh::Istio => Selectors {
            requests: "istio_requests_total",
            completed: None,
            selector: r#"reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload="{{ canary }}""#,
            failure: r#"response_code=~"5..""#,
            bucket: "istio_request_duration_milliseconds_bucket",
            to_ms: "",
        },
        Mesh::Linkerd => Selectors {
            requests: "response_total",
            completed: None,
            selector: r#"namespace="{{ namespace }}",deployment="{{ canary }}",direction="inbound""#,
            failure: r#"status_code=~"5..""#,
            bucket: "response_latency_ms_bucket",
            to_ms: "",
        },
        Mesh::Nginx => Selectors {
            requests: "nginx_ingress_controller_requests",
            completed: None,
            // By upstream service: the canary's traffic goes through a separate canary
            // ingress object, so the `ingress` label would split it from the primary's.
            selector: r#"namespace="{{ namespace }}",service="{{ canary }}""#,
            failure: r#"status=~"5..""#,
            bucket: "nginx_ingress_controller_request_duration_seconds_bucket",
            to_ms: " * 1000",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{Variables, render};

    fn vars() -> Variables {
        [
            ("namespace", "test"),
            ("canary", "podinfo-v2"),
            ("canary_cluster", "test_podinfo-v2"),
            ("interval", "30s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn envoy_success_rate_reads_the_cluster_by_name() {
        let q = render(&Builtin::RequestSuccessRate.template(Mesh::Envoy), &vars()).unwrap();
        assert_eq!(
            q,
            r#"100 * ((sum(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name="test_podinfo-v2",envoy_response_code_class!="5"}[30s])) or vector(0)) / sum(rate(envoy_cluster_upstream_rq_completed{envoy_cluster_name="test_podinfo-v2"}[30s])))"#
        );
    }

    #[test]
    fn envoy_duration_is_p99_in_ms() {
        let q = render(&Builtin::RequestDuration.template(Mesh::Envoy), &vars()).unwrap();
        assert_eq!(
            q,
            r#"histogram_quantile(0.99, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-v2"}[30s])))"#
        );
    }

    #[test]
    fn every_mesh_renders_both_builtins_as_p99_and_percent() {
        for mesh in [
            Mesh::Envoy,
            Mesh::Istio,
            Mesh::Linkerd,
            Mesh::Nginx,
            Mesh::Contour,
            Mesh::GatewayApi,
        ] {
            let sr = render(&Builtin::RequestSuccessRate.template(mesh), &vars()).unwrap();
            assert!(sr.starts_with("100 * ("), "{mesh}: {sr}");
            assert!(sr.contains("or vector(0)"), "{mesh}: {sr}");
            let d = render(&Builtin::RequestDuration.template(mesh), &vars()).unwrap();
            assert!(d.starts_with("histogram_quantile(0.99, "), "{mesh}: {d}");
            let n = render(&request_count_template(mesh), &vars()).unwrap();
            let mut run_vars = vars();
            run_vars.insert("run".into(), "25m".into());
            let (all, failed) = run_count_templates(mesh);
            let all = render(&all, &run_vars).unwrap();
            let failed = render(&failed, &run_vars).unwrap();
            assert!(
                all.starts_with("sum(increase(") && all.ends_with("[25m]))"),
                "{all}"
            );
            assert!(
                failed.ends_with("[25m])) or vector(0)")
                    || failed.ends_with("[25m])) or vector(0)), 0)"),
                "{failed}"
            );
            assert!(n.starts_with("sum(increase("), "{mesh}: {n}");
            let buckets = render(&run_bucket_template(mesh), &run_vars).unwrap();
            assert!(
                buckets.starts_with("sum by (le) (increase(") && buckets.ends_with("[25m]))"),
                "{buckets}"
            );
            assert_eq!(mesh.to_string().parse::<Mesh>().unwrap(), mesh);
        }
        let nginx = render(&Builtin::RequestDuration.template(Mesh::Nginx), &vars()).unwrap();
        assert!(nginx.ends_with(" * 1000"), "seconds become ms: {nginx}");
        let istio = render(&Builtin::RequestSuccessRate.template(Mesh::Istio), &vars()).unwrap();
        assert!(
            istio.contains(r#"destination_workload="podinfo-v2""#),
            "{istio}"
        );
        let contour = render(&request_count_template(Mesh::Contour), &vars()).unwrap();
        assert!(
            contour.contains(r#"envoy_cluster_name=~"test_podinfo-v2_[0-9a-zA-Z_-]+""#),
            "{contour}"
        );
        assert!("consul".parse::<Mesh>().is_err());
    }
}
