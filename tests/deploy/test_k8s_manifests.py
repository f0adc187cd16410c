"""deploy/k8s/ validated offline: Kubernetes' strict schemas (kubernetes-validate, pinned) and
KServe's CRDs (generated from the pinned KServe SDK, tests/deploy/crd_schemas.py), then what a
schema cannot see: selectors, ports, probes on real endpoints, sizing, images."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.crd_schemas import validator

K8S = REPO / "deploy" / "k8s"
# the oldest and newest Kubernetes versions the manifests are checked against
VERSIONS = ("1.30.0", "1.37.0")
CRDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
        ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
        ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime"}
# measured RSS of one pod (docs/benchmarks.md#kubernetes-sizing): requests must cover it
MEASURED_MIB = {"aq-forecast-serving": 717, "aq-forecast-mlserver": 378,
                "kserve-container": 378}
MODEL = json.loads((REPO / "deploy/mlserver/aq-forecast/model-settings.json").read_text())


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


DOCS = documents()


def ids(item) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


def validate(doc: dict, version: str) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRDS:
        jsonschema_errors = sorted(validator(CRDS[key], version).iter_errors(doc),
                                   key=lambda e: list(e.path))
        if jsonschema_errors:
            first = jsonschema_errors[0]
            raise jsonschema.ValidationError(
                f"{'.'.join(map(str, first.path))}: {first.message}")
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def test_there_are_manifests_for_flask_mlserver_and_kserve():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    assert {("Deployment", "aq-forecast-serving"), ("Service", "aq-forecast-serving"),
            ("Deployment", "aq-forecast-mlserver"), ("Service", "aq-forecast-mlserver"),
            ("ServingRuntime", "aq-forecast-mlserver"), ("InferenceService", "aq-forecast"),
            ("PersistentVolumeClaim", "aq-forecast-project")} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", DOCS, ids=ids)
def test_every_manifest_validates_against_the_strict_schemas(item, version):
    validate(item[1], version)


@pytest.mark.parametrize(("kind", "mutate", "says"), [
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        readinesProbe={}), "readinesProbe"),
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"][
        "requests"].update(memory=[1]), "memory"),
    ("Service", lambda d: d["spec"].update(ports="8000"), "ports"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0]["livenessProbe"]["httpGet"].update(
        paht="/"), "paht"),
    ("ServingRuntime", lambda d: d["spec"].update(supportedModelFormat=[]),
     "supportedModelFormat"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].update(storageURI="x"),
     "storageURI"),
    ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas="one"), "one"),
])
def test_a_wrong_field_is_caught(kind, mutate, says):
    """The checks are not vacuous: one misspelt or mistyped field fails them."""
    doc = copy.deepcopy(next(d for _, d in DOCS if d["kind"] == kind))
    mutate(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError),
                       match=re.escape(says)):
        validate(doc, VERSIONS[-1])


def pods() -> dict[str, tuple[dict, dict]]:
    """name -> (pod metadata, pod spec) of every workload, KServe's runtime included."""
    out = {}
    for _, d in DOCS:
        if d["kind"] == "Deployment":
            out[d["metadata"]["name"]] = (d["spec"]["template"]["metadata"],
                                          d["spec"]["template"]["spec"])
        elif d["kind"] == "ServingRuntime":
            out[d["metadata"]["name"]] = ({"annotations": d["spec"]["annotations"]}, d["spec"])
    return out


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def container_ports(*containers: dict) -> dict:
    """Ports by number and by name, of one container or of a pod's containers."""
    ports = {}
    for container in containers:
        ports.update({p["containerPort"]: p for p in container.get("ports", [])})
        ports.update({p["name"]: p for p in container.get("ports", []) if "name" in p})
    return ports


def probed(spec: dict) -> dict:
    """The container of a pod that carries the probes (the front door)."""
    found = [c for c in spec["containers"] if "readinessProbe" in c]
    assert len(found) == 1, [c["name"] for c in spec["containers"]]
    return found[0]


