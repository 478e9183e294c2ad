"""The gRPC server bootstrap through a real channel: auth, admin role, validation, error
mapping, streaming, health and reflection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from pixsim.asset.v1 import asset_service_pb2, asset_service_pb2_grpc
from pixsim.job.v1 import job_service_pb2, job_service_pb2_grpc
from pixsim.provider.v1 import provider_gateway_service_pb2 as gateway_pb2
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as gateway_grpc
from pixsim_common.auth import (
    TokenVerifier,
    WorkloadSigner,
    WorkloadTrust,
    current_identity,
    generate_keypair,
    issue_token,
)
from pixsim_common.errors import NotFound, status_details
from pixsim_common.grpc_server import (
    AccessPolicy,
    add_health_and_reflection,
    build_server,
    mark,
)
from pixsim_local.grpc_probe import reflected_services

pytestmark = pytest.mark.integration

JOB = "jobs/0b1c2d3e-0000-4000-8000-000000000001"
MISSING = "jobs/0b1c2d3e-0000-4000-8000-000000000404"
BUGGY = "jobs/0b1c2d3e-0000-4000-8000-000000000500"
DATABASE_AWAY = "jobs/0b1c2d3e-0000-4000-8000-000000000503"
CREATE_ACCOUNT = "/pixsim.provider.v1.ProviderGatewayService/CreateAccount"


class Jobs(job_service_pb2_grpc.JobServiceServicer):
    async def GetJob(self, request: Any, context: Any) -> job_service_pb2.Job:
        if request.name == MISSING:
            raise NotFound(
                f"{request.name} not found", reason="JOB_NOT_FOUND", metadata={"name": request.name}
            )
        if request.name == BUGGY:
            raise KeyError("a bug")
        if request.name == DATABASE_AWAY:
            raise asyncpg.CannotConnectNowError("the database system is starting up")
        return job_service_pb2.Job(name=request.name, owner=current_identity().resource_name)

    async def WatchJob(self, request: Any, context: Any) -> AsyncIterator[job_service_pb2.Job]:
        for state in (1, 3, 4):
            yield job_service_pb2.Job(name=request.name, state=state)  # type: ignore[arg-type]


class Accounts(gateway_grpc.ProviderGatewayServiceServicer):
    async def CreateAccount(self, request: Any, context: Any) -> gateway_pb2.Account:
        return gateway_pb2.Account(name="accounts/x", provider_id=request.account.provider_id)


class Assets(asset_service_pb2_grpc.AssetServiceServicer):
    async def UploadAsset(self, requests: Any, context: Any) -> asset_service_pb2.Asset:
        size = 0
        async for part in requests:
            size += len(part.chunk)
        return asset_service_pb2.Asset(name="assets/x", size_bytes=size)


KEYS = generate_keypair()
OTHER_KEYS = generate_keypair()


def token(
    *,
    user: str = "alice",
    roles: tuple[str, ...] = (),
    keys: tuple[str, str] = KEYS,
    ttl: int = 600,
    now: float | None = None,
) -> str:
    return issue_token(keys[0], user_id=user, roles=roles, ttl_seconds=ttl, now=now)


def auth(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    verifier = TokenVerifier(public_key=KEYS[1], issuer="pixsim-local", audience="pixsim")
    server = build_server("test", AccessPolicy(verifier, frozenset({CREATE_ACCOUNT})))
    job_service_pb2_grpc.add_JobServiceServicer_to_server(Jobs(), server)  # type: ignore[abstract]
    gateway_grpc.add_ProviderGatewayServiceServicer_to_server(Accounts(), server)  # type: ignore[abstract]
    asset_service_pb2_grpc.add_AssetServiceServicer_to_server(Assets(), server)  # type: ignore[abstract]
    names = ["pixsim.job.v1.JobService"]
    health = await add_health_and_reflection(server, names)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await mark(health, names, serving=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as open_channel:
        yield open_channel
    await server.stop(0)


async def test_an_authenticated_call_sees_its_caller(channel: grpc.aio.Channel) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    job = await jobs.GetJob(job_service_pb2.GetJobRequest(name=JOB), metadata=auth(token()))
    assert job.owner == "users/alice"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_TOKEN"),
        ((("authorization", "Basic abc"),), "BAD_TOKEN"),
        (auth("not-a-jwt"), "BAD_TOKEN"),
        (auth(token(ttl=60, now=time.time() - 3600)), "TOKEN_EXPIRED"),
        (auth(token(keys=OTHER_KEYS)), "BAD_TOKEN"),
    ],
    ids=["no token", "not bearer", "garbage", "expired", "wrong key"],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    channel: grpc.aio.Channel, metadata: Any, reason: str
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=JOB), metadata=metadata)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(raised.value)["ErrorInfo"].reason == reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_symmetric_token_is_refused(channel: grpc.aio.Channel) -> None:
    # The classic confusion attack: HS256 signed with the public key as the HMAC secret.
    # PyJWT refuses to make such a token, so it is made by hand.
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(
        json.dumps(
            {
                "sub": "mallory",
                "iss": "pixsim-local",
                "aud": "pixsim",
                "iat": int(time.time()),
                "exp": int(time.time()) + 60,
                "roles": ["admin"],
            }
        ).encode()
    )
    signature = hmac.new(KEYS[1].encode(), f"{header}.{claims}".encode(), hashlib.sha256)
    forged = f"{header}.{claims}.{b64url(signature.digest())}"
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=JOB), metadata=auth(forged))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_methods_need_the_admin_role(channel: grpc.aio.Channel) -> None:
    gateway = gateway_grpc.ProviderGatewayServiceStub(channel)
    request = gateway_pb2.CreateAccountRequest(
        account=gateway_pb2.Account(provider_id="pika", max_concurrency=2)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.CreateAccount(request, metadata=auth(token()))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert status_details(raised.value)["ErrorInfo"].reason == "ADMIN_REQUIRED"
    created = await gateway.CreateAccount(request, metadata=auth(token(roles=("admin",))))
    assert created.provider_id == "pika"


async def test_an_invalid_request_carries_its_field_violations(
    channel: grpc.aio.Channel,
) -> None:
    gateway = gateway_grpc.ProviderGatewayServiceStub(channel)
    request = gateway_pb2.CreateAccountRequest(
        account=gateway_pb2.Account(
            provider_id="Not Valid", max_concurrency=0, credentials={"": "secret"}
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.CreateAccount(request, metadata=auth(token(roles=("admin",))))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = {
        v.field: v.reason for v in status_details(raised.value)["BadRequest"].field_violations
    }
    assert violations == {
        "account.provider_id": "string.pattern",
        "account.credentials['']" + "(key)": "string.min_len",
        "account": "account.max_concurrency.required",
    }
    # The secret is never echoed back in the error.
    assert "secret" not in (raised.value.details() or "")


async def test_domain_errors_map_to_their_code_with_error_info(
    channel: grpc.aio.Channel,
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=MISSING), metadata=auth(token()))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info = status_details(raised.value)["ErrorInfo"]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "JOB_NOT_FOUND",
        "pixsim.dev",
        {"name": MISSING},
    )


async def test_a_bug_is_internal_with_a_trace_id_and_no_internals(
    channel: grpc.aio.Channel,
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=BUGGY), metadata=auth(token()))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    info = status_details(raised.value)["ErrorInfo"]
    assert info.reason == "INTERNAL"
    assert len(info.metadata["trace_id"]) == 32
    assert "KeyError" not in (raised.value.details() or "")


async def test_a_database_away_is_unavailable_so_the_caller_retries(
    channel: grpc.aio.Channel,
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=DATABASE_AWAY), metadata=auth(token()))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert status_details(raised.value)["ErrorInfo"].reason == "DEPENDENCY_UNAVAILABLE"
    assert "starting up" not in (raised.value.details() or "")


async def test_server_streaming_passes_through_the_guard(channel: grpc.aio.Channel) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    states = [
        job.state
        async for job in jobs.WatchJob(
            job_service_pb2.WatchJobRequest(name=JOB), metadata=auth(token())
        )
    ]
    assert states == [1, 3, 4]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in jobs.WatchJob(job_service_pb2.WatchJobRequest(name="jobs/nope")):
            pass
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in jobs.WatchJob(
            job_service_pb2.WatchJobRequest(name="jobs/nope"), metadata=auth(token())
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_client_streaming_validates_every_message(channel: grpc.aio.Channel) -> None:
    assets = asset_service_pb2_grpc.AssetServiceStub(channel)
    meta = asset_service_pb2.UploadAssetRequest.Metadata(display_name="clip")

    async def parts(chunks: list[bytes]) -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
        yield asset_service_pb2.UploadAssetRequest(metadata=meta)
        for chunk in chunks:
            yield asset_service_pb2.UploadAssetRequest(chunk=chunk)

    asset = await assets.UploadAsset(parts([b"a" * 10, b"b" * 5]), metadata=auth(token()))
    assert asset.size_bytes == 15

    async def with_an_empty_part() -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
        yield asset_service_pb2.UploadAssetRequest(metadata=meta)
        yield asset_service_pb2.UploadAssetRequest()  # neither metadata nor chunk

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await assets.UploadAsset(with_an_empty_part(), metadata=auth(token()))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection_answer_without_a_token(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "pixsim.job.v1.JobService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    listed = await reflected_services(channel)
    assert {"pixsim.job.v1.JobService", "grpc.health.v1.Health"} <= listed

    # grpc.reflection.v1 too, as newer clients ask first: list, then a service's file.
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answers = [
        answer
        async for answer in call(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="pixsim.job.v1.JobService"
                    ),
                ]
            )
        )
    ]
    names = {entry.name for entry in answers[0].list_services_response.service}
    assert {"pixsim.job.v1.JobService", "grpc.reflection.v1.ServerReflection"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto


def _pem(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def _strangers_tokens() -> dict[str, str]:
    """A valid-looking token of every algorithm PyJWT signs with a key pair, each signed by
    someone else's key of its type."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = {
        "RS256": rsa_key,
        "RS512": rsa_key,
        "PS256": rsa_key,
        "PS384": rsa_key,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
        "ES256K": ec.generate_private_key(ec.SECP256K1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        "EdDSA-448": ed448.Ed448PrivateKey.generate(),
    }
    now = int(time.time())
    claims = {"sub": "mallory", "iss": "pixsim-local", "aud": "pixsim", "iat": now, "exp": now + 60}
    return {
        name: jwt.encode(claims, _pem(key), algorithm=name.split("-")[0])
        for name, key in keys.items()
    }


