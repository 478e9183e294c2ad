"""Calls from one service to another: a traced channel, and the asset lookup that the job
and scene services both make, with the caller's own token (so the asset service's scoping
is the check, DESIGN section 7)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim_common.errors import Unavailable


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
                raise Unavailable(
                    "the asset service cannot be asked now", reason="ASSET_SERVICE_UNAVAILABLE"
                ) from error
            found |= {asset.name: asset for asset in answer.assets}
        return found
