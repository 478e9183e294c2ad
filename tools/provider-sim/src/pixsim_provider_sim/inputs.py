"""Inputs as the providers take them: a URL they fetch, a data URI they decode, or a file
uploaded beforehand through their own intake (PixVerse's image and media uploads, Runway's
uploads flow). The simulator takes each for real and remembers what it received, by
sha256, so a test can tell the provider got the exact bytes of the input asset; an input it
cannot fetch or decode is refused, as a provider would refuse it."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

MAX_INPUT_BYTES = 64 * 1024 * 1024


class Refused(Exception):
    """An input the provider could not take."""


@dataclass(frozen=True, slots=True)
class Received:
    sha256: str
    size: int
    via: str  # "url", "data", "upload"


@dataclass
class Uploads:
    """Files uploaded through a provider's intake, by the id it gave them."""

    files: dict[str, Received] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # Runway upload slots not yet filled

    def keep(self, upload_id: str, body: bytes) -> Received:
        received = Received(hashlib.sha256(body).hexdigest(), len(body), "upload")
        self.files[upload_id] = received
        self.pending.discard(upload_id)
        return received

    def clear(self) -> None:
        self.files.clear()
        self.pending.clear()


def decode_data_uri(value: str) -> bytes:
    header, _, payload = value.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64") or not payload:
        raise Refused("not a base64 data URI")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise Refused(f"the data URI does not decode: {error}") from error


# The simulator runs beside its tests on one machine: it fetches from loopback only, and
# refuses any other address without connecting (a provider would refuse what it cannot
# reach, and a test must never send traffic anywhere else).
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


async def fetch(url: str, client: httpx.AsyncClient) -> bytes:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise Refused(f"{url[:120]} could not be fetched: the simulator reaches loopback only")
    try:
        response = await client.get(url, timeout=10)
    except httpx.HTTPError as error:
        raise Refused(f"{url[:120]} could not be fetched: {error!r}") from error
    if response.status_code != 200:
        raise Refused(f"{url[:120]} answered {response.status_code}")
    if len(response.content) > MAX_INPUT_BYTES:
        raise Refused("the input is too large")
    return response.content


async def take(value: object, uploads: Uploads, client: httpx.AsyncClient) -> Received:
    """What a provider receives from one input field's value."""
    if not isinstance(value, str) or not value:
        raise Refused("an input must be a URL, a data URI or an upload")
    if value.startswith("data:"):
        body = decode_data_uri(value)
        return Received(hashlib.sha256(body).hexdigest(), len(body), "data")
    if value.startswith("runway://"):
        found = uploads.files.get(value.removeprefix("runway://"))
        if found is None:
            raise Refused(f"{value[:80]} names no finished upload")
        return found
    if value.startswith(("http://", "https://")):
        body = await fetch(value, client)
        return Received(hashlib.sha256(body).hexdigest(), len(body), "url")
    raise Refused(f"{value[:40]!r} is no URL, data URI or upload")
