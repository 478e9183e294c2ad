"""Inputs that name an asset, resolved at CreateJob to the URL a provider fetches: asked of
the asset service with the caller's token, so another user's asset is simply not found."""

from __future__ import annotations

from collections.abc import Sequence

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.types.v1 import types_pb2
from pixsim_common.clients import AssetLookup
from pixsim_common.errors import FailedPrecondition, FieldViolation, InvalidArgument


class InputResolver:
    def __init__(self, assets: AssetLookup) -> None:
        self._assets = assets

    async def resolve(
        self, inputs: Sequence[types_pb2.GenerationInput], token: str
    ) -> list[types_pb2.GenerationInput]:
        """`inputs` with every asset input's `resolved_uri` set."""
        named = [i.asset for i in inputs if i.WhichOneof("source") == "asset"]
        found = await self._assets.batch_get(named, token) if named else {}
        return resolved(inputs, found)


def resolved(
    inputs: Sequence[types_pb2.GenerationInput], found: dict[str, asset_pb.Asset]
) -> list[types_pb2.GenerationInput]:
    """Pure part of `resolve`: missing assets are INVALID_ARGUMENT per input; an asset with no
    URL a provider could fetch (an upload) is FAILED_PRECONDITION."""
    missing = [
        FieldViolation(f"job.inputs[{index}].asset", f"{i.asset} does not exist", "ASSET_NOT_FOUND")
        for index, i in enumerate(inputs)
        if i.WhichOneof("source") == "asset" and i.asset not in found
    ]
    if missing:
        raise InvalidArgument("an input names an asset that does not exist", missing)
    result = []
    for item in inputs:
        copy = types_pb2.GenerationInput()
        copy.CopyFrom(item)
        copy.ClearField("resolved_uri")  # the service's to set, never the caller's
        if item.WhichOneof("source") == "asset":
            remote = found[item.asset].remote_uri
            if not remote:
                raise FailedPrecondition(
                    f"{item.asset} was uploaded, so no provider can fetch it by URL; "
                    "register it from a URL (CreateAsset) or generate it instead",
                    reason="ASSET_NOT_FETCHABLE",
                    metadata={"asset": item.asset},
                )
            copy.resolved_uri = remote
        result.append(copy)
    return result
