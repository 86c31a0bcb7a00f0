"""Tests of the Aviary Helm chart, through Helm's own Go SDK (PyPI `helm-python-sdk`).

Helm loads, lints, validates (values.schema.json) and renders the chart exactly as
`helm lint` / `helm template` would; the tests parse the rendered manifests and assert on the
objects. No cluster is needed: rendering is offline.

Run: `scripts/helm-test.sh` (or `.tools/venv/bin/python -m pytest -q deploy/helm/tests`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[1] / "aviary"
RELEASE = "rel"
NAMESPACE = "delivery"
FULLNAME = f"{RELEASE}-aviary"
SERVICES = ["scheduler", "analyzer", "router-agent", "notifier"]
ADMIN_PORT = 9464

ROUTER_PROVIDER_RULES = {
    "gatewayApi": {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "verbs": ["create", "get", "list", "watch", "patch"],
    },
    "istio": {
        "apiGroups": ["networking.istio.io"],
        "resources": ["virtualservices"],
        "verbs": ["create", "get", "list", "watch", "patch"],
    },
    "smi": {
        "apiGroups": ["split.smi-spec.io"],
        "resources": ["trafficsplits"],
        "verbs": ["create", "get", "list", "watch", "patch"],
    },
    "nginxIngress": {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["ingresses"],
        "verbs": ["create", "get", "list", "watch", "patch", "delete"],
    },
}


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


class Rendered:
    """The objects one render produced, with look-ups by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt") or not text.strip():
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    assert "kind" in doc, f"{path}: a document without kind"
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {sorted(self.names(kind))}"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.get("Deployment", f"{FULLNAME}-{component}")


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
    return Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True))


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def router_rules(r: Rendered) -> list[dict[str, Any]]:
    roles = r.of_kind("ClusterRole") + r.of_kind("Role")
    return [rule for role in roles for rule in role.get("rules", [])]


# --- lint and schema ----------------------------------------------------------------------------


def test_lint_is_clean_with_defaults_and_with_everything_on() -> None:
    everything = {
        "gate": {"enabled": True},
        "nats": {"bundled": {"enabled": True, "replicas": 3}},
        "routerAgent": {"providers": {p: True for p in ROUTER_PROVIDER_RULES}},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True},
    }
    for values in (None, everything):
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"scheduler": {"replicas": "three"}}, "/scheduler/replicas"),
        ({"unknownKey": True}, "unknownKey"),
        ({"scheduler": {"replica": 3}}, "replica"),
        ({"analyzer": {"mesh": "traefik"}}, "/analyzer/mesh"),
        ({"nats": {"auth": {"method": "kerberos"}}}, "/nats/auth/method"),
        ({"routerAgent": {"providers": {"linkerd": True}}}, "linkerd"),
        ({"admin": {"port": 70000}}, "/admin/port"),
    ],
)
def test_schema_rejects_invalid_values(chart: helm.Chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(bad)
    # Rendering (what `helm install` does) refuses them too.
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)
    assert helm.lint(CHART, bad)["errors"], "lint accepted invalid values"


def test_schema_accepts_the_defaults(chart: helm.Chart) -> None:
    chart.validate_schema({})
    chart.validate_schema({"scheduler": {"replicas": 3}, "nats": {"auth": {"method": "token", "token": "t"}}})


# --- default render ---------------------------------------------------------------------------


def test_defaults_render_the_four_services(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.names("Deployment") == {f"{FULLNAME}-{s}" for s in SERVICES}
    assert r.deployment("scheduler")["spec"]["replicas"] == 2
    assert r.deployment("analyzer")["spec"]["replicas"] == 2
    for s in SERVICES:
        d = r.deployment(s)
        assert d["metadata"]["namespace"] == NAMESPACE
        assert d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == s
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in d["spec"]["selector"]["matchLabels"].items())


def test_probes_hit_the_admin_port(chart: helm.Chart) -> None:
    r = render(chart, {"gate": {"enabled": True}})
    for s in SERVICES + ["gate"]:
        d = r.deployment(s)
        c = container(d)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["admin"] == ADMIN_PORT
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        # The binaries default to loopback; in a pod the kubelet must reach the admin port.
        assert env_of(d)["AVIARY_ADMIN_ADDR"] == f"0.0.0.0:{ADMIN_PORT}"


