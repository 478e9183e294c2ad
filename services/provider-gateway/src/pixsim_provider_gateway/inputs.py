"""A submission's inputs as the adapters' intake takes them, made at dispatch time, never
at CreateJob: a URL the caller gave; or, for one of their assets, a presigned URL minted now
(so a job that waited in the queue carries no dead link) or the stored bytes themselves.

The gateway reads the asset service as itself, with a workload token acting for the job's
owner and scoped to reading assets: the owner's token is never stored, and the asset
service's own scoping decides what is theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim_common.auth import WorkloadSigner
from pixsim_common.clients import bearer
from pixsim_provider_gateway.domain import ErrorKind
from pixsim_provider_gateway.providers.base import GenerationInput, InputFile, ProviderError

READ_SCOPE = "assets:read"
# Long enough for a provider to fetch it; a presigned URL is minted per submit.
URL_SECONDS = 3600
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}


def _failed(error: grpc.aio.AioRpcError, what: str) -> ProviderError:
    if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
        return ProviderError(ErrorKind.INVALID_PARAMETERS, f"{what} is not the owner's any more")
    return ProviderError(ErrorKind.TRANSIENT, f"{what} cannot be read now: {error.code().name}")


class UrlInput:
    """A URL the caller gave: the provider fetches it itself."""

    mime_type = "application/octet-stream"
    size_bytes = 0
    file_name = "input"

    def __init__(self, url: str) -> None:
        self._url = url

    async def url(self) -> str | None:
        return self._url

    async def read(self) -> bytes:  # every intake takes a URL as it is
        raise ProviderError(ErrorKind.INVALID_PARAMETERS, "a URL input is given as a URL")


class AssetInput:
    """One of the owner's assets (or one of its files), read from the asset service."""

    def __init__(
        self,
        stub: asset_grpc.AssetServiceAsyncStub,
        token: str,
        asset: asset_pb.Asset,
        variant: str,
        timeout: float,
    ) -> None:
        self._stub, self._token, self._asset, self._variant = stub, token, asset, variant
        self._timeout = timeout
        chosen = next((v for v in asset.variants if v.kind == variant), None) if variant else None
        self.mime_type = chosen.mime_type if chosen is not None else asset.mime_type
        self.size_bytes = chosen.size_bytes if chosen is not None else asset.size_bytes
        self.file_name = (
            f"{asset.name.rsplit('/', 1)[-1]}{'-' + variant if variant else ''}"
            f".{EXTENSIONS.get(self.mime_type, 'bin')}"
        )

    async def url(self) -> str | None:
        try:
            made = await self._stub.GenerateAssetDownloadUrl(
                asset_pb.GenerateAssetDownloadUrlRequest(
                    name=self._asset.name,
                    variant=self._variant,
                    ttl=duration_pb2.Duration(seconds=URL_SECONDS),
                ),
                metadata=bearer(self._token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return None  # a store without URLs: the intake takes the bytes
            raise _failed(error, self._asset.name) from error
        return made.url

    async def read(self) -> bytes:
        try:
            chunks = [
                part.chunk
                async for part in self._stub.ReadAssetContent(
                    asset_pb.ReadAssetContentRequest(name=self._asset.name, variant=self._variant),
                    metadata=bearer(self._token),
                    timeout=10 * self._timeout,
                )
            ]
        except grpc.aio.AioRpcError as error:
            raise _failed(error, self._asset.name) from error
        return b"".join(chunks)


class InputFiles:
    def __init__(
        self,
        assets: grpc.aio.Channel | None,
        signer: WorkloadSigner | None,
        timeout: float = 10.0,
    ) -> None:
        self._stub = asset_grpc.AssetServiceStub(assets) if assets is not None else None
        self._signer = signer
        self._timeout = timeout

    async def of(self, user_id: str, inputs: Sequence[GenerationInput]) -> list[InputFile]:
        """The inputs of a request of `user_id`'s, by index, ready for an adapter."""
        files: list[InputFile] = []
        for given in inputs:
            if not given.asset:
                files.append(UrlInput(given.uri))
                continue
            if self._stub is None or self._signer is None:
                raise ProviderError(
                    ErrorKind.INVALID_PARAMETERS,
                    "this gateway has no workload key to read assets with",
                )
            token = self._signer.token_for(user_id, READ_SCOPE)
            try:
                asset: Any = await self._stub.GetAsset(
                    asset_pb.GetAssetRequest(name=given.asset),
                    metadata=bearer(token),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                raise _failed(error, given.asset) from error
            files.append(AssetInput(self._stub, token, asset, given.variant, self._timeout))
        return files
