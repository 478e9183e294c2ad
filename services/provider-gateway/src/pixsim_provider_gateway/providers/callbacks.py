"""Completion callbacks a provider pushes, verified as that provider specifies.

fal (Pika) POSTs a webhook to the `fal_webhook` URL of a submit when the request ends. It
signs each with Ed25519: the message is the request id, fal's user id, a Unix timestamp and
the SHA-256 (hex) of the raw body, joined by newlines, in the headers
`X-Fal-Webhook-{Request-Id,User-Id,Timestamp,Signature}`; the public keys are a JWKS at
`rest.alpha.fal.ai/.well-known/jwks.json`. Runway has no callbacks; PixVerse's webhook guide
names no signature we could check, so both are polled (docs/providers.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pixsim_provider_gateway.providers.base import ProviderStatusResult

# A webhook older or newer than this is refused (a replay, or a clock far off).
FAL_TIMESTAMP_TOLERANCE_SECONDS = 300
# fal's keys are fetched again after this, or sooner when a signature matches none of them
# (a rotation), but not more often than the minimum: forged calls cannot make us hammer it.
FAL_JWKS_TTL_SECONDS = 24 * 3600
FAL_JWKS_MIN_REFRESH_SECONDS = 60
FAL_HEADERS = ("request-id", "user-id", "timestamp", "signature")


class CallbackRefused(Exception):
    """The callback is not provably the provider's: answered 401, and nothing recorded."""


class KeysUnavailable(CallbackRefused):
    """The provider's keys could not be read: nothing can be verified now (503, so the
    provider delivers again later)."""


class CallbackMalformed(Exception):
    """A verified callback that says nothing we can read: answered 400."""


@dataclass(frozen=True, slots=True)
class Notice:
    """What a verified callback says of one task: read like a status check's answer."""

    provider_job_id: str
    status: ProviderStatusResult


class CallbackReceiver(Protocol):
    async def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raises `CallbackRefused` unless `body` is provably the provider's, and fresh."""
        ...

    def notice(self, headers: Mapping[str, str], body: bytes) -> Notice:
        """What a verified callback says; `CallbackMalformed` if it cannot be read."""
        ...


class FalKeys:
    """fal's webhook public keys (Ed25519, a JWKS), cached."""

    def __init__(
        self,
        jwks_url: str,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url, self._client, self._clock = jwks_url, client, clock
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def current(self, *, stale: bool = False) -> list[Ed25519PublicKey]:
        """The keys, fetched when none are held or too old; `stale`: none of the held ones
        matched, so fetch again if the last fetch is not too recent."""
        async with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            if (
                age is None
                or age > FAL_JWKS_TTL_SECONDS
                or (stale and age > FAL_JWKS_MIN_REFRESH_SECONDS)
            ):
                self._keys = await self._fetch()
                self._fetched_at = now
            return self._keys

    async def _fetch(self) -> list[Ed25519PublicKey]:
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            keys = response.json().get("keys", [])
        except (httpx.HTTPError, ValueError, AttributeError) as error:
            raise KeysUnavailable(f"fal's webhook keys could not be read: {error!r}") from error
        found = []
        for key in keys if isinstance(keys, list) else []:
            if not isinstance(key, dict) or (key.get("kty"), key.get("crv")) != ("OKP", "Ed25519"):
                continue
            try:
                raw = base64.urlsafe_b64decode(str(key.get("x", "")) + "==")
                found.append(Ed25519PublicKey.from_public_bytes(raw))
            except (ValueError, binascii.Error):
                continue
        return found


def fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs for a webhook."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, digest)).encode()


class FalWebhooks:
    """Verifies and reads fal's webhooks; `read` makes a verified body a status answer."""

    def __init__(
        self,
        keys: FalKeys,
        read: Callable[[bytes], Notice],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys, self._read, self._wall_clock = keys, read, wall_clock

    async def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        values = [headers.get(f"x-fal-webhook-{name}", "") for name in FAL_HEADERS]
        request_id, user_id, timestamp, signature_hex = values
        if not all(values):
            raise CallbackRefused("the X-Fal-Webhook-* headers are missing")
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise CallbackRefused("X-Fal-Webhook-Timestamp is not a Unix time")
        if abs(self._wall_clock() - int(timestamp)) > FAL_TIMESTAMP_TOLERANCE_SECONDS:
            raise CallbackRefused("the webhook's timestamp is too far from now")
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise CallbackRefused("X-Fal-Webhook-Signature is not hex") from None
        message = fal_message(request_id, user_id, timestamp, body)
        if not _signed_by_any(await self._keys.current(), signature, message) and (
            not _signed_by_any(await self._keys.current(stale=True), signature, message)
        ):
            raise CallbackRefused("the webhook's signature matches none of fal's keys")

    def notice(self, headers: Mapping[str, str], body: bytes) -> Notice:
        notice = self._read(body)
        # The signed header names the request; the body must speak of the same one.
        if notice.provider_job_id != headers.get("x-fal-webhook-request-id"):
            raise CallbackMalformed("the body's request_id is not the signed one")
        return notice


def _signed_by_any(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False
