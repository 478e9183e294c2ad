"""Pure pieces of the kit, without I/O."""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError

from pixsim.job.v1 import job_service_pb2
from pixsim.types.v1 import types_pb2
from pixsim_common.auth import TokenVerifier, generate_keypair, issue_token
from pixsim_common.background import Loop
from pixsim_common.clients import PeerBug, from_peer
from pixsim_common.cloudevents import (
    MalformedEvent,
    encode_headers,
    event_headers,
    parse_headers,
)
from pixsim_common.db import sqlalchemy_url
from pixsim_common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from pixsim_common.pagination import PageTokens
from pixsim_common.topics import ALL_TOPICS, all_topic_names, topic_named
from pixsim_common.transient import is_data_error, is_transient
from pixsim_common.validation import validate, violations_of

pytestmark = pytest.mark.unit


class TestCloudEvents:
    def test_headers_round_trip(self) -> None:
        moment = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
        event_id = str(uuid.uuid4())
        headers = event_headers(
            event_type="pixsim.job.submitted.v1",
            source="/job",
            event_id=event_id,
            time=moment,
            trace_headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        )
        assert headers["ce_time"] == "2026-11-24T12:00:00.000000Z"
        meta = parse_headers(encode_headers(headers))
        assert (meta.id, meta.type, meta.source) == (event_id, "pixsim.job.submitted.v1", "/job")
        assert meta.trace_headers == {"traceparent": headers["traceparent"]}

    @pytest.mark.parametrize(
        ("drop", "override", "reason"),
        [
            ("ce_id", {}, "MISSING_HEADERS"),
            ("ce_type", {}, "MISSING_HEADERS"),
            (None, {"ce_specversion": "0.3"}, "BAD_SPECVERSION"),
            (None, {"content-type": "application/json"}, "BAD_CONTENT_TYPE"),
            (None, {"ce_id": "not-a-uuid"}, "BAD_EVENT_ID"),
        ],
    )
    def test_malformed_headers_say_why(
        self, drop: str | None, override: dict[str, str], reason: str
    ) -> None:
        headers = event_headers(event_type="t", source="/s")
        headers.pop(drop or "", None)
        headers.update(override)
        with pytest.raises(MalformedEvent) as raised:
            parse_headers(encode_headers(headers))
        assert raised.value.reason == reason

    def test_non_utf8_headers_are_malformed(self) -> None:
        with pytest.raises(MalformedEvent):
            parse_headers([("ce_id", b"\xff")])


class TestValidation:
    def test_paths_name_nested_fields_and_indexes(self) -> None:
        request = job_service_pb2.CreateJobRequest(
            job=job_service_pb2.Job(
                provider_id="pixverse",
                operation_type=types_pb2.OPERATION_TYPE_TEXT_TO_VIDEO,
                inputs=[types_pb2.GenerationInput(asset="assets/a")] * 9,
            )
        )
        found = [(v.field, v.reason) for v in violations_of(request)]
        assert found[0] == ("job.inputs", "repeated.max_items")
        assert found[1:] == [(f"job.inputs[{i}].asset", "string.pattern") for i in range(9)]

    def test_no_defaults_for_identity(self) -> None:
        with pytest.raises(InvalidArgument) as raised:
            validate(job_service_pb2.CreateJobRequest(job=job_service_pb2.Job(prompt="a cat")))
        fields = {v.field for v in raised.value.violations}
        assert fields == {"job.operation_type", "job.provider_id"}

    def test_a_valid_request_passes(self) -> None:
        validate(
            job_service_pb2.CreateJobRequest(
                job=job_service_pb2.Job(
                    provider_id="runway",
                    operation_type=types_pb2.OPERATION_TYPE_IMAGE_TO_VIDEO,
                    inputs=[
                        types_pb2.GenerationInput(
                            role=types_pb2.INPUT_ROLE_IMAGE,
                            asset="assets/0b1c2d3e-0000-4000-8000-000000000001",
                        )
                    ],
                ),
                request_id="client-42",
            )
        )

    @given(st.text(max_size=300))
    def test_any_job_name_is_either_valid_or_refused_with_a_violation(self, name: str) -> None:
        violations = violations_of(job_service_pb2.GetJobRequest(name=name))
        valid = name.startswith("jobs/") and len(name) == 41
        assert (not violations) == (valid and all(c in "0123456789abcdef-" for c in name[5:]))


