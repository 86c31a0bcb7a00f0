"""Tests of the Aviary Helm chart, through Helm's own Go SDK (PyPI `helm-python-sdk`).

Helm loads, lints, validates (values.schema.json) and renders the chart exactly as
`helm lint` / `helm template` would; the tests parse the rendered manifests and assert on the
objects. No cluster is needed: rendering is offline.

Run: `scripts/helm-test.sh` (or `.tools/venv/bin/python -m pytest -q deploy/helm/tests`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
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
# What a default install runs: the services and the Kubernetes controller.
DEFAULTS = SERVICES + ["controller"]
ADMIN_PORT = 9464

ROUTER_PROVIDER_RULES = {
    "gatewayApi": {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "verbs": ["create", "get", "patch"],
    },
    "istio": {
        "apiGroups": ["networking.istio.io"],
        "resources": ["virtualservices"],
        "verbs": ["create", "get", "patch"],
    },
    "smi": {
        "apiGroups": ["split.smi-spec.io"],
        "resources": ["trafficsplits"],
        "verbs": ["create", "get", "patch"],
    },
    "nginxIngress": {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["ingresses"],
        "verbs": ["create", "get", "patch"],
    },
    "endpointSlices": {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
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


def of_component(r: Rendered, kind: str, component: str) -> list[dict[str, Any]]:
    return [
        o for o in r.of_kind(kind) if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]


def router_rules(r: Rendered) -> list[dict[str, Any]]:
    roles = of_component(r, "ClusterRole", "router-agent") + of_component(r, "Role", "router-agent")
    return [rule for role in roles for rule in role.get("rules", [])]


# --- lint and schema ----------------------------------------------------------------------------


def test_lint_is_clean_with_defaults_and_with_everything_on() -> None:
    everything = {
        "gate": {"enabled": True},
        "nats": {"bundled": {"enabled": True, "replicas": 3}},
        "routerAgent": {"providers": {p: True for p in ROUTER_PROVIDER_RULES}},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "controller": {"flagger": {"enabled": True, "installCRDs": True}},
        "dashboard": {"enabled": True},
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
        ({"analyzer": {"prometheus": {"scrapeInterval": "often"}}}, "/analyzer/prometheus/scrapeInterval"),
        ({"nats": {"bundled": {"replicas": 2}}}, "/nats/bundled/replicas"),
        ({"nats": {"bundled": {"replicas": 4}}}, "/nats/bundled/replicas"),
        ({"nats": {"bundled": {"replicas": 0}}}, "/nats/bundled/replicas"),
        ({"nats": {"jetstream": {"replicas": 2}}}, "/nats/jetstream/replicas"),
        ({"nats": {"jetstream": {"replicas": 7}}}, "/nats/jetstream/replicas"),
        ({"nats": {"bundled": {"cluster": {"routePassword": "short"}}}}, "/nats/bundled/cluster/routePassword"),
        ({"nats": {"bundled": {"cluster": {"routeUser": "a:b@c"}}}}, "/nats/bundled/cluster/routeUser"),
        ({"analyzer": {"webhookSigning": {"keyId": "a,b"}}}, "/analyzer/webhookSigning/keyId"),
        ({"cluster": {"name": "e.u"}}, "/cluster/name"),
        ({"nats": {"bundled": {"leafnodes": {"port": 70000}}}}, "/nats/bundled/leafnodes/port"),
        ({"nats": {"bundled": {"leafnodes": {"remotes": ["hub:7422"]}}}}, "/nats/bundled/leafnodes/remotes/0"),
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
    for servers in (1, 3, 5, 7):
        chart.validate_schema({"nats": {"bundled": {"replicas": servers}, "jetstream": {"replicas": 1}}})


# --- default render ---------------------------------------------------------------------------


def test_defaults_render_the_four_services_and_the_controller(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.names("Deployment") == {f"{FULLNAME}-{s}" for s in DEFAULTS}
    assert r.deployment("scheduler")["spec"]["replicas"] == 2
    assert r.deployment("analyzer")["spec"]["replicas"] == 2
    for s in DEFAULTS:
        d = r.deployment(s)
        assert d["metadata"]["namespace"] == NAMESPACE
        assert d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == s
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in d["spec"]["selector"]["matchLabels"].items())


def test_probes_hit_the_admin_port(chart: helm.Chart) -> None:
    r = render(chart, {"gate": {"enabled": True}})
    for s in DEFAULTS + ["gate"]:
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
    for s in DEFAULTS + ["gate"]:
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
        # Without an enabled Kubernetes provider only the controller gets an API token.
        assert pod["automountServiceAccountToken"] is (s == "controller")


def test_every_service_has_a_pdb_matching_its_pods(chart: helm.Chart) -> None:
    r = render(chart)
    assert r.names("PodDisruptionBudget") == {f"{FULLNAME}-{s}" for s in DEFAULTS}
    for s in DEFAULTS:
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
    for s in DEFAULTS:
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
    for s in DEFAULTS:
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


def test_analyzer_widens_windows_by_the_configured_scrape_interval(chart: helm.Chart) -> None:
    assert env_of(render(chart).deployment("analyzer"))["AVIARY_SCRAPE_INTERVAL"] == "15s"
    r = render(chart, {"analyzer": {"prometheus": {"scrapeInterval": "30s"}}})
    assert env_of(r.deployment("analyzer"))["AVIARY_SCRAPE_INTERVAL"] == "30s"


def test_analyzer_signs_webhooks_with_the_key_and_key_id_given(chart: helm.Chart) -> None:
    assert "AVIARY_WEBHOOK_SECRET_FILE" not in env_of(render(chart).deployment("analyzer"))
    signing = {"existingSecret": "hook-key"}
    env = env_of(render(chart, {"analyzer": {"webhookSigning": signing}}).deployment("analyzer"))
    assert env["AVIARY_WEBHOOK_SECRET_FILE"] == "/etc/aviary/webhook/secret"
    assert "AVIARY_WEBHOOK_KEY_ID" not in env, "the analyzer derives the id from the key"
    signing["keyId"] = "hooks-2026"
    env = env_of(render(chart, {"analyzer": {"webhookSigning": signing}}).deployment("analyzer"))
    assert env["AVIARY_WEBHOOK_KEY_ID"] == "hooks-2026"


# --- NATS connection --------------------------------------------------------------------------


def test_nats_url_and_credentials_come_from_a_created_secret(chart: helm.Chart) -> None:
    r = render(chart, {"nats": {"url": "nats://bus:4222", "auth": {"method": "userPassword", "user": "u", "password": "p"}}})
    secret = r.get("Secret", f"{FULLNAME}-nats-auth")
    assert secret["stringData"] == {"url": "nats://bus:4222", "user": "u", "password": "p"}
    for s in DEFAULTS:
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
        assert of_component(r, kind, "router-agent") == [], kind
        # With the defaults, the controller's are the only ones.
        assert r.of_kind(kind) == of_component(r, kind, "controller"), kind
    off = render(chart, {"controller": {"enabled": False}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert off.of_kind(kind) == [], kind


@pytest.mark.parametrize("provider", sorted(ROUTER_PROVIDER_RULES))
def test_each_provider_adds_exactly_its_rules(chart: helm.Chart, provider: str) -> None:
    r = render(chart, {"routerAgent": {"providers": {provider: True}}})
    assert router_rules(r) == [ROUTER_PROVIDER_RULES[provider]]
    # The rules bind to the router agent's own ServiceAccount, which alone mounts a token.
    (binding,) = of_component(r, "ClusterRoleBinding", "router-agent")
    (role,) = of_component(r, "ClusterRole", "router-agent")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = f"{FULLNAME}-router-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert sa in r.names("ServiceAccount")
    agent = r.deployment("router-agent")["spec"]["template"]["spec"]
    assert agent["serviceAccountName"] == sa and agent["automountServiceAccountToken"] is True
    for s in ("scheduler", "analyzer", "notifier"):
        pod = r.deployment(s)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] != sa and pod["automountServiceAccountToken"] is False
    assert r.deployment("controller")["spec"]["template"]["spec"]["serviceAccountName"] != sa


def test_gateway_api_adds_exactly_httproute_rules(chart: helm.Chart) -> None:
    before = render(chart)
    after = render(chart, {"routerAgent": {"providers": {"gatewayApi": True}}})
    assert router_rules(before) == []
    assert router_rules(after) == [
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["httproutes"],
            "verbs": ["create", "get", "patch"],
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
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert off.of_kind(kind) == [], kind


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
    assert len(on.of_kind("Deployment")) == len(DEFAULTS) + 1


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
    routes = r.get("Secret", f"{FULLNAME}-nats-routes")["stringData"]["routes.conf"]
    assert routes.count(f"{FULLNAME}-nats-headless.{NAMESPACE}.svc:6222") == 3
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


def bundled(**overrides: Any) -> dict[str, Any]:
    """The bundled NATS (token auth) with `overrides` of `nats.bundled` or `nats.jetstream`."""
    nats = {"bundled": {"enabled": True}, "auth": {"method": "token", "token": "s3cret"}}
    for key, value in overrides.items():
        nats.setdefault(key, {}).update(value)
    return {"nats": nats}


def test_js_replicas_reach_every_service_that_creates_streams(chart: helm.Chart) -> None:
    r = render(chart, {"gate": {"enabled": True}})
    creators = {"scheduler", "router-agent", "notifier", "gate"}
    for component in DEFAULTS + ["gate"]:
        env = env_of(r.deployment(component))
        if component in creators:
            # The chart's default: state survives the loss of one server.
            assert env["AVIARY_JS_REPLICAS"] == "3", component
        else:
            assert "AVIARY_JS_REPLICAS" not in env, component
    single = render(chart, {"nats": {"jetstream": {"replicas": 1}}})
    assert env_of(single.deployment("scheduler"))["AVIARY_JS_REPLICAS"] == "1"


def test_bundled_nats_is_a_cluster_of_three_with_authenticated_routes(chart: helm.Chart) -> None:
    r = render(chart, bundled())
    name = f"{FULLNAME}-nats"
    sts = r.get("StatefulSet", name)
    assert sts["spec"]["replicas"] == 3
    conf = r.get("ConfigMap", name)["data"]["nats.conf"]
    assert "cluster {" in conf and 'include "routes.conf"' in conf
    # No route credentials in the ConfigMap: they are in the routes Secret.
    routes = r.get("Secret", f"{name}-routes")["stringData"]
    password = routes["password"]
    assert len(password) >= 16 and password not in conf
    assert routes["user"] == "aviary-route"
    routes_conf = routes["routes.conf"]
    assert 'user: "aviary-route"' in routes_conf and f'password: "{password}"' in routes_conf
    for i in range(3):
        peer = f"nats://aviary-route:{password}@{name}-{i}.{name}-headless.{NAMESPACE}.svc:6222"
        assert f'"{peer}"' in routes_conf
    # nats.conf includes routes.conf from its own directory: both land in /etc/nats.
    pod = sts["spec"]["template"]["spec"]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    sources = config["projected"]["sources"]
    assert sources[0]["configMap"]["name"] == name
    assert sources[1]["secret"] == {"name": f"{name}-routes", "items": [{"key": "routes.conf", "path": "routes.conf"}]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["config"] == "/etc/nats"
    assert pod["containers"][0]["args"] == ["--config", "/etc/nats/nats.conf"]


def test_a_given_route_password_is_used(chart: helm.Chart) -> None:
    values = bundled(bundled={"cluster": {"routePassword": "a-very-long-route-pw"}})
    routes = render(chart, values).get("Secret", f"{FULLNAME}-nats-routes")["stringData"]
    assert routes["password"] == "a-very-long-route-pw"
    assert "aviary-route:a-very-long-route-pw@" in routes["routes.conf"]


def test_bundled_nats_pdb_keeps_a_quorum(chart: helm.Chart) -> None:
    for servers, quorum in ((3, 2), (5, 3)):
        r = render(chart, bundled(bundled={"replicas": servers}))
        pdb = r.get("PodDisruptionBudget", f"{FULLNAME}-nats")
        labels = r.get("StatefulSet", f"{FULLNAME}-nats")["spec"]["selector"]["matchLabels"]
        assert pdb["spec"] == {"minAvailable": quorum, "selector": {"matchLabels": labels}}
    off = render(chart, bundled(bundled={"podDisruptionBudget": {"enabled": False}}))
    assert f"{FULLNAME}-nats" not in off.names("PodDisruptionBudget")


def test_a_single_bundled_server_has_no_cluster_and_needs_one_replica(chart: helm.Chart) -> None:
    r = render(chart, bundled(bundled={"replicas": 1}, jetstream={"replicas": 1}))
    assert "cluster {" not in r.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]
    assert f"{FULLNAME}-nats-routes" not in r.names("Secret")
    assert f"{FULLNAME}-nats" not in r.names("PodDisruptionBudget")
    # Three replicas of every stream cannot live on one server: the render says so.
    with pytest.raises(helm.HelmRenderError, match="nats.jetstream.replicas is 3 but the bundled NATS has 1 servers"):
        chart.render(bundled(bundled={"replicas": 1}), name=RELEASE, namespace=NAMESPACE)


def nats_server() -> str:
    """nats-server from `scripts/bootstrap.sh` (`.tools/bin`), else the system's."""
    bundled_bin = CHART.parents[2] / ".tools" / "bin" / "nats-server"
    found = str(bundled_bin) if bundled_bin.exists() else shutil.which("nats-server")
    assert found, "nats-server not found: run scripts/bootstrap.sh"
    return found


