"""fal's webhooks: verified as fal specifies (Ed25519 over request id, user id, timestamp and
the body's SHA-256, keys from a JWKS), and read as a status check's answer."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.domain import ErrorKind
from pixsim_provider_gateway.providers.base import Credentials, GenerationRequest, TaskState
from pixsim_provider_gateway.providers.callbacks import (
    FAL_JWKS_MIN_REFRESH_SECONDS,
    CallbackMalformed,
    CallbackRefused,
    FalKeys,
    FalWebhooks,
    KeysUnavailable,
)
from pixsim_provider_gateway.providers.pika import PikaProvider

pytestmark = pytest.mark.unit

NOW = 1_790_000_000.0
REQUEST = "80e732af-660e-45cd-bd63-580e4f2a94cc"


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x}


def signed(
    key: Ed25519PrivateKey, body: bytes, *, request_id: str = REQUEST, at: float = NOW
) -> dict[str, str]:
    timestamp = str(int(at))
    message = f"{request_id}\nuser-1\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"
    return {
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": "user-1",
        "x-fal-webhook-timestamp": timestamp,
        "x-fal-webhook-signature": key.sign(message.encode()).hex(),
    }


class Jwks:
    """A JWKS host that counts its fetches; `keys` may change (a rotation)."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    def handler(self, _request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json={"keys": [jwk(k) for k in self.keys]})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def webhooks(host: Jwks, clock: Clock | None = None) -> FalWebhooks:
    client = httpx.AsyncClient(transport=httpx.MockTransport(host.handler))
    keys = FalKeys("https://keys.test/.well-known/jwks.json", client, clock or Clock())
    return FalWebhooks(keys, PikaProvider("https://fal.test").webhook_notice, lambda: NOW)


def body_of(**fields: Any) -> bytes:
    return json.dumps({"request_id": REQUEST, "gateway_request_id": REQUEST, **fields}).encode()


OK = body_of(status="OK", payload={"video": {"url": "https://v.fal.media/a.mp4"}})


async def test_a_webhook_signed_by_fals_key_is_verified_and_read_as_the_result() -> None:
    key = Ed25519PrivateKey.generate()
    receiver = webhooks(Jwks(key))
    headers = signed(key, OK)
    await receiver.verify(headers, OK)
    notice = receiver.notice(headers, OK)
    assert notice.provider_job_id == REQUEST
    assert notice.status.state is TaskState.SUCCEEDED
    assert notice.status.outputs[0].uri == "https://v.fal.media/a.mp4"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b.replace(b"a.mp4", b"b.mp4")), id="body-changed"),
        pytest.param(lambda h, b: (h | {"x-fal-webhook-user-id": "user-2"}, b), id="user-changed"),
        pytest.param(
            lambda h, b: (h | {"x-fal-webhook-timestamp": str(int(NOW) - 301)}, b), id="stale"
        ),
        pytest.param(
            lambda h, b: (h | {"x-fal-webhook-timestamp": str(int(NOW) + 301)}, b), id="future"
        ),
        pytest.param(lambda h, b: (h | {"x-fal-webhook-timestamp": "1e9"}, b), id="not-a-time"),
        pytest.param(lambda h, b: (h | {"x-fal-webhook-signature": "zz"}, b), id="not-hex"),
        pytest.param(
            lambda h, b: ({k: v for k, v in h.items() if "signature" not in k}, b), id="unsigned"
        ),
        pytest.param(lambda h, b: ({}, b), id="no-headers"),
    ],
)
async def test_a_webhook_not_provably_fals_or_not_fresh_is_refused(tamper: Any) -> None:
    key = Ed25519PrivateKey.generate()
    headers, body = tamper(signed(key, OK), OK)
    with pytest.raises(CallbackRefused):
        await webhooks(Jwks(key)).verify(headers, body)


async def test_a_signature_by_another_key_is_refused_and_refetches_the_keys_at_most_once() -> None:
    host = Jwks(Ed25519PrivateKey.generate())
    clock = Clock()
    receiver = webhooks(host, clock)
    forger = Ed25519PrivateKey.generate()
    for _ in range(5):
        with pytest.raises(CallbackRefused):
            await receiver.verify(signed(forger, OK), OK)
    # One fetch for the keys, and forged calls make no more within the minimum interval.
    assert host.fetches == 1


async def test_a_rotated_key_is_fetched_when_a_signature_matches_no_held_key() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    host, clock = Jwks(old), Clock()
    receiver = webhooks(host, clock)
    await receiver.verify(signed(old, OK), OK)
    host.keys = [new]
    clock.now += FAL_JWKS_MIN_REFRESH_SECONDS + 1
    await receiver.verify(signed(new, OK), OK)
    assert host.fetches == 2


async def test_keys_that_cannot_be_read_make_the_callback_wait_not_pass() -> None:
    host = Jwks(Ed25519PrivateKey.generate())
    host.down = True
    with pytest.raises(KeysUnavailable):
        await webhooks(host).verify(signed(host.keys[0], OK), OK)


async def test_the_body_must_name_the_request_that_was_signed() -> None:
    key = Ed25519PrivateKey.generate()
    receiver = webhooks(Jwks(key))
    headers = signed(key, OK, request_id="another-request")
    await receiver.verify(headers, OK)
    with pytest.raises(CallbackMalformed):
        receiver.notice(headers, OK)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (
            body_of(
                status="ERROR",
                error="Invalid status code: 422",
                payload={
                    "detail": [
                        {
                            "loc": ["body", "prompt"],
                            "msg": "flagged",
                            "type": "content_policy_violation",
                        }
                    ]
                },
            ),
            ErrorKind.CONTENT_REJECTED,
        ),
        (
            body_of(status="ERROR", error="Invalid status code: 500", payload={"detail": "boom"}),
            ErrorKind.TRANSIENT,
        ),
        (body_of(status="ERROR", error="the runner died", payload=None), ErrorKind.TRANSIENT),
    ],
)
def test_a_failed_requests_webhook_reads_as_its_result_urls_error(
    body: bytes, kind: ErrorKind
) -> None:
    status = PikaProvider("https://fal.test").webhook_notice(body).status
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert status.error.kind is kind


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"status": "OK"}).encode(),
        body_of(status="OK", payload={"video": {}}),
        body_of(status="OK", payload="a string"),
        body_of(status="IN_PROGRESS"),
    ],
)
def test_a_webhook_that_says_nothing_readable_is_malformed(body: bytes) -> None:
    with pytest.raises(CallbackMalformed):
        PikaProvider("https://fal.test").webhook_notice(body)


async def test_a_submit_asks_for_the_webhook_only_when_callbacks_are_on() -> None:
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"request_id": REQUEST})

    url = "https://pixsim.example/callbacks/pika"
    request = GenerationRequest(t.OPERATION_TYPE_TEXT_TO_VIDEO, "a fox")
    for webhook_url in (url, ""):
        provider = PikaProvider(
            "https://fal.test", transport=httpx.MockTransport(reply), webhook_url=webhook_url
        )
        payload = provider.map_parameters(request.operation, request)
        await provider.execute(request.operation, Credentials("k"), payload)
    assert seen[0].url.params.get("fal_webhook") == url
    assert "fal_webhook" not in seen[1].url.params
