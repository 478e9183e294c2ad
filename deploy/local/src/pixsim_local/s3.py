"""A real S3-compatible server for `make run --storage s3`, the tests and the chaos run: the
Versity S3 Gateway (Apache-2.0) over a directory, one process, built by
`deploy/local/install.sh` with `go install` into `.cache/bin`. Not an emulator: it speaks
S3's wire protocol, SigV4, multipart uploads and the flexible checksums the asset service
relies on.

`PIXSIM_S3_ENDPOINT` (with `PIXSIM_S3_ACCESS_KEY` and `PIXSIM_S3_SECRET_KEY`) makes it use an
existing server instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pixsim_local.processes import ManagedProcess

BINARY = Path(__file__).resolve().parents[4] / ".cache" / "bin" / "versitygw"


def find_binary() -> Path:
    for candidate in (os.environ.get("PIXSIM_VERSITYGW", ""), str(BINARY)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("versitygw")
    if found:
        return Path(found)
    raise FileNotFoundError("versitygw not found: run deploy/local/install.sh (make setup)")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: ManagedProcess | None = None

    @classmethod
    async def start(cls, run_dir: Path, port: int, timeout: float = 30.0) -> S3Server:
        existing = os.environ.get("PIXSIM_S3_ENDPOINT")
        if existing:
            return cls(
                existing,
                os.environ.get("PIXSIM_S3_ACCESS_KEY", ""),
                os.environ.get("PIXSIM_S3_SECRET_KEY", ""),
            )
        data = run_dir / "s3-data"
        data.mkdir(parents=True, exist_ok=True)
        access, secret = f"pixsim{secrets.token_hex(4)}", secrets.token_urlsafe(24)
        process = ManagedProcess(
            "s3",
            [
                str(find_binary()),
                "--port",
                f"127.0.0.1:{port}",
                "--access",
                access,
                "--secret",
                secret,
                "posix",
                str(data),
            ],
            run_dir / "s3.log",
        )
        server = cls(f"http://127.0.0.1:{port}", access, secret, process)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                process.check_alive()
                try:
                    await client.get(server.endpoint, timeout=1)  # any answer: it listens
                    return server
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        process.stop()
                        raise TimeoutError("the S3 server did not answer in time") from None
                    await asyncio.sleep(0.1)

    async def create_bucket(self, name: str, *, exist_ok: bool = False) -> None:
        from aiobotocore.session import get_session
        from botocore.exceptions import ClientError

        session = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        ) as client:
            try:
                await client.create_bucket(Bucket=name)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if not (exist_ok and code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")):
                    raise

    def settings(self, bucket: str) -> dict[str, str]:
        """The asset service's settings (without prefix) for `bucket` on this server."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_BUCKET": bucket,
            "S3_ACCESS_KEY_ID": self.access_key,
            "S3_SECRET_ACCESS_KEY": self.secret_key,
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
