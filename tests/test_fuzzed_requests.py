"""Hypothesis-generated requests to every RPC of every service, built from the protos
themselves: random and boundary values, huge strings, resource names of every shape, bad
page tokens and field masks, out-of-range timestamps. The answer is never INTERNAL or
UNKNOWN, and a refused request writes no row in any service's database.

Below the message level too: truncated and mutated encodings, strings carrying NUL or
(invalid UTF-8) lone surrogates, and page tokens crafted by hand, sent as raw bytes."""

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
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e

EXAMPLES_PER_RPC = 40
BYTE_EXAMPLES_PER_RPC = 20
SERVICES = {
    "job": job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    "asset": asset_service_pb2.DESCRIPTOR.services_by_name["AssetService"],
    "provider-gateway": provider_gateway_service_pb2.DESCRIPTOR.services_by_name[
        "ProviderGatewayService"
    ],
    "scene": scene_service_pb2.DESCRIPTOR.services_by_name["SceneService"],
}
ADMIN_METHODS = {
    "CreateAccount",
    "GetAccount",
    "ListAccounts",
    "UpdateAccount",
    "DisableAccount",
    "EnableAccount",
    "DrainAccount",
    "PauseProvider",
    "ResumeProvider",
}
# Rows a refused request must not have written (the outbox too: no event for nothing).
# Each example calls as a user of its own, so these count only what names that user: work
# the pipeline goes on doing for earlier, accepted requests (of other users) changes none of
# them. `$1` is the user. Events name their user in their payload. Accounts have no owner,
# and nothing but an admin RPC makes one.
OUTBOX_OF = "SELECT count(*) FROM outbox WHERE position(convert_to($1, 'UTF8') in payload) > 0"
TABLES = {
    "job": {"jobs": "SELECT count(*) FROM jobs WHERE user_id = $1", "outbox": OUTBOX_OF},
    "asset": {
        "assets": "SELECT count(*) FROM assets WHERE owner_id = $1",
        "asset_variants": "SELECT count(*) FROM asset_variants v JOIN assets a"
        " ON a.id = v.asset_id WHERE a.owner_id = $1",
        "asset_lineage": "SELECT count(*) FROM asset_lineage l JOIN assets a"
        " ON a.id = l.child_id WHERE a.owner_id = $1",
        "outbox": OUTBOX_OF,
    },
    "provider-gateway": {
        "provider_accounts": "SELECT count(*) FROM provider_accounts WHERE $1 <> ''",
        "provider_submissions": "SELECT count(*) FROM provider_submissions WHERE user_id = $1",
        "outbox": OUTBOX_OF,
    },
    "scene": {
        "scenes": "SELECT count(*) FROM scenes WHERE owner_id = $1",
        "scene_assets": "SELECT count(*) FROM scene_assets n JOIN scenes s ON s.id = n.scene_id"
        " WHERE s.owner_id = $1",
        "scene_connections": "SELECT count(*) FROM scene_connections c JOIN scenes s"
        " ON s.id = c.scene_id WHERE s.owner_id = $1",
        "outbox": OUTBOX_OF,
    },
}
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

U = str(uuid.UUID(int=7))
# Page tokens a caller might forge: the old unsigned form, a token with a copied MAC, JSON
# naming positions that are no time or no id, and plain garbage.
CRAFTED_PAGE_TOKENS = [
    "eyJwIjpbIjIwMjYtMDEtMDFUMDA6MDA6MDAiLCJ4Il0sInEiOiIwMDAwMDAwMDAwMDAifQ",
    "WyIyMDI2LTAxLTAxIiwgIicgT1IgMT0xIl0.AAAAAAAAAAAAAAAAAAAAAA",
    "WyJub3QgYSB0aW1lIiwgIlx1MDAwMCJd.8J-mig",
    "...", "a.b.c", "\x00", "%00", "eyJ9", "W10.", ".W10",
]  # fmt: skip
INTERESTING = [
    "", " ", "\x00", "ünïcødé ✨", "x" * 70_000, "../../etc/passwd", "' OR 1=1; --",
    f"jobs/{U}", f"assets/{U}", f"scenes/{U}", f"scenes/{U}/assets/{U}",
    f"scenes/{U}/connections/{U}", f"accounts/{U}", f"submissions/{U}", "providers/pixverse",
    "providers/nope", "pixverse", "http://127.0.0.1:1/x.mp4", "https://10.0.0.1/x.png",
    "file:///etc/passwd", "eyJwIjpbXX0", "not-a-token", "*", "name", "a.b.c", U,
    "nul\x00inside", "\x00" * 300, *CRAFTED_PAGE_TOKENS,
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

    async def counts(self, user: str) -> dict[str, int]:
        """Rows naming `user` in every service's tables."""
        found: dict[str, int] = {}
        for service, tables in TABLES.items():
            for table, query in tables.items():
                found[f"{service}.{table}"] = await self.connections[service].fetchval(query, user)
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


def run_fuzz(
    stack: WholeStack,
    rows: tuple[Background, Rows],
    service: str,
    method: d.MethodDescriptor,
    *,
    examples: int,
    requests: st.SearchStrategy[Any],
    raw: bool,
) -> Counter[str]:
    """Send `examples` of `requests` to one RPC, each as a user of its own: the answer is
    never INTERNAL, UNKNOWN or DATA_LOSS, and a refused one wrote no row naming its user.
    `raw`: the examples are bytes, sent as they are. The codes met, counted."""
    background, counter = rows
    admin = method.name in ADMIN_METHODS
    channel = grpc.insecure_channel(stack.services.address(service))
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    options: dict[str, Any] = (
        {"request_serializer": None, "response_deserializer": None}
        if raw
        else {
            "request_serializer": lambda m: m.SerializeToString(),
            "response_deserializer": response_type.FromString,
        }
    )
    call: Any
    if method.client_streaming:
        call = channel.stream_unary(path, **options)
    elif method.server_streaming:
        call = channel.unary_stream(path, **options)
    else:
        call = channel.unary_unary(path, **options)
    codes: Counter[str] = Counter()
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests)
    def one(request: Any) -> None:
        user = f"fuzzer-{uuid.uuid4().hex[:12]}"
        who = stack.auth(user, admin=admin)
        before = background.run(counter.counts(user))
        try:
            if method.client_streaming:
                call(
                    iter(request if isinstance(request, list) else [request]),
                    metadata=who,
                    timeout=10,
                )
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
            after = background.run(counter.counts(user))
            changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            if changed:
                failures.append(f"refused ({code.name}) but wrote {changed}")

    try:
        one()
    finally:
        if method.name == "PauseProvider":  # a fuzzed pause must not hold every later job
            resume = channel.unary_unary(
                f"/{method.containing_service.full_name}/ResumeProvider",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=provider_gateway_service_pb2.Provider.FromString,
            )
            for provider in ("pixverse", "runway", "pika"):
                resume(
                    provider_gateway_service_pb2.ResumeProviderRequest(
                        name=f"providers/{provider}"
                    ),
                    metadata=stack.auth("root", admin=True),
                    timeout=10,
                )
        channel.close()
    assert failures == []
    return codes


