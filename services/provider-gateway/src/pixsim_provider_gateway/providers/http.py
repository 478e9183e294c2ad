"""HTTP plumbing shared by the adapters: one httpx client each, transport failures made
TRANSIENT, `Retry-After` read, and the default classification of HTTP statuses."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from pixsim_provider_gateway.domain import ErrorKind
from pixsim_provider_gateway.providers.base import ProviderError

# The endings of the message of a call whose outcome at the provider is unknown: it timed
# out, or the connection failed, perhaps after the provider had the request.
TIMED_OUT = " timed out"
TRANSPORT_FAILED = " failed: "


def new_client(
    base_url: str, timeout: float, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        transport=transport,
        # One provider's slowness must not exhaust connections to the others (one client each).
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`client.request`, with timeouts and connection failures as TRANSIENT provider errors."""
    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException as error:
        raise ProviderError(ErrorKind.TRANSIENT, f"{method} {url}{TIMED_OUT}") from error
    except httpx.TransportError as error:
        message = f"{method} {url}{TRANSPORT_FAILED}{error!r}"
        raise ProviderError(ErrorKind.TRANSIENT, message) from error


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if (milliseconds := response.headers.get("retry-after-ms")) is not None:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def classify_status(response: httpx.Response, message: str) -> ProviderError:
    """The default reading of an HTTP failure; adapters refine it with the body."""
    status = response.status_code
    if status in (401, 403):
        return ProviderError(ErrorKind.ACCOUNT_INVALID, message, provider_code=str(status))
    if status == 429:
        return ProviderError(
            ErrorKind.RATE_LIMITED, message, retry_after=retry_after(response), provider_code="429"
        )
    if status in (408, 409) or status >= 500:
        return ProviderError(
            ErrorKind.TRANSIENT,
            message,
            retry_after=retry_after(response),
            provider_code=str(status),
        )
    return ProviderError(ErrorKind.INVALID_PARAMETERS, message, provider_code=str(status))
