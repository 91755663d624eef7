"""Which URLs a webhook may call: public addresses only, unless the admin's allow-list names them.

One check, used when a subscription is saved (a 400 naming ``url``) and again before every
delivery, on the addresses the name resolves to then (a DNS answer that changed to a private
address, DNS rebinding, is refused). The delivery connects to the address that was checked.
``KILN_WEBHOOK_ALLOWED_HOSTS`` lists host names and addresses or CIDRs that are allowed although
not public (an internal receiver, the tests' local one).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from config.errors import about_field
from deployments.errors import InvalidDeploymentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEME_REFUSAL = "only http and https URLs can receive webhooks"
SCHEME_PATTERN = "^[hH][tT][tT][pP][sS]?://"
"""The schemes as a pattern the API schema publishes, so a generated client checks before it sends."""


class TargetRefusedError(InvalidDeploymentError):
    """The URL is malformed, does not resolve, or points at an address webhooks may not reach."""

    default_code = "url_refused"

    def __init__(self, message: str) -> None:
        super().__init__(f"url: {message}", extra=about_field("url", message))


@dataclass(frozen=True)
class Target:
    """A checked URL: its parts and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress


def _allowed_entries() -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    names: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in settings.KILN_WEBHOOK_ALLOWED_HOSTS:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.lower())
    return names, networks


def is_public(address: IPAddress) -> bool:
    """Not loopback, link-local, private, unspecified, multicast or reserved (IPv4-mapped unwrapped)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefusedError(f"{host!r} does not resolve ({exc})") from exc
    # An IPv6 scope (``fe80::1%eth0``) is dropped: link-local is refused below anyway.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def check_url(url: str) -> Target:
    """The target of ``url`` if a webhook may call it; raises ``TargetRefusedError`` otherwise.

    Every address the name resolves to must be allowed (a name with one public and one private
    address is refused): the client could connect to either.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefusedError(f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise TargetRefusedError(SCHEME_REFUSAL)
    if not parts.hostname:
        raise TargetRefusedError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefusedError("credentials in the URL are not accepted (sign with the secret)")
    host = parts.hostname.lower()
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not addresses:
        raise TargetRefusedError(f"{host!r} does not resolve")
    names, networks = _allowed_entries()
    if host not in names:
        for address in addresses:
            if not is_public(address) and not any(address in network for network in networks):
                raise TargetRefusedError(
                    f"{host!r} resolves to {address}, which is not a public address; "
                    "an administrator can allow it in KILN_WEBHOOK_ALLOWED_HOSTS"
                )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])
