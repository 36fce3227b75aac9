"""deploy/: every overlay renders, validates against the Kubernetes and KEDA schemas, and keeps
the deployment's invariants (hardening included: TLS between workers and stage servers, Secrets
without fallbacks, NetworkPolicies, securityContext, limits sized for the input limits; the HTTP
gateway behind its API keys, reachable from the ingress controller only); the secrets script makes
certificates the health check accepts and API keys the gateway accepts; the Dockerfile lints and
follows the image rules.

Tools come from .ci/deploy-tools.sh; a test whose tool is missing skips and says which.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent import futures
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.metrics import MetricWrapperBase

import riveg.gateway.metrics
import riveg.orchestration.metrics
import riveg.serving.metrics
from riveg.core.config import Settings, load_settings
from riveg.core.stages import QUEUES, STAGE_TABLE, STAGES
from riveg.gateway.app import load_api_keys
from riveg.orchestration.launcher import port_open
from riveg.serving.security import server_credentials
from tests.support.processes import console_script, delete_queues

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
LOCK = DEPLOY / "docker" / "requirements.lock"
OVERLAYS = ("dev", "gpu")
DEFAULT_PORTS = {name: stage.port for name, stage in STAGE_TABLE.items()}
SCALED = (*STAGES, "pipeline", "gateway")  # Deployments driven by an autoscaler, riveg-<x>
K8S_VERSIONS = ("1.29.0", "1.33.0")  # oldest with native sidecars on by default; a recent one
# The Secrets deploy/secrets/create-secrets.sh creates; every reference to them is required.
SECRETS = {
    "riveg-broker",
    "riveg-store",
    "riveg-redis",
    "riveg-admin",
    "riveg-grpc-server",
    "riveg-grpc-client",
    "riveg-minio-tls",  # referenced by overlays/gpu only (S3 over HTTPS)
    "riveg-gateway",  # the gateway's API keys file and the callbacks' HMAC key
}
TLS_SECRETS = {"riveg-grpc-server", "riveg-grpc-client", "riveg-minio-tls"}
TLS_KEYS = {"tls.crt", "tls.key", "ca.crt"}  # of each TLS Secret (type kubernetes.io/tls + CA)
OPTIONAL_SECRETS = {"riveg-llm"}  # referenced with optional: true (openai LLM backend only)
WORKERS = {f"riveg-{s}" for s in STAGES} | {"riveg-pipeline"}  # the pods running RiVEG workers
GATEWAY = "riveg-gateway"  # the HTTP API: Deployment, Service, PDB, NetworkPolicy, Ingress
GATEWAY_SECRET_KEYS = {"api-keys", "RIVEG_GATEWAY_CALLBACK_SECRET"}
DATA_SERVICES = ("rabbitmq", "minio", "redis")
# Never in a rendered manifest: the app's and the images' default credentials, URLs with a password
LITERAL_CREDENTIALS = re.compile(
    r"minioadmin|guest:guest|(amqps?|rediss?)://[^/\s\"@]*:[^/\s\"@]+@"
)
# Variable names that hold a credential: only ever from a Secret (the TLS key settings and the
# *_FILE settings are paths)
CREDENTIAL_NAME = re.compile(
    r"^(?!.*_FILE$).*(PASS|SECRET|TOKEN|ACCESS_KEY|API_KEY|BROKER_URL|RESULT_BACKEND|ROOT_)"
)
PROBE_TIMING = ["periodSeconds", "timeoutSeconds", "failureThreshold"]
# Every worker container's liveness probe: its own Celery worker answers a ping through the
# broker (test_healthcheck_worker_ping runs it against a real worker).
WORKER_LIVENESS = ["riveg-healthcheck", "worker-ping"]
INSTALL_HINT = "run `bash .ci/deploy-tools.sh`"
# The metrics port of each RiVEG process (container port name: number): `riveg serve` (stage
# servers), `riveg worker` (stage pods' and pipeline pods' workers); the gateway serves /metrics on
# its HTTP port.
METRICS_PORTS = {"metrics": 9100, "worker-metrics": 9101}
METRICS_PORT_NAMES = {"serve": "metrics", "worker": "worker-metrics"}

Obj = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------


@cache
def _kustomize_cmd() -> tuple[str, ...] | None:
    """`kubectl kustomize` if its kustomize is v4 or newer, else a standalone `kustomize build`."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True
        )
        version = (
            json.loads(out.stdout or "{}").get("kustomizeVersion", "") if not out.returncode else ""
        )
        match = re.match(r"v?(\d+)\.", version)
        if match and int(match.group(1)) >= 4:
            return (kubectl, "kustomize")
    kustomize = shutil.which("kustomize")
    return (kustomize, "build") if kustomize else None


def _render(directory: Path) -> list[Obj]:
    cmd = _kustomize_cmd()
    if cmd is None:
        pytest.skip(f"no kubectl with kustomize >= v4 (nor kustomize) on PATH: {INSTALL_HINT}")
    proc = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def _rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(_render(DEPLOY / "overlays" / overlay))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """Name of the overlay under test."""
    return request.param


@pytest.fixture
def objs(overlay: str) -> list[Obj]:
    """The overlay's rendered objects (a deep copy: tests may not alter the cache)."""
    return copy.deepcopy(list(_rendered(overlay)))


def _find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def _one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = _find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _workloads(objs: list[Obj]) -> list[Obj]:
    return _find(objs, "Deployment") + _find(objs, "StatefulSet")


def _pod_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def _containers(pod: Obj) -> Iterator[Obj]:
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _container(pod: Obj, name: str) -> Obj:
    found = [c for c in _containers(pod) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}"
    return found[0]


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _config_maps(objs: list[Obj], container: Obj) -> dict[str, str]:
    """Variables a container gets through envFrom ConfigMaps."""
    data: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            data.update(_one(objs, "ConfigMap", ref["configMapRef"]["name"]).get("data", {}))
    return data


# --- rendering and schemas -------------------------------------------------------------------


