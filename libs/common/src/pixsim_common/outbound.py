"""Requests to URLs that callers give (media to download, webhooks to deliver) without
being turned against our own network (SSRF).

Only http and https. The host is resolved once, every address it resolves to is checked,
and the connection goes to the checked address (the URL's host travels in the Host header
and, for https, as the TLS server name), so a second DNS answer cannot swap in an internal
address. Whoever follows redirects checks each hop the same way (`pinned_request`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Exception):
    """The URL or an address it leads to is not allowed (or what it answered never will be)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UrlUnreachable(Exception):
    """The exchange did not complete for a reason that may pass (DNS, timeouts, 5xx, resets)."""


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    allow_loopback: bool = False
    allow_private: bool = False

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be fetched from, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.refusal(address.ipv4_mapped)  # ::ffff:10.0.0.1 is 10.0.0.1
        if address.is_loopback:
            return None if self.allow_loopback else "loopback"
        if address.is_link_local:
            return "link-local"
        if address.is_multicast or address.is_unspecified or address.is_reserved:
            return "not a unicast address"
        # Private ranges, unique-local (fc00::/7), carrier-grade NAT and the rest of what
        # is not globally routable.
        if address.is_private or not address.is_global:
            return None if self.allow_private else "private"
        return None


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(
            f"only http and https URLs are accepted, not {parts.scheme!r}", "BAD_SCHEME"
        )
    if not parts.hostname:
        raise UrlRefused("the URL has no host", "BAD_URL")
    if parts.username or parts.password:
        raise UrlRefused("credentials in URLs are not accepted", "BAD_URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise UrlRefused(str(error), "BAD_URL") from error
    return parts.scheme, parts.hostname, port


async def resolve(host: str, port: int, policy: AddressPolicy) -> IPAddress:
    """The address to connect to: every address the host resolves to must be allowed (a
    name with one internal answer among public ones is refused outright)."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        candidates = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise UrlUnreachable(f"cannot resolve {host}: {error}") from error
        candidates = [ipaddress.ip_address(info[4][0]) for info in infos]
    for candidate in candidates:
        why = policy.refusal(candidate)
        if why is not None:
            raise UrlRefused(f"{host} resolves to a {why} address", "ADDRESS_REFUSED")
    return candidates[0]


async def pinned_request(
    client: httpx.AsyncClient, method: str, url: str, policy: AddressPolicy, **options: Any
) -> httpx.Request:
    """A request for `url` addressed to the one checked address its host resolves to."""
    scheme, host, port = check_url(url)
    address = await resolve(host, port, policy)
    parts = urlsplit(url)
    netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    direct = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {**options.pop("headers", {}), "Host": parts.netloc}
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    return client.build_request(method, direct, headers=headers, extensions=extensions, **options)
