"""Settings of the asset service, from `PIXSIM_ASSET_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from pixsim_common.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config("PIXSIM_ASSET_")

    service_name: str = "asset"
    grpc_port: int = 50052
    metrics_port: int = 9102

    # `local`: files under STORAGE_ROOT (one replica); `s3`: an S3-compatible bucket (any
    # number of replicas), staging under STORAGE_ROOT on local disk.
    storage_backend: Literal["local", "s3"] = "local"
    # Where the local storage backend keeps files (content-addressed under it).
    storage_root: Path = Path(".run/storage")
    s3_endpoint_url: str = ""
    # The endpoint providers reach presigned URLs at, when it is not the one we use.
    s3_public_endpoint_url: str = ""
    s3_bucket: str = "pixsim-assets"
    s3_region: str = "us-east-1"
    # `path` (bucket in the URL path) suits S3-compatible servers; AWS prefers `virtual`.
    s3_addressing_style: Literal["path", "virtual"] = "path"
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    # Largest file fetched from a URL or accepted by UploadAsset.
    max_download_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    # Connect/read timeouts of one HTTP exchange, and the deadline of a whole download.
    fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    download_deadline_seconds: float = Field(default=300.0, gt=0)
    # Attempts at a download that fails for a passing reason (5xx, reset, timeout).
    download_attempts: int = Field(default=4, ge=1)
    download_backoff_seconds: float = Field(default=0.5, ge=0)
    # A stored file nothing holds any more is deleted this long after its last reference
    # went (deduplication means several assets may share one), looked for this often.
    blob_grace_seconds: float = Field(default=3600.0, ge=0)
    blob_collect_seconds: float = Field(default=30.0, gt=0)
    # Decoding limits, checked from a file's header before anything is decoded: pixels per
    # frame (Pillow's MAX_IMAGE_PIXELS is the same idea), either side, and duration.
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_media_side: int = Field(default=16_384, ge=1)
    max_media_duration_seconds: float = Field(default=600.0, gt=0)
    # Worker processes decoding files (probe, thumbnail, frames), one file each at a time;
    # more than the cores gains nothing. Each may map at most DECODE_MEMORY_BYTES.
    decode_workers: int = Field(default=2, ge=1, le=64)
    decode_memory_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    # Longer than any sane file takes on a busy node; a file that outlasts it is refused.
    decode_seconds_per_file: float = Field(default=120.0, gt=0, le=3600)
    # SSRF guard: internal addresses are refused unless allowed (the local stack allows
    # loopback, where the provider simulator serves its media).
    fetch_allow_loopback: bool = False
    fetch_allow_private: bool = False
