"""Account credentials encrypted at rest with AES-GCM, ready for key rotation.

Keys come from settings as `id:base64key` pairs; the first encrypts, all decrypt. Each
ciphertext is stored with the id of its key, so a new key can be put first and old rows
re-encrypted at leisure. The account's id is bound in as associated data, so a ciphertext
copied onto another account does not decrypt.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class CredentialCipher:
    def __init__(self, keys: str) -> None:
        parsed: list[tuple[str, AESGCM]] = []
        for entry in filter(None, (part.strip() for part in keys.split(","))):
            key_id, _, material = entry.partition(":")
            raw = base64.b64decode(material)
            if not key_id or len(raw) not in (16, 24, 32):
                raise ValueError("each credentials key must be 'id:<base64 of 16, 24 or 32 bytes>'")
            parsed.append((key_id, AESGCM(raw)))
        if not parsed:
            raise ValueError("no credentials encryption key configured")
        self._current_id = parsed[0][0]
        self._keys = dict(parsed)

    def encrypt(self, credentials: dict[str, str], account_id: str) -> tuple[str, bytes]:
        nonce = os.urandom(12)
        sealed = self._keys[self._current_id].encrypt(
            nonce, json.dumps(credentials, sort_keys=True).encode(), account_id.encode()
        )
        return self._current_id, nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, account_id: str) -> dict[str, str]:
        key = self._keys.get(key_id)
        if key is None:
            raise ValueError(f"credentials key {key_id!r} is not configured")
        try:
            plain = key.decrypt(blob[:12], blob[12:], account_id.encode())
        except InvalidTag as error:
            raise ValueError("credentials do not decrypt with their key") from error
        decoded = json.loads(plain)
        if not isinstance(decoded, dict):
            raise ValueError("credentials are not a mapping")
        return {str(k): str(v) for k, v in decoded.items()}

    def api_key_of(self, account: Any) -> str:
        """The API key of a stored account row (its `id`, `credentials_key_id` and sealed
        `credentials`), or "" where its credentials hold none."""
        return self.decrypt(account.credentials_key_id, account.credentials, account.id).get(
            "api_key", ""
        )


def new_key() -> str:
    """A fresh base64 AES-256 key, for `id:<key>` in settings."""
    return base64.b64encode(AESGCM.generate_key(256)).decode()
