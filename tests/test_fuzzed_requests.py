"""Hypothesis-generated requests to every RPC of every service, built from the protos
themselves: random and boundary values, huge strings, resource names of every shape, bad
page tokens and field masks, out-of-range timestamps. The answer is never INTERNAL or
UNKNOWN, and a refused request writes no row in any service's database."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory, struct_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixsim.asset.v1 import asset_service_pb2
from pixsim.job.v1 import job_service_pb2
from pixsim.provider.v1 import provider_gateway_service_pb2
from pixsim.scene.v1 import scene_service_pb2
from pixsim_local.whole_stack import Metadata, WholeStack

pytestmark = pytest.mark.e2e

EXAMPLES_PER_RPC = 40
SERVICES = {
    "job": job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    "asset": asset_service_pb2.DESCRIPTOR.services_by_name["AssetService"],
    "provider-gateway": provider_gateway_service_pb2.DESCRIPTOR.services_by_name[
        "ProviderGatewayService"
    ],
    "scene": scene_service_pb2.DESCRIPTOR.services_by_name["SceneService"],
}
ADMIN_METHODS = {"CreateAccount", "GetAccount", "ListAccounts", "UpdateAccount", "DisableAccount"}
# Rows a refused request must not have written (the outbox too: no event for nothing).
TABLES = {
    "job": ["jobs", "outbox"],
    "asset": ["assets", "asset_variants", "asset_lineage", "outbox"],
    "provider-gateway": ["provider_accounts", "provider_submissions", "outbox"],
    "scene": ["scenes", "scene_assets", "scene_connections", "outbox"],
}
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

U = str(uuid.UUID(int=7))
INTERESTING = [
    "", " ", "\x00", "ünïcødé ✨", "x" * 70_000, "../../etc/passwd", "' OR 1=1; --",
    f"jobs/{U}", f"assets/{U}", f"scenes/{U}", f"scenes/{U}/assets/{U}",
    f"scenes/{U}/connections/{U}", f"accounts/{U}", f"submissions/{U}", "providers/pixverse",
    "providers/nope", "pixverse", "http://127.0.0.1:1/x.mp4", "https://10.0.0.1/x.png",
    "file:///etc/passwd", "eyJwIjpbXX0", "not-a-token", "*", "name", "a.b.c", U,
]  # fmt: skip
INT_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 1000, 1001]

T = TypeVar("T")


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(INTERESTING), st.text(max_size=40))


def scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == d.FieldDescriptor.TYPE_STRING:
        return strings()
    if kind == d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 5_000_000))
    if kind == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == d.FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 40)  # defined and undefined values alike
    bits = 32 if kind in (d.FieldDescriptor.TYPE_INT32, d.FieldDescriptor.TYPE_SINT32) else 64
    low = 0 if kind in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_UINT64) else None
    edges = [v for v in INT_EDGES if -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)]
    if low is not None:
        edges = [v for v in edges if v >= 0]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(low if low is not None else -(2 ** (bits - 1)), 2 ** (bits - 1) - 1),
    )


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), strings())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(strings(), inner, max_size=3)
        ),
        max_leaves=6,
    )


def message(descriptor: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls: Any = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.sampled_from([0, -1, 253402300800, -62135596801, 1_800_000_000, 2**62]),
            st.sampled_from([0, 999_999_999, 1_000_000_000, -1]),
        )
    if name == "google.protobuf.FieldMask":
        field_names = st.sampled_from(["*", "name", "", "display_name", "etag", "a.b", "owner"])
        return st.builds(
            lambda p: cls(paths=p), st.lists(st.one_of(field_names, strings()), max_size=3)
        )
    if name == "google.protobuf.Struct":

        def struct(values: dict[str, Any]) -> Message:
            built = struct_pb2.Struct()
            built.update(values)
            return built

        return st.dictionaries(strings(), json_values(), max_size=3).map(struct)
    if depth > 2:
        return st.just(cls())
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            parts[field.name] = st.dictionaries(scalar(key), scalar(value), max_size=3)
        elif field.message_type is not None:
            inner = message(field.message_type, depth + 1)
            parts[field.name] = st.lists(inner, max_size=3) if _repeated(field) else inner
        else:
            parts[field.name] = (
                st.lists(scalar(field), max_size=4) if _repeated(field) else scalar(field)
            )

    def build(values: dict[str, Any]) -> Message:
        built: Message = cls()
        for field_name, value in values.items():
            field = descriptor.fields_by_name[field_name]
            target = getattr(built, field_name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target.update(value)
            elif _repeated(field):
                target.extend(value)
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                # A value out of the field's own range: no client could send it either.
                with contextlib.suppress(ValueError, TypeError):
                    setattr(built, field_name, value)
        return built

    return st.fixed_dictionaries({}, optional=parts).map(build)


def _repeated(field: d.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


class Background:
    """One event loop in a thread, for the database counts a sync test makes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@dataclass
