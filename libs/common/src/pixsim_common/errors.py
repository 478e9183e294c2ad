"""Domain errors with stable reasons, and their mapping to canonical gRPC codes.

Domain code raises these; the gRPC layer turns them into a `google.rpc.Status` with an
`ErrorInfo` (reason, domain, metadata) and, for invalid arguments, a `BadRequest` with the
field violations. Anything else that escapes a handler is a bug: `INTERNAL`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "pixsim.dev"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str
    reason: str = ""


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


class DomainError(Exception):
    """Base of every error the service means to return. `reason` is a stable UPPER_SNAKE code."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        return [_packed(info)]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self.details()
        )


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in self.violations
            ]
        )
        return [*super().details(), _packed(bad_request)]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One thing in the way, as `google.rpc.PreconditionFailure` says it: of what kind, about
    what, and why."""

    type: str
    subject: str
    description: str


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        violations: Iterable[PreconditionViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)

    def details(self) -> list[any_pb2.Any]:
        if not self.violations:
            return super().details()
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in self.violations
            ]
        )
        return [*super().details(), _packed(failure)]


class Aborted(DomainError):
    """A concurrent change won (a stale etag, a lost race); the caller may read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(DomainError):
    """A limit is reached; `quota`: (subject, description) of each quota in the way, carried
    as `google.rpc.QuotaFailure`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        quota: Iterable[tuple[str, str]] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.quota = list(quota)

    def details(self) -> list[any_pb2.Any]:
        if not self.quota:
            return super().details()
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                for s, d in self.quota
            ]
        )
        return [*super().details(), _packed(failure)]


class OutOfRange(DomainError):
    """Past the end of what there is (a byte range beyond a file's end)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


def internal_status(trace_id: str) -> status_pb2.Status:
    """What a caller sees of a bug: no internals, only the trace id to find it by."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"trace_id": trace_id}
    )
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (trace {trace_id})",
        details=[_packed(info)],
    )


def status_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The `ErrorInfo`, `BadRequest`, `PreconditionFailure` and `QuotaFailure` a failed call
    carried, by type name (for clients)."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: dict[str, Any] = {}
    for detail in status.details if status is not None else ():
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found
