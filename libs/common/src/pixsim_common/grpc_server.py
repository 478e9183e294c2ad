"""The gRPC server every service runs: health, reflection, tracing, and one interceptor that
authenticates the caller, enforces the admin role, validates the request with protovalidate,
maps domain errors to canonical codes, and records metrics and an access-log line.

Handlers therefore see only valid requests from known callers, and raise `DomainError`s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
import structlog
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_status import rpc_status
from opentelemetry import trace

from pixsim_common.auth import Identity, TokenVerifier, reset_identity, set_identity
from pixsim_common.errors import (
    DomainError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    internal_status,
)
from pixsim_common.metrics import RPC_LATENCY, RPC_REQUESTS
from pixsim_common.transient import is_data_error, is_transient
from pixsim_common.validation import validate

log = structlog.get_logger("pixsim.grpc")


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class HealthServicer(Protocol):
    """The part of grpc_health's asyncio servicer we use (grpc-stubs omit `health.aio`)."""

    async def set(self, service: str, status: int) -> None: ...


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: Any) -> None:
    """End the call with a `google.rpc.Status` (code, message, details in the trailer)."""
    status = rpc_status.to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def is_infrastructure_method(method: str) -> bool:
    """Health and reflection answer anyone: probes and grpcurl carry no token."""
    return method.startswith(("/grpc.health.", "/grpc.reflection."))


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call what. Every method needs a valid token; `admin_methods` need the role;
    a workload token may call only `workload_methods`, each with the scope it names."""

    verifier: TokenVerifier
    admin_methods: frozenset[str] = field(default_factory=frozenset)
    workload_methods: Mapping[str, str] = field(default_factory=dict)


class _CallGuard:
    """Runs the checks and bookkeeping around one call of one method."""

    def __init__(self, service: str, method: str, policy: AccessPolicy) -> None:
        self.service = service
        self.method = method
        self.short_method = method.rsplit("/", 1)[-1]
        self.policy = policy

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        identity = self.policy.verifier.verify(
            authorization if isinstance(authorization, str) else None
        )
        if self.method in self.policy.admin_methods:
            identity.require_admin()
        if identity.is_workload:
            scope = self.policy.workload_methods.get(self.method)
            if scope is None or scope not in identity.scopes:
                raise PermissionDenied(
                    f"a workload token may not call {self.short_method}",
                    reason="WORKLOAD_NOT_ALLOWED",
                )
        return identity

    @contextlib.asynccontextmanager
    async def guarded(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Authenticate, then run the body; map what it raises and record the call."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        identity_token = None
        structlog.contextvars.bind_contextvars(rpc=self.short_method)
        try:
            identity = self.authenticate(context)
            identity_token = set_identity(identity)
            structlog.contextvars.bind_contextvars(user_id=identity.user_id)
            yield
        except DomainError as error:
            code = error.code
            await abort(context, error.to_status())
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as error:
            if is_data_error(error):
                # A value PostgreSQL refused that no check caught first: still the caller's.
                code = grpc.StatusCode.INVALID_ARGUMENT
                log.warning("rpc met a refused value", method=self.method, error=repr(error))
                refused = InvalidArgument(
                    "a value in the request cannot be stored", reason="UNSTORABLE_VALUE"
                )
                await abort(context, refused.to_status())
            elif is_transient(error):  # e.g. the database restarting: the caller may retry
                code = grpc.StatusCode.UNAVAILABLE
                log.warning("rpc met a transient failure", method=self.method, error=repr(error))
                unavailable = Unavailable(
                    "a dependency is briefly unavailable; retry", reason="DEPENDENCY_UNAVAILABLE"
                )
                await abort(context, unavailable.to_status())
            else:
                code = grpc.StatusCode.INTERNAL
                trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
                log.exception("rpc failed with a bug", method=self.method)
                await abort(context, internal_status(trace_id))
        except BaseException:  # cancelled by the client or by shutdown
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            elapsed = time.perf_counter() - started
            labels = (self.service, self.short_method, code.name)
            RPC_REQUESTS.labels(*labels).inc()
            RPC_LATENCY.labels(*labels).observe(elapsed)
            log.info("rpc", method=self.method, code=code.name, ms=round(elapsed * 1000, 3))
            if identity_token is not None:
                reset_identity(identity_token)
            structlog.contextvars.unbind_contextvars("rpc", "user_id")


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the server got instead of a request: bytes that are no message of its type.
    gRPC itself would answer INTERNAL; the guard answers INVALID_ARGUMENT."""

    method: str
    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Any:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, invalid UTF-8 in a string, ...
            return Undecodable(method, str(error)[:200])

    return decode


def checked(request: Any) -> Message:
    """A decoded, valid request; anything else is INVALID_ARGUMENT."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(
            f"the bytes sent to {request.method} are not its request message: {request.error}",
            reason="UNDECODABLE_REQUEST",
        )
    validate(request)
    return cast(Message, request)


def _validated(requests: AsyncIterator[Any]) -> AsyncIterator[Message]:
    async def each() -> AsyncIterator[Message]:
        async for request in requests:
            yield checked(request)

    return each()


def _guard_handler(
    handler: grpc.RpcMethodHandler[Any, Any], guard: _CallGuard
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with every behaviour wrapped by `guard`."""
    serializers = {
        "request_deserializer": _tolerant(handler.request_deserializer, guard.short_method),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

        async def unary_unary(request: Any, context: Any) -> Any:
            async with guard.guarded(context):
                return await inner_uu(checked(request), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)
    if handler.stream_unary is not None:
        inner_su = cast(Callable[..., Awaitable[Any]], handler.stream_unary)

        async def stream_unary(requests: AsyncIterator[Message], context: Any) -> Any:
            async with guard.guarded(context):
                return await inner_su(_validated(requests), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
    if handler.unary_stream is not None:
        inner_us = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async with guard.guarded(context):
                async for response in inner_us(checked(request), context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
    inner_ss = cast(Callable[..., AsyncIterator[Any]], handler.stream_stream)

    async def stream_stream(requests: AsyncIterator[Message], context: Any) -> AsyncIterator[Any]:
        async with guard.guarded(context):
            async for response in inner_ss(_validated(requests), context):
                yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)


class GuardInterceptor(_ServerInterceptor):
    def __init__(self, service: str, policy: AccessPolicy) -> None:
        self._service = service
        self._policy = policy
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_infrastructure_method(method):
            return handler
        guarded = self._guarded.get(method)
        if guarded is None:
            guarded = _guard_handler(handler, _CallGuard(self._service, method, self._policy))
            self._guarded[method] = guarded
        return guarded


def build_server(
    service: str,
    policy: AccessPolicy,
    *,
    max_message_bytes: int = 8 * 1024 * 1024,
) -> grpc.aio.Server:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return grpc.aio.server(
        interceptors=[
            aio_server_interceptor(),  # type: ignore[no-untyped-call]
            GuardInterceptor(service, policy),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1),
        ],
    )


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> HealthServicer:
    """Register health (every named service NOT_SERVING until `mark_serving`) and reflection."""
    names = list(service_names)
    servicer: HealthServicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in names:
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    listed = [
        *names,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        REFLECTION_V1,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(listed, server)
    # grpcio-reflection serves only v1alpha. v1 is the same protocol under its final name
    # (the same messages, field for field), which newer clients ask for first: the same
    # servicer answers it.
    v1 = ReflectionServicer(listed)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        v1.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    return servicer


async def mark(servicer: HealthServicer, names: Iterable[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in [*names, ""]:
        await servicer.set(name, status)
