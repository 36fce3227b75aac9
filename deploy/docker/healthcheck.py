#!/opt/venv/bin/python
"""Container health check of the RiVEG-serve images (Docker HEALTHCHECK; Kubernetes uses probes).

    riveg-healthcheck grpc     the stage server on 127.0.0.1:$RIVEG_GRPC_PORT answers SERVING
    riveg-healthcheck worker   the broker named by $RIVEG_BROKER_URL accepts TCP connections

Exit status 0 means healthy, 1 unhealthy.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

TIMEOUT_S = 3.0


def check_grpc() -> bool:
    """The gRPC health service reports the whole server ("") as SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = os.environ.get("RIVEG_GRPC_PORT", "")
    if not port:
        print("RIVEG_GRPC_PORT is not set", file=sys.stderr)
        return False
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code()}", file=sys.stderr)
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return serving


def check_worker() -> bool:
    """The Celery broker is reachable (the worker process itself is PID 1 of the container)."""
    url = urlsplit(os.environ.get("RIVEG_BROKER_URL", ""))
    if not url.hostname:
        print("RIVEG_BROKER_URL is not set", file=sys.stderr)
        return False
    try:
        with socket.create_connection((url.hostname, url.port or 5672), timeout=TIMEOUT_S):
            return True
    except OSError as exc:
        print(f"broker {url.hostname}:{url.port or 5672} unreachable: {exc}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    """Run the named check."""
    checks = {"grpc": check_grpc, "worker": check_worker}
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: riveg-healthcheck {{{','.join(checks)}}}", file=sys.stderr)
        return 2
    return 0 if checks[argv[0]]() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
