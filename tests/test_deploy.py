"""deploy/: every overlay renders, validates against the Kubernetes and KEDA schemas, and keeps
the deployment's invariants; the Dockerfile lints and follows the image rules.

Tools come from .ci/deploy-tools.sh; a test whose tool is missing skips and says which.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from riveg.core.stages import STAGE_TABLE, STAGES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
LOCK = DEPLOY / "docker" / "requirements.lock"
OVERLAYS = ("dev", "gpu")
DEFAULT_PORTS = {name: stage.port for name, stage in STAGE_TABLE.items()}
SCALED = (*STAGES, "pipeline")  # Deployments driven by an autoscaler, named riveg-<x>
K8S_VERSIONS = ("1.29.0", "1.33.0")  # oldest with native sidecars on by default; a recent one
SECRETS = {"riveg-broker", "riveg-store"}
OPTIONAL_SECRETS = {"riveg-llm"}  # referenced with optional: true
INSTALL_HINT = "run `bash .ci/deploy-tools.sh`"

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


def test_references_resolve(objs: list[Obj]) -> None:
    """ConfigMaps (hash-suffixed) exist; Secrets are the two the operator creates (+ optional)."""
    for workload in _find(objs, "Deployment") + _find(objs, "StatefulSet"):
        for container in _containers(_pod_spec(workload)):
            for ref in container.get("envFrom", []):
                if "configMapRef" in ref:
                    _one(objs, "ConfigMap", ref["configMapRef"]["name"])
                elif ref["secretRef"]["name"] in OPTIONAL_SECRETS:
                    assert ref["secretRef"].get("optional") is True
                else:
                    assert ref["secretRef"]["name"] in SECRETS
            for value in _env(container).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    assert value["secretKeyRef"]["name"] in SECRETS
    assert not _find(objs, "Secret"), "Secrets must not be rendered from the repository"


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
    assert server["ports"] == [{"name": "grpc", "containerPort": port}]
    assert _env(server)["RIVEG_GRPC_PORT"] == str(port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == port, probe
    service_name = f"riveg.v1.{stage.capitalize()}Service"
    assert server["readinessProbe"]["grpc"]["service"] == service_name
    assert f"RIVEG_{stage.upper()}_MODEL" in _config_maps(objs, server)

    worker = _container(pod, "worker")
    assert worker in pod["containers"] and worker["args"] == ["worker", stage]
    assert _env(worker)[f"RIVEG_{stage.upper()}_ADDR"] == f"127.0.0.1:{port}"
    assert worker["image"] == server["image"]

    for container in _containers(pod):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "RIVEG_BROKER_URL" in _env(container) or container is server
        _assert_writable_dirs(container)


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
    for workload in _find(objs, "Deployment") + _find(objs, "StatefulSet"):
        for container in _containers(_pod_spec(workload)):
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", container["image"]
            if name.startswith("riveg/"):
                assert name.removeprefix("riveg/") in targets, f"no Dockerfile target for {name}"
                gpu_stage = overlay == "gpu" and workload["metadata"]["name"] != "riveg-pipeline"
                assert tag.endswith("-cuda" if gpu_stage else "-cpu"), container["image"]


# --- autoscaling -----------------------------------------------------------------------------


def test_autoscaling(objs: list[Obj], overlay: str) -> None:
    """Each Deployment has exactly one autoscaler; KEDA scales on its own queue's length."""
    scaled = _find(objs, "ScaledObject")
    hpas = _find(objs, "HorizontalPodAutoscaler")
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in scaled + hpas]
    assert sorted(targets) == sorted(f"riveg-{x}" for x in SCALED), "one autoscaler each"
    assert (scaled and not hpas) if overlay == "gpu" else (hpas and not scaled)
    for target in targets:
        _one(objs, "Deployment", target)
    for obj in scaled:
        name = obj["spec"]["scaleTargetRef"]["name"].removeprefix("riveg-")
        (trigger,) = obj["spec"]["triggers"]
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
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]


def test_pipeline_worker(objs: list[Obj]) -> None:
    pod = _pod_spec(_one(objs, "Deployment", "riveg-pipeline"))
    worker = _container(pod, "worker")
    assert worker["args"] == ["worker", "pipeline"]
    _assert_writable_dirs(worker)
    assert "nvidia.com/gpu" not in json.dumps(pod)
    _one(objs, "PodDisruptionBudget", "riveg-pipeline")


# --- data services and configuration ---------------------------------------------------------


def test_data_services(objs: list[Obj]) -> None:
    for name in ("rabbitmq", "minio", "redis"):
        sts = _one(objs, "StatefulSet", name)
        assert sts["spec"]["volumeClaimTemplates"], name
        (container,) = _containers(_pod_spec(sts))
        assert "readinessProbe" in container and "livenessProbe" in container, name
        _one(objs, "Service", name)
    config = _one(objs, "ConfigMap", _config_map_name(objs, "riveg-config"))["data"]
    assert config["RIVEG_STORE_KIND"] == "s3"
    assert config["RIVEG_S3_ENDPOINT"] == "minio:9000"
    assert config["RIVEG_BROKER_RESULT_BACKEND"].startswith("redis://redis:6379/")
    assert config["RIVEG_LOG_FORMAT"] == "json"
    assert not {"RIVEG_BROKER_URL", "RIVEG_S3_ACCESS_KEY", "RIVEG_S3_SECRET_KEY"} & set(config)


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
                if re.search("PASS|SECRET|URL", key):
                    assert "<" in value, f"{path.name}: {key} must be a placeholder"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/secrets/riveg-broker.env"], cwd=ROOT
    )
    assert ignored.returncode == 0, "real secret env files must be git-ignored"


def test_create_secrets_script(tmp_path: Path) -> None:
    """With no env files and no Secrets yet, it creates both, broker host as cluster DNS name."""
    log = tmp_path / "calls"
    stub = tmp_path / "kubectl"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'for a in "$@"; do case $a in --from-env-file=*) cat "${a#*=}" >> '
        f"{log};; esac; done\n"
        '[[ "$3" == get ]] && exit 1\nexit 0\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    script = DEPLOY / "secrets" / "create-secrets.sh"
    if any((DEPLOY / "secrets").glob("*.env")):
        pytest.skip("local secret env files present; the script would use them")
    subprocess.run(["bash", str(script), "riveg-dev"], env=env, check=True, timeout=30)
    calls = log.read_text()
    assert "-n riveg-dev create secret generic riveg-broker" in calls
    assert "-n riveg-dev create secret generic riveg-store" in calls
    assert re.search(
        r"RIVEG_BROKER_URL=amqp://riveg:[0-9a-f]{48}@rabbitmq\.riveg-dev\.svc:5672//", calls
    )
    assert re.search(r"RIVEG_S3_SECRET_KEY=[0-9a-f]{48}", calls)


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
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip(f"hadolint not installed: {INSTALL_HINT}")
    config = DEPLOY / "docker" / ".hadolint.yaml"
    proc = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("target", [*STAGES, "worker"])
def test_dockerfile_target(target: str) -> None:
    stages, _ = _dockerfile_stages()
    assert target in stages, f"no target {target}"
    instructions = [i for s in _lineage(target) for i in stages[s]]
    users = [args for name, args in instructions if name == "USER"]
    assert users and all(not re.match(r"(root|0)(:|$)", u) for u in users), "must not run as root"
    assert any(name == "HEALTHCHECK" for name, _ in stages[target]), "needs a HEALTHCHECK"
    cmd = json.loads(dict(stages[target])["CMD"])
    assert cmd == (["worker", "pipeline"] if target == "worker" else ["serve", target])
    if target != "worker":
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
