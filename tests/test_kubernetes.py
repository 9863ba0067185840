"""``deploy/kubernetes/``, checked without a cluster.

- **Schema** (needs ``kubernetes-validate``, the ``test`` extra): every document of every
  manifest is validated against the Kubernetes API's own JSON schemas, as that package
  vendors them (generated from the API server's OpenAPI document, one set per Kubernetes
  minor release), in their *strict* variant: a field the API does not have is an error, as
  are a wrong JSON type, a missing required field and a kind or apiVersion the release
  does not serve. It does not check values: quantity syntax (``cpu: "2 cores"``), enums
  (``imagePullPolicy: Sometimes``), number ranges (a port of 70000), name syntax, nor
  anything that relates two fields. ``kubectl`` cannot stand in for it here: every
  ``--dry-run=client`` form (``apply``, ``create``, with ``--validate=false`` too) asks a
  server for its API discovery or OpenAPI document first.
- **Arithmetic** (no extra tool): what the schema cannot see, with exact values. The
  ConfigMap's config file is read by rapidwsgi's own loader (``Config.load_with_sources``)
  with the container's own arguments and environment (``RAPIDWSGI_WORKERS`` resolved from
  the Downward API as the kubelet would), and set against the probes, the grace period,
  the ports, the resources and every selector.
- **The container's command line** runs as ``--check-config`` (the settings load, the
  application imports, the addresses parse), then serves for real on 127.0.0.1 (only the
  addresses moved to port 0): two workers, the health path 200, then 503 on SIGTERM while
  the application is still served, JSON logs.

``RAPIDWSGI_REQUIRE_KUBERNETES=1`` (set by ``.ci/run``) turns a missing validator into a
failure instead of a skip.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from rapidwsgi.config import Config
from rapidwsgi.sockets import parse_address
from rapidwsgi.supervisor import KILL_GRACE
from tests.conftest import ServerProcess
from tests.rawhttp import fetch

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
SOURCE_MODE = os.environ.get("RAPIDWSGI_TEST_SOURCE") == "1"
SRC = Path(os.environ.get("RAPIDWSGI_TEST_SRC") or ROOT / "src").resolve()

#: The oldest Kubernetes release the manifests are validated against (the PDB's
#: unhealthyPodEvictionPolicy is beta, on by default, from 1.27), up to the newest the
#: validator ships.
MIN_KUBERNETES = (1, 27)
#: Seconds for an endpoint change to reach every kube-proxy and ingress controller.
ENDPOINT_PROPAGATION = 5
#: terminationGracePeriodSeconds beyond --shutdown-delay + --graceful-timeout: the master
#: SIGKILLs its late workers 1 s after the graceful timeout, then reaps them and exits.
GRACE_MARGIN = 5
#: Memory (MiB) for the master, the C and Python runtime outside the workers' RSS checks.
MASTER_HEADROOM_MIB = 128

Manifest = dict[str, Any]


# ------------------------------------------------------------------ reading the manifests


def _documents() -> list[tuple[str, Manifest]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _one(kind: str) -> Manifest:
    found = [doc for _, doc in _documents() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _pod() -> Manifest:
    spec: Manifest = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _container() -> Manifest:
    containers = _pod()["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


def _pod_labels() -> dict[str, str]:
    labels: dict[str, str] = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity (``"2"``, ``"500m"``, ``"1Gi"``) as a number."""
    m = _QUANTITY.match(str(text))
    assert m, f"not a resource quantity: {text!r}"
    return Decimal(m.group(1)) * _SUFFIX[m.group(2)]


def _limits() -> dict[str, Any]:
    limits: dict[str, Any] = _container()["resources"]["limits"]
    return limits


def container_env() -> dict[str, str]:
    """The container's environment as the kubelet sets it: a ``resourceFieldRef`` is the
    resource divided by its divisor, rounded up (the Downward API's rule)."""
    env = {}
    resources = _container()["resources"]
    for var in _container().get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]["resourceFieldRef"]
        assert ref.get("containerName", _container()["name"]) == _container()["name"]
        kind, _, resource = ref["resource"].partition(".")
        amount = quantity(resources[kind][resource]) / quantity(ref.get("divisor", "1"))
        env[var["name"]] = str(math.ceil(amount))
    return env