def report(capsys: pytest.CaptureFixture[str], what: str, codes: Counter[str]) -> None:
    with capsys.disabled():
        summary = ", ".join(f"{k} {v}" for k, v in codes.most_common())
        print(f"\n  {what}: {sum(codes.values())} requests: {summary}", end="")


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
    requests: st.SearchStrategy[Any] = message(method.input_type)
    if method.client_streaming:
        requests = st.lists(requests, min_size=0, max_size=3)
    codes = run_fuzz(
        whole_stack,
        rows,
        service,
        method,
        examples=EXAMPLES_PER_RPC,
        requests=requests,
        raw=False,
    )
    report(capsys, f"fuzz {service}.{method.name}", codes)


def _string_field_numbers(descriptor: d.Descriptor) -> list[int]:
    return [f.number for f in descriptor.fields if f.type == d.FieldDescriptor.TYPE_STRING]


def _length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field, encoded by hand (protobuf's own encoder refuses what we
    want to send)."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_requests(descriptor: d.Descriptor) -> st.SearchStrategy[bytes]:
    """Encodings of `descriptor`: valid ones truncated, flipped or extended, and string fields
    holding NUL, lone surrogates (ED A0 80) or other invalid UTF-8."""
    valid = message(descriptor).map(lambda m: m.SerializeToString())
    truncated = valid.flatmap(
        lambda raw: st.integers(0, max(len(raw) - 1, 0)).map(lambda cut: raw[:cut])
    )
    flipped = st.tuples(valid, st.integers(0, 10_000), st.integers(1, 255)).map(
        lambda t: (
            t[0][: t[1] % len(t[0])]
            + bytes([t[0][t[1] % len(t[0])] ^ t[2]])
            + t[0][t[1] % len(t[0]) + 1 :]
            if t[0]
            else bytes([t[2]])
        )
    )
    extended = st.tuples(valid, st.binary(min_size=1, max_size=12)).map(lambda t: t[0] + t[1])
    numbers = _string_field_numbers(descriptor) or [1]
    bad_text = st.sampled_from(
        [b"\xed\xa0\x80", b"a\x00b", b"\x00", b"\xc3\x28", b"\xff\xfe", b"ok\xed\xbf\xbf"]
    )
    strings = st.tuples(valid, st.sampled_from(numbers), bad_text).map(
        lambda t: t[0] + _length_delimited(t[1], t[2])
    )
    return st.one_of(truncated, flipped, extended, strings)


@pytest.mark.parametrize(
    ("service", "method"), list(rpcs()), ids=[f"{s}.{m.name}" for s, m in rpcs()]
)
def test_mutated_bytes_are_invalid_argument_or_answered_and_write_nothing_when_refused(
    whole_stack: WholeStack,
    rows: tuple[Background, Rows],
    service: str,
    method: d.MethodDescriptor,
    capsys: pytest.CaptureFixture[str],
) -> None:
    codes = run_fuzz(
        whole_stack,
        rows,
        service,
        method,
        examples=BYTE_EXAMPLES_PER_RPC,
        requests=raw_requests(method.input_type),
        raw=True,
    )
    report(capsys, f"bytes {service}.{method.name}", codes)


LIST_METHODS = [
    (service, method)
    for service, method in rpcs()
    if "page_token" in method.input_type.fields_by_name
]


@pytest.mark.parametrize(
    ("service", "method"), LIST_METHODS, ids=[f"{s}.{m.name}" for s, m in LIST_METHODS]
)
@pytest.mark.parametrize("token", CRAFTED_PAGE_TOKENS)
def test_crafted_page_tokens_are_invalid_argument(
    whole_stack: WholeStack, service: str, method: d.MethodDescriptor, token: str
) -> None:
    request: Any = message_factory.GetMessageClass(method.input_type)(page_token=token)
    for field in method.input_type.fields:  # the one required name these methods take
        if field.name in ("name", "job"):
            prefix = {"name": "scenes", "job": "jobs"}[field.name]
            setattr(request, field.name, f"{prefix}/{U}")
    channel = grpc.insecure_channel(whole_stack.services.address(service))
    try:
        call = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        admin = method.name in ADMIN_METHODS
        with pytest.raises(grpc.RpcError) as raised:
            call(request, metadata=whole_stack.auth("forger", admin=admin), timeout=10)
    finally:
        channel.close()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
