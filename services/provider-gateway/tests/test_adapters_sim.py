"""Each adapter against the provider simulator over real HTTP: every supported operation to
a real, probed file, with its inputs given through the provider's own intake (as bytes: an
upload, a data URI or Runway's uploads flow; and as a URL), the simulator receiving the
exact bytes; and every error kind."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
from collections.abc import AsyncIterator

import av
import httpx
import pytest

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.domain import ErrorKind
from pixsim_provider_gateway.providers.base import (
    Credentials,
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
from pixsim_provider_sim.media import render_mp4, render_png

pytestmark = pytest.mark.integration

ROLES = {
    t.OPERATION_TYPE_TEXT_TO_VIDEO: (),
    t.OPERATION_TYPE_IMAGE_TO_VIDEO: (t.INPUT_ROLE_IMAGE,),
    t.OPERATION_TYPE_VIDEO_TRANSITION: (t.INPUT_ROLE_START_FRAME, t.INPUT_ROLE_END_FRAME),
    t.OPERATION_TYPE_VIDEO_EXTEND: (t.INPUT_ROLE_VIDEO,),
    t.OPERATION_TYPE_FUSION: (t.INPUT_ROLE_REFERENCE, t.INPUT_ROLE_REFERENCE),
}


class BytesInput:
    """An input file the test holds: offered as a URL when it has one, else as bytes."""

    def __init__(self, body: bytes, mime_type: str, url: str | None = None) -> None:
        self.body, self.mime_type, self._url = body, mime_type, url
        self.size_bytes = len(body)
        self.file_name = "input.mp4" if mime_type == "video/mp4" else "input.png"

    async def url(self) -> str | None:
        return self._url

    async def read(self) -> bytes:
        return self.body


class Served:
    """Files over loopback HTTP, for inputs given by URL."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        body = self.files.get(request.split(b" ", 2)[1].decode(), b"")
        status = "200 OK" if body else "404 Not Found"
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        writer.close()

    def add(self, body: bytes) -> str:
        path = f"/{uuid.uuid4().hex}"
        self.files[path] = body
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    files = Served()
    server = await asyncio.start_server(files.handle, "127.0.0.1", 0)
    files.port = server.sockets[0].getsockname()[1]
    yield files
    server.close()


def inputs_for(
    operation: OperationType, served: Served | None, big: bool = False
) -> list[BytesInput]:
    """Real files for the operation's roles (each distinct); URLs when `served` is given."""
    made = []
    for index, role in enumerate(ROLES[operation]):
        if role == t.INPUT_ROLE_VIDEO:
            body, kind = render_mp4(index + 1, 64, 48, 1.0), "video/mp4"
            if big:  # past Runway's data URI limit: its uploads flow
                body += b"\0" * (4 * 1024 * 1024)
        else:
            body, kind = render_png(uuid.uuid4().int % 100_000, 32, 32), "image/png"
        made.append(BytesInput(body, kind, served.add(body) if served else None))
    return made


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
    adapter: Provider,
    key: str,
    operation: OperationType,
    prompt: str = "a cat",
    files: list[BytesInput] | None = None,
) -> ProviderStatusResult:
    files = inputs_for(operation, None) if files is None else files
    given = tuple(
        GenerationInput(role, asset=f"assets/{i}") for i, role in enumerate(ROLES[operation])
    )
    request = GenerationRequest(operation, prompt, given)
    payload = adapter.map_parameters(operation, request)
    credentials = Credentials(key)
    result = await adapter.execute(operation, credentials, payload, files)
    return await finished(adapter, credentials, result.provider_job_id)


async def received(sim: str, prompt: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        tasks = (await client.get(f"{sim}/_sim/tasks", params={"prompt": prompt})).json()
    (task,) = tasks
    return [i["sha256"] for i in task["inputs"]]


@pytest.mark.parametrize(
    ("provider", "operation"),
    sorted(EXPECTED),
    ids=[f"{p}-{t.OperationType.Name(o)[15:]}" for p, o in sorted(EXPECTED)],
)
@pytest.mark.parametrize("given_as", ["bytes", "url"])
async def test_every_supported_operation_ends_with_a_real_file(
    adapters: dict[str, Provider],
    key: str,
    provider: str,
    operation: OperationType,
    given_as: str,
    served: Served,
    provider_sim: str,
) -> None:
    files = inputs_for(operation, served if given_as == "url" else None)
    prompt = f"a cat {uuid.uuid4().hex[:8]}"
    status = await run(adapters[provider], key, operation, prompt, files)
    # The provider received each input's exact bytes, however they went.
    assert await received(provider_sim, prompt) == [
        hashlib.sha256(f.body).hexdigest() for f in files
    ]
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


async def test_a_large_input_goes_through_runways_uploads_flow(
    adapters: dict[str, Provider], key: str, provider_sim: str
) -> None:
    files = inputs_for(t.OPERATION_TYPE_VIDEO_EXTEND, None, big=True)
    prompt = f"extended {uuid.uuid4().hex[:8]}"
    status = await run(adapters["runway"], key, t.OPERATION_TYPE_VIDEO_EXTEND, prompt, files)
    assert status.state is TaskState.SUCCEEDED
    async with httpx.AsyncClient() as client:
        (task,) = (await client.get(f"{provider_sim}/_sim/tasks", params={"prompt": prompt})).json()
    assert [(i["sha256"], i["via"]) for i in task["inputs"]] == [
        (hashlib.sha256(files[0].body).hexdigest(), "upload")
    ]


async def test_the_simulator_records_when_a_task_was_accepted_and_when_it_ended(
    adapters: dict[str, Provider], key: str, provider_sim: str
) -> None:
    """The benchmarks take a provider's own time from these wall-clock stamps."""
    prompt = f"timed {uuid.uuid4().hex}"
    before = time.time()
    status = await run(adapters["pixverse"], key, t.OPERATION_TYPE_TEXT_TO_VIDEO, prompt)
    after = time.time()
    assert status.state is TaskState.SUCCEEDED
    async with httpx.AsyncClient() as client:
        (task,) = (await client.get(f"{provider_sim}/_sim/tasks", params={"prompt": prompt})).json()
    assert before <= task["created_at"] < task["ended_at"] <= after
    # The key's tasks take 150 ms (the simulator's clock and the wall clock agree).
    assert task["ended_at"] - task["created_at"] == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_an_input_the_provider_cannot_fetch_is_refused(
    adapters: dict[str, Provider], key: str, served: Served, provider: str
) -> None:
    missing = BytesInput(b"", "image/png", served.add(b"") + "-gone")
    with pytest.raises(ProviderError) as raised:
        await run(adapters[provider], key, t.OPERATION_TYPE_IMAGE_TO_VIDEO, files=[missing])
    assert raised.value.kind is ErrorKind.INVALID_PARAMETERS


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