class Rows:
    connections: dict[str, asyncpg.Connection]

    async def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for service, tables in TABLES.items():
            # Table names from the constant above, never from input.
            counts = [f"(SELECT count(*) FROM {t}) AS {t}" for t in tables]  # noqa: S608
            query = "SELECT " + ", ".join(counts)
            row = await self.connections[service].fetchrow(query)
            found |= {f"{service}.{t}": row[t] for t in tables}
        return found


@pytest.fixture(scope="module")
def rows(whole_stack: WholeStack) -> Iterator[tuple[Background, Rows]]:
    background = Background()
    connections = {
        service: background.run(asyncpg.connect(whole_stack.services.databases[service].url))
        for service in TABLES
    }
    yield background, Rows(connections)
    for connection in connections.values():
        background.run(connection.close())
    background.close()


def rpcs() -> Iterator[tuple[str, d.MethodDescriptor]]:
    for service, descriptor in SERVICES.items():
        for method in descriptor.methods:
            yield service, method


@pytest.mark.parametrize(
    ("service", "method"), list(rpcs()), ids=[f"{s}.{m.name}" for s, m in rpcs()]
)
def test_fuzzed_requests_are_answered_without_internal_errors_or_stray_rows(
    whole_stack: WholeStack,
    rows: tuple[Background, Rows],
    service: str,
    method: d.MethodDescriptor,
    capsys: pytest.CaptureFixture[str],
) -> None:
    background, counter = rows
    who: Metadata = whole_stack.auth("fuzzer", admin=method.name in ADMIN_METHODS)
    channel = grpc.insecure_channel(whole_stack.services.address(service))
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    options = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response_type.FromString,
    }
    call: Any
    requests: st.SearchStrategy[Any]
    if method.client_streaming:
        call = channel.stream_unary(path, **options)
        requests = st.lists(message(method.input_type), min_size=0, max_size=3)
    elif method.server_streaming:
        call = channel.unary_stream(path, **options)
        requests = message(method.input_type)
    else:
        call = channel.unary_unary(path, **options)
        requests = message(method.input_type)
    codes: Counter[str] = Counter()
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests)
    def one(request: Any) -> None:
        before = background.run(counter.counts())
        try:
            if method.client_streaming:
                call(iter(request), metadata=who, timeout=10)
            elif method.server_streaming:
                for _ in call(request, metadata=who, timeout=3):
                    break
            else:
                call(request, metadata=who, timeout=10)
            codes["OK"] += 1
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
                codes["OK (still streaming)"] += 1
                return
            codes[code.name] += 1
            if code in NEVER:
                failures.append(f"{code.name}: {error.details()} for {str(request)[:300]!r}")
                return
            after = background.run(counter.counts())
            changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            if changed:
                failures.append(f"refused ({code.name}) but wrote {changed}")

    try:
        one()
    finally:
        channel.close()
    with capsys.disabled():
        summary = ", ".join(f"{k} {v}" for k, v in codes.most_common())
        print(
            f"\n  fuzz {service}.{method.name}: {sum(codes.values())} requests: {summary}", end=""
        )
    assert failures == []
