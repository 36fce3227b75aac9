#!/opt/venv/bin/python
"""Container health check of the RiVEG-serve images: Docker HEALTHCHECK, and the Kubernetes
probes of the stage servers (Kubernetes' native gRPC probes cannot speak TLS) and the workers.

    riveg-healthcheck grpc [SERVICE]   the stage server on this machine answers SERVING for
                                       SERVICE (default "": the whole server)
    riveg-healthcheck worker           the broker named by $RIVEG_BROKER_URL accepts TCP connections
    riveg-healthcheck worker-ping      the Celery worker on this machine (node name
                                       <name>@<hostname>) answers a ping through that broker
    riveg-healthcheck http [PATH]      the gateway on this machine answers 200 on PATH (default
                                       /healthz) at $RIVEG_GATEWAY_HOST:$RIVEG_GATEWAY_PORT

The gRPC check connects the way the stage's worker does: the [grpc] settings from the
environment (RIVEG_GRPC_PORT, _HOST, _TLS, _TLS_CA, _TLS_SERVER_NAME, _MTLS, _TLS_CLIENT_CERT,
_TLS_CLIENT_KEY), so with TLS it verifies the server's certificate and, under mutual TLS,
presents the client certificate. The worker check is Docker's (the worker image); Kubernetes
probes a worker with worker-ping, which asks it through the broker as `celery inspect ping` does:
the worker's consumer thread answers, not its task threads, so a worker busy with tasks passes
and one whose consumer froze fails. The HTTP check is for Docker only: Kubernetes probes the
gateway with httpGet. Exit status 0 means healthy, 1 unhealthy, 2 a usage error.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
PING_TIMEOUT_S = 5.0  # how long worker-ping waits for the worker's answer
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


def check_worker_ping() -> bool:
    """The Celery worker of this machine (node name ending with ``@<hostname>``, as `riveg
    worker` names it) answers a ping sent through the broker named by $RIVEG_BROKER_URL."""
    from celery import Celery

    url = os.environ.get("RIVEG_BROKER_URL", "")
    if not urlsplit(url).hostname:
        print("RIVEG_BROKER_URL is not set", file=sys.stderr)
        return False
    hostname = socket.gethostname()
    app = Celery("riveg-healthcheck", broker=url, set_as_current=False)
    # Give up at once on a broker that does not answer: the answer is "unhealthy", not a retry.
    app.conf.update(
        broker_connection_timeout=TIMEOUT_S, broker_transport_options={"max_retries": 0}
    )
    try:
        # Only the workers of this machine answer (glob on the node name); the first answer ends
        # the wait.
        replies = app.control.ping(
            timeout=PING_TIMEOUT_S, pattern=f"*@{hostname}", matcher="glob", limit=1
        )
    except Exception as exc:  # broker unreachable, refused credentials, ...
        print(f"ping failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    finally:
        app.close()
    if any(node.endswith(f"@{hostname}") for reply in replies for node in reply):
        return True
    print(f"no worker @{hostname} answered a ping within {PING_TIMEOUT_S:g} s", file=sys.stderr)
    return False


def check_http(path: str = "/healthz") -> bool:
    """The gateway answers 200 on ``path`` (plain HTTP; it binds [gateway] host and port)."""
    host = os.environ.get("RIVEG_GATEWAY_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    host = f"[{host}]" if ":" in host else host
    port = os.environ.get("RIVEG_GATEWAY_PORT", "8080")
    url = f"http://{host}:{port}/{path.lstrip('/')}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{url} unreachable: {exc}", file=sys.stderr)
    return False


def main(argv: list[str]) -> int:
    """Run the named check."""
    if argv[:1] == ["grpc"] and len(argv) <= 2:
        return 0 if check_grpc(*argv[1:]) else 1
    if argv == ["worker"]:
        return 0 if check_worker() else 1
    if argv == ["worker-ping"]:
        return 0 if check_worker_ping() else 1
    if argv[:1] == ["http"] and len(argv) <= 2:
        return 0 if check_http(*argv[1:]) else 1
    print(
        "usage: riveg-healthcheck {grpc [SERVICE],worker,worker-ping,http [PATH]}", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
