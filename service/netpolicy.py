"""Which addresses an outbound webhook may reach: public ones only, unless the operator allows more.

A tenant chooses the webhook URL and the service POSTs to it from inside the deployment; without a
check it would be a proxy into its own network (server-side request forgery: cloud metadata, Redis, the
database). The API checks the URL without a DNS lookup (``check_url_syntax``); delivery resolves the
host, refuses any address that is not public (``resolve_target``) and connects to the vetted addresses
itself (``workers.webhooks``), so a second DNS answer cannot swap in an internal one. The rules, and
``PIKFIX_WEBHOOK_ALLOW_PRIVATE``, are in docs/api.md, "Webhooks".
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

SCHEMES = {"http": 80, "https": 443}
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


# IPv6 ranges that carry or stand for an IPv4 address the checks below would otherwise not see.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are IPv4
_REFUSED_V6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b:1::/48",  # NAT64 for local use
    )
)


class WebhookTargetError(ValueError):
    """The URL is malformed or points at an address webhooks may not reach (a policy refusal)."""


class WebhookResolutionError(WebhookTargetError):
    """The host name could not be resolved now; unlike a refusal, worth another attempt later."""


@dataclass(frozen=True)
class Target:
    """A vetted destination: where to connect (``addresses``, in resolver order) and what to say
    (``host``, ``path``)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]
    path: str


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise WebhookTargetError(f"malformed webhook URL: {exc}") from exc
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise WebhookTargetError("a webhook URL needs http:// or https:// and a host")
    if parts.username or parts.password:
        raise WebhookTargetError("a webhook URL may not carry credentials; the body is signed instead")
    try:
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        raise WebhookTargetError(f"malformed webhook host {parts.hostname!r}: {exc}") from exc
    return parts


def is_public(address: str) -> bool:
    """True for globally routable unicast addresses (not loopback, private, link-local, reserved...).

    IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by that address too.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local or any(ip in net for net in _REFUSED_V6):
            return False
        if ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip.teredo is not None:
            candidates.extend(ip.teredo)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(c.is_global and not c.is_multicast for c in candidates)


def check_url_syntax(url: str, allow_private: bool = False) -> None:
    """The checks that need no DNS: scheme, host, no credentials, no non-public IP literal or localhost."""
    parts = _split(url)
    if allow_private:
        return
    host = parts.hostname or ""
    if host.lower().rstrip(".") in LOCAL_NAMES:
        raise WebhookTargetError(f"webhook host {host!r} is this machine; webhooks go to public addresses")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return
    if not is_public(str(literal)):
        raise WebhookTargetError(f"webhook address {host} is not a public address")


def resolve_target(url: str, allow_private: bool = False) -> Target:
    """Resolve the URL's host and pick the address to connect to; refuse if any answer is not public.

    Every address is checked, not only the first: a name answering both a public and an internal
    address is refused rather than raced.
    """
    check_url_syntax(url, allow_private)
    parts = _split(url)
    host = parts.hostname or ""
    port = parts.port or SCHEMES[parts.scheme]
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookResolutionError(f"cannot resolve webhook host {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in answers))
    if not addresses:
        raise WebhookResolutionError(f"webhook host {host!r} has no address")
    if not allow_private:
        internal = sorted({a for a in addresses if not is_public(a)})
        if internal:
            raise WebhookTargetError(f"webhook host {host!r} resolves to non-public {', '.join(internal)}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, tuple(addresses), path)