def test_pods_run_non_root_read_only_without_capabilities(chart: helm.Chart) -> None:
    r = render(chart, {"gate": {"enabled": True}})
    for s in SERVICES + ["gate"]:
        d = r.deployment(s)
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container(d)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        # Read-only root: /tmp is the one writable path.
        mounts = {m["mountPath"]: m["name"] for m in container(d)["volumeMounts"]}
        assert mounts["/tmp"] == "tmp"
        # Without an enabled Kubernetes provider no pod gets an API token.
        assert pod["automountServiceAccountToken"] is False


def test_every_service_has_a_pdb_matching_its_pods(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.names("PodDisruptionBudget") == {f"{FULLNAME}-{s}" for s in SERVICES}
    for s in SERVICES:
        pdb = r.get("PodDisruptionBudget", f"{FULLNAME}-{s}")
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == r.deployment(s)["spec"]["selector"]["matchLabels"]
    off = render(chart, {"scheduler": {"podDisruptionBudget": {"enabled": False}}})
    assert f"{FULLNAME}-scheduler" not in off.names("PodDisruptionBudget")
    min_avail = render(chart, {"scheduler": {"podDisruptionBudget": {"minAvailable": 1}}})
    spec = min_avail.get("PodDisruptionBudget", f"{FULLNAME}-scheduler")["spec"]
    assert spec.get("minAvailable") == 1 and "maxUnavailable" not in spec


def test_replicas_are_spread_over_nodes(chart: helm.Chart) -> None:
    r = render(chart)
    for s in SERVICES:
        d = r.deployment(s)
        terms = d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        term = terms[0]["podAffinityTerm"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
    hard = render(chart, {"scheduler": {"antiAffinity": "hard"}}).deployment("scheduler")
    anti = hard["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    none = render(chart, {"scheduler": {"antiAffinity": "none"}}).deployment("scheduler")
    assert "affinity" not in none["spec"]["template"]["spec"]


def test_services_expose_grpc_and_admin_ports(chart: helm.Chart) -> None:
    r = render(chart)
    for s in SERVICES:
        svc = r.get("Service", f"{FULLNAME}-{s}")
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["admin"]["port"] == ADMIN_PORT and ports["admin"]["targetPort"] == "admin"
        assert svc["spec"]["selector"] == r.deployment(s)["spec"]["selector"]["matchLabels"]
    grpc = {p["name"]: p for p in r.get("Service", f"{FULLNAME}-scheduler")["spec"]["ports"]}["grpc"]
    assert grpc["port"] == 50051 and grpc["targetPort"] == "grpc"
    assert env_of(r.deployment("scheduler"))["AVIARY_GRPC_ADDR"] == "0.0.0.0:50051"


# --- values followed -----------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_scheduler_replicas_follow_values(chart: helm.Chart, replicas: int) -> None:
    r = render(chart, {"scheduler": {"replicas": replicas}})
    assert r.deployment("scheduler")["spec"]["replicas"] == replicas
    assert r.deployment("analyzer")["spec"]["replicas"] == 2


def test_images_and_resources_follow_values(chart: helm.Chart) -> None:
    r = render(
        chart,
        {
            "image": {"registry": "registry.example.com/aviary/", "tag": "1.2.3"},
            "analyzer": {"image": {"tag": "1.2.4"}, "resources": {"limits": {"memory": "512Mi"}}},
        },
    )
    assert container(r.deployment("scheduler"))["image"] == "registry.example.com/aviary/aviary-scheduler:1.2.3"
    assert container(r.deployment("analyzer"))["image"] == "registry.example.com/aviary/aviary-analyzer:1.2.4"
    assert container(r.deployment("analyzer"))["resources"]["limits"]["memory"] == "512Mi"
    default = render(chart)
    app_version = chart.metadata["appVersion"]
    assert container(default.deployment("notifier"))["image"] == f"aviary-notifier:{app_version}"


# --- NATS connection --------------------------------------------------------------------------


def test_nats_url_and_credentials_come_from_a_created_secret(chart: helm.Chart) -> None:
    r = render(chart, {"nats": {"url": "nats://bus:4222", "auth": {"method": "userPassword", "user": "u", "password": "p"}}})
    secret = r.get("Secret", f"{FULLNAME}-nats-auth")
    assert secret["stringData"] == {"url": "nats://bus:4222", "user": "u", "password": "p"}
    for s in SERVICES:
        env = env_of(r.deployment(s))
        for var, key in [("AVIARY_NATS_URL", "url"), ("AVIARY_NATS_USER", "user"), ("AVIARY_NATS_PASSWORD", "password")]:
            assert env[var] == {"secretKeyRef": {"name": f"{FULLNAME}-nats-auth", "key": key}}
        assert "AVIARY_NATS_TOKEN" not in env
    # Nothing secret is in a plain env value or a ConfigMap.
    rendered = yaml.safe_dump([o for o in r.objects if o["kind"] != "Secret"])
    assert "nats://bus:4222" not in rendered


def test_nats_existing_secret_is_used_and_none_is_created(chart: helm.Chart) -> None:
    r = render(chart, {"nats": {"existingSecret": "ops-nats", "auth": {"method": "creds"}}})
    assert r.of_kind("Secret") == []
    d = r.deployment("scheduler")
    env = env_of(d)
    assert env["AVIARY_NATS_URL"] == {"secretKeyRef": {"name": "ops-nats", "key": "url"}}
    assert env["AVIARY_NATS_CREDS_FILE"] == "/etc/aviary/nats-auth/nats.creds"
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nats-auth"]["secret"]["secretName"] == "ops-nats"


def test_missing_nats_credentials_fail_the_render(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="nats.auth.token"):
        chart.render({"nats": {"auth": {"method": "token"}}}, name=RELEASE, namespace=NAMESPACE)


# --- RBAC -------------------------------------------------------------------------------------


def test_no_rbac_without_kubernetes_providers(chart: helm.Chart) -> None:
    r = render(chart)
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert r.of_kind(kind) == [], kind


@pytest.mark.parametrize("provider", sorted(ROUTER_PROVIDER_RULES))
def test_each_provider_adds_exactly_its_rules(chart: helm.Chart, provider: str) -> None:
    r = render(chart, {"routerAgent": {"providers": {provider: True}}})
    assert router_rules(r) == [ROUTER_PROVIDER_RULES[provider]]
    # The rules bind to the router agent's own ServiceAccount, which alone mounts a token.
    (binding,) = r.of_kind("ClusterRoleBinding")
    (role,) = r.of_kind("ClusterRole")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = f"{FULLNAME}-router-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert sa in r.names("ServiceAccount")
    agent = r.deployment("router-agent")["spec"]["template"]["spec"]
    assert agent["serviceAccountName"] == sa and agent["automountServiceAccountToken"] is True
    for s in ("scheduler", "analyzer", "notifier"):
        pod = r.deployment(s)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] != sa and pod["automountServiceAccountToken"] is False


def test_gateway_api_adds_exactly_httproute_rules(chart: helm.Chart) -> None:
    before = render(chart)
    after = render(chart, {"routerAgent": {"providers": {"gatewayApi": True}}})
    assert router_rules(before) == []
    assert router_rules(after) == [
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["httproutes"],
            "verbs": ["create", "get", "list", "watch", "patch"],
        }
    ]
    groups = {g for rule in router_rules(after) for g in rule["apiGroups"]}
    assert groups == {"gateway.networking.k8s.io"}


def test_all_providers_add_the_union(chart: helm.Chart) -> None:
    r = render(chart, {"routerAgent": {"providers": {p: True for p in ROUTER_PROVIDER_RULES}}})
    rules = router_rules(r)
    assert len(rules) == len(ROUTER_PROVIDER_RULES)
    for rule in ROUTER_PROVIDER_RULES.values():
        assert rule in rules
    off = render(chart, {"rbac": {"create": False}, "routerAgent": {"providers": {"istio": True}}})
    assert off.of_kind("ClusterRole") == []


# --- optional parts ---------------------------------------------------------------------------


def test_gate_is_off_by_default_and_adds_deployment_and_service(chart: helm.Chart) -> None:
    name = f"{FULLNAME}-gate"
    off = render(chart)
    assert name not in off.names("Deployment") and name not in off.names("Service")
    on = render(chart, {"gate": {"enabled": True}})
    d = on.deployment("gate")
    assert container(d)["image"].startswith("aviary-gate:")
    assert env_of(d)["AVIARY_GATE_LISTEN_ADDR"] == "0.0.0.0:8090"
    ports = {p["name"]: p for p in on.get("Service", name)["spec"]["ports"]}
    assert ports["http"]["port"] == 8090 and ports["http"]["targetPort"] == "http"
    assert len(on.of_kind("Deployment")) == len(SERVICES) + 1


def test_bundled_nats_is_off_by_default(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.of_kind("StatefulSet") == []
    assert r.get("Secret", f"{FULLNAME}-nats-auth")["stringData"]["url"] == "nats://nats:4222"


def test_bundled_nats_runs_jetstream_on_a_pvc(chart: helm.Chart) -> None:
    r = render(chart, {"nats": {"bundled": {"enabled": True, "replicas": 3}, "auth": {"method": "token", "token": "s3cret"}}})
    sts = r.get("StatefulSet", f"{FULLNAME}-nats")
    assert sts["spec"]["replicas"] == 3
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    conf = r.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]
    assert "jetstream {" in conf and "store_dir: /data" in conf
    assert "token: $NATS_TOKEN" in conf and "s3cret" not in conf
    assert conf.count(f"{FULLNAME}-nats-headless.{NAMESPACE}.svc:6222") == 3
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # The services are pointed at it through the Secret.
    url = f"nats://{FULLNAME}-nats.{NAMESPACE}.svc:4222"
    assert r.get("Secret", f"{FULLNAME}-nats-auth")["stringData"]["url"] == url
    assert f"{FULLNAME}-nats" in r.names("Service")


def test_bundled_nats_refuses_creds_auth(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="bundled NATS"):
        chart.render(
            {"nats": {"bundled": {"enabled": True}, "auth": {"method": "creds", "creds": "x"}}},
            name=RELEASE,
            namespace=NAMESPACE,
        )


def test_service_monitor_toggle(chart: helm.Chart) -> None:
    assert render(chart).of_kind("ServiceMonitor") == []
    r = render(chart, {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}})
    (sm,) = r.of_kind("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    # It selects every service's Service, and nothing else of the chart.
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = {
        s["metadata"]["name"]
        for s in r.of_kind("Service")
        if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())
    }
    assert selected == {f"{FULLNAME}-{s}" for s in SERVICES}


