#!/usr/bin/env bash
# Create the Secrets the manifests reference by name (nothing secret is rendered from the
# repository, and no pod starts without its Secrets):
#
#   riveg-broker       RABBITMQ_DEFAULT_USER, RABBITMQ_DEFAULT_PASS, RIVEG_BROKER_URL
#   riveg-store        RIVEG_S3_ACCESS_KEY, RIVEG_S3_SECRET_KEY (also MinIO's root credentials)
#   riveg-redis        REDIS_PASSWORD, RIVEG_BROKER_RESULT_BACKEND (redis://:<password>@redis...)
#   riveg-admin        RIVEG_GRPC_ADMIN_TOKEN: ModelAdmin Load/Rollback (stage servers only)
#   riveg-grpc-server  kubernetes.io/tls: the stage servers' certificate (tls.crt, tls.key, ca.crt)
#   riveg-grpc-client  kubernetes.io/tls: the workers' client certificate for mutual TLS
#   riveg-minio-tls    kubernetes.io/tls: MinIO's certificate (S3 over HTTPS, gpu overlay)
#   riveg-llm          RIVEG_LLM_API_KEY (openai LLM backend), only when riveg-llm.env exists
#   riveg-gateway      api-keys (the gateway's API keys file: one `sha256:<hex digest>` per key),
#                      RIVEG_GATEWAY_CALLBACK_SECRET (HMAC key signing the callbacks)
#
#   deploy/secrets/create-secrets.sh [NAMESPACE]     (default: riveg; dev overlay: riveg-dev)
#
# Credentials come from <dir>/<name>.env when present (git-ignored; start from the .env.example
# next to it); otherwise random ones are generated. <dir> is this folder, or $RIVEG_SECRETS_DIR.
# The gateway's API keys are stored hashed only: riveg-gateway.env may list plain keys (hashed
# here) or `sha256:<hex>` digests (RIVEG_GATEWAY_API_KEYS, comma-separated); without any, one key
# is generated and printed once, on stdout: hand it to the client, it is not kept anywhere.
#
# Certificates come from <dir>/tls/ when it holds ca.crt, server.crt, server.key, client.crt,
# client.key, minio.crt and minio.key (your own PKI; PEM). Otherwise a new CA is made with
# openssl and signs the three (ECDSA P-256, 825 days): the servers' with the names of every stage
# Service (riveg-<stage>, riveg-<stage>.<ns>.svc[.cluster.local]), localhost and 127.0.0.1 (the
# workers call 127.0.0.1); the client's with common name riveg-worker; MinIO's with minio,
# minio.<ns>.svc[.cluster.local], *.minio-headless.<ns>.svc, localhost and 127.0.0.1. The CA's
# key is discarded: to renew, delete the three TLS Secrets, run this again and restart the pods.
#
# A Secret that already exists is left alone: RabbitMQ, MinIO and Redis keep the credentials they
# first started with, so rotating them is a deliberate, documented step (deploy/README.md). The
# three TLS Secrets must come from one CA: if only some of them exist, nothing is created.
set -euo pipefail

ns="${1:-riveg}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${RIVEG_SECRETS_DIR:-$here}"
stages=(llm mner ve vg seg) # riveg/core/stages.py (tests/test_deploy.py checks the list)
days=825
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
umask 077

random() { openssl rand -hex 24 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(24))'; }

sha256() { # the SHA-256 hex digest of $1 (no newline added)
    if command -v openssl >/dev/null 2>&1; then
        printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1
    else
        printf '%s' "$1" | python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
    fi
}

env_value() { # FILE KEY: the value of KEY= in an env file (empty when absent)
    sed -n "s/^$2=//p" "$1" | tail -n 1
}

exists() { kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; }

create() { # NAME ENV_FILE
    if exists "$1"; then
        echo "secret $ns/$1 exists: kept"
    else
        kubectl -n "$ns" create secret generic "$1" --from-env-file="$2"
    fi
}

env_file() { # NAME: the operator's env file, or a generated one (its lines on stdin)
    if [[ -f "$dir/$1.env" ]]; then
        cat >/dev/null
        echo "$dir/$1.env"
    else
        cat >"$tmp/$1.env"
        echo "$tmp/$1.env"
    fi
}

# The TLS Secrets: all kept, or all made now from one CA (checked before anything is created).
tls_secrets=(riveg-grpc-server riveg-grpc-client riveg-minio-tls)
tls_files=(ca.crt server.crt server.key client.crt client.key minio.crt minio.key)
present=()
for name in "${tls_secrets[@]}"; do
    if exists "$name"; then present+=("$name"); fi