def test_bundled_nats_config_with_its_routes_is_valid_for_nats_server(chart: helm.Chart, tmp_path: Path) -> None:
    r = render(chart, bundled())
    # As the pod sees it: the ConfigMap and the routes Secret projected into one directory.
    (tmp_path / "nats.conf").write_text(r.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"])
    (tmp_path / "routes.conf").write_text(r.get("Secret", f"{FULLNAME}-nats-routes")["stringData"]["routes.conf"])
    env = {"POD_NAME": f"{FULLNAME}-nats-0", "NATS_TOKEN": "s3cret", "PATH": "/usr/bin:/bin"}
    checked = subprocess.run(
        [nats_server(), "-t", "-c", "nats.conf"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    # Without the routes file the include fails: nats-server really reads it.
    (tmp_path / "routes.conf").unlink()
    missing = subprocess.run(
        [nats_server(), "-t", "-c", "nats.conf"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert missing.returncode != 0 and "routes.conf" in missing.stderr + missing.stdout


PER_SERVICE_USERS = ["analyzer", "cli-operator", "cli-read", "controller", "gate", "notifier", "router-agent", "scheduler"]


def test_per_service_identities_reach_every_service_and_the_bundled_nats(chart: helm.Chart, tmp_path: Path) -> None:
    r = render(chart, {"gate": {"enabled": True}, "nats": {"bundled": {"enabled": True}, "auth": {"method": "perService"}}})
    users = r.get("Secret", f"{FULLNAME}-nats-users")["data"]
    # Every user the generated permissions define, each with its own password.
    assert sorted(users) == PER_SERVICE_USERS
    assert len(set(users.values())) == len(users)
    for component in DEFAULTS + ["gate"]:
        env = env_of(r.deployment(component))
        assert env["AVIARY_NATS_USER"] == component
        assert env["AVIARY_NATS_PASSWORD"] == {"secretKeyRef": {"name": f"{FULLNAME}-nats-users", "key": component}}
        assert "AVIARY_NATS_TOKEN" not in env
    # The bundled NATS loads the generated permissions, with each password from the Secret.
    data = r.get("ConfigMap", f"{FULLNAME}-nats")["data"]
    shipped = (CHART.parents[1] / "nats" / "permissions.conf").read_text()
    assert data["permissions.conf"] == shipped
    assert 'include "permissions.conf"' in data["nats.conf"]
    sts = r.get("StatefulSet", f"{FULLNAME}-nats")
    env = {e["name"]: e.get("valueFrom") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    for user in PER_SERVICE_USERS:
        variable = "AVIARY_NATS_PASSWORD_" + user.upper().replace("-", "_")
        assert env[variable] == {"secretKeyRef": {"name": f"{FULLNAME}-nats-users", "key": user}}
    # nats-server accepts the rendered configuration as the pod sees it.
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "routes.conf").write_text(r.get("Secret", f"{FULLNAME}-nats-routes")["stringData"]["routes.conf"])
    passwords = {"AVIARY_NATS_PASSWORD_" + u.upper().replace("-", "_"): "pw" for u in PER_SERVICE_USERS}
    checked = subprocess.run(
        [nats_server(), "-t", "-c", "nats.conf"],
        cwd=tmp_path,
        env={"POD_NAME": f"{FULLNAME}-nats-0", "PATH": "/usr/bin:/bin", **passwords},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_per_service_passwords_can_come_from_an_existing_secret(chart: helm.Chart) -> None:
    r = render(chart, {"nats": {"auth": {"method": "perService", "perService": {"existingSecret": "mine"}}}})
    assert f"{FULLNAME}-nats-users" not in r.names("Secret")
    env = env_of(r.deployment("scheduler"))
    assert env["AVIARY_NATS_PASSWORD"] == {"secretKeyRef": {"name": "mine", "key": "scheduler"}}


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
    assert selected == {f"{FULLNAME}-{s}" for s in DEFAULTS}


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


# --- dashboard --------------------------------------------------------------------------------

DASHBOARD = f"{FULLNAME}-dashboard"


def test_dashboard_is_off_by_default_and_runs_aviary_dashboard_against_the_scheduler(chart: helm.Chart) -> None:
    off = render(chart)
    assert DASHBOARD not in off.names("Deployment") and DASHBOARD not in off.names("Service")
    on = render(chart, {"dashboard": {"enabled": True}})
    assert len(on.of_kind("Deployment")) == len(DEFAULTS) + 1
    d = on.deployment("dashboard")
    c = container(d)
    assert c["image"] == f"aviary:{chart.metadata['appVersion']}"
    assert c["args"] == [
        "dashboard",
        "--listen",
        "0.0.0.0:8470",
        "--server",
        f"http://{FULLNAME}-scheduler.{NAMESPACE}.svc:50051",
        "--list-interval",
        "1s",
    ]
    # No token of its own, no NATS, no API token: visitors sign in with their own tokens.
    assert "env" not in c
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "volumes" not in pod
    assert [p["name"] for p in c["ports"]] == ["http"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    svc = on.get("Service", DASHBOARD)
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8470, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    # Not scraped: it has no /metrics.
    assert "aviary.dev/metrics" not in svc["metadata"]["labels"]
    moved = render(chart, {"dashboard": {"enabled": True, "port": 9000, "listInterval": "5s", "extraArgs": ["--x"]}})
    args = container(moved.deployment("dashboard"))["args"]
    assert args[2] == "0.0.0.0:9000" and args[-3:] == ["--list-interval", "5s", "--x"]


def test_dashboard_uses_the_control_api_tls_with_the_ca_only(chart: helm.Chart) -> None:
    r = render(chart, {"dashboard": {"enabled": True}, "scheduler": {"tls": {"secretName": "api-tls"}}})
    d = r.deployment("dashboard")
    args = container(d)["args"]
    assert args[args.index("--server") + 1] == f"https://{FULLNAME}-scheduler.{NAMESPACE}.svc:50051"
    assert args[args.index("--ca-file") + 1] == "/etc/aviary/scheduler-ca/ca.crt"
    (volume,) = d["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "api-tls"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    (mount,) = container(d)["volumeMounts"]
    assert mount == {"name": "scheduler-ca", "mountPath": "/etc/aviary/scheduler-ca", "readOnly": True}
    tls = {"scheduler": {"tls": {"secretName": "api-tls", "clientAuth": True}}, "controller": {"enabled": False}}
    with pytest.raises(helm.HelmRenderError, match="dashboard.enabled=false"):
        chart.render({**tls, "dashboard": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)
    render(chart, tls)


def test_dashboard_network_policy_admits_its_visitors_and_lets_it_reach_the_api(chart: helm.Chart) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}}}
    visitors = {"ipBlock": {"cidr": "10.0.0.0/8"}}
    r = render(
        chart,
        {
            "dashboard": {"enabled": True},
            "networkPolicy": {"enabled": True, "grpcFrom": [peer], "dashboardFrom": [visitors]},
        },
    )
    policies = {p["metadata"]["name"]: p for p in r.of_kind("NetworkPolicy")}
    own = policies[DASHBOARD]
    assert own["spec"]["podSelector"]["matchLabels"] == r.deployment("dashboard")["spec"]["selector"]["matchLabels"]
    assert own["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": [visitors]}]
    grpc = [
        rule
        for rule in policies[f"{FULLNAME}-scheduler"]["spec"]["ingress"]
        if rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    ]
    dashboard_pods = {"podSelector": {"matchLabels": r.deployment("dashboard")["spec"]["selector"]["matchLabels"]}}
    assert grpc == [{"ports": [{"port": "grpc", "protocol": "TCP"}], "from": [peer, dashboard_pods]}]
    # An open gRPC rule stays open.
    open_api = render(chart, {"dashboard": {"enabled": True}, "networkPolicy": {"enabled": True}})
    scheduler = {p["metadata"]["name"]: p for p in open_api.of_kind("NetworkPolicy")}[f"{FULLNAME}-scheduler"]
    assert all("from" not in rule for rule in scheduler["spec"]["ingress"])


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"dashboard": {"enabled": "yes"}}, "/dashboard/enabled"),
        ({"dashboard": {"port": 0}}, "/dashboard/port"),
        ({"dashboard": {"listInterval": "often"}}, "/dashboard/listInterval"),
        ({"dashboard": {"token": "t"}}, "token"),
        ({"networkPolicy": {"dashboardFrom": "anyone"}}, "/networkPolicy/dashboardFrom"),
    ],
)
def test_dashboard_schema_rejects_bad_values(chart: helm.Chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(bad)


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
            # It has no client certificate for mutual TLS (test_controller_refuses_...).
            "controller": {"enabled": False},
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


# --- the Kubernetes controller ----------------------------------------------------------------

CONTROLLER = f"{FULLNAME}-controller"
# What services/controller/src calls, verb by verb (see templates/controller.yaml); a verb
# added to the chart fails these tests until it is added here, on purpose.
CONTROLLER_RULES = [
    {"apiGroups": ["aviary.dev"], "resources": ["rollouts"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["aviary.dev"], "resources": ["rollouts/status"], "verbs": ["patch"]},
    # Only checked by the OwnerReferencesPermissionEnforcement admission plugin, for the
    # blockOwnerDeletion of the ownerReferences on what the controller creates.
    {"apiGroups": ["aviary.dev"], "resources": ["rollouts/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "daemonsets"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "patch", "delete"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
FLAGGER_RULES = [
    {"apiGroups": ["flagger.app"], "resources": ["canaries"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["flagger.app"], "resources": ["canaries/status"], "verbs": ["patch"]},
    {"apiGroups": ["flagger.app"], "resources": ["canaries/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["flagger.app"], "resources": ["metrictemplates"], "verbs": ["list"]},
]
LEASE_RULES = [
    # `create` cannot name the object; `get` and `update` are for its own Lease only.
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [CONTROLLER], "verbs": ["get", "update"]},
]
CONTROLLER_RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def controller_objects(r: Rendered) -> list[dict[str, Any]]:
    return [
        o for o in r.objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "controller"
    ]


def sorted_rules(rules: list[dict[str, Any]]) -> list[str]:
    """The rules as comparable strings, each list inside sorted, order of rules ignored."""
    return sorted(yaml.safe_dump({k: sorted(v) for k, v in rule.items()}, sort_keys=True) for rule in rules)


def lease_role(r: Rendered) -> dict[str, Any]:
    (role,) = [o for o in of_component(r, "Role", "controller") if o["metadata"]["name"] == f"{CONTROLLER}-lease"]
    return role


def test_controller_deployment_renders_with_its_flags_and_env(chart: helm.Chart) -> None:
    r = render(chart)
    d = r.deployment("controller")
    # One replica acts through the Lease, the other stands by.
    assert d["spec"]["replicas"] == 2
    c = container(d)
    assert c["image"] == f"aviary-controller:{chart.metadata['appVersion']}"
    assert "args" not in c
    env = env_of(d)
    assert env["AVIARY_SCHEDULER_URL"] == f"http://{FULLNAME}-scheduler.{NAMESPACE}.svc:50051"
    assert env["AVIARY_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["AVIARY_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["AVIARY_LEASE_NAME"] == CONTROLLER
    assert (env["AVIARY_LEASE_DURATION"], env["AVIARY_RESYNC"]) == ("15s", "30s")
    assert env["AVIARY_ADMIN_ADDR"] == f"0.0.0.0:{ADMIN_PORT}"
    assert env["AVIARY_NATS_URL"] == {"secretKeyRef": {"name": f"{FULLNAME}-nats-auth", "key": "url"}}
    # Cluster-wide, open control API: no namespace, no token, no CA.
    for var in ("AVIARY_WATCH_NAMESPACE", "AVIARY_CONTROLLER_TOKEN_FILE", "AVIARY_CONTROLLER_CA_FILE", "AVIARY_WATCH_FLAGGER"):
        assert var not in env, var
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["memory"] == "256Mi"
    svc = r.get("Service", CONTROLLER)
    assert svc["metadata"]["labels"]["aviary.dev/metrics"] == "true"
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    three = render(chart, {"controller": {"replicas": 3, "resync": "1m", "leaseDuration": "20s", "extraArgs": ["--x"]}})
    d3 = three.deployment("controller")
    assert d3["spec"]["replicas"] == 3 and container(d3)["args"] == ["--x"]
    assert (env_of(d3)["AVIARY_RESYNC"], env_of(d3)["AVIARY_LEASE_DURATION"]) == ("1m", "20s")


def test_controller_reads_only_its_token_and_the_ca_of_the_control_api(chart: helm.Chart) -> None:
    r = render(chart, {"scheduler": {"auth": {"tokensSecret": "api-tokens"}, "tls": {"secretName": "api-tls"}}})
    d = r.deployment("controller")
    env = env_of(d)
    # The same Secret as the scheduler's tokens file, but only the controller's own key.
    assert env["AVIARY_CONTROLLER_TOKEN_FILE"] == "/etc/aviary/scheduler-token/token"
    assert env["AVIARY_CONTROLLER_CA_FILE"] == "/etc/aviary/scheduler-ca/ca.crt"
    assert env["AVIARY_SCHEDULER_URL"] == f"https://{FULLNAME}-scheduler.{NAMESPACE}.svc:50051"
    volumes = {v["name"]: v["secret"] for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert volumes["scheduler-token"]["secretName"] == "api-tokens"
    assert volumes["scheduler-token"]["items"] == [{"key": "controller-token", "path": "token"}]
    # The scheduler's private key stays out of the controller's pods.
    assert volumes["scheduler-ca"]["secretName"] == "api-tls"
    assert volumes["scheduler-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    mounts = {m["name"]: m for m in container(d)["volumeMounts"]}
    assert mounts["scheduler-token"]["mountPath"] == "/etc/aviary/scheduler-token" and mounts["scheduler-token"]["readOnly"]
    key = render(chart, {"scheduler": {"auth": {"tokensSecret": "api-tokens"}}, "controller": {"auth": {"tokenKey": "ctl"}}})
    vols = {v["name"]: v for v in key.deployment("controller")["spec"]["template"]["spec"]["volumes"]}
    assert vols["scheduler-token"]["secret"]["items"] == [{"key": "ctl", "path": "token"}]
    assert "scheduler-ca" not in vols


def test_controller_refuses_scheduler_client_auth(chart: helm.Chart) -> None:
    tls = {"scheduler": {"tls": {"secretName": "api-tls", "clientAuth": True}}}
    with pytest.raises(helm.HelmRenderError, match="controller.enabled=false"):
        chart.render(tls, name=RELEASE, namespace=NAMESPACE)
    render(chart, {**tls, "controller": {"enabled": False}})


def test_controller_service_account_is_its_own(chart: helm.Chart) -> None:
    r = render(chart)
    pod = r.deployment("controller")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == CONTROLLER
    assert pod["automountServiceAccountToken"] is True
    sa = r.get("ServiceAccount", CONTROLLER)
    assert sa["metadata"]["namespace"] == NAMESPACE
    assert sa["automountServiceAccountToken"] is False
    # No other pod runs as it; the chart's shared one stays without rules.
    for s in SERVICES:
        assert r.deployment(s)["spec"]["template"]["spec"]["serviceAccountName"] != CONTROLLER
    for binding in r.of_kind("ClusterRoleBinding") + r.of_kind("RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}]
    # Not even when the chart's shared ServiceAccount is not created: never `default`.
    shared_off = render(chart, {"serviceAccount": {"create": False, "name": "ops"}})
    assert shared_off.deployment("controller")["spec"]["template"]["spec"]["serviceAccountName"] == CONTROLLER
    assert shared_off.names("ServiceAccount") == {CONTROLLER}
    own = render(
        chart,
        {"controller": {"serviceAccount": {"create": False, "name": "ops-ctl"}}},
    )
    assert own.deployment("controller")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-ctl"
    assert CONTROLLER not in own.names("ServiceAccount")
    assert {s["name"] for b in of_component(own, "ClusterRoleBinding", "controller") for s in b["subjects"]} == {"ops-ctl"}
    with pytest.raises(helm.HelmRenderError, match="controller.serviceAccount.name is required"):
        chart.render({"controller": {"serviceAccount": {"create": False}}}, name=RELEASE, namespace=NAMESPACE)
    annotated = render(chart, {"controller": {"serviceAccount": {"annotations": {"iam": "x"}}}})
    assert annotated.get("ServiceAccount", CONTROLLER)["metadata"]["annotations"] == {"iam": "x"}


def test_controller_cluster_role_has_exactly_its_rules(chart: helm.Chart) -> None:
    r = render(chart)
    (role,) = of_component(r, "ClusterRole", "controller")
    assert role["metadata"]["name"] == f"{NAMESPACE}-{CONTROLLER}"
    assert role["rules"] == CONTROLLER_RULES
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    # No rule for what it never touches: no Leases cluster-wide, no update/list where unused.
    assert not any("leases" in rule["resources"] for rule in role["rules"])
    (binding,) = of_component(r, "ClusterRoleBinding", "controller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}]
    # Cluster-wide: the only Role is the Lease's.
    assert [o["metadata"]["name"] for o in of_component(r, "Role", "controller")] == [f"{CONTROLLER}-lease"]


def test_controller_lease_rule_is_a_role_in_the_release_namespace(chart: helm.Chart) -> None:
    for values in ({}, {"controller": {"watchNamespace": "apps"}}):
        r = render(chart, values)
        role = lease_role(r)
        assert role["kind"] == "Role" and role["metadata"]["namespace"] == NAMESPACE
        assert role["rules"] == LEASE_RULES
        assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "create", "update"}
        # The Lease the controller takes is the one the Role names.
        assert env_of(r.deployment("controller"))["AVIARY_LEASE_NAME"] == CONTROLLER
        (binding,) = [b for b in of_component(r, "RoleBinding", "controller") if b["metadata"]["name"] == f"{CONTROLLER}-lease"]
        assert binding["metadata"]["namespace"] == NAMESPACE
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{CONTROLLER}-lease"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}]
        # Leases are nowhere else.
        others = [o for o in of_component(r, "ClusterRole", "controller") + of_component(r, "Role", "controller") if o is not role]
        assert not any("leases" in rule["resources"] for o in others for rule in o["rules"])


def test_controller_namespaced_install_renders_roles_not_cluster_roles(chart: helm.Chart) -> None:
    r = render(chart, {"controller": {"watchNamespace": "apps", "flagger": {"enabled": True}}})
    assert of_component(r, "ClusterRole", "controller") == []
    assert of_component(r, "ClusterRoleBinding", "controller") == []
    assert r.of_kind("ClusterRole") == [] and r.of_kind("ClusterRoleBinding") == []
    assert env_of(r.deployment("controller"))["AVIARY_WATCH_NAMESPACE"] == "apps"
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in of_component(r, "Role", "controller")}
    assert set(roles) == {("apps", CONTROLLER), (NAMESPACE, f"{CONTROLLER}-lease")}
    assert sorted_rules(roles[("apps", CONTROLLER)]["rules"]) == sorted_rules(CONTROLLER_RULES + FLAGGER_RULES)
    bindings = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in of_component(r, "RoleBinding", "controller")}
    assert set(bindings) == set(roles)
    watched = bindings[("apps", CONTROLLER)]
    assert watched["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER}
    # The ServiceAccount lives in the release namespace, the binding in the watched one.
    assert watched["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}]
    # Watching the release namespace itself: two Roles there, with distinct names.
    same = render(chart, {"controller": {"watchNamespace": NAMESPACE}})
    assert {o["metadata"]["name"] for o in of_component(same, "Role", "controller")} == {CONTROLLER, f"{CONTROLLER}-lease"}


def test_controller_flagger_options_add_the_rules_the_flag_and_the_crds(chart: helm.Chart) -> None:
    def crd_names(r: Rendered) -> set[str]:
        return r.names("CustomResourceDefinition")

    off = render(chart)
    assert crd_names(off) == set()
    assert not any(g == "flagger.app" for o in controller_objects(off) for rule in o.get("rules", []) for g in rule["apiGroups"])

    on = render(chart, {"controller": {"flagger": {"enabled": True}}})
    c = container(on.deployment("controller"))
    assert c["args"] == ["--flagger"]
    (role,) = of_component(on, "ClusterRole", "controller")
    assert sorted_rules(role["rules"]) == sorted_rules(CONTROLLER_RULES + FLAGGER_RULES)
    # Enabling Flagger's kinds does not install its CRDs (Flagger's own may be there).
    assert crd_names(on) == set()
    with_args = render(chart, {"controller": {"flagger": {"enabled": True}, "extraArgs": ["--resync=1m"]}})
    assert container(with_args.deployment("controller"))["args"] == ["--flagger", "--resync=1m"]

    crds = render(chart, {"controller": {"flagger": {"installCRDs": True}}})
    assert crd_names(crds) == {"canaries.flagger.app", "metrictemplates.flagger.app", "alertproviders.flagger.app"}
    for crd in crds.of_kind("CustomResourceDefinition"):
        assert crd["spec"]["group"] == "flagger.app"
    (canary,) = [c for c in crds.of_kind("CustomResourceDefinition") if c["metadata"]["name"] == "canaries.flagger.app"]
    assert canary["spec"]["versions"][0]["name"] == "v1beta1"
    assert canary["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_controller_rollout_crd_is_aviary_dev_with_status_and_columns() -> None:
    docs = [d for d in yaml.safe_load_all((CHART / "crds" / "rollouts.aviary.dev.yaml").read_text()) if d]
    (crd,) = docs
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "rollouts.aviary.dev"
    spec = crd["spec"]
    assert spec["group"] == "aviary.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Rollout" and spec["names"]["plural"] == "rollouts"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Weight", "FailedChecks", "Age"]
    # The RBAC rules are for this group and plural.
    assert {"apiGroups": ["aviary.dev"], "resources": ["rollouts"], "verbs": ["get", "list", "watch", "patch"]} in CONTROLLER_RULES


def test_controller_disabled_renders_no_controller_objects(chart: helm.Chart) -> None:
    assert controller_objects(render(chart)) != []
    for values in (
        {"controller": {"enabled": False}},
        {"controller": {"enabled": False, "watchNamespace": "apps", "flagger": {"enabled": True}}},
    ):
        r = render(chart, values)
        assert controller_objects(r) == []
        assert CONTROLLER not in r.names("Deployment") | r.names("ServiceAccount") | r.names("Service")
        for kind in CONTROLLER_RBAC_KINDS:
            assert r.of_kind(kind) == [], kind
        assert r.names("Deployment") == {f"{FULLNAME}-{s}" for s in SERVICES}


def test_controller_rbac_follows_rbac_create(chart: helm.Chart) -> None:
    r = render(chart, {"rbac": {"create": False}})
    for kind in CONTROLLER_RBAC_KINDS:
        assert r.of_kind(kind) == [], kind
    assert CONTROLLER in r.names("Deployment") and CONTROLLER in r.names("ServiceAccount")


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"controller": {"replicas": "two"}}, "/controller/replicas"),
        ({"controller": {"enabled": "yes"}}, "/controller/enabled"),
        ({"controller": {"watchNamespaces": ["a"]}}, "watchNamespaces"),
        ({"controller": {"watchNamespace": "Not_A_Namespace"}}, "/controller/watchNamespace"),
        ({"controller": {"flagger": {"enable": True}}}, "enable"),
        ({"controller": {"leaseDuration": "15"}}, "/controller/leaseDuration"),
        ({"controller": {"auth": {"tokenKey": ""}}}, "/controller/auth/tokenKey"),
    ],
)
def test_controller_schema_rejects_bad_values(chart: helm.Chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)


def test_no_pod_falls_back_to_the_default_service_account(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="serviceAccount.name is required"):
        chart.render({"serviceAccount": {"create": False}}, name=RELEASE, namespace=NAMESPACE)
    r = render(chart, {"serviceAccount": {"create": False, "name": "ops"}})
    for s in ("scheduler", "analyzer", "notifier"):
        assert r.deployment(s)["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_grafana_dashboard_configmap_ships_the_dashboard_for_the_sidecar(chart: helm.Chart) -> None:
    assert not [d for d in render(chart).of_kind("ConfigMap") if "grafana" in d["metadata"]["name"]]
    r = render(chart, {"metrics": {"grafanaDashboard": {"enabled": True, "folder": "Delivery"}}})
    maps = [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-grafana-dashboard")]
    assert len(maps) == 1, maps
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Delivery"
    shipped = json.loads(cm["data"]["aviary.json"])
    # The chart's copy is the dashboard in deploy/grafana/, which the end-to-end test checks
    # against the metrics the services export.
    canonical = json.loads((CHART.parent.parent / "grafana" / "aviary.json").read_text())
    assert shipped == canonical
    assert shipped["uid"] == "aviary-rollouts"


def test_router_agent_rbac_can_be_limited_to_named_routes(chart: helm.Chart) -> None:
    values = {"routerAgent": {"providers": {"gatewayApi": True}, "rbac": {"routeNames": ["podinfo", "shop"]}}}
    rules = router_rules(render(chart, values))
    by_verbs = {tuple(r["verbs"]): r for r in rules}
    # get and patch only on the named objects; create cannot be limited by name.
    assert by_verbs[("get", "patch")]["resourceNames"] == ["podinfo", "shop"]
    assert "resourceNames" not in by_verbs[("create",)]
    assert all(r["resources"] == ["httproutes"] for r in rules)
    # Without names the rule is as before.
    plain = router_rules(render(chart, {"routerAgent": {"providers": {"gatewayApi": True}}}))
    assert [sorted(r["verbs"]) for r in plain] == [["create", "get", "patch"]]
    assert all("resourceNames" not in r for r in plain)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"routerAgent": {"rbac": {"routeNames": ["Bad Name"]}}})



# --- multi-cluster --------------------------------------------------------------------------------


def test_a_member_cluster_passes_its_name_to_the_router_agent_and_the_analyzer(chart: helm.Chart) -> None:
    single = render(chart)
    for component in ["router-agent", "analyzer", "scheduler"]:
        assert "AVIARY_CLUSTER" not in env_of(single.deployment(component)), component
    member = render(chart, {"cluster": {"name": "eu"}})
    assert env_of(member.deployment("router-agent"))["AVIARY_CLUSTER"] == "eu"
    assert env_of(member.deployment("analyzer"))["AVIARY_CLUSTER"] == "eu"
    assert "AVIARY_CLUSTER" not in env_of(member.deployment("scheduler"))


def test_a_hub_bundled_nats_listens_for_leaf_nodes(chart: helm.Chart) -> None:
    r = render(chart, bundled(bundled={"leafnodes": {"port": 7422}}))
    conf = r.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]
    assert "leafnodes {\n  port: 7422\n" in conf and 'include "leaf.conf"' in conf, conf
    assert "domain:" not in conf
    # Every leaf link logs in: a generated password, in a Secret, never in the ConfigMap.
    leaf = r.get("Secret", f"{FULLNAME}-nats-leaf")["stringData"]
    assert leaf["user"] == "leaf" and len(leaf["password"]) == 32, leaf
    assert f'password: "{leaf["password"]}"' in leaf["leaf.conf"], leaf
    assert leaf["password"] not in conf
    volumes = r.get("StatefulSet", f"{FULLNAME}-nats")["spec"]["template"]["spec"]["volumes"]
    sources = next(v for v in volumes if v["name"] == "config")["projected"]["sources"]
    assert {"secret": {"name": f"{FULLNAME}-nats-leaf", "items": [{"key": "leaf.conf", "path": "leaf.conf"}]}} in sources
    # A given password is used as it is.
    given = render(chart, bundled(bundled={"leafnodes": {"port": 7422, "password": "s3cret"}}))
    assert given.get("Secret", f"{FULLNAME}-nats-leaf")["stringData"]["password"] == "s3cret"
    ports = container(r.get("StatefulSet", f"{FULLNAME}-nats"))["ports"]
    assert {"name": "leafnodes", "containerPort": 7422, "protocol": "TCP"} in ports
    svc = r.get("Service", f"{FULLNAME}-nats")["spec"]["ports"]
    assert {"name": "leafnodes", "port": 7422, "targetPort": "leafnodes"} in svc
    # Without the port, no leaf listener.
    plain = render(chart, bundled())
    assert "leafnodes" not in plain.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]


def test_a_member_bundled_nats_is_a_leaf_of_the_hub_in_its_own_domain(chart: helm.Chart) -> None:
    values = bundled(bundled={"leafnodes": {"remotes": ["nats-leaf://hub.example:7422"]}}, jetstream={"replicas": 1})
    values["nats"]["bundled"]["replicas"] = 1
    values["cluster"] = {"name": "eu"}
    r = render(chart, values)
    conf = r.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]
    assert 'domain: "eu"' in conf, conf
    assert '{ url: "nats-leaf://hub.example:7422" }' in conf, conf
    assert env_of(r.deployment("router-agent"))["AVIARY_CLUSTER"] == "eu"
    # With the hub's password, the member dials with the leaf login, kept in a Secret.
    values["nats"]["bundled"]["leafnodes"]["password"] = "s3cret"
    login = render(chart, values)
    conf = login.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]
    assert 'include "leaf.conf"' in conf and "s3cret" not in conf, conf
    leaf_conf = login.get("Secret", f"{FULLNAME}-nats-leaf")["stringData"]["leaf.conf"]
    assert '{ url: "nats-leaf://leaf:s3cret@hub.example:7422" }' in leaf_conf, leaf_conf
    del values["nats"]["bundled"]["leafnodes"]["password"]
    # A leaf needs its cluster's name (its JetStream domain), and is not a hub too.
    del values["cluster"]
    with pytest.raises(helm.HelmRenderError, match="set cluster.name"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    values["cluster"] = {"name": "eu"}
    values["nats"]["bundled"]["leafnodes"]["port"] = 7422
    with pytest.raises(helm.HelmRenderError, match="not both"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_the_documented_hub_and_member_values_render(chart: helm.Chart) -> None:
    """The two value sets of docs/multi-cluster.md, "Chart values"."""
    hub = render(chart, {"nats": {"bundled": {"enabled": True, "leafnodes": {"port": 7422}}}, "routerAgent": {"enabled": False}})
    assert "leafnodes {\n  port: 7422\n" in hub.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"]
    assert f"{FULLNAME}-router-agent" not in hub.names("Deployment")
    member = render(
        chart,
        {
            "cluster": {"name": "eu"},
            "nats": {
                "jetstream": {"replicas": 1},
                "bundled": {
                    "enabled": True,
                    "replicas": 1,
                    "leafnodes": {"remotes": ["nats-leaf://hub-nats.example:7422"], "password": "the-hubs"},
                },
            },
            "analyzer": {"prometheus": {"url": "http://prometheus.eu:9090"}},
            "scheduler": {"replicas": 0},
            "notifier": {"enabled": False},
            "controller": {"enabled": False},
        },
    )
    assert env_of(member.deployment("analyzer"))["AVIARY_CLUSTER"] == "eu"
    assert env_of(member.deployment("analyzer"))["AVIARY_PROMETHEUS_URL"] == "http://prometheus.eu:9090"
    assert member.deployment("scheduler")["spec"]["replicas"] == 0
    assert {f"{FULLNAME}-notifier", f"{FULLNAME}-controller"}.isdisjoint(member.names("Deployment"))


def test_hub_and_member_configs_with_the_leaf_login_are_valid_for_nats_server(chart: helm.Chart, tmp_path: Path) -> None:
    """The hub's leaf authorization and the member's remotes with the login, as each pod sees them."""
    hub = render(chart, bundled(bundled={"replicas": 1, "leafnodes": {"port": 7422}}, jetstream={"replicas": 1}))
    member_values = bundled(
        bundled={"replicas": 1, "leafnodes": {"remotes": ["nats-leaf://hub.example:7422"], "password": "pw"}},
        jetstream={"replicas": 1},
    )
    member_values["cluster"] = {"name": "eu"}
    member = render(chart, member_values)
    env = {"POD_NAME": f"{FULLNAME}-nats-0", "NATS_TOKEN": "s3cret", "PATH": "/usr/bin:/bin"}
    for side, r in [("hub", hub), ("member", member)]:
        pod = tmp_path / side
        pod.mkdir()
        (pod / "nats.conf").write_text(r.get("ConfigMap", f"{FULLNAME}-nats")["data"]["nats.conf"])
        (pod / "leaf.conf").write_text(r.get("Secret", f"{FULLNAME}-nats-leaf")["stringData"]["leaf.conf"])
        checked = subprocess.run(
            [nats_server(), "-t", "-c", "nats.conf"], cwd=pod, env=env, capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, side + ": " + checked.stderr + checked.stdout
        # Without the leaf file the include fails: nats-server really reads it.
        (pod / "leaf.conf").unlink()
        missing = subprocess.run(
            [nats_server(), "-t", "-c", "nats.conf"], cwd=pod, env=env, capture_output=True, text=True, timeout=30
        )
        assert missing.returncode != 0 and "leaf.conf" in missing.stderr + missing.stdout, side


def test_timeouts_reach_the_services_as_durations(chart: helm.Chart) -> None:
    r = render(chart, {"scheduler": {"leaseTtlMs": 7000, "routeTimeoutMs": 12000}, "drainTimeoutMs": 20000})
    env = env_of(r.deployment("scheduler"))
    assert env["AVIARY_LEASE_TTL"] == "7000ms"
    assert env["AVIARY_ROUTE_TIMEOUT"] == "12000ms"
    assert env["AVIARY_ANALYSIS_TIMEOUT"] == "30000ms"
    assert env["AVIARY_DRAIN_TIMEOUT"] == "20000ms"
    assert env_of(r.deployment("analyzer"))["AVIARY_QUERY_TIMEOUT"].endswith("ms")
    agent = env_of(r.deployment("router-agent"))
    assert agent["AVIARY_RECONCILE_INTERVAL"].endswith("ms") and agent["AVIARY_APPLY_TIMEOUT"].endswith("ms")
    # The old names are gone: a service would ignore them.
    for component in ["scheduler", "analyzer", "router-agent"]:
        assert not [k for k in env_of(r.deployment(component)) if k.endswith("_MS")], component