class TestErrors:
    def test_invalid_argument_carries_error_info_and_bad_request(self) -> None:
        status = InvalidArgument(
            "bad", [FieldViolation("job.prompt", "too long", "string.max_len")]
        ).to_status()
        kinds = [detail.TypeName() for detail in status.details]
        assert kinds == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
        bad_request = error_details_pb2.BadRequest()
        status.details[1].Unpack(bad_request)
        assert bad_request.field_violations[0].field == "job.prompt"

    def test_codes(self) -> None:
        assert NotFound("x").to_status().code == 5
        assert Unauthenticated("x").to_status().code == 16


class TestAuth:
    keys = generate_keypair()
    verifier = TokenVerifier(public_key=keys[1], issuer="pixsim-local", audience="pixsim")

    def test_roles_and_subject(self) -> None:
        identity = self.verifier.verify(
            "Bearer " + issue_token(self.keys[0], user_id="u7", roles=["admin"])
        )
        assert (identity.user_id, identity.is_admin) == ("u7", True)

    @pytest.mark.parametrize(
        "claims",
        [{"issuer": "someone-else"}, {"audience": "another-api"}],
    )
    def test_wrong_issuer_or_audience(self, claims: dict[str, str]) -> None:
        token = issue_token(self.keys[0], user_id="u7", **claims)  # type: ignore[arg-type]
        with pytest.raises(Unauthenticated):
            self.verifier.verify(f"Bearer {token}")

    def test_expired_within_leeway_is_accepted_and_beyond_refused(self) -> None:
        fresh = issue_token(self.keys[0], user_id="u", ttl_seconds=10, now=time.time() - 12)
        assert self.verifier.verify(f"Bearer {fresh}").user_id == "u"
        stale = issue_token(self.keys[0], user_id="u", ttl_seconds=10, now=time.time() - 60)
        with pytest.raises(Unauthenticated, match="expired"):
            self.verifier.verify(f"Bearer {stale}")

    def test_a_cached_token_still_expires(self) -> None:
        now = [time.time()]
        verifier = TokenVerifier(
            public_key=self.keys[1],
            issuer="pixsim-local",
            audience="pixsim",
            clock=lambda: now[0],
        )
        token = issue_token(self.keys[0], user_id="u", ttl_seconds=30)
        assert verifier.verify(f"Bearer {token}").user_id == "u"  # now cached
        now[0] += 120
        with pytest.raises(Unauthenticated, match="expired"):
            verifier.verify(f"Bearer {token}")

    def test_a_verifier_needs_a_key(self) -> None:
        with pytest.raises(ValueError, match="public key"):
            TokenVerifier(issuer="i", audience="a")


class TestTransientErrors:
    def dbapi(self, orig: Exception) -> DBAPIError:
        return DBAPIError("statement", {}, orig)

    def test_connection_and_availability_problems_are_transient(self) -> None:
        assert is_transient(ConnectionRefusedError())
        assert is_transient(TimeoutError())
        assert is_transient(OperationalError("s", {}, Exception("server closed")))
        assert is_transient(self.dbapi(asyncpg.CannotConnectNowError("starting up")))
        assert is_transient(self.dbapi(asyncpg.SerializationError("conflict")))

    def test_data_and_programming_errors_are_not(self) -> None:
        assert not is_transient(KeyError("bug"))
        assert not is_transient(IntegrityError("s", {}, asyncpg.UniqueViolationError("dup")))
        assert not is_transient(self.dbapi(asyncpg.UndefinedTableError("no table")))

    def test_a_query_over_the_parameter_limit_is_a_bug_not_a_passing_failure(self) -> None:
        too_many = asyncpg.InterfaceError("the number of query arguments cannot exceed 32767")
        assert not is_transient(too_many)
        assert not is_transient(SAInterfaceError("INSERT ...", {}, too_many))
        assert is_transient(
            asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed")
        )

    def test_file_errors_are_not_transient_but_network_errors_are(self) -> None:
        assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
        assert not is_transient(PermissionError(errno.EACCES, "no"))
        assert not is_transient(OSError(errno.ENOSPC, "disk full"))
        assert is_transient(OSError(errno.EHOSTUNREACH, "no route"))
        assert is_transient(socket.gaierror(socket.EAI_AGAIN, "try again"))

    def test_values_postgresql_refuses_are_data_errors(self) -> None:
        assert is_data_error(self.dbapi(asyncpg.CharacterNotInRepertoireError("0x00")))
        assert not is_data_error(self.dbapi(asyncpg.SerializationError("conflict")))


