"""fal's webhooks as fal sends them: when a request ends, a POST to the submit's
`fal_webhook` URL with `{request_id, gateway_request_id, status: OK|ERROR, payload, error}`,
signed with Ed25519 over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)` in the
`X-Fal-Webhook-*` headers; the public key is served as a JWKS (`/.well-known/jwks.json`).
A delivery answered with anything but 2xx is tried again with backoff (fal: 10 times in 2
hours; here 10 times in about a minute). Per key, a test can delay each delivery, send it
twice (`webhook_copies=2`) or drop it (`webhook_copies=0`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DELIVERIES = 10


@dataclass
class WebhookStats:
    sent: int = 0  # POSTs made, retries and copies included
    delivered: int = 0  # answered 2xx
    dropped: int = 0  # never sent, as a key's `webhook_copies=0` says


def user_id_of(key: str) -> str:
    """fal's user id for an API key (the simulator's own, stable per key)."""
    return "sim-user-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class FalWebhooks:
    def __init__(self, client: Callable[[], httpx.AsyncClient]) -> None:
        self._client = client
        self._key = Ed25519PrivateKey.generate()
        self._pending: set[asyncio.Task[None]] = set()
        self.stats = WebhookStats()

    def jwks(self) -> dict[str, Any]:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "sim-1", "use": "sig"}]}

    def signed_headers(self, request_id: str, user_id: str, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        digest = hashlib.sha256(body).hexdigest()
        message = "\n".join((request_id, user_id, timestamp, digest)).encode()
        return {
            "content-type": "application/json",
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": user_id,
            "x-fal-webhook-timestamp": timestamp,
            "x-fal-webhook-signature": self._key.sign(message).hex(),
        }

    def schedule(self, deliver: Coroutine[Any, Any, None]) -> None:
        """Run a delivery in the background (kept referenced until it ends)."""
        task = asyncio.create_task(deliver)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def deliver(
        self, url: str, request_id: str, key: str, body: dict[str, Any], copies: int
    ) -> None:
        if copies <= 0:
            self.stats.dropped += 1
            return
        payload = json.dumps(body).encode()
        for _ in range(copies):
            await self._post(url, request_id, user_id_of(key), payload)

    async def _post(self, url: str, request_id: str, user_id: str, body: bytes) -> None:
        for attempt in range(DELIVERIES):
            self.stats.sent += 1
            headers = self.signed_headers(request_id, user_id, body)
            try:
                answer = await self._client().post(url, content=body, headers=headers, timeout=10)
                if answer.is_success:
                    self.stats.delivered += 1
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(min(0.25 * 2**attempt, 15.0))