def test_network_policy_toggle(chart: helm.Chart) -> None:
    assert render(chart).of_kind("NetworkPolicy") == []
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}}}
    r = render(chart, {"networkPolicy": {"enabled": True, "grpcFrom": [peer]}, "gate": {"enabled": True}})
    policies = {p["metadata"]["name"]: p for p in r.of_kind("NetworkPolicy")}
    assert set(policies) == {f"{FULLNAME}-{s}" for s in SERVICES + ["gate"]}
    for s in SERVICES + ["gate"]:
        p = policies[f"{FULLNAME}-{s}"]
        assert p["spec"]["podSelector"]["matchLabels"] == r.deployment(s)["spec"]["selector"]["matchLabels"]
        assert p["spec"]["policyTypes"] == ["Ingress"]
    grpc_rules = [
        rule
        for rule in policies[f"{FULLNAME}-scheduler"]["spec"]["ingress"]
        if rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    ]
    assert grpc_rules == [{"ports": [{"port": "grpc", "protocol": "TCP"}], "from": [peer]}]


# --- configuration files ----------------------------------------------------------------------


def test_router_agent_ingress_file_is_a_mounted_configmap(chart: helm.Chart) -> None:
    ingresses = {
        "ingresses": [
            {"name": "edge", "provider": "envoy", "xds_addr": "0.0.0.0:18000"},
            {"name": "lb", "provider": "haproxy", "stats_socket": "/run/haproxy/admin.sock", "backend": "app"},
        ]
    }
    r = render(chart, {"routerAgent": {"ingressFile": ingresses}})
    cm = r.get("ConfigMap", f"{FULLNAME}-router-agent")
    assert yaml.safe_load(cm["data"]["ingresses.yaml"]) == ingresses
    d = r.deployment("router-agent")
    assert env_of(d)["AVIARY_ROUTER_CONFIG"] == "/etc/aviary/router/ingresses.yaml"
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    # A changed file rolls the pods.
    before = render(chart).deployment("router-agent")["spec"]["template"]["metadata"]["annotations"]
    after = d["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/config"] != after["checksum/config"]
    xds = {p["name"]: p for p in r.get("Service", f"{FULLNAME}-router-agent")["spec"]["ports"]}["xds"]
    assert xds["port"] == 18000


