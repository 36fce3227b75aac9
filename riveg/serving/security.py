"""Transport security of the stage servers: TLS and mutual TLS credentials for both ends, and
who may call the admin RPCs that swap a stage's model.

Everything comes from the ``[grpc]`` settings (``RIVEG_GRPC_TLS``, ``_TLS_CERT``, ``_TLS_KEY``,
``_TLS_CA``, ``_MTLS``, ``_TLS_CLIENT_CERT``, ``_TLS_CLIENT_KEY``, ``_ADMIN_TOKEN``,
``_ADMIN_CLIENTS``). With ``tls`` off both ends speak plaintext, which the default loopback
binding keeps on one machine.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from riveg.core.config import ConfigError, GrpcSettings
from riveg.core.network import is_loopback_peer

ADMIN_TOKEN_KEY = "authorization"
"""Call metadata carrying ``Bearer <admin token>`` on ModelAdmin Load/Rollback."""


def _read(path: Path | None, setting: str) -> bytes:
    if path is None:
        raise ConfigError(f"TLS is on but RIVEG_GRPC_{setting} is unset")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"RIVEG_GRPC_{setting}: cannot read {path}: {exc.strerror}") from None


def server_credentials(grpc_settings: GrpcSettings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials (requiring client certificates under mTLS); None = plaintext."""
    if not grpc_settings.tls:
        return None
    key = _read(grpc_settings.tls_key, "TLS_KEY")
    chain = _read(grpc_settings.tls_cert, "TLS_CERT")
    ca = _read(grpc_settings.tls_ca, "TLS_CA") if grpc_settings.mtls else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=grpc_settings.mtls
    )


def channel_credentials(grpc_settings: GrpcSettings) -> grpc.ChannelCredentials | None:
    """The client's TLS credentials (with its certificate under mTLS); None = plaintext."""
    if not grpc_settings.tls:
        return None
    ca = _read(grpc_settings.tls_ca, "TLS_CA") if grpc_settings.tls_ca is not None else None
    key = chain = None
    if grpc_settings.mtls:
        key = _read(grpc_settings.tls_client_key, "TLS_CLIENT_KEY")
        chain = _read(grpc_settings.tls_client_cert, "TLS_CLIENT_CERT")
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )


def open_channel(
    addr: str, grpc_settings: GrpcSettings, options: list[tuple[str, object]]
) -> grpc.Channel:
    """A channel to ``addr``: TLS when the settings say so, else plaintext."""
    credentials = channel_credentials(grpc_settings)
    if credentials is None:
        return grpc.insecure_channel(addr, options=options)
    if grpc_settings.tls_server_name:
        options = [*options, ("grpc.ssl_target_name_override", grpc_settings.tls_server_name)]
    return grpc.secure_channel(addr, credentials, options=options)


def admin_metadata(grpc_settings: GrpcSettings) -> tuple[tuple[str, str], ...]:
    """Call metadata proving the admin credential, when one is configured."""
    token = grpc_settings.admin_token
    return () if token is None else ((ADMIN_TOKEN_KEY, f"Bearer {token.get_secret_value()}"),)


def _certificate_names(context: grpc.ServicerContext) -> set[str]:
    auth = context.auth_context() or {}
    return {name.decode() for name in auth.get("x509_common_name", [])}


def admin_refusal(context: grpc.ServicerContext, grpc_settings: GrpcSettings) -> str | None:
    """Why this call may not use Load/Rollback, or None when it may.

    Allowed: a verified client certificate whose common name is in ``admin_clients``; the
    configured admin token as ``authorization: Bearer <token>``; and, only while neither is
    configured, a caller on the same machine (loopback).
    """
    names = grpc_settings.admin_names
    if names and names & _certificate_names(context):
        return None
    token = grpc_settings.admin_token
    if token is not None:
        sent = dict(context.invocation_metadata() or ()).get(ADMIN_TOKEN_KEY, "")
        expected = f"Bearer {token.get_secret_value()}"
        if hmac.compare_digest(sent.encode(), expected.encode()):
            return None
        return "model admin needs the admin token: it is missing or wrong"
    if names:
        return "model admin needs an admin client certificate (RIVEG_GRPC_ADMIN_CLIENTS)"
    if is_loopback_peer(context.peer()):
        return None
    return (
        "model admin from another machine needs RIVEG_GRPC_ADMIN_TOKEN (or an admin client "
        "certificate) on the server"
    )
