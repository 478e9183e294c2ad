"""Which assets a caller owns, asked of the asset service over gRPC with the caller's own
token (so the asset service's scoping is the check), in one batch per write."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim_common.errors import Unavailable

BATCH_LIMIT = 1000  # BatchGetAssets' max_items


class AssetDirectory:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._stub = asset_grpc.AssetServiceStub(channel)
        self._timeout = timeout

    async def owned(self, asset_ids: Iterable[str], token: str) -> set[str]:
        """The ids among `asset_ids` that name a live asset of the token's user."""
        wanted = sorted(set(asset_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), BATCH_LIMIT):
            names = [f"assets/{a}" for a in wanted[start : start + BATCH_LIMIT]]
            try:
                answer = await self._stub.BatchGetAssets(
                    asset_pb.BatchGetAssetsRequest(names=names),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                raise Unavailable(
                    "the asset service cannot be asked now", reason="ASSET_SERVICE_UNAVAILABLE"
                ) from error
            found.update(a.name.removeprefix("assets/") for a in answer.assets)
        return found