done
if ((${#present[@]} > 0 && ${#present[@]} < ${#tls_secrets[@]})); then
    echo "error: only ${present[*]} of ${tls_secrets[*]} exist in $ns; they must come from one CA:" >&2
    echo "  kubectl -n $ns delete secret ${present[*]}   and run this again" >&2
    exit 1
fi
supplied=0
for f in "${tls_files[@]}"; do [[ -f "$dir/tls/$f" ]] && supplied=$((supplied + 1)); done
if ((supplied > 0 && supplied < ${#tls_files[@]})); then
    echo "error: $dir/tls/ must hold all of ${tls_files[*]} (or none: then they are generated)" >&2
    exit 1
fi

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"

# --- credentials ------------------------------------------------------------------------------

# The gateway first: its env file is checked before any Secret is created. Its API keys file holds
# SHA-256 digests only; the callbacks' HMAC key is taken as it is.
if exists riveg-gateway; then
    echo "secret $ns/riveg-gateway exists: kept"
else
    keys="" callback=""
    if [[ -f "$dir/riveg-gateway.env" ]]; then
        keys="$(env_value "$dir/riveg-gateway.env" RIVEG_GATEWAY_API_KEYS)"
        callback="$(env_value "$dir/riveg-gateway.env" RIVEG_GATEWAY_CALLBACK_SECRET)"
        if [[ "$keys$callback" == *"<"* ]]; then
            echo "error: $dir/riveg-gateway.env still holds a <placeholder>" >&2
            exit 1
        fi
    fi
    : >"$tmp/api-keys"
    IFS=',' read -r -a entries <<<"$keys"
    for entry in ${entries[@]+"${entries[@]}"}; do
        entry="${entry//[[:space:]]/}"
        if [[ "$entry" == sha256:* ]]; then
            if [[ ! "$entry" =~ ^sha256:[0-9a-f]{64}$ ]]; then
                echo "error: $dir/riveg-gateway.env: ${entry:0:16}... is not sha256:<64 lower-case hex digits>" >&2
                exit 1
            fi
            echo "$entry" >>"$tmp/api-keys"
        elif [[ -n "$entry" ]]; then
            echo "sha256:$(sha256 "$entry")" >>"$tmp/api-keys"
        fi
    done
    if [[ ! -s "$tmp/api-keys" ]]; then
        key="$(random)"
        echo "sha256:$(sha256 "$key")" >"$tmp/api-keys"
        echo "riveg-gateway: generated an API key; only its SHA-256 is stored, note it now:"
        echo "RIVEG_GATEWAY_API_KEY=$key"
    fi
    printf '%s' "${callback:-$(random)}" >"$tmp/callback-secret"
    kubectl -n "$ns" create secret generic riveg-gateway \
        --from-file=api-keys="$tmp/api-keys" \
        --from-file=RIVEG_GATEWAY_CALLBACK_SECRET="$tmp/callback-secret"
fi

pass="$(random)"
create riveg-broker "$(env_file riveg-broker <<EOF
RABBITMQ_DEFAULT_USER=riveg
RABBITMQ_DEFAULT_PASS=$pass
RIVEG_BROKER_URL=amqp://riveg:$pass@rabbitmq.$ns.svc:5672//
EOF
)"

create riveg-store "$(env_file riveg-store <<EOF
RIVEG_S3_ACCESS_KEY=riveg
RIVEG_S3_SECRET_KEY=$(random)
EOF
)"

pass="$(random)"
create riveg-redis "$(env_file riveg-redis <<EOF
REDIS_PASSWORD=$pass
RIVEG_BROKER_RESULT_BACKEND=redis://:$pass@redis:6379/0
EOF
)"

create riveg-admin "$(env_file riveg-admin <<EOF
RIVEG_GRPC_ADMIN_TOKEN=$(random)
EOF
)"

if [[ -f "$dir/riveg-llm.env" ]]; then
    create riveg-llm "$dir/riveg-llm.env"
else
    echo "no $dir/riveg-llm.env: secret riveg-llm not created (only the openai LLM backend needs it)"
fi

# --- certificates -----------------------------------------------------------------------------

leaf() { # NAME COMMON_NAME EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
    cat >"$tmp/$1.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $2
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $3
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
${4:+subjectAltName = $4}
EOF
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -config "$tmp/$1.cnf" -keyout "$tls/$1.key" -out "$tmp/$1.csr" 2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$tmp/$1.csr" -CA "$tls/ca.crt" \
        -CAkey "$tmp/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$tmp/$1.cnf" -extensions ext -out "$tls/$1.crt" 2>/dev/null
}

if ((${#present[@]} == ${#tls_secrets[@]})); then
    echo "secrets $ns/${tls_secrets[*]} exist: kept"
    exit 0
elif ((supplied == ${#tls_files[@]})); then
    tls="$dir/tls"
    echo "certificates from $tls"
else
    tls="$tmp/tls"
    mkdir "$tls"
    cat >"$tmp/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = riveg-serve CA ($ns)
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 \
        -days "$((days + 1))" -config "$tmp/ca.cnf" -keyout "$tmp/ca.key" -out "$tls/ca.crt" \
        2>/dev/null
    sans="DNS:localhost,IP:127.0.0.1"
    for s in "${stages[@]}"; do
        sans+=",DNS:riveg-$s,DNS:riveg-$s.$ns,DNS:riveg-$s.$ns.svc,DNS:riveg-$s.$ns.svc.cluster.local"
    done
    leaf server riveg-stage-server serverAuth "$sans"
    leaf client riveg-worker clientAuth
    leaf minio minio serverAuth "DNS:minio,DNS:minio.$ns,DNS:minio.$ns.svc,\
DNS:minio.$ns.svc.cluster.local,DNS:*.minio-headless.$ns.svc,\
DNS:*.minio-headless.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
    echo "generated a CA and the stage server, worker and MinIO certificates (${days} days)"
fi

create_tls() { # NAME FILE_PREFIX
    kubectl -n "$ns" create secret generic "$1" --type=kubernetes.io/tls \
        --from-file=tls.crt="$tls/$2.crt" --from-file=tls.key="$tls/$2.key" \
        --from-file=ca.crt="$tls/ca.crt"
}
create_tls riveg-grpc-server server
create_tls riveg-grpc-client client
create_tls riveg-minio-tls minio