def test_services_select_their_pods_and_name_real_ports():
    deployments = {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "Deployment"}
    for _, service in ((n, d) for n, d in DOCS if d["kind"] == "Service"):
        selected = [d for d in deployments.values() if service["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]
        deployment = selected[0]
        assert deployment["spec"]["selector"]["matchLabels"].items() \
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ports = container_ports(*deployment["spec"]["template"]["spec"]["containers"])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def probe_paths(container: dict) -> dict[str, str]:
    return {kind: container[kind]["httpGet"]["path"]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in container}


def test_probes_hit_the_health_and_readiness_endpoints_the_servers_have():
    routes = {r for path in (REPO / "serving").glob("*.py")
              for r in re.findall(r'@\w+\.(?:get|route)\("([^"]+)"', path.read_text())}
    v2_ready = f"/v2/models/{MODEL['name']}/ready"
    for name, (_, spec) in pods().items():
        container = probed(spec)
        paths = probe_paths(container)
        if "mlserver" in container["image"]:
            assert paths["readinessProbe"] == v2_ready, name
            assert paths["livenessProbe"] == "/v2/health/live", name
            # MLServer listens where the probes and the Service look
            ports = {int(env(container)[k]) for k in ("MLSERVER_HTTP_PORT",)}
            probe_ports = {container[k]["httpGet"]["port"] for k in paths}
            named = container_ports(container)
            assert {named[p]["containerPort"] if isinstance(p, str) else p
                    for p in probe_ports} == ports, name
            assert env(container)["MLSERVER_HOST"] == "0.0.0.0"  # the pod's address
        else:
            assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                             "readinessProbe": "/readyz"}
            assert {"/healthz", "/readyz"} <= routes
            # gunicorn's sync workers sit behind nginx: the probed port is nginx's, and the app
            # listens on a unix socket the proxy reads from
            assert container["command"][:3] == ["python", "-m", "serving.proxy"]
            app = next(c for c in spec["containers"] if c["command"][0] == "gunicorn")
            socket = app["command"][app["command"].index("--bind") + 1]
            assert socket.startswith("unix:")
            assert socket.removeprefix("unix:") == container["command"][
                container["command"].index("--socket") + 1]
            assert "ports" not in app


def test_prometheus_scrapes_a_port_the_pod_serves_metrics_on():
    for name, (metadata, spec) in pods().items():
        annotations = metadata["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        container = probed(spec)
        port = int(annotations["prometheus.io/port"])
        metrics = env(container).get("MLSERVER_METRICS_PORT")
        if metrics is not None:  # MLServer serves /metrics on a port of its own
            assert int(metrics) == port, name
        else:
            assert port in container_ports(*spec["containers"]), name


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity)
    assert match, quantity
    return float(match.group(1)) * units[match.group(2)]


def test_memory_requests_cover_the_measured_rss_and_limits_leave_room():
    for name, (_, spec) in pods().items():
        containers = spec["containers"]
        key = containers[0]["name"] if containers[0]["name"] in MEASURED_MIB else name
        requested = sum(mebibytes(c["resources"]["requests"]["memory"]) for c in containers)
        limited = sum(mebibytes(c["resources"]["limits"]["memory"]) for c in containers)
        assert requested >= 1.1 * MEASURED_MIB[key], name
        assert limited >= 1.5 * MEASURED_MIB[key], name
        assert all("cpu" in c["resources"]["requests"] for c in containers)


def test_images_and_the_kserve_wiring():
    dockerfiles = {"aq-forecast": REPO / "Dockerfile",
                   "aq-forecast-mlserver": REPO / "deploy/mlserver/Dockerfile"}
    for name, (_, spec) in pods().items():
        for container in spec["containers"]:
            image = container["image"].split(":")[0]
            assert dockerfiles[image].is_file(), name
            security = spec.get("securityContext", {}) | container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
    runtime = next(d for _, d in DOCS if d["kind"] == "ServingRuntime")
    service = next(d for _, d in DOCS if d["kind"] == "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [{k: f[k] for k in ("name", "version")}
                                    for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    assert env(container)["MLSERVER_HTTP_PORT"] == "8080"  # where KServe sends V2 requests
    # the project's state: the PersistentVolumeClaim the other workloads mount
    claims = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "PersistentVolumeClaim"}
    assert model["storageUri"].removeprefix("pvc://").split("/")[0] in claims
    assert env(container)["AQ_PROJECT_DIR"] == "/mnt/models"  # where KServe mounts it
    assert service["metadata"]["name"] == MODEL["name"]


def test_the_pods_proxy_renders_with_the_manifests_arguments(tmp_path, capsys):
    """The proxy container's command line, run here with `render`: nginx on the pod's address
    (loopback stays the default of `make run`)."""
    from serving import proxy

    _, spec = pods()["aq-forecast-serving"]
    args = probed(spec)["command"][3:]  # after `python -m serving.proxy`
    assert args[0] == "run"
    args = ["render", *args[1:]]
    args[args.index("--prefix") + 1] = str(tmp_path / "proxy")
    args[args.index("--socket") + 1] = str(tmp_path / "app.sock")
    assert proxy.main(args) == 0
    config = (tmp_path / "proxy" / "nginx.conf").read_text()
    assert "listen 0.0.0.0:8000;" in config
    assert f"unix:{tmp_path / 'app.sock'}" in config
    loopback = [a for a in args if a not in ("--host", "0.0.0.0")]
    assert proxy.main(loopback) == 0
    assert "listen 127.0.0.1:8000;" in (tmp_path / "proxy" / "nginx.conf").read_text()