class TestPeerErrors:
    class Failed(grpc.aio.AioRpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why", None)

    @pytest.mark.parametrize(
        ("code", "mapped"),
        [
            (grpc.StatusCode.UNAVAILABLE, Unavailable),
            (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
            (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
            (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
            (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
            (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
            (grpc.StatusCode.INTERNAL, PeerBug),
            (grpc.StatusCode.UNIMPLEMENTED, PeerBug),
        ],
    )
    def test_only_a_peer_away_or_busy_is_unavailable(
        self, code: grpc.StatusCode, mapped: type[Exception]
    ) -> None:
        assert type(from_peer(self.Failed(code), "asset service")) is mapped


class TestPageTokens:
    TOKENS = PageTokens(b"0123456789abcdef-secret")

    def test_a_token_round_trips_for_its_own_query_only(self) -> None:
        token = self.TOKENS.encode(["2026-12-01T00:00:00+00:00", str(uuid.UUID(int=1))], {"q": 1})
        assert self.TOKENS.decode(token, {"q": 1}) == [
            "2026-12-01T00:00:00+00:00",
            str(uuid.UUID(int=1)),
        ]
        with pytest.raises(InvalidArgument):
            self.TOKENS.decode(token, {"q": 2})
        with pytest.raises(InvalidArgument):
            PageTokens(b"another secret of 16+ bytes").decode(token, {"q": 1})

    @given(
        st.text(max_size=80)
        | st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode())
    )
    def test_anything_else_is_invalid_argument(self, token: str) -> None:
        if not token:
            return
        with pytest.raises(InvalidArgument) as raised:
            self.TOKENS.decode(token, {"q": 1})
        assert raised.value.reason == "INVALID_PAGE_TOKEN"

    def test_a_forged_payload_with_a_copied_mac_is_refused(self) -> None:
        real = self.TOKENS.encode(["2026-12-01T00:00:00+00:00", str(uuid.UUID(int=1))], {})
        forged_payload = base64.urlsafe_b64encode(rb'["not a time", "\u0000"]').decode().rstrip("=")
        with pytest.raises(InvalidArgument):
            self.TOKENS.decode(f"{forged_payload}.{real.split('.')[1]}", {})


class TestTopics:
    def test_every_topic_has_a_dlq_twin_and_a_distinct_type(self) -> None:
        names = all_topic_names()
        assert len(names) == 2 * len(ALL_TOPICS) == 22
        assert all(f"{t.name}.dlq" in names for t in ALL_TOPICS)
        assert topic_named("pixsim.asset.deleted.v1").message_type.DESCRIPTOR.name == (
            "AssetDeleted"
        )


def test_database_urls_are_adapted_for_sqlalchemy() -> None:
    assert sqlalchemy_url("postgresql://u:p@h:1/d") == "postgresql+asyncpg://u:p@h:1/d"
    with pytest.raises(ValueError, match="postgresql"):
        sqlalchemy_url("mysql://x")


async def test_a_loop_stopped_mid_step_lets_the_step_finish_and_starts_no_other() -> None:
    started: list[int] = []
    finished: list[int] = []

    async def step() -> int:
        started.append(len(started))
        await asyncio.sleep(0.3)
        finished.append(len(finished))
        return 1  # there is always more: only the stop ends it

    loop = Loop("busy", step, grace=5.0)
    await loop.start()
    await asyncio.sleep(0.1)
    await loop.stop()
    assert (started, finished) == ([0], [0])


async def test_a_loop_whose_step_outlasts_the_grace_is_cancelled() -> None:
    async def step() -> int:
        await asyncio.sleep(60)
        return 1

    loop = Loop("stuck", step, grace=0.2)
    await loop.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(loop.stop(), timeout=5)


async def test_a_wake_up_while_a_step_runs_brings_the_next_step_at_once() -> None:
    wake = asyncio.Event()
    steps = 0
    second = asyncio.Event()

    async def step() -> int:
        nonlocal steps
        steps += 1
        if steps == 1:
            wake.set()  # new work arrived after this step looked for it
        else:
            second.set()
        return 0

    loop = Loop("woken", step, wake, idle=60.0)
    await loop.start()
    try:
        await asyncio.wait_for(second.wait(), timeout=5)
    finally:
        await loop.stop()
