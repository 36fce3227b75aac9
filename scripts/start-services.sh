#!/usr/bin/env bash
# Start RabbitMQ and Redis on loopback if they are not answering yet (idempotent).
# Both come from Debian's packages; they are installed here when missing and apt-get can run.
set -uo pipefail

listening() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

install_if_missing() {  # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}

if ! listening 6379; then
    install_if_missing redis-server redis-server
    mkdir -p /tmp/riveg-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp/riveg-redis --logfile /tmp/riveg-redis/redis.log
fi

if ! listening 5672; then
    install_if_missing rabbitmq-server rabbitmq-server
    rabbitmq-server -detached
fi

for _ in $(seq 1 60); do
    listening 6379 && listening 5672 && break
    sleep 1
done
listening 6379 || { echo "start-services: Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
listening 5672 || { echo "start-services: RabbitMQ is not answering on 127.0.0.1:5672" >&2; exit 1; }
echo "start-services: RabbitMQ and Redis are up" >&2