def test_overlays_render_unique_objects(objs: list[Obj], overlay: str) -> None:
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "duplicate objects"
    expected = {"dev": "riveg-dev", "gpu": "riveg"}[overlay]
    assert {ns for _, ns, _ in keys if ns} == {expected}
    _one(objs, "Namespace", expected)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_schemas(objs: list[Obj], version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason=INSTALL_HINT)
    errors = []
    for obj in objs:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validation_is_strict() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason=INSTALL_HINT)
    deployment = copy.deepcopy(_one(list(_rendered("gpu")), "Deployment", "riveg-vg"))
    _container(_pod_spec(deployment), "server")["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[0], strict=True)


def _forbid_unknown(node: Any) -> None:
    """Reject unknown fields, as the API server's structural-schema pruning would drop them."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_unknown(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_unknown(value)


@cache
def _keda_validator(kind: str) -> Any:
    """jsonschema validator for a keda.sh/v1alpha1 kind, from KEDA's CRDs (cloudcoil models)."""
    jsonschema = pytest.importorskip("jsonschema", reason=INSTALL_HINT)
    keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1", reason=INSTALL_HINT)
    schema = getattr(keda, kind).model_json_schema(by_alias=True)
    _forbid_unknown(schema)
    return jsonschema.Draft202012Validator(schema)


def test_keda_schemas(objs: list[Obj]) -> None:
    errors = []
    for obj in objs:
        if obj["apiVersion"].startswith("keda.sh/"):
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            errors += [
                f"{obj['kind']}/{obj['metadata']['name']} {list(e.absolute_path)}: {e.message}"
                for e in _keda_validator(obj["kind"]).iter_errors(obj)
            ]
    assert not errors, "\n".join(errors)


def test_keda_validation_is_strict() -> None:
    scaled = copy.deepcopy(_one(list(_rendered("gpu")), "ScaledObject", "riveg-vg"))
    scaled["spec"]["minReplicas"] = 1
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 5
    messages = [e.message for e in _keda_validator("ScaledObject").iter_errors(scaled)]
    assert len(messages) == 2, messages


def _secret_refs(objs: list[Obj]) -> list[tuple[str, bool | None, str]]:
    """Every reference to a Secret: (name, optional, where)."""
    refs = []
    for workload in _workloads(objs):
        pod = _pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        for container in _containers(pod):
            for ref in container.get("envFrom", []):
                if "secretRef" in ref:
                    refs.append((ref["secretRef"]["name"], ref["secretRef"].get("optional"), where))
            for value in _env(container).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    key_ref = value["secretKeyRef"]
                    refs.append((key_ref["name"], key_ref.get("optional"), where))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs.append(
                    (volume["secret"]["secretName"], volume["secret"].get("optional"), where)
                )
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    refs.append((source["secret"]["name"], source["secret"].get("optional"), where))
    for auth in _find(objs, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            refs.append((ref["name"], None, f"TriggerAuthentication/{auth['metadata']['name']}"))
    return refs


def test_references_resolve(objs: list[Obj], overlay: str) -> None:
    """ConfigMaps (hash-suffixed) exist; every Secret is one the operator creates and is required
    (a pod does not start without it), except the documented optional riveg-llm."""
    for workload in _workloads(objs):
        for container in _containers(_pod_spec(workload)):
            for ref in container.get("envFrom", []):
                if "configMapRef" in ref:
                    _one(objs, "ConfigMap", ref["configMapRef"]["name"])
    refs = _secret_refs(objs)
    for name, optional, where in refs:
        if name in OPTIONAL_SECRETS:
            assert optional is True, f"{where}: {name} is optional"
        else:
            assert name in SECRETS, f"{where}: unknown Secret {name}"
            assert not optional, f"{where}: Secret {name} must be required"
    expected = SECRETS | OPTIONAL_SECRETS
    if overlay != "gpu":
        expected -= {"riveg-minio-tls"}
    assert {name for name, _, _ in refs} == expected
    assert not _find(objs, "Secret"), "Secrets must not be rendered from the repository"


def test_no_literal_credentials(objs: list[Obj]) -> None:
    """No default credential (minioadmin, guest) nor URL with a password anywhere; credentials
    reach containers only from Secrets, by key: a Secret without the key stops the pod instead of
    letting the app fall back to its default (the S3 keys default to minioadmin)."""
    text = json.dumps(objs)
    assert not LITERAL_CREDENTIALS.search(text), LITERAL_CREDENTIALS.search(text)
    for config_map in _find(objs, "ConfigMap"):
        leaked = [k for k in config_map.get("data", {}) if CREDENTIAL_NAME.search(k)]
        assert not leaked, f"ConfigMap {config_map['metadata']['name']}: {leaked}"
    for workload in _workloads(objs):
        for container in _containers(_pod_spec(workload)):
            for name, value in _env(container).items():
                if CREDENTIAL_NAME.search(name):
                    assert isinstance(value, dict) and "secretKeyRef" in value, (
                        f"{container['name']}: {name} must come from a Secret"
                    )
            for ref in container.get("envFrom", []):
                assert "secretRef" not in ref or ref["secretRef"]["name"] in OPTIONAL_SECRETS, (
                    f"{container['name']}: take Secret keys one by one (secretKeyRef)"
                )
            if container["image"].startswith("riveg/") and "command" not in container:
                env = _env(container)  # a RiVEG process (not a helper such as trust-bundle)
                for key in ("RIVEG_S3_ACCESS_KEY", "RIVEG_S3_SECRET_KEY"):
                    assert env[key] == {"secretKeyRef": {"name": "riveg-store", "key": key}}


# --- stages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_stage_pod(objs: list[Obj], stage: str) -> None:
    port = DEFAULT_PORTS[stage]
    deployment = _one(objs, "Deployment", f"riveg-{stage}")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True

    server = _container(pod, "server")
    assert server in pod["initContainers"] and server["restartPolicy"] == "Always", (
        "server must be a native sidecar: started before and stopped after the worker"
    )
    assert server["args"] == ["serve", stage]
    assert server["ports"][0] == {"name": "grpc", "containerPort": port}
    assert [p["name"] for p in server["ports"]] == ["grpc", "metrics"]  # test_metrics_ports
    assert _env(server)["RIVEG_GRPC_PORT"] == str(port)
    # Native gRPC probes cannot speak TLS: the image's health check, which connects like the
    # worker (test_healthcheck_speaks_tls runs it against a TLS server).
    service_name = f"riveg.v1.{stage.capitalize()}Service"
    commands = {
        "startupProbe": ["riveg-healthcheck", "grpc"],
        "readinessProbe": ["riveg-healthcheck", "grpc", service_name],
        "livenessProbe": ["riveg-healthcheck", "grpc"],
    }
    for probe, command in commands.items():
        assert set(server[probe]) == {"exec", *PROBE_TIMING}, probe
        assert server[probe]["exec"]["command"] == command, probe
    assert f"RIVEG_{stage.upper()}_MODEL" in _config_maps(objs, server)

    worker = _container(pod, "worker")
    assert worker in pod["containers"] and worker["args"] == ["worker", stage]
    assert _env(worker)[f"RIVEG_{stage.upper()}_ADDR"] == f"127.0.0.1:{port}"
    assert worker["image"] == server["image"]
    _assert_worker_liveness(worker)

    for container in _containers(pod):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "RIVEG_BROKER_URL" in _env(container) or container is server
        _assert_writable_dirs(container)


def _assert_worker_liveness(worker: Obj) -> None:
    """A worker that stops answering pings (frozen consumer) is restarted, leniently: the ping
    waits 5 s for the answer after connecting (3 s at most), far below the probe's timeout."""
    probe = worker["livenessProbe"]
    assert set(probe) == {"exec", "initialDelaySeconds", *PROBE_TIMING}
    assert probe["exec"]["command"] == WORKER_LIVENESS
    assert probe["initialDelaySeconds"] >= 30 and probe["periodSeconds"] >= 30
    assert probe["timeoutSeconds"] >= 15 and probe["failureThreshold"] >= 3
    assert "readinessProbe" not in worker and "startupProbe" not in worker


def _secret_files(pod: Obj, container: Obj) -> dict[str, tuple[str, str]]:
    """Files a container sees from Secret volumes: path -> (Secret, key); mounts read-only."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")  # (not a volume: a claim)
        if secret is None:
            continue
        assert mount.get("readOnly") is True, f"{container['name']}: {mount['mountPath']}"
        assert secret.get("items"), f"volume {mount['name']}: list the keys it needs"
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, "not readable by others"
        for item in secret["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_stage_grpc_tls(objs: list[Obj], stage: str) -> None:
    """Servers listen beyond loopback only with mutual TLS: the server's certificate and key, the
    CA and the client identity are files of the required Secrets; the worker holds its client
    identity and the CA, never the server's key nor the admin token, which the server gets."""
    pod = _pod_spec(_one(objs, "Deployment", f"riveg-{stage}"))
    server, worker = _container(pod, "server"), _container(pod, "worker")
    config = _config_maps(objs, server)
    model = f"RIVEG_{stage.upper()}_MODEL"
    assert {k: v for k, v in config.items() if k != model} == _config_maps(objs, worker)
    assert config["RIVEG_GRPC_HOST"] == "0.0.0.0"  # reachable through the Service
    assert (config["RIVEG_GRPC_TLS"], config["RIVEG_GRPC_MTLS"]) == ("true", "true")
    assert "RIVEG_GRPC_TLS_SERVER_NAME" not in config  # the certificate names 127.0.0.1
    client = {
        "RIVEG_GRPC_TLS_CA": ("riveg-grpc-client", "ca.crt"),
        "RIVEG_GRPC_TLS_CLIENT_CERT": ("riveg-grpc-client", "tls.crt"),
        "RIVEG_GRPC_TLS_CLIENT_KEY": ("riveg-grpc-client", "tls.key"),
    }
    server_only = {
        "RIVEG_GRPC_TLS_CERT": ("riveg-grpc-server", "tls.crt"),
        "RIVEG_GRPC_TLS_KEY": ("riveg-grpc-server", "tls.key"),
    }
    server_files, worker_files = _secret_files(pod, server), _secret_files(pod, worker)
    for setting, source in {**client, **server_only}.items():
        assert server_files.get(config[setting]) == source, setting
    for setting, source in client.items():
        assert worker_files.get(config[setting]) == source, setting
    assert not {name for name, _ in worker_files.values()} & {"riveg-grpc-server", "riveg-admin"}
    token = {"secretKeyRef": {"name": "riveg-admin", "key": "RIVEG_GRPC_ADMIN_TOKEN"}}
    assert _env(server)["RIVEG_GRPC_ADMIN_TOKEN"] == token
    assert "RIVEG_GRPC_ADMIN_TOKEN" not in _env(worker) and "riveg-admin" not in json.dumps(worker)
    assert "riveg-worker" not in config.get("RIVEG_GRPC_ADMIN_CLIENTS", "")


def _assert_writable_dirs(container: Obj) -> None:
    """A read-only root file system still leaves the temp and cache dirs writable."""
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/cache/riveg"} <= mounts, container["name"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_service_and_pdb(objs: list[Obj], stage: str) -> None:
    labels = _one(objs, "Deployment", f"riveg-{stage}")["spec"]["template"]["metadata"]["labels"]
    service = _one(objs, "Service", f"riveg-{stage}")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == DEFAULT_PORTS[stage]
    pdb = _one(objs, "PodDisruptionBudget", f"riveg-{stage}")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gpu_requests(objs: list[Obj], overlay: str) -> None:
    for stage in STAGES:
        pod = _pod_spec(_one(objs, "Deployment", f"riveg-{stage}"))
        server = _container(pod, "server")
        gpus = {
            k: server["resources"].get(k, {}).get("nvidia.com/gpu") for k in ("requests", "limits")
        }
        if overlay == "gpu":
            assert gpus == {"requests": "1", "limits": "1"}, stage
            assert pod["nodeSelector"] and any(
                t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]
            )
            assert "nvidia.com/gpu" not in _container(pod, "worker")["resources"]["limits"]
        else:
            assert gpus == {"requests": None, "limits": None}, stage
    assert overlay == "gpu" or "nvidia.com/gpu" not in json.dumps(objs)


def test_images(objs: list[Obj], overlay: str) -> None:
    targets = set(_dockerfile_stages()[0])
    for workload in _workloads(objs):
        for container in _containers(_pod_spec(workload)):
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", container["image"]
            if name.startswith("riveg/"):
                assert name.removeprefix("riveg/") in targets, f"no Dockerfile target for {name}"
                component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
                gpu_stage = overlay == "gpu" and component == "stage"
                assert tag.endswith("-cuda" if gpu_stage else "-cpu"), container["image"]


# --- hardening: securityContext, resources, network policies --------------------------------

# Paths each data service writes (the rest of its root file system is read-only).
DATA_WRITABLE = {
    "rabbitmq": {"/var/lib/rabbitmq", "/var/log/rabbitmq", "/tmp"},
    "minio": {"/data", "/tmp"},
    "redis": {"/data"},
}
UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
GATEWAY_IN_FLIGHT = 8  # requests at the body limit one gateway pod's memory limit holds at once


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity ("500m", "2", "256Mi") as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * UNITS[match.group(2)] if match.group(2) else float(value)


def test_security_context_everywhere(objs: list[Obj]) -> None:
    """Every container, data services included: non-root, no privilege escalation, all
    capabilities dropped, seccomp RuntimeDefault, read-only root file system with bounded
    writable volumes, no service-account token; requests and limits for CPU and memory."""
    for workload in _workloads(objs):
        name = workload["metadata"]["name"]
        pod = _pod_spec(workload)
        assert pod["automountServiceAccountToken"] is False, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in _containers(pod):
            where = f"{name}/{container['name']}"
            context = {**pod["securityContext"], **container["securityContext"]}
            assert context.get("runAsNonRoot") is True and context.get("runAsUser") != 0, where
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities") == {"drop": ["ALL"]}, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert not context.get("privileged"), where
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"], {})
                if mount["name"] in claims or mount.get("readOnly"):
                    continue
                assert "sizeLimit" in volume.get("emptyDir", {}), f"{where}: {mount['name']}"
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = _quantity(resources["requests"][resource])
                assert 0 < request <= _quantity(resources["limits"][resource]), where
        if name in DATA_WRITABLE:
            (container,) = _containers(pod)
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert DATA_WRITABLE[name] <= mounted, name


def test_memory_limits_cover_input_limits(objs: list[Obj]) -> None:
    """A stage server's memory limit holds its model (>= 1 GiB) plus RIVEG_GRPC_WORKERS calls at
    the configured input limits, each the image file, its decoded RGB and a float32 copy of it;
    the pipeline worker's, 4 store steps each holding the file and twice the RGB (16-bit input);
    the gateway's, GATEWAY_IN_FLIGHT requests each holding its body twice (JSON text or chunked
    replay), the image and twice its RGB."""
    config = _one(objs, "ConfigMap", _config_map_name(objs, "riveg-config"))["data"]
    image = int(config["RIVEG_LIMITS_MAX_IMAGE_BYTES"])
    rgb = 3 * int(config["RIVEG_LIMITS_MAX_IMAGE_PIXELS"])
    assert int(config["RIVEG_LIMITS_MAX_TEXT_CHARS"]) <= 2000, "the LLM's sizing assumes it"
    per_call = image + rgb + 4 * rgb
    needed = 2**30 + int(config["RIVEG_GRPC_WORKERS"]) * per_call
    for stage in STAGES:
        server = _container(_pod_spec(_one(objs, "Deployment", f"riveg-{stage}")), "server")
        limit = _quantity(server["resources"]["limits"]["memory"])
        assert limit >= needed, f"{stage}: {limit / 2**20:.0f} MiB < {needed / 2**20:.0f} MiB"
    worker = _container(_pod_spec(_one(objs, "Deployment", "riveg-pipeline")), "worker")
    threads = int(worker["args"][worker["args"].index("--concurrency") + 1])
    needed = 256 * 2**20 + threads * (image + 2 * rgb)
    assert _quantity(worker["resources"]["limits"]["memory"]) >= needed
    gateway = _container(_pod_spec(_one(objs, "Deployment", GATEWAY)), "gateway")
    body = int(config["RIVEG_GATEWAY_MAX_BODY_BYTES"])
    needed = 256 * 2**20 + GATEWAY_IN_FLIGHT * (2 * body + image + 2 * rgb)
    limit = _quantity(gateway["resources"]["limits"]["memory"])
    assert limit >= needed, f"gateway: {limit / 2**20:.0f} MiB < {needed / 2**20:.0f} MiB"


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector matches these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        held = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def _pod_labels(objs: list[Obj]) -> dict[str, dict[str, str]]:
    """Workload name -> the labels of its pods."""
    return {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in _workloads(objs)
    }


def _peers(
    objs: list[Obj], workload: str, direction: str, port: int, protocol: str = "TCP"
) -> set[str]:
    """Who may connect to ``workload``'s pods on ``port`` (direction "Ingress"), or whom they may
    connect to (direction "Egress"): in-namespace workloads by name; namespaceSelector peers as
    "ns:<namespace>/<label>=<value>"; ipBlocks as "cidr:<cidr>"; "*" for anyone."""
    pods = _pod_labels(objs)
    labels = pods[workload]
    policies = [
        p["spec"]
        for p in _find(objs, "NetworkPolicy")
        if _selects(p["spec"]["podSelector"], labels) and direction in p["spec"]["policyTypes"]
    ]
    if not policies:
        return {"*"}
    found: set[str] = set()
    for policy in policies:
        for rule in policy.get(direction.lower(), []):
            ports = rule.get("ports")
            if ports is not None and not any(
                p.get("protocol", "TCP") == protocol
                and isinstance(p["port"], int)  # numbers only: named ports are not checked here
                and p["port"] <= port <= p.get("endPort", p["port"])
                for p in ports
            ):
                continue
            rule_peers = rule.get("from" if direction == "Ingress" else "to")
            if not rule_peers:
                found.add("*")
            for peer in rule_peers or []:
                if "ipBlock" in peer:
                    found.add(f"cidr:{peer['ipBlock']['cidr']}")
                elif "namespaceSelector" in peer:
                    (namespace,) = peer["namespaceSelector"]["matchLabels"].values()
                    pod_labels = peer.get("podSelector", {}).get("matchLabels", {})
                    found.add(
                        f"ns:{namespace}/" + ",".join(f"{k}={v}" for k, v in pod_labels.items())
                    )
                else:
                    found |= {n for n, pod in pods.items() if _selects(peer["podSelector"], pod)}
    return found


MONITORING = "ns:monitoring/app.kubernetes.io/name=prometheus"
KEDA = "ns:keda/app.kubernetes.io/name=keda-operator"
DNS = "ns:kube-system/k8s-app=kube-dns"
INGRESS_NGINX = "ns:ingress-nginx/app.kubernetes.io/name=ingress-nginx"
PUBLIC = "cidr:0.0.0.0/0"  # with the private ranges excepted (test_public_egress_spares_...)
PRIVATE_RANGES = {
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
}
WEB_PORTS = (80, 443)


def test_network_policies_deny_by_default(objs: list[Obj]) -> None:
    """A policy isolates every pod of the namespace both ways; every workload has policies of
    its own besides it; every pod may resolve names."""
    deny = _one(objs, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for workload, labels in _pod_labels(objs).items():
        own = [
            p
            for p in _find(objs, "NetworkPolicy")
            if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels)
        ]
        assert own, f"no NetworkPolicy selects {workload}"
        assert _peers(objs, workload, "Egress", 53, "UDP") == {DNS}, workload


def test_network_policy_matrix(objs: list[Obj], overlay: str) -> None:
    """Stage gRPC ports admit only their own stage's pods; the gateway's HTTP port only the ingress
    controller and Prometheus (/metrics); the metrics ports of the servers and workers only
    Prometheus; RabbitMQ, Redis and MinIO only the RiVEG workers and the gateway (+ KEDA's operator
    for AMQP with components/keda, Prometheus for metrics); the data services reach nothing; the
    stage pods reach only the data services; the gateway and the pipeline worker also the web
    (public addresses, 80 and 443: image URLs, callbacks)."""
    for stage in STAGES:
        for other in STAGES:
            peers = _peers(objs, f"riveg-{stage}", "Ingress", DEFAULT_PORTS[other])
            assert peers == ({f"riveg-{stage}"} if other == stage else set()), (stage, other)
    gateway_port = _gateway_port(objs)
    # the API for the ingress controller, /metrics for Prometheus (one port)
    assert _peers(objs, GATEWAY, "Ingress", gateway_port) == {INGRESS_NGINX, MONITORING}
    for port in (80, 443, 9090, *METRICS_PORTS.values(), *DEFAULT_PORTS.values()):
        assert _peers(objs, GATEWAY, "Ingress", port) == set(), port
    for workload in WORKERS:
        assert _peers(objs, workload, "Ingress", gateway_port) == set(), workload
    clients = WORKERS | {GATEWAY}
    keda = {KEDA} if overlay == "gpu" else set()
    assert _peers(objs, "rabbitmq", "Ingress", 5672) == clients | keda
    assert _peers(objs, "rabbitmq", "Ingress", 15672) == set()  # management: port-forward only
    assert _peers(objs, "rabbitmq", "Ingress", 15692) == {MONITORING}
    assert _peers(objs, "redis", "Ingress", 6379) == clients
    assert _peers(objs, "minio", "Ingress", 9000) == clients | {MONITORING}
    assert _peers(objs, "minio", "Ingress", 9001) == set()  # console: port-forward only
    services = {"rabbitmq": 5672, "redis": 6379, "minio": 9000}
    web = {"riveg-pipeline", GATEWAY}
    for workload in clients:
        for service, port in services.items():
            assert _peers(objs, workload, "Egress", port) == {service}, (workload, service)
        for port in WEB_PORTS:
            expected = {PUBLIC} if workload in web else set()
            assert _peers(objs, workload, "Egress", port) == expected, (workload, port)
        for port in (22, 8080, 8443, *DEFAULT_PORTS.values()):
            assert _peers(objs, workload, "Egress", port) == set(), (workload, port)
    for service in DATA_SERVICES:
        for port in (*WEB_PORTS, 5672, 6379, 8080, 9000, *DEFAULT_PORTS.values()):
            assert _peers(objs, service, "Egress", port) == set(), (service, port)
        for port in METRICS_PORTS.values():
            assert _peers(objs, service, "Ingress", port) == set(), (service, port)
    # every RiVEG process' metrics port: Prometheus only (not even the pod's own stage)
    for workload in WORKERS:
        pod = _pod_spec(_one(objs, "Deployment", workload))
        ports = [p for c in _containers(pod) for p in c.get("ports", [])]
        metrics = [p["containerPort"] for p in ports if p["name"] in METRICS_PORTS]
        assert metrics, workload
        for port in metrics:
            assert _peers(objs, workload, "Ingress", port) == {MONITORING}, (workload, port)


def test_public_egress_spares_private_ranges(objs: list[Obj]) -> None:
    """Every policy opening the Internet (an ipBlock) excepts the private, shared and link-local
    ranges: the cluster's insides and the cloud metadata endpoint stay closed."""
    blocks = [
        peer["ipBlock"]
        for policy in _find(objs, "NetworkPolicy")
        for rule in policy["spec"].get("egress", []) + policy["spec"].get("ingress", [])
        for peer in rule.get("to", []) + rule.get("from", [])
        if "ipBlock" in peer
    ]
    assert blocks, "the web egress of the gateway and the pipeline worker"
    for block in blocks:
        assert block["cidr"] == "0.0.0.0/0", block
        assert set(block.get("except", [])) >= PRIVATE_RANGES, block


def test_network_policies_agree(objs: list[Obj]) -> None:
    """Whatever a pod's ingress admits from another workload of the namespace, that workload's
    egress allows as well (or the connection would be dropped on the way out)."""
    for target, pod in ((w["metadata"]["name"], _pod_spec(w)) for w in _workloads(objs)):
        for container in _containers(pod):
            for port in (p["containerPort"] for p in container.get("ports", [])):
                for source in _peers(objs, target, "Ingress", port) & set(_pod_labels(objs)):
                    if source != target:  # a pod always reaches itself
                        assert target in _peers(objs, source, "Egress", port), (source, target)


def test_llm_api_egress_component(tmp_path: Path) -> None:
    """The optional component opens HTTPS to public addresses for the LLM pods alone."""
    copied = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copied)
    kustomization = copied / "overlays" / "gpu" / "kustomization.yaml"
    text = kustomization.read_text()
    keda = "  - ../../components/keda\n"
    assert keda in text
    kustomization.write_text(text.replace(keda, keda + "  - ../../components/llm-api-egress\n"))
    objs = _render(kustomization.parent)
    policy = _one(objs, "NetworkPolicy", "riveg-llm-api-egress")
    assert policy["metadata"]["namespace"] == "riveg"
    for stage in STAGES:
        public = "cidr:0.0.0.0/0" in _peers(objs, f"riveg-{stage}", "Egress", 443)
        assert public == (stage == "llm"), stage
    kv = pytest.importorskip("kubernetes_validate", reason=INSTALL_HINT)
    kv.validate(policy, K8S_VERSIONS[0], strict=True)


