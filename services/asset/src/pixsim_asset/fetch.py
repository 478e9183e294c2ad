"""Downloading remote media without being turned against our own network (SSRF): the
kit's guard (`pixsim_common.outbound`) checks the URL and pins its address; redirects are
followed by hand, each checked the same way. The body streams into a temporary file under
a size limit while its sha256 is computed; any failure removes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from pixsim_asset.storage import TooLarge, stage
from pixsim_common.outbound import (
    AddressPolicy as AddressPolicy,
)
from pixsim_common.outbound import (
    UrlRefused,
    UrlUnreachable,
    pinned_request,
)

MAX_REDIRECTS = 3
log = structlog.get_logger("pixsim.asset.fetch")


# The asset service's names for the kit's refusals: a download refused, a download failed.
FetchRefused = UrlRefused
FetchFailed = UrlUnreachable


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
        request = await pinned_request(client, "GET", url, policy)
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