STRANGERS = _strangers_tokens()


@pytest.mark.parametrize("algorithm", list(STRANGERS))
async def test_tokens_of_every_algorithm_signed_by_a_stranger_are_unauthenticated(
    channel: grpc.aio.Channel, algorithm: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(
            job_service_pb2.GetJobRequest(name=JOB), metadata=auth(STRANGERS[algorithm])
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(raised.value)["ErrorInfo"].reason == "BAD_TOKEN"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def _signed(claims: dict[str, Any]) -> str:
    import jwt

    now = int(time.time())
    base = {"sub": "alice", "iss": "pixsim-local", "aud": "pixsim", "iat": now, "exp": now + 60}
    return jwt.encode({**base, **claims}, KEYS[0], algorithm="EdDSA")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "al\x00ice"}, "BAD_TOKEN"),
        ({"sub": "a\u0007b"}, "BAD_TOKEN"),
        ({"sub": "x" * 300}, "BAD_TOKEN"),
        ({"sub": 42}, "BAD_TOKEN"),
        ({"roles": ["admin\x00"]}, "BAD_TOKEN"),
        ({"roles": "admin"}, "BAD_TOKEN"),
        ({"exp": int(time.time()) + 2 * 24 * 3600}, "TOKEN_LIFETIME_TOO_LONG"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 3700}, "BAD_TOKEN"),
        ({"exp": "tomorrow"}, "BAD_TOKEN"),
    ],
    ids=[
        "NUL in sub",
        "control character in sub",
        "huge sub",
        "numeric sub",
        "NUL in a role",
        "roles not a list",
        "lives two days",
        "issued in the future",
        "exp not a number",
    ],
)
async def test_tokens_with_claims_we_cannot_trust_or_store_are_unauthenticated(
    channel: grpc.aio.Channel, claims: dict[str, Any], reason: str
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=JOB), metadata=auth(_signed(claims)))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(raised.value)["ErrorInfo"].reason == reason


