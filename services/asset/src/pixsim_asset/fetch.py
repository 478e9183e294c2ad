"""Downloading remote media without being turned against our own network (SSRF).

Only http and https. The host is resolved once, every address it resolves to is checked,
and the connection goes to the checked address (the URL's host travels in the Host header
and, for https, as the TLS server name), so a second DNS answer cannot swap in an internal
address. Redirects are followed by hand, each checked the same way. The body streams into a
temporary file under a size limit while its sha256 is computed; any failure removes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from pixsim_asset.storage import TooLarge, stage

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 3
log = structlog.get_logger("pixsim.asset.fetch")


class FetchRefused(Exception):
    """The URL or an address it leads to is not allowed, or the body is too large."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FetchFailed(Exception):
    """The download did not complete for a reason that may pass (timeouts, 5xx, resets)."""


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
        raise FetchRefused(
            f"only http and https may be fetched, not {parts.scheme!r}", "BAD_SCHEME"
        )
    if not parts.hostname:
        raise FetchRefused("the URL has no host", "BAD_URL")
    if parts.username or parts.password:
        raise FetchRefused("credentials in URLs are not accepted", "BAD_URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise FetchRefused(str(error), "BAD_URL") from error
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
            raise FetchFailed(f"cannot resolve {host}: {error}") from error
        candidates = [ipaddress.ip_address(info[4][0]) for info in infos]
    for candidate in candidates:
        why = policy.refusal(candidate)
        if why is not None:
            raise FetchRefused(f"{host} resolves to a {why} address", "ADDRESS_REFUSED")
    return candidates[0]


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    content_type: str


async def fetch(
    url: str, *, client: httpx.AsyncClient, policy: AddressPolicy, max_bytes: int, directory: Path
) -> Fetched:
    """Download `url` into a new file in `directory`; the caller owns (and removes) it."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port = check_url(url)
        address = await resolve(host, port, policy)
        parts = urlsplit(url)
        netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        direct = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        request = client.build_request(
            "GET", direct, headers={"Host": parts.netloc}, extensions=extensions
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as error:
            raise FetchFailed(f"GET {url} failed: {error!r}") from error
        try:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise FetchFailed(f"GET {url} answered {response.status_code}")
            if response.status_code != 200:
                raise FetchRefused(f"GET {url} answered {response.status_code}", "NOT_FOUND")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise FetchRefused(f"{declared} bytes is over the {max_bytes} limit", "TOO_LARGE")
            return await _stream_to_file(response, max_bytes, directory)
        finally:
            await response.aclose()
    raise FetchRefused(f"more than {MAX_REDIRECTS} redirects", "TOO_MANY_REDIRECTS")


async def _stream_to_file(response: httpx.Response, max_bytes: int, directory: Path) -> Fetched:
    try:
        staged = await stage(response.aiter_bytes(), max_bytes=max_bytes, directory=directory)
    except TooLarge as error:
        raise FetchRefused(str(error), "TOO_LARGE") from error
    except httpx.HTTPError as error:
        raise FetchFailed(f"the download broke off: {error!r}") from error
    content_type = response.headers.get("content-type", "application/octet-stream")
    return Fetched(staged.path, staged.sha256, staged.size, content_type.split(";")[0].strip())


class Downloader:
    """`fetch` with the service's limits: transient failures are retried with backoff and
    jitter, and a whole download (all its redirects) has one deadline."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        policy: AddressPolicy,
        *,
        max_bytes: int,
        directory: Path,
        attempts: int = 4,
        backoff_seconds: float = 0.5,
        deadline_seconds: float = 300.0,
    ) -> None:
        self._client = client
        self._policy = policy
        self._max_bytes = max_bytes
        self._directory = directory
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._deadline = deadline_seconds

    async def download(self, url: str) -> Fetched:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(
                multiplier=self._backoff, max=self._backoff * 16, jitter=self._backoff
            ),
            retry=retry_if_exception_type(FetchFailed),
            before_sleep=lambda state: log.warning(
                "download retrying",
                url=url,
                attempt=state.attempt_number,
                error=repr(state.outcome.exception() if state.outcome else None),
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    async with asyncio.timeout(self._deadline):
                        return await fetch(
                            url,
                            client=self._client,
                            policy=self._policy,
                            max_bytes=self._max_bytes,
                            directory=self._directory,
                        )
                except TimeoutError as error:
                    raise FetchFailed(f"GET {url} took longer than {self._deadline:g}s") from error
        raise AssertionError("unreachable: tenacity reraises the last failure")
