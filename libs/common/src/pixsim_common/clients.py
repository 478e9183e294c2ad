"""Calls from one service to another: a traced channel, what a peer's failure means to our
caller, and the asset lookup that the job and scene services both make, with the caller's
own token (so the asset service's scoping is the check, DESIGN section 7)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

# A peer answering one of these is away or busy: our caller may retry.
PASSING_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class PeerBug(Exception):
    """A peer failed with a code no request of ours should meet (INTERNAL, UNIMPLEMENTED,
    ...): a bug somewhere, reported as INTERNAL rather than as something to retry."""


def channel(address: str) -> grpc.aio.Channel:
    """A channel to another service whose calls join the current trace."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return grpc.aio.insecure_channel(
        address,
        interceptors=aio_client_interceptors(),  # type: ignore[no-untyped-call]
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that forwards the caller's token."""
    return (("authorization", f"Bearer {token}"),)


def from_peer(error: grpc.aio.AioRpcError, peer: str) -> DomainError | PeerBug:
    """What a failed call to `peer` means for our own caller. Only a peer that is away or busy
    becomes UNAVAILABLE: a permanent failure reported as UNAVAILABLE is retried forever."""
    code = error.code()
    details = error.details() or code.name
    reason = f"{peer.upper().replace('-', '_')}_UNAVAILABLE"
    if code in PASSING_CODES:
        return Unavailable(f"the {peer} cannot be asked now; retry", reason=reason)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"the {peer} refused the token: {details}", reason="BAD_TOKEN")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"the {peer} refused: {details}")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"the {peer} refused the request: {details}")
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return FailedPrecondition(f"the {peer} answered {code.name}: {details}")
    return PeerBug(f"the {peer} failed with {code.name}: {details}")


class AssetLookup:
    """`BatchGetAssets` as the caller: only their live assets come back."""

    BATCH_LIMIT = 1000  # BatchGetAssets' max_items

    def __init__(self, assets: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._stub = asset_grpc.AssetServiceStub(assets)
        self._timeout = timeout

    async def batch_get(self, names: Iterable[str], token: str) -> dict[str, asset_pb.Asset]:
        """The caller's assets among `names` (`assets/{id}`), by name."""
        wanted = sorted(set(names))
        found: dict[str, asset_pb.Asset] = {}
        for start in range(0, len(wanted), self.BATCH_LIMIT):
            try:
                answer = await self._stub.BatchGetAssets(
                    asset_pb.BatchGetAssetsRequest(names=wanted[start : start + self.BATCH_LIMIT]),
                    metadata=bearer(token),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                raise from_peer(error, "asset service") from error
            found |= {asset.name: asset for asset in answer.assets}
        return found

    async def download_url(self, name: str, token: str) -> asset_pb.AssetDownloadUrl | None:
        """A time-limited URL of the caller's asset `name`; None when it is gone, not theirs,
        or kept in a store that makes no URLs (the local filesystem)."""
        try:
            return await self._stub.GenerateAssetDownloadUrl(
                asset_pb.GenerateAssetDownloadUrlRequest(name=name),
                metadata=bearer(token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                return None
            raise from_peer(error, "asset service") from error
