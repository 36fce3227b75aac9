"""Addresses: whether a host or a gRPC peer is this machine (loopback), and which URLs the
services may reach out to."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from riveg.core.errors import InvalidInput

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name, an IPv4 or IPv6 address, brackets allowed) is loopback."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``) is on
    this machine."""
    kind, _, rest = peer.partition(":")
    if kind in ("unix", "unix-abstract"):
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    return is_loopback_host(rest.rsplit(":", 1)[0])


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` matches an entry of ``allowed`` (a name, an address, ``*.domain``)."""
    host = host.strip("[]").lower()
    return any(
        host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed
    )


@dataclass(frozen=True)
class OutboundTarget:
    """Where an outbound request goes: the URL with the host replaced by the one address that
    was checked (so that a second DNS answer cannot lead elsewhere), and the original host for
    the ``Host`` header and TLS (SNI and certificate name)."""

    url: str
    host: str

    @property
    def headers(self) -> dict[str, str]:
        """The ``Host`` header of the original URL."""
        return {"Host": self.host}

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: TLS speaks to (and verifies) the original host name."""
        return {"sni_hostname": self.host.rsplit(":", 1)[0].strip("[]")}


def check_outbound_url(url: str, allowed: tuple[str, ...]) -> OutboundTarget:
    """Refuse (InvalidInput) a URL this service should not fetch or post to: not http(s), no
    host, a host outside ``allowed`` when an allow-list is given, or, without one, a host with
    any address that is not public (loopback, private, link-local: the cluster's insides).
    Returns the target pinned to the checked address."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"not a valid URL ({exc}): {url[:200]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not an http(s) URL: {url[:200]!r}")
    host = parts.hostname.lower()
    if allowed and not host_allowed(host, allowed):
        raise InvalidInput(f"the host {host!r} is not in the allowed URL hosts")
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"cannot resolve the host {host!r}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not allowed:
        for address in addresses:
            if not address.is_global:
                raise InvalidInput(
                    f"the host {host!r} is an internal address ({address}); allow it with "
                    "RIVEG_GATEWAY_URL_HOSTS"
                )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if port is None else f"{literal}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return OutboundTarget(pinned, parts.netloc.rsplit("@", 1)[-1])
