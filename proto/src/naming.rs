//! Names the data planes and the metrics backends must agree on.

/// The Envoy (or NGINX/HAProxy) cluster name of a backend: `<namespace>_<backend>`.
///
/// Envoy's Prometheus stats extract the cluster name up to the first dot, so the name has none;
/// namespace and backend names are DNS labels, so `_` cannot collide with them.
pub fn cluster_name(namespace: &str, backend: &str) -> String {
    format!("{namespace}_{backend}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_names_have_no_dots() {
        assert_eq!(super::cluster_name("test", "podinfo-v2"), "test_podinfo-v2");
    }
}
