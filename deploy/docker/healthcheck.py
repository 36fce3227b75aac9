#!/opt/venv/bin/python
"""Container health check of the RiVEG-serve images: Docker HEALTHCHECK, and the Kubernetes
probes of the stage servers (Kubernetes' native gRPC probes cannot speak TLS).

    riveg-healthcheck grpc [SERVICE]   the stage server on this machine answers SERVING for
                                       SERVICE (default "": the whole server)
    riveg-healthcheck worker           the broker named by $RIVEG_BROKER_URL accepts TCP connections

The gRPC check connects the way the stage's worker does: the [grpc] settings from the
environment (RIVEG_GRPC_PORT, _HOST, _TLS, _TLS_CA, _TLS_SERVER_NAME, _MTLS, _TLS_CLIENT_CERT,
_TLS_CLIENT_KEY), so with TLS it verifies the server's certificate and, under mutual TLS,
presents the client certificate. Exit status 0 means healthy, 1 unhealthy, 2 a usage error.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def check_grpc(service: str = "") -> bool:
    """The gRPC health service reports ``service`` as SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from riveg.core.config import load_settings
    from riveg.serving.security import open_channel

    try:
        settings = load_settings().grpc
    except Exception as exc:  # a configuration error: report it in one line, unhealthy
        print(f"configuration: {exc}", file=sys.stderr)
        return False
    if not settings.port:
        print("RIVEG_GRPC_PORT is not set", file=sys.stderr)
        return False
    # The server binds [grpc] host; one bound to every address is reached on loopback.
    host = "127.0.0.1" if settings.host in ANY_ADDRESS else settings.host
    try:
        channel = open_channel(f"{host}:{settings.port}", settings, [])
    except Exception as exc:  # unreadable certificate or key
        print(f"configuration: {exc}", file=sys.stderr)
        return False
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code()} {exc.details() or ''}", file=sys.stderr)
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
    if argv[:1] == ["grpc"] and len(argv) <= 2:
        return 0 if check_grpc(*argv[1:]) else 1
    if argv == ["worker"]:
        return 0 if check_worker() else 1
    print("usage: riveg-healthcheck {grpc [SERVICE],worker}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