def test_notifier_config_keeps_webhook_urls_in_secrets(chart: helm.Chart) -> None:
    config = {
        "defaultProvider": "slack",
        "providers": [{"name": "slack", "type": "slack", "urlEnv": "SLACK_URL", "channel": "#deploys"}],
    }
    r = render(
        chart,
        {
            "notifier": {
                "config": config,
                "clusterName": "prod-eu",
                "secretEnv": [{"name": "SLACK_URL", "secretName": "chat-hooks", "key": "slack"}],
            }
        },
    )
    cm = r.get("ConfigMap", f"{FULLNAME}-notifier")
    assert yaml.safe_load(cm["data"]["config.yaml"]) == config
    env = env_of(r.deployment("notifier"))
    assert env["SLACK_URL"] == {"secretKeyRef": {"name": "chat-hooks", "key": "slack"}}
    assert env["AVIARY_NOTIFIER_CONFIG"] == "/etc/aviary/notifier/config.yaml"
    assert env["AVIARY_CLUSTER_NAME"] == "prod-eu"


def test_notes_name_the_control_api(chart: helm.Chart) -> None:
    manifests = chart.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    assert f"{FULLNAME}-scheduler.{NAMESPACE}.svc:50051" in notes


def test_kubernetes_ingress_needs_its_provider_flag(chart: helm.Chart) -> None:
    ingress = {"ingresses": [{"name": "mesh", "provider": "gateway-api", "namespace": "test", "route": "podinfo"}]}
    with pytest.raises(helm.HelmRenderError, match="routerAgent.providers.gatewayApi=true"):
        chart.render({"routerAgent": {"ingressFile": ingress}}, name=RELEASE, namespace=NAMESPACE)
    r = render(chart, {"routerAgent": {"ingressFile": ingress, "providers": {"gatewayApi": True}, "ports": []}})
    assert router_rules(r) == [ROUTER_PROVIDER_RULES["gatewayApi"]]
    ports = {p["name"] for p in r.get("Service", f"{FULLNAME}-router-agent")["spec"]["ports"]}
    assert ports == {"admin"}


def test_credentials_are_mounted_files_from_secrets(chart: helm.Chart) -> None:
    r = render(
        chart,
        {
            "scheduler": {"auth": {"tokensSecret": "api-tokens"}, "tls": {"secretName": "api-tls", "clientAuth": True}},
            "analyzer": {"prometheus": {"auth": {"method": "bearer", "existingSecret": "prom"}}},
        },
    )
    sched = r.deployment("scheduler")
    env = env_of(sched)
    assert env["AVIARY_TOKENS_FILE"] == "/etc/aviary/tokens/tokens"
    assert (env["AVIARY_TLS_CERT"], env["AVIARY_TLS_KEY"], env["AVIARY_TLS_CLIENT_CA"]) == (
        "/etc/aviary/tls/tls.crt",
        "/etc/aviary/tls/tls.key",
        "/etc/aviary/tls/ca.crt",
    )
    secrets = {v["name"]: v["secret"]["secretName"] for v in sched["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert secrets["tokens"] == "api-tokens" and secrets["tls"] == "api-tls"
    assert env_of(r.deployment("analyzer"))["AVIARY_PROMETHEUS_BEARER_TOKEN_FILE"] == "/etc/aviary/prometheus/token"
