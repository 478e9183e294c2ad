"""Each adapter against the provider simulator over real HTTP: every supported operation to
a real, probed file, and every error kind."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator

import av
import httpx
import pytest

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.providers.base import (
    Credentials,
    ErrorKind,
    GenerationInput,
    GenerationRequest,
    OperationType,
    Provider,
    ProviderError,
    ProviderStatusResult,
    TaskState,
)
from pixsim_provider_gateway.providers.pika import PikaProvider
from pixsim_provider_gateway.providers.pixverse import PixverseProvider
from pixsim_provider_gateway.providers.runway import RunwayProvider

pytestmark = pytest.mark.integration

INPUTS = {
    t.OPERATION_TYPE_TEXT_TO_VIDEO: (),
    t.OPERATION_TYPE_IMAGE_TO_VIDEO: (GenerationInput(t.INPUT_ROLE_IMAGE, "https://i.test/a.png"),),
    t.OPERATION_TYPE_VIDEO_TRANSITION: (
        GenerationInput(t.INPUT_ROLE_START_FRAME, "https://i.test/first.png"),
        GenerationInput(t.INPUT_ROLE_END_FRAME, "https://i.test/last.png"),
    ),
    t.OPERATION_TYPE_VIDEO_EXTEND: (GenerationInput(t.INPUT_ROLE_VIDEO, "https://v.test/v.mp4"),),
    t.OPERATION_TYPE_FUSION: (
        GenerationInput(t.INPUT_ROLE_REFERENCE, "https://i.test/r1.png"),
        GenerationInput(t.INPUT_ROLE_REFERENCE, "https://i.test/r2.png"),
    ),
}
# What each provider's default parameters make: (width, height, seconds).
EXPECTED = {
    ("runway", t.OPERATION_TYPE_TEXT_TO_VIDEO): (1280, 720, 5.0),
    ("runway", t.OPERATION_TYPE_IMAGE_TO_VIDEO): (1280, 720, 5.0),
    ("runway", t.OPERATION_TYPE_VIDEO_TRANSITION): (1280, 720, 8.0),
    ("runway", t.OPERATION_TYPE_VIDEO_EXTEND): (1280, 720, 5.0),
    ("pika", t.OPERATION_TYPE_TEXT_TO_VIDEO): (1280, 720, 5.0),
    ("pika", t.OPERATION_TYPE_IMAGE_TO_VIDEO): (1280, 720, 5.0),
    ("pika", t.OPERATION_TYPE_VIDEO_TRANSITION): (1280, 720, 5.0),
    ("pika", t.OPERATION_TYPE_FUSION): (1920, 1080, 5.0),
    ("pixverse", t.OPERATION_TYPE_TEXT_TO_VIDEO): (1024, 576, 5.0),
    ("pixverse", t.OPERATION_TYPE_IMAGE_TO_VIDEO): (1024, 576, 5.0),
    ("pixverse", t.OPERATION_TYPE_VIDEO_TRANSITION): (1024, 576, 5.0),
    ("pixverse", t.OPERATION_TYPE_VIDEO_EXTEND): (1024, 576, 5.0),
    ("pixverse", t.OPERATION_TYPE_FUSION): (1024, 576, 5.0),
}
ADAPTERS = {"runway": RunwayProvider, "pika": PikaProvider, "pixverse": PixverseProvider}


@pytest.fixture
async def key(provider_sim: str) -> str:
    """A fresh API key whose tasks finish quickly."""
    name = f"key-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient() as client:
        response = await client.put(f"{provider_sim}/_sim/keys/{name}", json={"finish_ms": 150})
        response.raise_for_status()
    return name


@pytest.fixture
async def adapters(provider_sim: str) -> AsyncIterator[dict[str, Provider]]:
    built: dict[str, Provider] = {
        name: cls(provider_sim, timeout=1.0) for name, cls in ADAPTERS.items()
    }
    yield built
    for adapter in built.values():
        await adapter.aclose()  # type: ignore[attr-defined]


async def finished(
    adapter: Provider, credentials: Credentials, job_id: str
) -> ProviderStatusResult:
    for _ in range(200):
        status = await adapter.check_status(credentials, job_id)
        if status.state.terminal:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("task never finished")


async def run(
    adapter: Provider, key: str, operation: OperationType, prompt: str = "a cat"
) -> ProviderStatusResult:
    request = GenerationRequest(operation, prompt, INPUTS[operation])
    payload = adapter.map_parameters(operation, request)
    credentials = Credentials(key)
    result = await adapter.execute(operation, credentials, payload)
    return await finished(adapter, credentials, result.provider_job_id)


@pytest.mark.parametrize(
    ("provider", "operation"),
    sorted(EXPECTED),
    ids=[f"{p}-{t.OperationType.Name(o)[15:]}" for p, o in sorted(EXPECTED)],
)
async def test_every_supported_operation_ends_with_a_real_file(
    adapters: dict[str, Provider], key: str, provider: str, operation: OperationType
) -> None:
    status = await run(adapters[provider], key, operation)
    assert status.state is TaskState.SUCCEEDED, status.error
    (output,) = status.outputs
    async with httpx.AsyncClient() as client:
        data = (await client.get(output.uri)).raise_for_status().content
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        probed = (stream.width, stream.height, container.duration / 1_000_000)
    assert probed == EXPECTED[(provider, operation)]
    if output.width is not None:  # what the provider reports must match the file
        assert (output.width, output.height) == probed[:2]


FAULTS = [
    ("rate_limit", ErrorKind.RATE_LIMITED),
    ("server_error", ErrorKind.TRANSIENT),
    ("invalid", ErrorKind.INVALID_PARAMETERS),
    ("no_credit", ErrorKind.ACCOUNT_EXHAUSTED),
    ("bad_key", ErrorKind.ACCOUNT_INVALID),
    ("hang", ErrorKind.TRANSIENT),
]


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@pytest.mark.parametrize(("fault", "kind"), FAULTS, ids=[f for f, _ in FAULTS])
async def test_submit_faults_are_classified(
    adapters: dict[str, Provider], key: str, provider: str, fault: str, kind: ErrorKind
) -> None:
    with pytest.raises(ProviderError) as raised:
        await run(adapters[provider], key, t.OPERATION_TYPE_TEXT_TO_VIDEO, f"a cat [sim:{fault}]")
    assert raised.value.kind is kind
    if kind is ErrorKind.RATE_LIMITED:
        assert raised.value.retry_after == 1.0


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@pytest.mark.parametrize(
    ("fault", "kind"), [("moderation", ErrorKind.CONTENT_REJECTED), ("fail", ErrorKind.TRANSIENT)]
)
async def test_task_failures_are_classified(
    adapters: dict[str, Provider], key: str, provider: str, fault: str, kind: ErrorKind
) -> None:
    status = await run(
        adapters[provider], key, t.OPERATION_TYPE_TEXT_TO_VIDEO, f"a cat [sim:{fault}]"
    )
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert status.error.kind is kind


@pytest.mark.parametrize("provider", ["runway", "pika"])
async def test_cancel_stops_a_running_task(
    adapters: dict[str, Provider], key: str, provider: str
) -> None:
    adapter = adapters[provider]
    operation = t.OPERATION_TYPE_TEXT_TO_VIDEO
    payload = adapter.map_parameters(
        operation, GenerationRequest(operation, "slow [sim:finish_ms=60000]")
    )
    credentials = Credentials(key)
    result = await adapter.execute(operation, credentials, payload)
    await adapter.cancel(credentials, result.provider_job_id)
    status = await finished(adapter, credentials, result.provider_job_id)
    assert status.state is TaskState.CANCELLED


async def test_out_of_credits_by_balance(
    adapters: dict[str, Provider], key: str, provider_sim: str
) -> None:
    async with httpx.AsyncClient() as client:
        await client.put(f"{provider_sim}/_sim/keys/{key}", json={"credits": 30})
    runway = adapters["runway"]
    first = await run(runway, key, t.OPERATION_TYPE_TEXT_TO_VIDEO)  # costs 25
    assert first.state is TaskState.SUCCEEDED
    with pytest.raises(ProviderError) as raised:
        await run(runway, key, t.OPERATION_TYPE_TEXT_TO_VIDEO)
    assert raised.value.kind is ErrorKind.ACCOUNT_EXHAUSTED