def _raw_call(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # a field number out of range
        job_service_pb2.GetJobRequest(name=JOB).SerializeToString()[:-5],  # truncated
        b"\x0a\x05jobs/\xed\xa0\x80",  # a lone surrogate encoded in a string field
        b"\x0a\x03\xc3\x28\x41",  # invalid UTF-8
        b"\x0b",  # a group that never ends
    ],
    ids=["bad tag", "truncated", "lone surrogate", "invalid UTF-8", "unterminated group"],
)
async def test_bytes_that_are_not_a_request_are_invalid_argument(
    channel: grpc.aio.Channel, payload: bytes
) -> None:
    call = _raw_call(channel, "/pixsim.job.v1.JobService/GetJob")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(payload, metadata=auth(token()))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(raised.value)["ErrorInfo"].reason == "UNDECODABLE_REQUEST"


async def test_text_postgresql_cannot_store_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    gateway = gateway_grpc.ProviderGatewayServiceStub(channel)
    request = gateway_pb2.CreateAccountRequest(
        account=gateway_pb2.Account(
            provider_id="pika",
            max_concurrency=1,
            label="a\x00b",
            credentials={"api_key": "k\x00"},
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.CreateAccount(request, metadata=auth(token(roles=("admin",))))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in status_details(raised.value)["BadRequest"].field_violations}
    assert fields == {"account.label", "account.credentials['api_key']"}


WORKLOAD_KEYS = generate_keypair()


@pytest.fixture
async def workload_channel() -> AsyncIterator[grpc.aio.Channel]:
    """A server that trusts the gateway's workload key, for GetJob only (a stand-in for the
    asset service's read methods)."""
    verifier = TokenVerifier(
        public_key=KEYS[1],
        issuer="pixsim-local",
        audience="pixsim",
        workload=WorkloadTrust("pixsim-provider-gateway", WORKLOAD_KEYS[1]),
    )
    policy = AccessPolicy(
        verifier,
        frozenset({CREATE_ACCOUNT}),
        {"/pixsim.job.v1.JobService/GetJob": "jobs:read"},
    )
    server = build_server("test", policy)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(Jobs(), server)  # type: ignore[abstract]
    gateway_grpc.add_ProviderGatewayServiceServicer_to_server(Accounts(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as open_channel:
        yield open_channel
    await server.stop(0)


def _workload(keys: tuple[str, str] = WORKLOAD_KEYS, scope: str = "jobs:read") -> str:
    return WorkloadSigner(
        keys[0], issuer="pixsim-provider-gateway", actor="provider-gateway"
    ).token_for("alice", *scope.split())


async def test_a_workload_token_acts_for_its_user_on_the_methods_of_its_scope_only(
    workload_channel: grpc.aio.Channel,
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(workload_channel)
    job = await jobs.GetJob(job_service_pb2.GetJobRequest(name=JOB), metadata=auth(_workload()))
    assert job.owner == "users/alice"  # on behalf of the job's owner
    watch = jobs.WatchJob(job_service_pb2.WatchJobRequest(name=JOB), metadata=auth(_workload()))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await anext(aiter(watch))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_grpc.ProviderGatewayServiceStub(workload_channel).CreateAccount(
            gateway_pb2.CreateAccountRequest(
                account=gateway_pb2.Account(provider_id="pika", max_concurrency=1)
            ),
            metadata=auth(_workload()),
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs.GetJob(
            job_service_pb2.GetJobRequest(name=JOB), metadata=auth(_workload(scope="other"))
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_workload_token_from_another_key_or_with_roles_is_unauthenticated(
    workload_channel: grpc.aio.Channel,
) -> None:
    import jwt as pyjwt

    now = int(time.time())
    claims = {
        "iss": "pixsim-provider-gateway",
        "aud": "pixsim",
        "sub": "alice",
        "act": {"sub": "provider-gateway"},
        "scope": "jobs:read",
        "iat": now,
        "exp": now + 60,
    }
    forged = [
        _workload(keys=OTHER_KEYS),  # the right issuer, someone else's key
        pyjwt.encode({**claims, "roles": ["admin"]}, WORKLOAD_KEYS[0], algorithm="EdDSA"),
        pyjwt.encode({**claims, "exp": now + 3600}, WORKLOAD_KEYS[0], algorithm="EdDSA"),
        pyjwt.encode(
            {k: v for k, v in claims.items() if k != "act"}, WORKLOAD_KEYS[0], algorithm="EdDSA"
        ),
    ]
    jobs = job_service_pb2_grpc.JobServiceStub(workload_channel)
    for token_text in forged:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jobs.GetJob(job_service_pb2.GetJobRequest(name=JOB), metadata=auth(token_text))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
