#!/usr/bin/env bash
# Create the Secrets riveg-broker and riveg-store that the manifests reference by name, and
# riveg-llm (RIVEG_LLM_API_KEY for the openai LLM backend) when deploy/secrets/riveg-llm.env exists.
#
#   deploy/secrets/create-secrets.sh [NAMESPACE]     (default: riveg; dev overlay: riveg-dev)
#
# Values come from deploy/secrets/<name>.env when present (git-ignored; start from the
# .env.example next to it); otherwise random credentials are generated. A Secret that already
# exists is left alone: RabbitMQ and MinIO keep the credentials they first started with, so
# rotating them is a deliberate, documented step (deploy/README.md).
set -euo pipefail

ns="${1:-riveg}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

random() { openssl rand -hex 24 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(24))'; }

create() {  # NAME ENV_FILE
    if kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; then
        echo "secret $ns/$1 exists: kept"
    else
        kubectl -n "$ns" create secret generic "$1" --from-env-file="$2"
    fi
}

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"

broker="$here/riveg-broker.env"
if [[ ! -f "$broker" ]]; then
    broker="$tmp/riveg-broker.env"
    pass="$(random)"
    {
        echo "RABBITMQ_DEFAULT_USER=riveg"
        echo "RABBITMQ_DEFAULT_PASS=$pass"
        echo "RIVEG_BROKER_URL=amqp://riveg:$pass@rabbitmq.$ns.svc:5672//"
    } >"$broker"
fi
create riveg-broker "$broker"

store="$here/riveg-store.env"
if [[ ! -f "$store" ]]; then
    store="$tmp/riveg-store.env"
    {
        echo "RIVEG_S3_ACCESS_KEY=riveg"
        echo "RIVEG_S3_SECRET_KEY=$(random)"
    } >"$store"
fi
create riveg-store "$store"

llm="$here/riveg-llm.env"
if [[ -f "$llm" ]]; then
    create riveg-llm "$llm"
else
    echo "no $llm: secret riveg-llm not created (only the openai LLM backend needs it)"
fi
