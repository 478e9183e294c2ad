"""How the client reaches the services: addresses, the caller's token, and turning gRPC
errors into a message and an exit code a script can branch on."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt

from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim.job.v1 import job_service_pb2_grpc as job_grpc
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as gateway_grpc
from pixsim.scene.v1 import scene_service_pb2_grpc as scene_grpc
from pixsim_common.auth import ADMIN_ROLE, issue_token

DEFAULT_KEY = Path(".run") / "keys" / "signing-key.pem"


class Exit:
    """Exit codes, stable for scripts."""

    OK = 0
    FAILED = 1  # the job ended FAILED, CANCELLED or EXPIRED, or a scene has errors
    INVALID = 2  # bad arguments, or the service refused the request as invalid
    NOT_FOUND = 3
    DENIED = 4  # no, expired or wrong token; not an admin
    CONFLICT = 5  # a precondition failed, a stale etag, or it already exists
    UNAVAILABLE = 6  # a service cannot be reached
    ERROR = 7  # anything else (a bug: the message carries the trace id)
    EXHAUSTED = 8  # a limit is reached: the budget, a size


EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: Exit.INVALID,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: Exit.DENIED,
    grpc.StatusCode.PERMISSION_DENIED: Exit.DENIED,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.CONFLICT,
    grpc.StatusCode.ABORTED: Exit.CONFLICT,
    grpc.StatusCode.ALREADY_EXISTS: Exit.CONFLICT,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exit.EXHAUSTED,
}


class CliError(Exception):
    def __init__(self, message: str, exit_code: int, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details or []


def explain(error: grpc.RpcError) -> CliError:
    """A readable message for a failed call: its status, message and field violations."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code: grpc.StatusCode = error.code()
    message = error.details() or code.name
    details: list[str] = []
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            details += [f"{v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            details += [f"{v.type} {v.subject}: {v.description}" for v in failure.violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            details += [f"{v.subject}: {v.description}" for v in quota.violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            details += [f"{k}: {v}" for k, v in sorted(info.metadata.items())]
    if code == grpc.StatusCode.UNAVAILABLE:
        message += " (is the stack running? `make run`)"
    return CliError(f"{code.name}: {message}", EXIT_BY_CODE.get(code, Exit.ERROR), details)


T = TypeVar("T")


@dataclass
class Connection:
    """Channels to the four services, opened on first use, and the caller's credentials."""

    token: str
    addresses: dict[str, str]
    timeout: float = 30.0
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    @classmethod
    def from_environment(
        cls, *, token: str | None, user: str | None, admin: bool = False
    ) -> Connection:
        """The token given, else $PIXSIM_TOKEN, else one signed for `user` with the local
        stack's key ($PIXSIM_SIGNING_KEY or .run/keys/signing-key.pem)."""
        token = token or os.environ.get("PIXSIM_TOKEN")
        if not token:
            key = Path(os.environ.get("PIXSIM_SIGNING_KEY", DEFAULT_KEY))
            if not key.exists():
                raise CliError(
                    f"no token: set PIXSIM_TOKEN or --token, or start `make run` (no key at {key})",
                    Exit.DENIED,
                )
            who = user or os.environ.get("PIXSIM_USER") or getpass.getuser()
            token = issue_token(key.read_text(), user_id=who, roles=[ADMIN_ROLE] if admin else [])
        addresses = {
            name: os.environ.get(f"PIXSIM_{name.upper()}_ADDR", f"127.0.0.1:{port}")
            for name, port in (
                ("job", 50051),
                ("asset", 50052),
                ("gateway", 50053),
                ("scene", 50054),
            )
        }
        return cls(token, addresses)

    @property
    def user_id(self) -> str:
        """Whom the token names (read, not verified: the services verify it)."""
        claims = jwt.decode(self.token, options={"verify_signature": False})
        return str(claims.get("sub", ""))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def _channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            self._channels[service] = grpc.insecure_channel(
                self.addresses[service],
                options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
            )
        return self._channels[service]

    @property
    def jobs(self) -> job_grpc.JobServiceStub:
        return job_grpc.JobServiceStub(self._channel("job"))

    @property
    def assets(self) -> asset_grpc.AssetServiceStub:
        return asset_grpc.AssetServiceStub(self._channel("asset"))

    @property
    def scenes(self) -> scene_grpc.SceneServiceStub:
        return scene_grpc.SceneServiceStub(self._channel("scene"))

    @property
    def gateway(self) -> gateway_grpc.ProviderGatewayServiceStub:
        return gateway_grpc.ProviderGatewayServiceStub(self._channel("gateway"))

    def call(self, method: Callable[..., T], request: Any, *, stream: bool = False) -> T:
        """`method(request)` with the caller's token; a failure becomes a `CliError`."""
        try:
            return method(request, metadata=self.metadata, timeout=None if stream else self.timeout)
        except grpc.RpcError as error:
            raise explain(error) from None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


@contextmanager
def rpc_errors() -> Iterator[None]:
    """For iterating a stream: its failure becomes a `CliError` too."""
    try:
        yield
    except grpc.RpcError as error:
        raise explain(error) from None
