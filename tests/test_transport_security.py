"""Transport security of the stage servers: loopback binding by default, TLS and mutual TLS
round trips with certificates generated here, and the admin credential on Load/Rollback."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from riveg.core.config import ConfigError, Settings, load_settings
from riveg.core.network import is_loopback_host, is_loopback_peer
from riveg.core.storage import open_store
from riveg.sample import SAMPLE_IMAGE
from riveg.serving.client import StageClient, StageInputError, TransientStageError
from riveg.serving.messages import box_to_proto, image_ref
from riveg.serving.security import admin_refusal
from riveg.serving.server import StageServer
from riveg.serving.stages import build_stage, stub_class
from riveg.v1 import common_pb2, seg_pb2
from tests.support.certs import CertificateAuthority
from tests.support.processes import console_script, free_port

ADMIN_TOKEN = "admin-token-7f3a9c"
S3_SECRET = "s3-secret-41c2e8"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A CA with a loopback server certificate and two client identities, and a second CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca")
    other = CertificateAuthority(folder / "other", name="someone-else-ca")
    return SimpleNamespace(
        ca=ca.pem,
        server=ca.issue("riveg-seg", server=True),
        worker=ca.issue("riveg-worker", server=False),
        admin=ca.issue("riveg-admin", server=False),
        stranger=other.issue("riveg-worker", server=False),
    )


def _settings(tmp_path: Path, **grpc: object) -> Settings:
    flat = {f"grpc_{key}": value for key, value in grpc.items()}
    return load_settings(store_kind="local", store_path=tmp_path / "store", **flat)


def _tls(pki: SimpleNamespace, **extra: object) -> dict[str, object]:
    return {"tls": True, "tls_cert": pki.server.cert, "tls_key": pki.server.key,
            "tls_ca": pki.ca.cert, **extra}  # fmt: skip


def _mtls(pki: SimpleNamespace, client: SimpleNamespace, **extra: object) -> dict[str, object]:
    return _tls(pki, mtls=True, tls_client_cert=client.cert, tls_client_key=client.key, **extra)


@pytest.fixture
def serve_seg(tmp_path: Path) -> Iterator:
    """Start an in-process seg server (grabcut) with given settings; stopped after the test."""
    servers: list[StageServer] = []

    def start(settings: Settings) -> tuple[int, str]:
        store = open_store(settings)
        key = store.put_bytes("images/sample", SAMPLE_IMAGE.read_bytes())
        server = StageServer(build_stage("seg", settings, store), settings)
        servers.append(server)
        return server.start(port=0), key

    yield start
    for server in servers:
        server.stop(grace=0)


def _client(settings: Settings, port: int, host: str = "127.0.0.1") -> StageClient:
    return StageClient("seg", f"{host}:{port}", stub_class("seg"), settings)


def _segment(client: StageClient, key: str) -> seg_pb2.SegmentResponse:
    request = seg_pb2.SegmentRequest(
        image=image_ref(key, 512, 512), boxes=[box_to_proto([150, 50, 300, 200])]
    )
    return client.call("Segment", request, timeout=30)


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    raw = b"".join(
        bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)
    )
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_proc_address(address))
    return found


def test_a_server_binds_loopback_by_default(tmp_path: Path, serve_seg) -> None:
    settings = _settings(tmp_path)
    assert settings.grpc.host == "127.0.0.1"
    port, _ = serve_seg(settings)
    addresses = _listening_addresses(port)
    if not addresses:
        pytest.skip("/proc/net/tcp is not readable here")
    assert all(address.is_loopback for address in addresses), f"listening on {addresses}"


def test_tls_round_trip_and_plaintext_refused(tmp_path: Path, serve_seg, pki) -> None:
    settings = _settings(tmp_path, **_tls(pki))
    port, key = serve_seg(settings)
    client = _client(settings, port, host="localhost")
    try:
        assert len(_segment(client, key).masks) == 1
        current = client.admin.Current(common_pb2.CurrentModelRequest(), timeout=5)
        assert current.ready
    finally:
        client.close()
    plain = _client(_settings(tmp_path), port)
    try:
        with pytest.raises(TransientStageError) as refused:
            _segment(plain, key)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()


def test_tls_client_checks_the_server_certificate(tmp_path: Path, serve_seg, pki) -> None:
    port, key = serve_seg(_settings(tmp_path, **_tls(pki)))
    # The client trusts another CA: the handshake fails, nothing is sent.
    wrong_ca = _settings(tmp_path, tls=True, tls_ca=pki.stranger.cert)
    client = _client(wrong_ca, port)
    try:
        with pytest.raises(TransientStageError) as refused:
            _segment(client, key)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        client.close()


def test_mtls_admits_only_certificates_of_the_ca(tmp_path: Path, serve_seg, pki) -> None:
    port, key = serve_seg(_settings(tmp_path, **_mtls(pki, pki.worker)))
    worker = _client(_settings(tmp_path, **_mtls(pki, pki.worker)), port)
    try:
        assert len(_segment(worker, key).masks) == 1
    finally:
        worker.close()
    for name, settings in {
        "no client certificate": _settings(tmp_path, **_tls(pki)),
        "a certificate of another CA": _settings(tmp_path, **_mtls(pki, pki.stranger)),
    }.items():
        client = _client(settings, port)
        try:
            with pytest.raises(TransientStageError) as refused:
                _segment(client, key)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE, name
        finally:
            client.close()


def _admin_calls(client: StageClient, metadata: tuple = ()) -> dict[str, grpc.StatusCode]:
    """The status of Load (a known model), Rollback, Current and List with this metadata."""
    codes = {}
    calls = {
        "Load": (client.admin.Load, common_pb2.LoadModelRequest(model="grabcut@1")),
        "Rollback": (client.admin.Rollback, common_pb2.RollbackRequest()),
        "Current": (client.admin.Current, common_pb2.CurrentModelRequest()),
        "List": (client.admin.List, common_pb2.ListModelsRequest()),
    }
    for name, (method, request) in calls.items():
        try:
            method(request, timeout=30, metadata=metadata)
            codes[name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            codes[name] = exc.code()
    return codes


def test_admin_token_guards_load_and_rollback(tmp_path: Path, serve_seg) -> None:
    settings = _settings(tmp_path, admin_token=ADMIN_TOKEN)
    port, _ = serve_seg(settings)
    anonymous = _client(_settings(tmp_path), port)
    admin = _client(settings, port)
    try:
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert _admin_calls(anonymous) == {
            "Load": denied, "Rollback": denied,
            "Current": grpc.StatusCode.OK, "List": grpc.StatusCode.OK,
        }  # fmt: skip
        wrong = (("authorization", "Bearer not-the-token"),)
        assert _admin_calls(anonymous, wrong)["Load"] == denied
        allowed = _admin_calls(admin, admin.admin_metadata)
        assert allowed["Load"] == grpc.StatusCode.OK
        assert allowed["Rollback"] == grpc.StatusCode.OK  # back to the model before the Load
    finally:
        anonymous.close()
        admin.close()


def test_admin_client_certificate_under_mtls(tmp_path: Path, serve_seg, pki) -> None:
    port, _ = serve_seg(_settings(tmp_path, **_mtls(pki, pki.worker, admin_clients="riveg-admin")))
    worker = _client(_settings(tmp_path, **_mtls(pki, pki.worker)), port)
    admin = _client(_settings(tmp_path, **_mtls(pki, pki.admin)), port)
    try:
        # Loopback is no exemption once admin identities are configured.
        assert _admin_calls(worker)["Load"] == grpc.StatusCode.PERMISSION_DENIED
        assert _admin_calls(worker)["Current"] == grpc.StatusCode.OK
        assert _admin_calls(admin)["Load"] == grpc.StatusCode.OK
    finally:
        worker.close()
        admin.close()


def _context(peer: str, metadata: tuple = (), names: tuple[str, ...] = ()) -> SimpleNamespace:
    auth = {"x509_common_name": [n.encode() for n in names]} if names else {}
    return SimpleNamespace(
        peer=lambda: peer, invocation_metadata=lambda: metadata, auth_context=lambda: auth
    )


def test_without_a_token_only_loopback_callers_may_swap_models() -> None:
    grpc_settings = load_settings().grpc
    assert admin_refusal(_context("ipv4:127.0.0.1:40000"), grpc_settings) is None
    assert admin_refusal(_context("ipv6:[::1]:40000"), grpc_settings) is None
    refusal = admin_refusal(_context("ipv4:10.1.2.3:40000"), grpc_settings)
    assert refusal is not None and "RIVEG_GRPC_ADMIN_TOKEN" in refusal
    assert admin_refusal(_context("ipv6:[fd00::5]:1"), grpc_settings) is not None
    with_token = load_settings(grpc_admin_token=ADMIN_TOKEN).grpc
    assert admin_refusal(_context("ipv4:127.0.0.1:1"), with_token) is not None
    bearer = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    assert admin_refusal(_context("ipv4:10.1.2.3:1", bearer), with_token) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("127.8.0.1", True), ("10.0.0.1", False), ("minio", False), ("0.0.0.0", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    assert is_loopback_peer(f"ipv4:{host}:1" if ":" not in host else f"ipv6:{host}:1") is loopback


def test_tls_misconfiguration_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mtls needs tls"):
        load_settings(grpc_mtls=True)
    settings = _settings(tmp_path, tls=True)
    with pytest.raises(ConfigError, match="RIVEG_GRPC_TLS_KEY is unset"):
        StageServer(build_stage("seg", settings, None), settings).start(port=0)
    env = {"RIVEG_GRPC_TLS": "true", "RIVEG_GRPC_TLS_CERT": str(tmp_path / "absent.crt"),
           "RIVEG_GRPC_TLS_KEY": str(tmp_path / "absent.key"), "RIVEG_STORE_KIND": "local",
           "RIVEG_STORE_PATH": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run(
        [console_script("riveg"), "serve", "seg", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "RIVEG_GRPC_TLS_KEY: cannot read" in done.stderr, done.stderr


def test_default_s3_credentials_are_refused_off_this_machine() -> None:
    remote = load_settings(store_kind="s3", s3_endpoint="minio.example:9000")
    with pytest.raises(ConfigError, match="RIVEG_S3_ACCESS_KEY"):
        open_store(remote)


def test_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    """A server run with an admin token and S3 keys, refused and accepted admin calls, debug
    logs: neither the token nor the S3 secret appears in its output."""
    port = free_port()
    env = {"RIVEG_GRPC_ADMIN_TOKEN": ADMIN_TOKEN, "RIVEG_S3_SECRET_KEY": S3_SECRET,
           "RIVEG_S3_ACCESS_KEY": "access-9d1", "RIVEG_STORE_KIND": "local",
           "RIVEG_STORE_PATH": str(tmp_path / "store"), "RIVEG_LOG_LEVEL": "DEBUG",
           "RIVEG_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [console_script("riveg"), "serve", "seg", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    settings = load_settings(grpc_admin_token=ADMIN_TOKEN)
    client = _client(settings, port)
    try:
        client.wait_ready(timeout=60)
        assert _admin_calls(client)["Load"] == grpc.StatusCode.PERMISSION_DENIED
        assert _admin_calls(client, client.admin_metadata)["Load"] == grpc.StatusCode.OK
        with pytest.raises(StageInputError):
            _segment(client, "images/absent")
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)
    text = log.read_text()
    assert "model admin refused" in text and "rpc failed" in text, text[-2000:]
    for secret in (ADMIN_TOKEN, S3_SECRET):
        assert secret not in text
    assert S3_SECRET not in repr(load_settings(s3_secret_key=S3_SECRET))


def test_health_check_over_tls(tmp_path: Path, serve_seg, pki) -> None:
    """What the deployment's exec probe does: the health service answers over mTLS."""
    settings = _settings(tmp_path, **_mtls(pki, pki.worker))
    port, _ = serve_seg(settings)
    client = _client(settings, port)
    try:
        reply = health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service="riveg.v1.SegService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        client.close()


def test_nothing_listens_beyond_loopback_in_one_machine_mode() -> None:
    """Sanity of the loopback check above: a socket bound to 0.0.0.0 is reported as such."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        probe.listen()
        assert _listening_addresses(probe.getsockname()[1]) == {ipaddress.ip_address("0.0.0.0")}
