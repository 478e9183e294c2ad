"""S3-compatible object storage: `s3://<bucket>/ab/cd/<sha256>.<ext>`, shared by any number of
asset replicas.

Files stream from their staging file: one request up to `multipart_threshold`, else a
multipart upload of `part_bytes` parts; never more than one part's bytes in memory. The
store checks every byte against our sha256: a single PUT carries `x-amz-checksum-sha256` of
the whole file, each part its own, and after a multipart upload the object's composite
checksum (the sha256 of the parts' digests, "-N") is compared with the one we computed.
Staging stays on local disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from pixsim_asset.storage import ChecksumMismatch, Scratch, content_key, remove

MIB = 1024 * 1024


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class S3Storage:
    def __init__(
        self,
        *,
        endpoint_url: str,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        region: str = "us-east-1",
        scratch_root: Path,
        public_endpoint_url: str = "",
        addressing_style: str = "path",
        multipart_threshold: int = 8 * MIB,
        part_bytes: int = 8 * MIB,
    ) -> None:
        if part_bytes < 5 * MIB:
            raise ValueError("S3 parts are 5 MiB at least")
        self._bucket = bucket
        self._scratch = Scratch(scratch_root)
        self._threshold = multipart_threshold
        self._part = part_bytes
        # No keys given: botocore's default chain (environment, web identity, instance role).
        keys = (
            {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
            if access_key_id
            else {}
        )
        self._settings: dict[str, Any] = {
            "region_name": region,
            **keys,
            "config": AioConfig(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style},
                # The checksums are ours (sha256, which we have already); no CRC on top.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        }
        self._endpoint = endpoint_url
        self._public_endpoint = public_endpoint_url or endpoint_url
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._presigner: Any = None

    async def start(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self._endpoint, **self._settings)
        )
        # Presigned URLs carry the host they were signed for: the one providers reach.
        self._presigner = (
            self._client
            if self._public_endpoint == self._endpoint
            else await self._stack.enter_async_context(
                session.create_client("s3", endpoint_url=self._public_endpoint, **self._settings)
            )
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._scratch.close()

    def scratch(self) -> Path:
        return self._scratch.path

    def sweep(self) -> int:
        return self._scratch.sweep()

    def uri_for(self, sha256: str, extension: str) -> str:
        return f"s3://{self._bucket}/{content_key(sha256, extension)}"

    def _key(self, uri: str) -> str:
        prefix = f"s3://{self._bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri} is not in bucket {self._bucket}")
        return uri.removeprefix(prefix)

    async def put(self, source: Path, sha256: str, extension: str, content_type: str) -> str:
        uri = self.uri_for(sha256, extension)
        key = self._key(uri)
        try:
            if not await self.exists(uri):  # the same bytes are stored once
                size = (await asyncio.to_thread(source.stat)).st_size
                if size <= self._threshold:
                    await self._put_one(source, key, sha256, content_type)
                else:
                    await self._put_parts(source, key, content_type)
        finally:
            await remove(source)
        return uri

    async def _put_one(self, source: Path, key: str, sha256: str, content_type: str) -> None:
        body = await asyncio.to_thread(source.read_bytes)  # at most one part's worth
        try:
            await self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumSHA256=_b64(bytes.fromhex(sha256)),
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("BadDigest", "InvalidDigest"):
                raise ChecksumMismatch(f"the store refused {key}: {error}") from error
            raise

    async def _put_parts(self, source: Path, key: str, content_type: str) -> None:
        started = await self._client.create_multipart_upload(
            Bucket=self._bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256"
        )
        upload_id = started["UploadId"]
        parts: list[dict[str, Any]] = []
        digests: list[bytes] = []
        try:
            handle = await asyncio.to_thread(source.open, "rb")
            with handle:
                while block := await asyncio.to_thread(handle.read, self._part):
                    digest = hashlib.sha256(block).digest()
                    answer = await self._client.upload_part(
                        Bucket=self._bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=len(parts) + 1,
                        Body=block,
                        ChecksumSHA256=_b64(digest),
                    )
                    parts.append(
                        {
                            "ETag": answer["ETag"],
                            "PartNumber": len(parts) + 1,
                            "ChecksumSHA256": _b64(digest),
                        }
                    )
                    digests.append(digest)
            await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
            raise
        expected = f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"
        head = await self._client.head_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256", "")
        if stored != expected:  # a store without flexible checksums is not one we use
            await self._client.delete_object(Bucket=self._bucket, Key=key)
            raise ChecksumMismatch(f"{key}: the store's checksum {stored} is not {expected}")

    async def read(
        self, uri: str, chunk_bytes: int = MIB, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{_last(end)}"}
        answer = await self._client.get_object(Bucket=self._bucket, Key=self._key(uri), **ranged)
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(chunk_bytes):
                yield chunk

    async def exists(self, uri: str) -> bool:
        try:
            await self._client.head_object(Bucket=self._bucket, Key=self._key(uri))
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    async def delete(self, uri: str) -> None:
        await self._client.delete_object(Bucket=self._bucket, Key=self._key(uri))

    async def presign(self, uri: str, expires_seconds: int) -> str | None:
        url: str = await self._presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket, "Key": self._key(uri)},
            ExpiresIn=expires_seconds,
        )
        return url


def _last(end: int | None) -> str:
    """An HTTP range's last byte (inclusive) for an exclusive `end`; open when None."""
    return "" if end is None else str(end - 1)
