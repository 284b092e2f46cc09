"""deploy/k8s and deploy/compose.yaml: parsed, and checked for what keeps pollcast up.

What matters operationally: probes on the right paths and port, a shutdown
budget larger than the drain, a non-root and locked-down pod, disruption and
autoscaling bounds that allow node drains, names that point at each other, and
in compose three gateways on Redis behind nginx, each with a health check.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import yaml

from gateway.config import Config, load_config, parse_config
from gateway.exceptions import ConfigError
from tests.deploy.dockerfile import exec_form, parse_dockerfile
from tests.deploy.production import DEPLOY, PRODUCTION_TOML, production_env

K8S = DEPLOY / "k8s"
CONFIG_PATH = "/etc/pollcast/pollcast.toml"


def _manifests() -> dict[str, dict[str, Any]]:
    """kind → the one manifest of that kind (every file holds exactly one document)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path
        doc = docs[0]
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        assert doc["kind"] not in found, f"two {doc['kind']} manifests"
        found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return _manifests()


def _container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _pod_labels(k8s: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def _configmap_config(k8s: dict[str, dict[str, Any]], env: dict[str, str]) -> Config:
    text = k8s["ConfigMap"]["data"]["pollcast.toml"]
    return parse_config(tomllib.loads(text), env=env)


def _image_user() -> int:
    runtime = parse_dockerfile((DEPLOY / "Dockerfile").read_text())[-1]
    user = runtime.last("USER")
    assert user is not None
    return int(user.args.split(":")[0])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(present)
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= set(_manifests())


def test_probes_hit_readyz_and_healthz_on_the_served_port(k8s: dict[str, dict[str, Any]]) -> None:
    container = _container(k8s)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = _configmap_config(k8s, production_env())
    assert ports["http"] == config.server.port
    scrape = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/path"] == "/metrics"
    assert int(scrape["prometheus.io/port"]) == config.server.port
    probes = {
        name: container[name]["httpGet"]
        for name in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == config.server.port
    # Readiness reacts faster than liveness: a draining pod leaves the Service
    # well before anything would consider restarting it.
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] < (
        live["periodSeconds"] * live["failureThreshold"]
    )


def _prestop_seconds(container: dict[str, Any]) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # the native handler (Kubernetes 1.30+)
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def test_shutdown_budget_covers_prestop_and_drain(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    container = _container(k8s)
    shutdown_s = _configmap_config(k8s, production_env()).server.shutdown_timeout_s
    grace_s = pod["terminationGracePeriodSeconds"]
    pre_stop_s = _prestop_seconds(container)
    assert pre_stop_s >= 1  # endpoint removal needs a moment to propagate
    assert grace_s > shutdown_s
    # The kubelet's clock runs from the start of preStop: SIGKILL must not cut the drain.
    assert grace_s >= pre_stop_s + shutdown_s + 5


def test_pod_runs_as_the_image_user_locked_down(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    container = _container(k8s)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _image_user() != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_resources_allow_cpu_autoscaling(k8s: dict[str, dict[str, Any]]) -> None:
    resources = _container(k8s)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    deployment = k8s["Deployment"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    # The autoscaler owns the replica count; one in the Deployment would be reset
    # by every re-apply.
    assert "replicas" not in deployment["spec"]
    assert 3 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 90
    # Removing a pod drains its streams onto the others: scale down gently.
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_disruption_budget_allows_node_drains(k8s: dict[str, dict[str, Any]]) -> None:
    pdb = k8s["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= _pod_labels(k8s).items()
    assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb)
    minimum = k8s["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    if "maxUnavailable" in pdb:
        assert 1 <= pdb["maxUnavailable"] < minimum
    else:
        assert 1 <= pdb["minAvailable"] < minimum
    strategy = k8s["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1


def test_names_point_at_each_other(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    container = _container(k8s)
    labels = _pod_labels(k8s)
    assert deployment["selector"]["matchLabels"].items() <= labels.items()

    service = k8s["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    assert "http" in port_names and service["ports"][0]["port"] == 80

    assert container["envFrom"] == [{"secretRef": {"name": k8s["Secret"]["metadata"]["name"]}}]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/pollcast"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    # The file the image's command reads is the one the ConfigMap provides.
    runtime = parse_dockerfile((DEPLOY / "Dockerfile").read_text())[-1]
    cmd = runtime.last("CMD")
    assert cmd is not None
    assert container["args"] == exec_form(cmd.args)
    assert CONFIG_PATH in container["args"]
    assert "pollcast.toml" in k8s["ConfigMap"]["data"]
    assert not container["image"].endswith(":latest") and ":" in container["image"]

    ingress = k8s["Ingress"]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == k8s["Service"]["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["ports"]}
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


def test_configmap_holds_the_production_settings(k8s: dict[str, dict[str, Any]]) -> None:
    embedded = tomllib.loads(k8s["ConfigMap"]["data"]["pollcast.toml"])
    assert embedded == tomllib.loads(PRODUCTION_TOML.read_text())
    env = production_env()
    assert _configmap_config(k8s, env) == load_config(PRODUCTION_TOML, env=env)


def test_secret_provides_every_variable_and_placeholders_refuse_to_start(
    k8s: dict[str, dict[str, Any]],
) -> None:
    placeholders: dict[str, str] = k8s["Secret"]["stringData"]
    assert set(placeholders) == set(production_env())
    assert all(value == "" for value in placeholders.values())  # nothing real committed
    with pytest.raises(ConfigError):
        _configmap_config(k8s, placeholders)


# -- compose -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def _gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in compose["services"].items() if k.startswith("gateway")}


def test_compose_runs_three_gateways_on_redis_behind_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateways = _gateways(compose)
    assert sorted(gateways) == ["gateway-1", "gateway-2", "gateway-3"]
    assert {"redis", "nginx"} <= services.keys()
    for name, gateway in gateways.items():
        assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert gateway["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert gateway["environment"]["POLLCAST_REDIS_URL"].startswith("redis://redis:"), name
        assert gateway["env_file"] == ".env", name
        assert "./pollcast.toml:/etc/pollcast/pollcast.toml:ro" in gateway["volumes"], name
        assert "ports" not in gateway, f"{name} is reached through nginx only"
    nginx = services["nginx"]
    assert nginx["depends_on"] == {
        name: {"condition": "service_healthy"} for name in sorted(gateways)
    }
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert any(str(p).endswith(":80") for p in nginx["ports"])
    # What compose builds from and mounts exists where it looks (paths are
    # relative to deploy/).
    build = gateways["gateway-1"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (DEPLOY / build["context"] / "pyproject.toml").is_file()
    for relative in ("pollcast.toml", "nginx.conf", ".env.example"):
        assert (DEPLOY / relative).is_file(), relative


def test_compose_gateways_use_the_redis_backend(compose: dict[str, Any]) -> None:
    gateway = _gateways(compose)["gateway-1"]
    env = {**production_env(), **gateway["environment"]}
    config = load_config(DEPLOY / "pollcast.toml", env=env)
    assert config.backend.kind == "redis"
    assert config.backend.url == "redis://redis:6379/0"


def test_compose_services_have_healthchecks_and_drain_time(compose: dict[str, Any]) -> None:
    shutdown_s = load_config(PRODUCTION_TOML, env=production_env()).server.shutdown_timeout_s
    for name, service in compose["services"].items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
    for name, gateway in _gateways(compose).items():
        probe = " ".join(gateway["healthcheck"]["test"])
        assert "/readyz" in probe, name  # healthy = ready for traffic, for depends_on
        assert gateway["stop_signal"] == "SIGTERM"
        grace = gateway["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > shutdown_s, name
        assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"], name
    assert compose["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