# --- autoscaling -----------------------------------------------------------------------------


def test_autoscaling(objs: list[Obj], overlay: str) -> None:
    """Each Deployment has exactly one autoscaler; KEDA scales a worker on its own queue's length
    and the gateway on its request load (CPU, which needs no Prometheus); the gateway keeps
    two replicas at least (its PDB lets one go)."""
    scaled = _find(objs, "ScaledObject")
    hpas = _find(objs, "HorizontalPodAutoscaler")
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in scaled + hpas]
    assert sorted(targets) == sorted(f"riveg-{x}" for x in SCALED), "one autoscaler each"
    assert sorted(targets) == sorted(o["metadata"]["name"] for o in _find(objs, "Deployment"))
    assert (scaled and not hpas) if overlay == "gpu" else (hpas and not scaled)
    for target in targets:
        _one(objs, "Deployment", target)
    for obj in scaled:
        name = obj["spec"]["scaleTargetRef"]["name"].removeprefix("riveg-")
        (trigger,) = obj["spec"]["triggers"]
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        if name == "gateway":
            assert (trigger["type"], trigger["metricType"]) == ("cpu", "Utilization")
            assert 0 < int(trigger["metadata"]["value"]) < 100
            assert "fallback" not in obj["spec"], "KEDA refuses a fallback on a CPU trigger"
            continue
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == f"riveg.{name}"
        assert trigger["metadata"]["mode"] == "QueueLength"
        auth = _one(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert (ref["parameter"], ref["name"], ref["key"]) == (
            "host",
            "riveg-broker",
            "RIVEG_BROKER_URL",
        )
    for hpa in hpas:
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    gateway = _one(objs, "ScaledObject" if overlay == "gpu" else "HorizontalPodAutoscaler", GATEWAY)
    assert gateway["spec"]["minReplicaCount" if overlay == "gpu" else "minReplicas"] >= 2
    pdb = _one(objs, "PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_worker_liveness_probes(objs: list[Obj]) -> None:
    """Every container running `riveg worker` has the worker-ping liveness probe."""
    workers = [
        (obj["metadata"]["name"], container)
        for obj in _workloads(objs)
        for container in _containers(_pod_spec(obj))
        if _riveg_command(container) == "worker"
    ]
    assert {name for name, _ in workers} == WORKERS
    for name, container in workers:
        assert container["name"] == "worker", name
        _assert_worker_liveness(container)


def test_pipeline_worker(objs: list[Obj]) -> None:
    pod = _pod_spec(_one(objs, "Deployment", "riveg-pipeline"))
    worker = _container(pod, "worker")
    assert worker["args"] == ["worker", "pipeline", "--concurrency", "4"]
    _assert_worker_liveness(worker)
    _assert_writable_dirs(worker)
    assert "nvidia.com/gpu" not in json.dumps(pod)
    _one(objs, "PodDisruptionBudget", "riveg-pipeline")


# --- the gateway -----------------------------------------------------------------------------


def _gateway_port(objs: list[Obj]) -> int:
    """The gateway container's HTTP port (named ``http``)."""
    gateway = _container(_pod_spec(_one(objs, "Deployment", GATEWAY)), "gateway")
    (port,) = gateway["ports"]
    assert port["name"] == "http", port
    return int(port["containerPort"])


def test_gateway_pod(objs: list[Obj]) -> None:
    """`riveg gateway` on every address of its pod, at the configured port, with its API keys file
    from the required Secret riveg-gateway (so it does not fall back to loopback), the callbacks'
    key from the same Secret, the broker, Redis and store credentials from theirs, and nothing of
    the stage servers' (it calls none); HTTP probes on /healthz (startup, liveness) and /readyz
    (readiness); a writable /tmp for spooled uploads; replicas left to the autoscaler."""
    deployment = _one(objs, "Deployment", GATEWAY)
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod_spec(deployment)
    gateway = _container(pod, "gateway")
    assert gateway in pod["containers"] and len(pod["containers"]) == 1
    assert gateway["args"] == ["gateway"]
    assert gateway["image"].split(":")[0] == "riveg/gateway"
    config = {**_config_maps(objs, gateway), **_env(gateway)}
    assert config["RIVEG_GATEWAY_HOST"] == "0.0.0.0", "reachable through the Service"
    assert int(config["RIVEG_GATEWAY_PORT"]) == _gateway_port(objs) == 8080
    assert _secret_files(pod, gateway)[config["RIVEG_GATEWAY_API_KEYS_FILE"]] == (
        "riveg-gateway",
        "api-keys",
    )

    def from_secret(name: str, key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": name, "key": key}}

    env = _env(gateway)
    assert env["RIVEG_GATEWAY_CALLBACK_SECRET"] == from_secret(
        "riveg-gateway", "RIVEG_GATEWAY_CALLBACK_SECRET"
    )
    assert env["RIVEG_BROKER_URL"] == from_secret("riveg-broker", "RIVEG_BROKER_URL")
    assert env["RIVEG_BROKER_RESULT_BACKEND"] == from_secret(
        "riveg-redis", "RIVEG_BROKER_RESULT_BACKEND"
    )
    assert not {"riveg-admin", "riveg-grpc-server", "riveg-grpc-client"} & {
        name for name, _, _ in _secret_refs([deployment])
    }, "the gateway calls no stage server"
    assert not [k for k in _env(gateway) if k.startswith("RIVEG_GRPC_")]
    paths = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in paths.items():
        assert set(gateway[probe]) == {"httpGet", *PROBE_TIMING}, probe
        assert gateway[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    _assert_writable_dirs(gateway)
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "gateway"
    )


def test_gateway_service_and_pdb(objs: list[Obj]) -> None:
    labels = _one(objs, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    service = _one(objs, "Service", GATEWAY)
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    pdb = _one(objs, "PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not _find(objs, "Ingress"), "the Ingress is an example component, not in an overlay"


NGINX_SIZES = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}  # nginx's size units


def test_gateway_ingress_component(tmp_path: Path) -> None:
    """components/gateway-ingress (the example) renders into an overlay: a valid Ingress to the
    gateway's Service port, the API only (not the health routes), TLS, and a body limit equal to
    RIVEG_GATEWAY_MAX_BODY_BYTES."""
    copied = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copied)
    kustomization = copied / "overlays" / "gpu" / "kustomization.yaml"
    text = kustomization.read_text()
    keda = "  - ../../components/keda\n"
    assert keda in text
    kustomization.write_text(text.replace(keda, keda + "  - ../../components/gateway-ingress\n"))
    objs = _render(kustomization.parent)
    ingress = _one(objs, "Ingress", GATEWAY)
    assert ingress["metadata"]["namespace"] == "riveg"
    kv = pytest.importorskip("kubernetes_validate", reason=INSTALL_HINT)
    for version in K8S_VERSIONS:
        kv.validate(ingress, version, strict=True)
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    (tls,) = spec["tls"]
    service = _one(objs, "Service", GATEWAY)
    port_names = {p["name"] for p in service["spec"]["ports"]}
    paths = []
    for rule in spec["rules"]:
        assert rule["host"] in tls["hosts"], "served over TLS"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == GATEWAY and backend["port"]["name"] in port_names
            paths.append(path["path"])
    assert "/v1" in paths and not {"/", "/healthz", "/readyz"} & set(paths), paths
    config = _one(objs, "ConfigMap", _config_map_name(objs, "riveg-config"))["data"]
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    match = re.fullmatch(r"(\d+)([kmg]?)", size.lower())
    assert match, size
    body = int(match.group(1)) * NGINX_SIZES[match.group(2)]
    assert body == int(config["RIVEG_GATEWAY_MAX_BODY_BYTES"]), "nginx and the gateway disagree"


# --- data services and configuration ---------------------------------------------------------


def test_data_services(objs: list[Obj]) -> None:
    """Each runs with its credentials from a Secret; Redis requires a password."""
    for name in DATA_SERVICES:
        sts = _one(objs, "StatefulSet", name)
        assert sts["spec"]["volumeClaimTemplates"], name
        (container,) = _containers(_pod_spec(sts))
        assert "readinessProbe" in container and "livenessProbe" in container, name
        _one(objs, "Service", name)
    config = _one(objs, "ConfigMap", _config_map_name(objs, "riveg-config"))["data"]
    assert config["RIVEG_STORE_KIND"] == "s3"
    assert config["RIVEG_S3_ENDPOINT"] == "minio:9000"
    assert config["RIVEG_LOG_FORMAT"] == "json"
    assert not {"RIVEG_BROKER_URL", "RIVEG_BROKER_RESULT_BACKEND"} & set(config)

    def from_secret(name: str, key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": name, "key": key}}

    rabbitmq = _env(_container(_pod_spec(_one(objs, "StatefulSet", "rabbitmq")), "rabbitmq"))
    for key in ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"):
        assert rabbitmq[key] == from_secret("riveg-broker", key)
    minio = _env(_container(_pod_spec(_one(objs, "StatefulSet", "minio")), "minio"))
    assert minio["MINIO_ROOT_USER"] == from_secret("riveg-store", "RIVEG_S3_ACCESS_KEY")
    assert minio["MINIO_ROOT_PASSWORD"] == from_secret("riveg-store", "RIVEG_S3_SECRET_KEY")
    redis = _container(_pod_spec(_one(objs, "StatefulSet", "redis")), "redis")
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    for key in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # the server's, and the probes' redis-cli
        assert _env(redis)[key] == from_secret("riveg-redis", "REDIS_PASSWORD")
    for name in WORKERS:
        worker = _container(_pod_spec(_one(objs, "Deployment", name)), "worker")
        backend = from_secret("riveg-redis", "RIVEG_BROKER_RESULT_BACKEND")
        assert _env(worker)["RIVEG_BROKER_RESULT_BACKEND"] == backend, name


def test_s3_over_https_in_production(objs: list[Obj], overlay: str, tmp_path: Path) -> None:
    """gpu: MinIO serves riveg-minio-tls' certificate, its probes use HTTPS, and every RiVEG
    process uses HTTPS and trusts that Secret's CA (never its key); those that also reach the web
    (the gateway, the pipeline worker) trust a bundle of the public roots and that CA. dev: plain
    HTTP."""
    config = _one(objs, "ConfigMap", _config_map_name(objs, "riveg-config"))["data"]
    if overlay != "gpu":
        assert config["RIVEG_S3_SECURE"] == "false"
        return
    assert config["RIVEG_S3_SECURE"] == "true"
    minio_pod = _pod_spec(_one(objs, "StatefulSet", "minio"))
    minio = _container(minio_pod, "minio")
    certs = minio["args"][minio["args"].index("--certs-dir") + 1]
    assert {
        f"{certs}/public.crt": ("riveg-minio-tls", "tls.crt"),
        f"{certs}/private.key": ("riveg-minio-tls", "tls.key"),
    }.items() <= _secret_files(minio_pod, minio).items()
    for probe in ("readinessProbe", "livenessProbe"):
        assert minio[probe]["httpGet"]["scheme"] == "HTTPS", probe
    web = {w for w in _pod_labels(objs) if PUBLIC in _peers(objs, w, "Egress", 443)}
    assert web == {"riveg-pipeline", GATEWAY}
    for name in WORKERS | {GATEWAY}:
        pod = _pod_spec(_one(objs, "Deployment", name))
        for container in _containers(pod):
            files = _secret_files(pod, container)
            assert ("riveg-minio-tls", "tls.key") not in files.values()
            if "command" in container:
                continue  # a helper (trust-bundle): run below
            ca_file = _env(container).get("SSL_CERT_FILE", config["SSL_CERT_FILE"])
            if name in web:
                _assert_trust_bundle(pod, ca_file, tmp_path / name)
            else:
                assert files[ca_file] == ("riveg-minio-tls", "ca.crt"), name


def _assert_trust_bundle(pod: Obj, ca_file: str, tmp: Path) -> None:
    """``ca_file`` lies on an emptyDir that one init container fills: run its command, with its
    mounts moved under ``tmp`` and a stand-in for riveg-minio-tls' CA, and check the bundle holds
    the public roots (certifi's, as in the image) and that CA."""
    certifi = pytest.importorskip("certifi")
    volumes = {v["name"]: v for v in pod["volumes"]}
    (volume,) = [
        m["name"]
        for c in pod["containers"]
        for m in c["volumeMounts"]
        if ca_file.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert "emptyDir" in volumes[volume], ca_file
    (writer,) = [
        c
        for c in pod.get("initContainers", [])
        if any(m["name"] == volume and not m.get("readOnly") for m in c["volumeMounts"])
    ]
    assert writer.get("restartPolicy") is None, "runs to completion before the containers"
    ca_pem = (
        "-----BEGIN CERTIFICATE-----\nstand-in for riveg-minio-tls\n-----END CERTIFICATE-----\n"
    )
    moved = {}
    for mount in writer["volumeMounts"]:
        folder = tmp / mount["name"]
        folder.mkdir(parents=True)
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            assert mount.get("readOnly") is True
            assert secret["secretName"] == "riveg-minio-tls"
            assert [i["key"] for i in secret["items"]] == ["ca.crt"]
            (folder / secret["items"][0]["path"]).write_text(ca_pem)
        moved[mount["mountPath"].rstrip("/")] = str(folder)
    shell, flag, script = writer["command"]
    assert (shell, flag) == ("sh", "-c")
    target = ca_file
    for mount_path in sorted(moved, key=len, reverse=True):
        script = script.replace(mount_path + "/", moved[mount_path] + "/")
        target = target.replace(mount_path + "/", moved[mount_path] + "/")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    bundle = Path(target).read_text()
    assert bundle == Path(certifi.where()).read_text() + ca_pem


def _config_map_name(objs: list[Obj], prefix: str) -> str:
    (name,) = [
        o["metadata"]["name"]
        for o in _find(objs, "ConfigMap")
        if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    return name


def test_secret_examples_hold_no_credentials() -> None:
    for path in sorted((DEPLOY / "secrets").glob("*.env.example")):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                if re.search("PASS|SECRET|URL|TOKEN|BACKEND|API_KEY", key):
                    assert "<" in value, f"{path.name}: {key} must be a placeholder"
    for path in ("deploy/secrets/riveg-broker.env", "deploy/secrets/tls/ca.crt"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"real secret files must be git-ignored: {path}"


KUBECTL_STUB = r"""#!/usr/bin/env bash
# kubectl for create-secrets.sh: logs each call, says the Secrets in $STUB_EXISTING exist,
# copies what `create secret` reads to $STUB_OUT/<secret>/<key> (env files: <secret>/.env).
echo "$*" >> "$STUB_OUT/calls"
if [[ "$3 $4" == "get secret" ]]; then [[ " $STUB_EXISTING " == *" $5 "* ]]; exit; fi
if [[ "$3 $4" == "create secret" ]]; then
    mkdir -p "$STUB_OUT/$6"
    for a in "$@"; do
        case $a in
            --from-env-file=*) cp "${a#*=}" "$STUB_OUT/$6/.env" ;;
            --from-file=*) kv="${a#*=}"; cp "${kv#*=}" "$STUB_OUT/$6/${kv%%=*}" ;;
            --type=*) echo "${a#*=}" > "$STUB_OUT/$6/.type" ;;
        esac
    done
fi
exit 0
"""


def _create_secrets(
    tmp: Path, namespace: str = "riveg-dev", existing: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run create-secrets.sh against the kubectl stub, with an empty secrets folder."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    stub = tmp / "bin" / "kubectl"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(KUBECTL_STUB)
    stub.chmod(0o755)
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "secrets").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{stub.parent}:{os.environ['PATH']}",
        "STUB_OUT": str(tmp / "out"),
        "STUB_EXISTING": existing,
        "RIVEG_SECRETS_DIR": str(tmp / "secrets"),
    }
    script = DEPLOY / "secrets" / "create-secrets.sh"
    return subprocess.run(
        ["bash", str(script), namespace], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def generated_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What create-secrets.sh creates in a namespace without Secrets: <dir>/<secret>/<key>."""
    tmp = tmp_path_factory.mktemp("secrets")
    proc = _create_secrets(tmp)
    assert proc.returncode == 0, proc.stderr
    (tmp / "stdout").write_text(proc.stdout)
    return tmp / "out"


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments skipped)."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_create_secrets_script(generated_secrets: Path) -> None:
    """With no env files and no Secrets yet it creates every Secret the manifests reference,
    random credentials, the broker host as cluster DNS name."""
    out = generated_secrets
    assert {p.name for p in out.iterdir() if p.is_dir()} == SECRETS
    for name in SECRETS:
        assert (out / name / ".type").exists() == (name in TLS_SECRETS), name
        if name in TLS_SECRETS:
            assert (out / name / ".type").read_text().strip() == "kubernetes.io/tls"
            assert {p.name for p in (out / name).iterdir()} == {".type", *TLS_KEYS}
    assert {p.name for p in (out / "riveg-gateway").iterdir()} == GATEWAY_SECRET_KEYS
    hex48 = "[0-9a-f]{48}"
    broker = _env_file(out / "riveg-broker" / ".env")
    assert re.fullmatch(hex48, broker["RABBITMQ_DEFAULT_PASS"])
    assert broker["RIVEG_BROKER_URL"] == (
        f"amqp://riveg:{broker['RABBITMQ_DEFAULT_PASS']}@rabbitmq.riveg-dev.svc:5672//"
    )
    assert re.fullmatch(hex48, _env_file(out / "riveg-store" / ".env")["RIVEG_S3_SECRET_KEY"])
    redis = _env_file(out / "riveg-redis" / ".env")
    assert re.fullmatch(hex48, redis["REDIS_PASSWORD"])
    assert (
        redis["RIVEG_BROKER_RESULT_BACKEND"] == f"redis://:{redis['REDIS_PASSWORD']}@redis:6379/0"
    )
    assert re.fullmatch(hex48, _env_file(out / "riveg-admin" / ".env")["RIVEG_GRPC_ADMIN_TOKEN"])
    assert len({broker["RABBITMQ_DEFAULT_PASS"], redis["REDIS_PASSWORD"]}) == 2
    assert "riveg-llm" not in (out / "calls").read_text()


def _api_key_digests(path: Path) -> set[str]:
    """The digests of the gateway's API keys file, read as the gateway reads it."""
    lines = path.read_text().splitlines()
    assert lines and all(re.fullmatch(r"sha256:[0-9a-f]{64}", line) for line in lines), lines
    return set(load_api_keys(path))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_create_secrets_gateway(generated_secrets: Path) -> None:
    """Without riveg-gateway.env: one random API key, printed once for the operator and stored
    only as its SHA-256 in the gateway's file format; a random callback secret."""
    folder = generated_secrets / "riveg-gateway"
    stdout = (generated_secrets.parent / "stdout").read_text()
    (key,) = re.findall(r"^RIVEG_GATEWAY_API_KEY=(\S+)$", stdout, re.M)
    assert re.fullmatch("[0-9a-f]{48}", key)
    assert _api_key_digests(folder / "api-keys") == {_sha256(key)}
    assert not any(key in p.read_text() for p in generated_secrets.rglob("*") if p.is_file())
    callback = (folder / "RIVEG_GATEWAY_CALLBACK_SECRET").read_text()
    assert re.fullmatch("[0-9a-f]{48}", callback)


def test_create_secrets_gateway_from_env_file(tmp_path: Path) -> None:
    """riveg-gateway.env: plain keys are hashed, sha256:<hex> digests taken as they are, the
    callback secret kept; no key is printed. A malformed digest or a placeholder left in the file
    stops the script before any Secret is created."""
    digest = _sha256("key-issued-elsewhere")
    secrets = tmp_path / "ok" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "riveg-gateway.env").write_text(
        "# comment\n"
        f"RIVEG_GATEWAY_API_KEYS=first-key, second-key,sha256:{digest}\n"
        "RIVEG_GATEWAY_CALLBACK_SECRET=callback-secret-1\n"
    )
    proc = _create_secrets(tmp_path / "ok")
    assert proc.returncode == 0, proc.stderr
    assert "RIVEG_GATEWAY_API_KEY=" not in proc.stdout
    folder = tmp_path / "ok" / "out" / "riveg-gateway"
    expected = {_sha256("first-key"), _sha256("second-key"), digest}
    assert _api_key_digests(folder / "api-keys") == expected
    assert "first-key" not in (folder / "api-keys").read_text()
    assert (folder / "RIVEG_GATEWAY_CALLBACK_SECRET").read_text() == "callback-secret-1"
    for case, keys in {"digest": "sha256:ABC", "placeholder": "<key>"}.items():
        secrets = tmp_path / case / "secrets"
        secrets.mkdir(parents=True)
        (secrets / "riveg-gateway.env").write_text(f"RIVEG_GATEWAY_API_KEYS={keys}\n")
        proc = _create_secrets(tmp_path / case)
        assert proc.returncode != 0 and "riveg-gateway.env" in proc.stderr, case
        assert " create secret" not in (tmp_path / case / "out" / "calls").read_text(), case


def test_create_secrets_certificates(generated_secrets: Path) -> None:
    """One CA signs the stage servers' certificate (every stage Service's names, localhost,
    127.0.0.1), the workers' client certificate and MinIO's; each key matches its certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def load(secret: str) -> tuple[Any, Any, Any]:
        folder = generated_secrets / secret
        cert = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
        ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), None)
        return cert, ca, key

    def names(cert: Any) -> set[str]:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {str(n.value) for n in sans}

    def eku(cert: Any) -> set[Any]:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    cas = set()
    for secret in TLS_SECRETS:
        cert, ca, key = load(secret)
        cert.verify_directly_issued_by(ca)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert key.public_key() == cert.public_key(), secret
        cas.add(ca.fingerprint(cert.signature_hash_algorithm))
    assert len(cas) == 1, "one CA"
    server, _, _ = load("riveg-grpc-server")
    expected = {"localhost", "127.0.0.1"}
    for stage in STAGES:
        expected |= {f"riveg-{stage}", f"riveg-{stage}.riveg-dev.svc"}
    assert expected <= names(server)
    assert eku(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    client, _, _ = load("riveg-grpc-client")
    (common_name,) = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == "riveg-worker"
    assert eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    minio, _, _ = load("riveg-minio-tls")
    assert {"minio", "minio.riveg-dev.svc", "127.0.0.1"} <= names(minio)


def test_create_secrets_keeps_existing(tmp_path: Path) -> None:
    """Existing Secrets are kept; TLS Secrets only partly there are an error (one CA for all),
    found before anything is created."""
    proc = _create_secrets(tmp_path / "all", existing=" ".join(SECRETS))
    assert proc.returncode == 0, proc.stderr
    assert " create " not in (tmp_path / "all" / "out" / "calls").read_text()
    assert "RIVEG_GATEWAY_API_KEY=" not in proc.stdout, "a kept key is not printed"
    proc = _create_secrets(tmp_path / "some", existing="riveg-grpc-server")
    assert proc.returncode != 0 and "one CA" in proc.stderr
    assert " create " not in (tmp_path / "some" / "out" / "calls").read_text()


def _healthcheck(args: tuple[str, ...], env: dict[str, str]) -> int:
    """The exit status of deploy/docker/healthcheck.py run with these arguments and environment."""
    script = DEPLOY / "docker" / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, timeout=30
    ).returncode


def test_healthcheck_speaks_tls(generated_secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage servers' probe (riveg-healthcheck grpc [SERVICE]) with base/config.env's TLS
    settings and the generated certificates: SERVING passes, NOT_SERVING fails; without the
    client certificate, or in plaintext, the server refuses the connection."""
    config = _env_file(DEPLOY / "base" / "config.env")
    mounts = {
        "/etc/riveg/tls/server/": f"{generated_secrets}/riveg-grpc-server/",
        "/etc/riveg/tls/client/": f"{generated_secrets}/riveg-grpc-client/",
    }
    for key in [k for k in os.environ if k.startswith("RIVEG_")]:
        monkeypatch.delenv(key)
    for key, value in config.items():
        if key.startswith("RIVEG_GRPC_"):
            for mount, folder in mounts.items():
                value = value.replace(mount, folder)
            monkeypatch.setenv(key, value)
    env = dict(os.environ)
    settings = load_settings()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    status = health.HealthServicer()
    status.set("", health_pb2.HealthCheckResponse.SERVING)
    status.set("riveg.v1.VgService", health_pb2.HealthCheckResponse.SERVING)
    status.set("riveg.v1.SegService", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(settings.grpc))
    server.start()

    def probe(*args: str, **overrides: str) -> int:
        return _healthcheck(args, {**env, "RIVEG_GRPC_PORT": str(port), **overrides})

    try:
        assert probe("grpc") == 0
        assert probe("grpc", "riveg.v1.VgService") == 0
        assert probe("grpc", "riveg.v1.SegService") == 1
        assert probe("grpc", RIVEG_GRPC_MTLS="false") == 1  # no client certificate
        assert probe("grpc", RIVEG_GRPC_MTLS="false", RIVEG_GRPC_TLS="false") == 1  # plaintext
        assert probe("grpc", "a", "b") == 2
    finally:
        server.stop(0)


def test_healthcheck_http() -> None:
    """The gateway image's Docker health check (riveg-healthcheck http [PATH]): 200 passes, any
    other status or no server fails; it asks loopback when the gateway binds every address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response({"/healthz": 200, "/readyz": 503}.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def probe(*args: str, port: int = server.server_address[1]) -> int:
        env = {**os.environ, "RIVEG_GATEWAY_HOST": "0.0.0.0", "RIVEG_GATEWAY_PORT": str(port)}
        return _healthcheck(args, env)

    try:
        assert probe("http") == 0
        assert probe("http", "/healthz") == 0
        assert probe("http", "/readyz") == 1
        assert probe("http", "a", "b") == 2
    finally:
        server.shutdown()
        server.server_close()
    assert probe("http", port=server.server_address[1]) == 1  # nothing listening


def test_healthcheck_worker_ping(tmp_path: Path) -> None:
    """The workers' liveness probe (riveg-healthcheck worker-ping) against a real `riveg worker
    pipeline` on the machine's RabbitMQ: passes while the worker of this machine answers, fails
    once it stopped; without a broker URL it fails."""
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    if not port_open("127.0.0.1", 5672):
        pytest.skip("RabbitMQ (127.0.0.1:5672) must run: .ci/run starts it")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    probe_env = {**clean, "RIVEG_BROKER_URL": broker}
    assert _healthcheck(("worker-ping",), clean) == 1  # no RIVEG_BROKER_URL
    if _healthcheck(("worker-ping",), probe_env) == 0:
        pytest.skip("another worker on this machine answers pings on 127.0.0.1:5672 already")
    prefix = f"riveg-test-{secrets.token_hex(4)}"
    env = {
        **probe_env,
        "RIVEG_BROKER_QUEUE_PREFIX": prefix,
        "RIVEG_BROKER_RESULT_BACKEND": "redis://127.0.0.1:6379/12",
        "RIVEG_STORE_KIND": "local",
        "RIVEG_STORE_PATH": str(tmp_path / "store"),
    }
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [console_script("riveg"), "worker", "pipeline", "--concurrency", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _healthcheck(("worker-ping",), probe_env) != 0:
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in 60 s:\n{log.read_text()[-3000:]}"
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert _healthcheck(("worker-ping",), probe_env) == 1, "a stopped worker passes"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        delete_queues(broker, prefix)


# --- monitoring: metrics ports, Prometheus operator objects, alerts, dashboard, tracing ------

MONITORING_DIR = DEPLOY / "components" / "monitoring"
DASHBOARD = MONITORING_DIR / "dashboards" / "riveg.json"
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}  # monitoring.coreos.com/v1
# Labels Prometheus gives every series of a PodMonitor's target
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "job", "instance"})
# Series that do not come from RiVEG's code, and their own labels: up (Prometheus, per target),
# kube-state-metrics, RabbitMQ's exporter (/metrics/per-object, per queue).
EXTERNAL_METRICS = {
    "up": frozenset(),
    "kube_deployment_status_replicas_available": frozenset({"deployment"}),
    "rabbitmq_queue_messages_ready": frozenset({"queue", "vhost"}),
    "rabbitmq_queue_messages_unacked": frozenset({"queue", "vhost"}),
    "rabbitmq_queue_consumers": frozenset({"queue", "vhost"}),
}
# The values the code gives its bounded labels (metric family, label): riveg/orchestration
# (tasks.py, notify.py), riveg/serving (server.py, manager.py: gRPC status code names),
# riveg/gateway/app.py.
LABEL_VALUES = {
    ("riveg_posts_finished", "outcome"): {"done", "failed"},
    ("riveg_post_duration_seconds", "outcome"): {"done", "failed"},
    ("riveg_tasks", "outcome"): {"success", "retry", "bad_post", "failure"},
    ("riveg_stage_model_loads", "outcome"): {"startup", "swap", "error"},
    ("riveg_gateway_posts", "outcome"): {"accepted", "duplicate", "refused"},
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# The alerts issue 19 asks for (a stage with no ready server, a queue growing, error ratios) and
# their companions
ALERTS = {
    "RivegStageNoReadyServer",
    "RivegStageServerDown",
    "RivegStageErrorRatio",
    "RivegModelLoadErrors",
    "RivegQueueGrowing",
    "RivegQueueWithoutConsumers",
    "RivegPostsFailing",
    "RivegGatewayErrorRatio",
    "RivegGatewayBacklogHigh",
}


@cache
def _rendered_with(overlay: str, *components: str) -> tuple[Obj, ...]:
    """The overlay with these components added (after its first one)."""
    with tempfile.TemporaryDirectory() as tmp:
        copied = Path(tmp) / "deploy"
        shutil.copytree(DEPLOY, copied)
        kustomization = copied / "overlays" / overlay / "kustomization.yaml"
        text = kustomization.read_text()
        anchor = re.search(r"^components:\n  - \S+\n", text, re.M)
        assert anchor, f"{overlay}: no components list"
        added = "".join(f"  - ../../components/{c}\n" for c in components)
        kustomization.write_text(text[: anchor.end()] + added + text[anchor.end() :])
        return tuple(_render(kustomization.parent))


@pytest.fixture
def monitored(overlay: str) -> list[Obj]:
    """The overlay with components/monitoring (a deep copy)."""
    return copy.deepcopy(list(_rendered_with(overlay, "monitoring")))


def _riveg_command(container: Obj) -> str | None:
    """`serve` or `worker` for a container running that RiVEG command, else None."""
    if container["image"].startswith("riveg/") and "command" not in container:
        command = container.get("args", [None])[0]
        return command if command in METRICS_PORT_NAMES else None
    return None


def test_metrics_ports(objs: list[Obj]) -> None:
    """Every container running `riveg serve` or `riveg worker` serves its metrics on a port of its
    own, declared under the expected name and equal to what the process binds (--metrics-port, else
    RIVEG_METRICS_PORT), on every address of the pod (RIVEG_METRICS_HOST=0.0.0.0); the gateway on
    its HTTP port, without a metrics server of its own."""
    seen = set()
    for workload in _find(objs, "Deployment"):
        pod = _pod_spec(workload)
        pod_ports: list[int] = []
        for container in _containers(pod):
            pod_ports += [p["containerPort"] for p in container.get("ports", [])]
            command = _riveg_command(container)
            if command is None:
                assert "RIVEG_METRICS_PORT" not in _env(container), container["name"]
                continue
            where = f"{workload['metadata']['name']}/{container['name']}"
            config = {**_config_maps(objs, container), **_env(container)}
            args = container["args"]
            bound = (
                args[args.index("--metrics-port") + 1]
                if "--metrics-port" in args
                else config.get("RIVEG_METRICS_PORT")
            )
            assert bound is not None, f"{where}: no metrics port"
            declared = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            name = METRICS_PORT_NAMES[command]
            assert declared.get(name) == int(bound) == METRICS_PORTS[name], where
            assert config["RIVEG_METRICS_HOST"] == "0.0.0.0", f"{where}: Prometheus must reach it"
            seen.add((workload["metadata"]["name"], command))
        assert len(pod_ports) == len(set(pod_ports)), f"{workload['metadata']['name']}: clash"
    expected = {(f"riveg-{s}", c) for s in STAGES for c in ("serve", "worker")}
    assert seen == expected | {("riveg-pipeline", "worker")}
    gateway = _container(_pod_spec(_one(objs, "Deployment", GATEWAY)), "gateway")
    assert "RIVEG_METRICS_PORT" not in {**_config_maps(objs, gateway), **_env(gateway)}


def test_metrics_settings_exist() -> None:
    """The metrics and tracing lines of config.env are settings the code reads."""
    config = _env_file(DEPLOY / "base" / "config.env")
    for key in ("RIVEG_METRICS_HOST", "RIVEG_TRACING_EXPORTER"):
        section, field = key.removeprefix("RIVEG_").lower().split("_", 1)
        assert field in type(getattr(Settings(), section)).model_fields, key
    assert config["RIVEG_TRACING_EXPORTER"] == "none", "tracing is opt-in (components/tracing)"


def test_monitoring_component_renders(monitored: list[Obj], objs: list[Obj], overlay: str) -> None:
    """components/monitoring adds its PodMonitors, PrometheusRule and dashboard ConfigMap to either
    overlay, in its namespace, and changes nothing else."""
    namespace = {"dev": "riveg-dev", "gpu": "riveg"}[overlay]
    added = [o for o in monitored if o not in objs]
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in added)
    assert kinds == [
        ("ConfigMap", "riveg-grafana-dashboard"),
        ("PodMonitor", "rabbitmq"),
        ("PodMonitor", "riveg-gateway"),
        ("PodMonitor", "riveg-stage-servers"),
        ("PodMonitor", "riveg-workers"),
        ("PrometheusRule", "riveg"),
    ]
    assert len(monitored) == len(objs) + len(added), "nothing else changes"
    for obj in added:
        assert obj["metadata"]["namespace"] == namespace
        if obj["kind"] in MONITORING_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    dashboard = _one(monitored, "ConfigMap", "riveg-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    assert dashboard["data"] == {"riveg.json": DASHBOARD.read_text()}
    kv = pytest.importorskip("kubernetes_validate", reason=INSTALL_HINT)
    for version in K8S_VERSIONS:
        kv.validate(dashboard, version, strict=True)


@cache
def _monitoring_validator(kind: str) -> Any:
    """jsonschema validator for a monitoring.coreos.com/v1 kind, from the Prometheus operator's
    CRDs (cloudcoil models)."""
    jsonschema = pytest.importorskip("jsonschema", reason=INSTALL_HINT)
    models = pytest.importorskip("cloudcoil.models.prometheus_operator.v1", reason=INSTALL_HINT)
    schema = getattr(models, kind).model_json_schema(by_alias=True)
    _forbid_unknown(schema)
    return jsonschema.Draft202012Validator(schema)


def test_monitoring_schemas(monitored: list[Obj]) -> None:
    errors = [
        f"{o['kind']}/{o['metadata']['name']} {list(e.absolute_path)}: {e.message}"
        for o in monitored
        if o["kind"] in MONITORING_KINDS
        for e in _monitoring_validator(o["kind"]).iter_errors(o)
    ]
    assert not errors, "\n".join(errors)


def test_monitoring_validation_is_strict() -> None:
    objs = list(_rendered_with("gpu", "monitoring"))
    monitor = copy.deepcopy(_one(objs, "PodMonitor", "riveg-workers"))
    monitor["spec"]["podMetricsEndpoints"][0]["portName"] = "worker-metrics"  # not a field
    rule = copy.deepcopy(_one(objs, "PrometheusRule", "riveg"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    assert len(list(_monitoring_validator("PodMonitor").iter_errors(monitor))) == 1
    assert len(list(_monitoring_validator("PrometheusRule").iter_errors(rule))) == 1


def _targets(objs: list[Obj]) -> list[dict[str, str]]:
    """What the PodMonitors make Prometheus scrape: per selected pod and matching container port,
    its target labels (job, namespace, container, endpoint), the port number and the path."""
    targets = []
    workloads = {w["metadata"]["name"]: w for w in _workloads(objs)}
    for monitor in _find(objs, "PodMonitor"):
        spec = monitor["spec"]
        namespace = monitor["metadata"]["namespace"]
        for name, labels in _pod_labels(objs).items():
            if not _selects(spec["selector"], labels):
                continue
            for endpoint in spec["podMetricsEndpoints"]:
                for container in _containers(_pod_spec(workloads[name])):
                    for port in container.get("ports", []):
                        if port["name"] != endpoint["port"]:
                            continue
                        job = labels.get(spec.get("jobLabel", ""))
                        targets.append(
                            {
                                "job": job or f"{namespace}/{monitor['metadata']['name']}",
                                "namespace": namespace,
                                "container": container["name"],
                                "endpoint": port["name"],
                                "workload": name,
                                "port": str(port["containerPort"]),
                                "path": endpoint.get("path", "/metrics"),
                            }
                        )
    return targets


def test_pod_monitors_scrape_every_process(monitored: list[Obj]) -> None:
    """Each PodMonitor selects existing pods, and every pod it selects has the named port; together
    they scrape every RiVEG process' metrics port, the gateway's /metrics and RabbitMQ's per-queue
    metrics, each admitted from Prometheus by the NetworkPolicies."""
    workloads = {w["metadata"]["name"]: w for w in _workloads(monitored)}
    targets = _targets(monitored)
    for monitor in _find(monitored, "PodMonitor"):
        selected = [
            n
            for n, labels in _pod_labels(monitored).items()
            if _selects(monitor["spec"]["selector"], labels)
        ]
        assert selected, f"PodMonitor {monitor['metadata']['name']} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for name in selected:
                ports = [
                    p["name"]
                    for c in _containers(_pod_spec(workloads[name]))
                    for p in c.get("ports", [])
                ]
                assert ports.count(endpoint["port"]) == 1, (monitor["metadata"]["name"], name)
    expected = set()
    for name, workload in workloads.items():
        for container in _containers(_pod_spec(workload)):
            command = _riveg_command(container)
            if command is not None:
                expected.add((name, container["name"], METRICS_PORT_NAMES[command], "/metrics"))
    expected |= {
        (GATEWAY, "gateway", "http", "/metrics"),
        ("rabbitmq", "rabbitmq", "prometheus", "/metrics/per-object"),
    }
    scraped = [(t["workload"], t["container"], t["endpoint"], t["path"]) for t in targets]
    assert sorted(scraped) == sorted(expected), "each metrics endpoint scraped exactly once"
    for target in targets:
        peers = _peers(monitored, target["workload"], "Ingress", int(target["port"]))
        assert MONITORING in peers, target


def _rule_exprs(objs: list[Obj]) -> dict[str, str]:
    """Every PrometheusRule expression: "<rule>/<alert or record>#<n>" -> PromQL."""
    exprs = {}
    for rule in _find(objs, "PrometheusRule"):
        for group in rule["spec"]["groups"]:
            for n, item in enumerate(group["rules"]):
                name = item.get("alert") or item.get("record")
                exprs[f"{rule['metadata']['name']}/{name}#{n}"] = str(item["expr"])
    return exprs


def _dashboard_exprs(dashboard: Obj) -> dict[str, str]:
    """Every PromQL expression of the dashboard: its panels' targets and its query variables'
    (label_values(EXPR, label)), with Grafana's interval variables put in."""
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['id']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            exprs[f"variable {variable['name']}"] = match.group(1)
    for key, expr in exprs.items():
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        exprs[key] = expr
    return exprs


@cache
def _code_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Series name -> (metric family, label names) of every Prometheus metric RiVEG defines (stage
    servers, workers, gateway): counters as <family>_total, histograms as _bucket (with le), _sum
    and _count, gauges as they are."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    series = {}
    modules = (riveg.serving.metrics, riveg.orchestration.metrics, riveg.gateway.metrics)
    for collector in (c for m in modules for c in vars(m).values()):
        if isinstance(collector, MetricWrapperBase):
            (family,) = collector.describe()
            labels = frozenset(collector._labelnames)
            for suffix in suffixes[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = (family.name, labels | extra)
    assert len(series) > 20, series
    return series


def _check_promql(where: str, expr: str) -> set[str]:
    """Parse ``expr`` and check it against the code's metrics: every series exists, every label it
    matches or groups by is one the series has (or Prometheus' target labels), bounded labels take
    values the code gives them, histogram_quantile reads buckets by le. Its series names."""
    promql = pytest.importorskip("promql_parser", reason=INSTALL_HINT)
    try:
        ast = promql.parse(expr)
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}\n{expr}")
    known = {name: labels for name, (_, labels) in _code_metrics().items()} | EXTERNAL_METRICS
    families = {name: family for name, (family, _) in _code_metrics().items()}
    names: set[str] = set()

    def selectors(node: Any) -> list[Any]:
        found: list[Any] = []
        promql.walk(
            node, lambda n: found.append(n) if isinstance(n, promql.VectorSelector) else None
        )
        return found

    for node in selectors(ast):
        assert node.name in known, f"{where}: unknown series {node.name}"
        names.add(node.name)
        for matcher in node.matchers.matchers:
            label = matcher.name
            assert label in known[node.name] | TARGET_LABELS, f"{where}: {node.name} {label}"
            values = LABEL_VALUES.get((families.get(node.name, ""), label))
            exact = matcher.op in (promql.MatchOp.Equal, promql.MatchOp.NotEqual)
            if values is not None and exact:
                assert matcher.value in values, f"{where}: {label}={matcher.value!r}"

    def visit(node: Any) -> None:
        if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            inner = selectors(node.expr)
            have = set(TARGET_LABELS).union(*(known.get(s.name, set()) for s in inner))
            missing = set(node.modifier.labels) - have
            assert not missing, f"{where}: grouping by {missing}, which no series has"
        elif isinstance(node, promql.Call) and node.func.name == "histogram_quantile":
            inner = selectors(node.args[1])
            assert inner and all(s.name.endswith("_bucket") for s in inner), where
            grouped = node.args[1]
            assert isinstance(grouped, promql.AggregateExpr), where
            assert "le" in grouped.modifier.labels, f"{where}: buckets summed without le"

    promql.walk(ast, visit)
    return names


def test_alert_rules(monitored: list[Obj]) -> None:
    """Every rule parses and uses only series and labels that exist; the alerts of issue 19 are
    there, each with a severity, a summary and a description; the stage alerts cover every stage,
    their job and container matchers name real scrape targets, the queue alerts every RiVEG
    queue; the backlog alert fires at 80 % of RIVEG_GATEWAY_MAX_BACKLOG."""
    (rule,) = _find(monitored, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} == ALERTS
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]
    for where, expr in _rule_exprs(monitored).items():
        _check_promql(where, expr)
    promql = pytest.importorskip("promql_parser", reason=INSTALL_HINT)
    targets = _targets(monitored)

    def matchers(expr: str, series: str) -> list[Any]:
        found: list[Any] = []
        promql.walk(
            promql.parse(expr),
            lambda n: (
                found.extend(n.matchers.matchers)
                if isinstance(n, promql.VectorSelector) and n.name == series
                else None
            ),
        )
        return found

    down = [a for a in alerts if a["alert"] == "RivegStageServerDown"]
    assert sorted(a["labels"]["stage"] for a in down) == sorted(STAGES)
    for alert in down:
        wanted = {m.name: m.value for m in matchers(alert["expr"], "up")}
        assert wanted == {"job": f"riveg-{alert['labels']['stage']}", "container": "server"}
        hits = [t for t in targets if wanted.items() <= t.items()]
        assert [t["endpoint"] for t in hits] == ["metrics"], alert["expr"]
    (ready,) = [a for a in alerts if a["alert"] == "RivegStageNoReadyServer"]
    (deployments,) = [
        m.value for m in matchers(ready["expr"], "kube_deployment_status_replicas_available")
    ]
    for name in (o["metadata"]["name"] for o in _find(monitored, "Deployment")):
        assert bool(re.fullmatch(deployments, name)) == (name in {f"riveg-{s}" for s in STAGES})
    for name in ("RivegQueueGrowing", "RivegQueueWithoutConsumers"):
        (alert,) = [a for a in alerts if a["alert"] == name]
        series = [s for s in EXTERNAL_METRICS if s.startswith("rabbitmq_")]
        queues = [m.value for s in series for m in matchers(alert["expr"], s) if m.name == "queue"]
        assert queues, name
        for queue in queues:
            assert all(re.fullmatch(queue, f"riveg.{q}") for q in QUEUES), (name, queue)
            assert not re.fullmatch(queue, "celery"), (name, queue)
    config = _one(monitored, "ConfigMap", _config_map_name(monitored, "riveg-config"))["data"]
    (backlog,) = [a for a in alerts if a["alert"] == "RivegGatewayBacklogHigh"]
    threshold = float(re.search(r">\s*([0-9.]+)\s*$", backlog["expr"]).group(1))
    assert threshold == 0.8 * int(config["RIVEG_GATEWAY_MAX_BACKLOG"])


def _overlaps(a: Obj, b: Obj) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_grafana_dashboard() -> None:
    """dashboards/riveg.json is a Grafana dashboard (schemaVersion, uid, panels on a 24-column grid
    without overlaps, each with Prometheus targets of the dashboard's data source variable); every
    query parses and uses only series and labels that exist; the panels cover posts/s, post
    latency, stage latency, rate, errors and calls in flight, queue depth, task retries and
    failures, model versions and the gateway's requests, posts and backlog."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"] and "id" not in dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    boxes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid) and 0 <= grid["x"] < grid["x"] + grid["w"] <= 24
        assert not [b for b in boxes if _overlaps(b, grid)], f"panel {panel['id']} overlaps"
        boxes.append(grid)
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "table", "stat", "gauge", "bargauge"}, panel["id"]
        assert panel["title"] and panel["datasource"] == source, panel["id"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["id"]
        for target in panel["targets"]:
            assert target["datasource"] == source and target["expr"], panel["id"]
            for name in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert name in variables or f"${name}" in GRAFANA_VARIABLES, name
    used: set[str] = set()
    for where, expr in _dashboard_exprs(dashboard).items():
        used |= _check_promql(where, expr)
    wanted = {
        "riveg_posts_finished_total",
        "riveg_post_duration_seconds_bucket",
        "riveg_stage_request_duration_seconds_bucket",
        "riveg_stage_requests_total",
        "riveg_stage_in_flight_requests",
        "riveg_stage_model_info",
        "riveg_tasks_total",
        "rabbitmq_queue_messages_ready",
        "riveg_gateway_requests_total",
        "riveg_gateway_posts_total",
        "riveg_gateway_backlog_jobs",
    }
    assert wanted <= used, wanted - used
    (table,) = [p for p in dashboard["panels"] if p["type"] == "table"]
    (target,) = table["targets"]
    assert "riveg_stage_model_info" in target["expr"] and target["format"] == "table"
    assert target["instant"] is True


def test_tracing_component(objs: list[Obj], overlay: str) -> None:
    """Tracing is off in the overlays; components/tracing turns it on (OTLP/HTTP to the collector)
    and lets every RiVEG process, and nothing else, reach the collector's port."""
    from urllib.parse import urlsplit

    config = _one(objs, "ConfigMap", _config_map_name(objs, "riveg-config"))["data"]
    assert config["RIVEG_TRACING_EXPORTER"] == "none"
    traced = copy.deepcopy(list(_rendered_with(overlay, "tracing")))
    config = _one(traced, "ConfigMap", _config_map_name(traced, "riveg-config"))["data"]
    assert config["RIVEG_TRACING_EXPORTER"] == "otlp"
    url = urlsplit(config["RIVEG_TRACING_ENDPOINT"])
    assert url.scheme == "http" and url.path == "/v1/traces" and url.port == 4318
    service, namespace = url.hostname.split(".")[:2]
    policy = _one(traced, "NetworkPolicy", "riveg-tracing-egress")
    (rule,) = policy["spec"]["egress"]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
    collector = f"ns:{namespace}/app.kubernetes.io/name={service}"
    for workload in _pod_labels(traced):
        expected = {collector} if workload in WORKERS | {GATEWAY} else set()
        assert _peers(traced, workload, "Egress", url.port) == expected, workload
        assert _peers(objs, workload, "Egress", url.port) == set(), workload
    kv = pytest.importorskip("kubernetes_validate", reason=INSTALL_HINT)
    kv.validate(policy, K8S_VERSIONS[0], strict=True)


# --- model versions: one place, one-line upgrade ---------------------------------------------


def test_model_version_set_in_one_place() -> None:
    sources = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in {".yaml", ".env"}]
    for stage in STAGES:
        hits = [
            str(p.relative_to(DEPLOY))
            for p in sources
            for line in p.read_text().splitlines()
            if re.search(rf"\bRIVEG_{stage.upper()}_MODEL=", line)
        ]
        assert hits == ["base/kustomization.yaml"], f"{stage}: {hits}"


def test_vg_model_upgrade_rolls_only_vg(tmp_path: Path) -> None:
    """Editing the VG model line changes the riveg-vg pod template and nothing else that runs."""
    before = _rendered("gpu")
    copied = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copied)
    kustomization = copied / "base" / "kustomization.yaml"
    text = kustomization.read_text()
    new = re.sub(r"RIVEG_VG_MODEL=[^\]\s]+", "RIVEG_VG_MODEL=owlv2@2", text)
    assert new.count("\n") == text.count("\n") and new != text
    kustomization.write_text(new)
    after = _render(copied / "overlays" / "gpu")

    def templates(objs: tuple[Obj, ...] | list[Obj]) -> dict[str, str]:
        return {
            f"{o['kind']}/{o['metadata']['name']}": json.dumps(
                o["spec"]["template"], sort_keys=True
            )
            for o in objs
            if o["kind"] in {"Deployment", "StatefulSet"}
        }

    old, cur = templates(before), templates(after)
    assert [k for k in old if old[k] != cur[k]] == ["Deployment/riveg-vg"]
    server = _container(_pod_spec(_one(after, "Deployment", "riveg-vg")), "server")
    assert _config_maps(after, server)["RIVEG_VG_MODEL"] == "owlv2@2"


# --- images ----------------------------------------------------------------------------------


def _dockerfile_stages() -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """Stage name -> [(INSTRUCTION, arguments)], and stage name -> what it is FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = re.split(r"\s+as\s+", args, flags=re.I)
            base, name = parts[0], parts[1] if len(parts) > 1 else f"#{len(stages)}"
            current = []
            stages[name] = current
            parents[name] = base
        elif stages:
            current.append((instruction, args))
    return stages, parents


def _lineage(stage: str) -> list[str]:
    stages, parents = _dockerfile_stages()
    chain = [stage]
    while parents[chain[-1]] in stages:
        chain.append(parents[chain[-1]])
    return chain


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=Path(sys.executable).parent
    )
    if hadolint is None:
        pytest.skip(f"hadolint not installed: {INSTALL_HINT}")
    config = DEPLOY / "docker" / ".hadolint.yaml"
    proc = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("target", [*STAGES, "worker", "gateway"])
def test_dockerfile_target(target: str) -> None:
    stages, _ = _dockerfile_stages()
    assert target in stages, f"no target {target}"
    instructions = [i for s in _lineage(target) for i in stages[s]]
    users = [args for name, args in instructions if name == "USER"]
    assert users and all(not re.match(r"(root|0)(:|$)", u) for u in users), "must not run as root"
    health = [args for name, args in stages[target] if name == "HEALTHCHECK"]
    assert health, "needs a HEALTHCHECK"
    cmd = json.loads(dict(stages[target])["CMD"])
    expected = {"worker": ["worker", "pipeline"], "gateway": ["gateway"]}
    assert cmd == expected.get(target, ["serve", target])
    if target == "gateway":
        config = _env_file(DEPLOY / "base" / "config.env")
        assert dict(stages[target])["EXPOSE"] == config["RIVEG_GATEWAY_PORT"]
        assert '"riveg-healthcheck", "http", "/healthz"' in health[0]
    elif target != "worker":
        assert dict(stages[target])["EXPOSE"] == str(DEFAULT_PORTS[target])


def test_dockerfile_variants_and_pins() -> None:
    text = DOCKERFILE.read_text()
    assert "torch==2.13.0" in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"https://download\.pytorch\.org/whl/\$\{TORCH_CUDA\}", text)
    assert re.search(r"ARG TORCH_CUDA=cu12\d", text)
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))
    assert "pip install --no-cache-dir -r /tmp/requirements.lock" in text
    assert "--no-deps" in text and "pip check" in text


def test_lock_pins_every_runtime_dependency() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"unpinned lock line {line!r}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stale = []
    for spec in project["dependencies"]:
        req = Requirement(spec)
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            stale.append(f"{spec} (lock: {version})")
    assert not stale, f"requirements.lock is stale, run python deploy/docker/lock.py: {stale}"


def test_dockerignore_admits_only_what_copy_needs() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    assert patterns[0] == "**", "start from nothing and re-admit"
    admitted = [p[1:] for p in patterns if p.startswith("!")]
    assert not any(a in {".venv", ".git", "deploy"} for a in admitted)
    stages, _ = _dockerfile_stages()
    for instruction, args in (i for s in stages.values() for i in s):
        if instruction == "COPY" and "--from=" not in args:
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                assert any(source == a or source.startswith(a + "/") for a in admitted), (
                    f"COPY {source} is excluded by .dockerignore"
                )