def config_files(root: Path) -> dict[str, Path]:
    """Write the ConfigMap volumes' files under ``root``; map each file's path in the
    container to where it was written."""
    config_maps = {doc["metadata"]["name"]: doc for _, doc in _documents() if doc["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in _pod()["volumes"]}
    files = {}
    for mount in _container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        data = config_maps[volume["configMap"]["name"]]["data"]
        items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = root / mount["mountPath"].lstrip("/") / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = target
    return files


def container_args(root: Path) -> list[str]:
    """The container's arguments, the ConfigMap files' paths pointing under ``root``."""
    files = config_files(root)
    args: list[str] = _container()["args"]
    return [str(files.get(arg, arg)) for arg in args]


def load_config() -> tuple[Config, dict[str, str]]:
    """The settings the container runs with, through rapidwsgi's own loader."""
    with tempfile.TemporaryDirectory() as tmp:
        return Config.load_with_sources(container_args(Path(tmp)), container_env())


def container_port(port: str | int) -> int:
    """A port of the container, by name or number, as its containerPort."""
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    if isinstance(port, int):
        assert port in ports.values(), f"port {port} is not a containerPort"
        return port
    assert port in ports, f"no containerPort named {port!r}"
    number: int = ports[port]
    return number


def bound_port(address: str) -> int:
    parsed = parse_address(address)
    assert parsed.kind == "tcp" and parsed.port is not None, address
    return parsed.port


def _selects_pods(match_labels: dict[str, str]) -> None:
    assert match_labels, "an empty selector would select every pod of the namespace"
    labels = _pod_labels()
    assert {k: labels.get(k) for k in match_labels} == match_labels


# ------------------------------------------------------------------ schema validation


def _validator() -> Callable[[Manifest, str], None]:
    """``kubernetes_validate.validate`` in strict mode, or skip (fail under CI)."""
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        reason = "kubernetes-validate is not installed (pip install '.[test]'): manifests not validated"
        if os.environ.get("RAPIDWSGI_REQUIRE_KUBERNETES") == "1":
            pytest.fail(f"RAPIDWSGI_REQUIRE_KUBERNETES=1 but {reason}")
        pytest.skip(reason)

    def validate(doc: Manifest, version: str) -> None:
        kubernetes_validate.validate(doc, version, strict=True)

    return validate


def _kubernetes_versions() -> list[str]:
    try:
        from kubernetes_validate.utils import all_versions  # type: ignore[import-untyped]
    except ImportError:
        return []
    versions = {tuple(int(n) for n in v.split(".")[:2]) for v in all_versions()}
    return [f"{major}.{minor}" for major, minor in sorted(versions) if (major, minor) >= MIN_KUBERNETES]


def test_deploy_kubernetes_has_each_object_of_the_example() -> None:
    kinds = sorted(doc["kind"] for _, doc in _documents())
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(path: Path) -> None:
    validate = _validator()
    versions = _kubernetes_versions()
    assert versions, f"kubernetes-validate ships no schemas for Kubernetes >= {MIN_KUBERNETES}"
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs
    failures = []
    for doc in docs:
        for version in versions:
            try:
                validate(doc, version)
            except Exception as exc:  # a schema error, or no schema for this kind/version
                failures.append(f"{doc.get('kind')} against {version}: {getattr(exc, 'message', exc)}")
    assert failures == []


def test_the_validation_is_strict_and_rejects_what_the_api_would() -> None:
    validate = _validator()
    version = _kubernetes_versions()[-1]
    good = _one("Deployment")
    validate(good, version)
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = typo["spec"]["template"]["spec"][
        "containers"
    ][0]["livenessProbe"]
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    no_name = copy.deepcopy(good)
    del no_name["spec"]["template"]["spec"]["containers"][0]["name"]
    for bad, expected in (
        (typo, "'livenesProbe' was unexpected"),
        (wrong_type, "is not of type 'integer'"),
        (no_name, "'name' is a required property"),
    ):
        with pytest.raises(Exception, match=re.escape(expected)):
            validate(bad, version)


# ------------------------------------------------------------------ the arithmetic


def test_the_config_file_loads_with_the_values_the_manifests_are_built_on() -> None:
    config, sources = load_config()
    assert config.app == "rapidwsgi.demo:app"
    assert (config.shutdown_delay, config.graceful_timeout, config.request_timeout) == (10.0, 30.0, 25.0)
    assert (config.health_path, config.bind, config.threads) == ("/healthz", ["0.0.0.0:8000"], 4)
    # The config file holds the settings (TOML: an unknown key would have failed the load);
    # the Deployment gives the worker count, from the CPU limit.
    assert sources["health_path"] == sources["shutdown_delay"] == sources["graceful_timeout"] == "file"
    assert (config.workers, sources["workers"]) == (2, "env")


def test_the_grace_period_holds_the_shutdown_delay_the_graceful_timeout_and_a_margin() -> None:
    config, _ = load_config()
    grace = _pod()["terminationGracePeriodSeconds"]
    assert grace == 45 == config.shutdown_delay + config.graceful_timeout + GRACE_MARGIN
    # The master's own kill of late workers comes before the kubelet's SIGKILL.
    assert config.shutdown_delay + config.graceful_timeout + 1.0 + KILL_GRACE <= grace
    # A request running when the drain begins ends (504 at worst) before it is cut.
    assert config.request_timeout < config.graceful_timeout
    # No preStop hook: the delay is the server's (docs/scaling.md); with a preStop sleep
    # the grace period would have to hold that sleep too.
    assert "lifecycle" not in _container()


def test_the_readiness_probe_asks_the_health_path_and_sees_the_503_within_the_delay() -> None:
    config, _ = load_config()
    probe = _container()["readinessProbe"]
    assert probe["httpGet"]["path"] == config.health_path == "/healthz"
    assert probe["httpGet"].get("scheme", "HTTP") == ("HTTPS" if config.certfile else "HTTP")
    assert container_port(probe["httpGet"]["port"]) == bound_port(config.bind[0]) == 8000
    detection = probe["periodSeconds"] * probe["failureThreshold"]
    assert detection == 4
    assert detection + ENDPOINT_PROPAGATION <= config.shutdown_delay
    assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_the_liveness_and_startup_probes_ask_the_server_not_the_application() -> None:
    config, _ = load_config()
    for name in ("livenessProbe", "startupProbe"):
        probe = _container()[name]
        assert probe["httpGet"]["path"] == config.health_path, name
        assert container_port(probe["httpGet"]["port"]) == bound_port(config.bind[0]), name
    liveness = _container()["livenessProbe"]
    # The master's watchdog replaces a stuck worker (timeout, then SIGKILL KILL_GRACE later)
    # well before the liveness probe would restart the whole container.
    window = liveness["periodSeconds"] * liveness["failureThreshold"]
    assert window == 60
    assert window > config.timeout + KILL_GRACE
    # Threads keep the event loop, which answers the health path, free of the application.
    assert config.threads > 1
    startup = _container()["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 60


def test_the_service_targets_the_container_port_rapidwsgi_binds() -> None:
    config, _ = load_config()
    service = _one("Service")
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == bound_port(config.bind[0]) == 8000
    assert port["name"] == "http"
    _selects_pods(service["spec"]["selector"])


def test_the_metrics_port_is_the_containers_and_stays_out_of_the_service() -> None:
    config, _ = load_config()
    assert config.metrics_bind is not None
    assert container_port("metrics") == bound_port(config.metrics_bind) == 9101
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9101"
    assert [p["targetPort"] for p in _one("Service")["spec"]["ports"]] == ["http"]


def test_every_selector_matches_the_deployments_pods() -> None:
    deployment = _one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "web"}
    _selects_pods(selector)
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    for constraint in _pod()["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )


def test_the_hpa_owns_the_replica_count_and_the_pdb_leaves_one_pod_serving() -> None:
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert "replicas" not in _one("Deployment")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "cpu" in _container()["resources"]["requests"]  # utilisation is a share of it
    assert hpa["minReplicas"] == 2 > _one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert hpa["maxReplicas"] >= hpa["minReplicas"]
    strategy = _one("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_workers_follow_the_cpu_limit_and_fit_the_memory_limit() -> None:
    config, _ = load_config()
    resources = _container()["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    cpu = quantity(_limits()["cpu"])
    assert container_env()["RAPIDWSGI_WORKERS"] == "2"
    assert config.workers == math.ceil(cpu) == 2
    memory_mib = quantity(_limits()["memory"]) / 2**20
    assert memory_mib == 1024
    assert config.max_worker_memory == 320
    assert config.workers * config.max_worker_memory + MASTER_HEADROOM_MIB <= memory_mib


def test_the_root_file_system_is_read_only_and_tmp_is_an_empty_dir() -> None:
    config, _ = load_config()
    pod_security = _pod()["securityContext"]
    security = _container()["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert bound_port(config.bind[0]) >= 1024  # binds without NET_BIND_SERVICE
    # Request bodies beyond 1 MiB are spooled to a temporary file ($TMPDIR, else /tmp).
    assert "TMPDIR" not in container_env()
    volumes = {v["name"]: v for v in _pod()["volumes"]}
    (tmp,) = [m for m in _container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    empty_dir = volumes[tmp["name"]]["emptyDir"]
    assert "medium" not in empty_dir  # on disk, not counted against the memory limit
    assert quantity(empty_dir["sizeLimit"]) >= 10 * config.limit_request_body
    # Nothing else is written: no pid file, no unix socket, no log file.
    assert config.pid is None and config.error_logfile == "-" and config.access_logfile == "-"
    assert all(not address.startswith("unix:") for address in config.bind)


def test_the_image_runs_rapidwsgi_as_the_user_the_pod_requires() -> None:
    dockerfile = (KUBERNETES / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    security = _pod()["securityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}" == "10001:10001"
    assert re.search(r'^ENTRYPOINT \["rapidwsgi"\]$', dockerfile, re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile  # the root file system is read-only


def test_the_config_file_is_the_one_the_configmap_mounts() -> None:
    args = _container()["args"]
    assert _container()["command"] == ["rapidwsgi"]
    config_path = args[args.index("-c") + 1]
    assert config_path == "/etc/rapidwsgi/rapidwsgi.toml"
    with tempfile.TemporaryDirectory() as tmp:
        assert config_path in config_files(Path(tmp))


# ------------------------------------------------------------------ the command line


def test_the_containers_command_line_passes_check_config(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPIDWSGI_")}
    env.update(container_env())
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] if SOURCE_MODE else [])
    args = container_args(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "rapidwsgi", *args, "--print-config", "--check-config"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[-1] == "rapidwsgi: configuration OK"
    assert "workers = 2  # env" in lines
    assert "health_path = '/healthz'  # file" in lines
    assert "shutdown_delay = 10.0  # file" in lines
    assert "app = 'rapidwsgi.demo:app'  # cli" in lines


def test_the_container_serves_with_this_config_and_its_stop_begins_with_the_health_503(
    start_server: type[ServerProcess], tmp_path: Path
) -> None:
    """The container's command line, served for real on 127.0.0.1 (--bind and --metrics-bind
    moved to port 0; every other setting is the ConfigMap's)."""
    *args, app = container_args(tmp_path)
    server = start_server(app, *args, "--metrics-bind", "127.0.0.1:0", env=container_env())
    deadline = time.monotonic() + 10
    while len(server.worker_pids) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.worker_pids) == 2  # RAPIDWSGI_WORKERS, from the CPU limit
    assert (fetch(server, "/healthz")[0], fetch(server, "/")[0]) == (200, 200)
    server.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while fetch(server, "/healthz")[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The readiness probe now fails, while the application is served on (--shutdown-delay).
    assert (fetch(server, "/healthz")[0], fetch(server, "/")[0]) == (503, 200)
    server.wait_for_log(r"stopping in 10s \(--shutdown-delay\)")
    server.signal(signal.SIGQUIT)  # not the 10 s: that part is tests/test_ops.py's
    server.wait(15)
    # error_log_format and access_logformat are json: one object per line.
    for stream in (server.stderr, server.stdout):
        lines = stream.splitlines()
        assert lines
        assert all(isinstance(json.loads(line), dict) for line in lines)
