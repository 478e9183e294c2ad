"""Opaque page tokens (AIP-158) for keyset pagination.

A token is the position after the last item of a page, authenticated with an HMAC under a
server secret and bound to the query it came from. A token the service did not issue, or
issued for another filter, is INVALID_ARGUMENT whatever it contains: nothing a caller
writes into one reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim_common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_CHARS = 512  # every List request's page_token has this max_len
_MAC_BYTES = 16


def page_size(requested: int) -> int:
    return DEFAULT_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bad(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token {why}",
        [FieldViolation("page_token", why, "INVALID_PAGE_TOKEN")],
        reason="INVALID_PAGE_TOKEN",
    )


class PageTokens:
    """Issues and checks page tokens with one secret. Replicas of a service share the secret
    (its settings), so a token from one is good at another."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a page token secret needs at least 16 bytes")
        self._secret = secret

    @classmethod
    def from_setting(cls, secret: str) -> PageTokens:
        """From the `PAGE_TOKEN_SECRET` setting; empty means a secret of this process alone
        (tokens then do not outlive it, nor pass between replicas)."""
        return cls(secret.encode() if secret else secrets.token_bytes(32))

    def _mac(self, payload: bytes, query: Any) -> bytes:
        bound = json.dumps(query, sort_keys=True, default=str).encode()
        return hmac.digest(self._secret, payload + b"\x00" + bound, hashlib.sha256)[:_MAC_BYTES]

    def encode(self, position: list[Any], query: Any) -> str:
        payload = json.dumps(position, default=str, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload, query))}"

    def decode(self, token: str, query: Any) -> list[Any] | None:
        """The position a token stands for; None for the first page."""
        if not token:
            return None
        encoded_payload, _, encoded_mac = token.partition(".")
        try:
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (binascii.Error, ValueError) as error:
            raise _bad("is not a token this service issued") from error
        if not hmac.compare_digest(mac, self._mac(payload, query)):
            raise _bad("is not a token this service issued for this query")
        try:
            position = json.loads(payload)
        except ValueError as error:  # authentic, so this is a bug of ours, but stay safe
            raise _bad("cannot be read") from error
        if not isinstance(position, list):
            raise _bad("cannot be read")
        return position

    def keyset(
        self,
        query: Select[Any],
        table: Table,
        token: str,
        requested_size: int,
        filters: Any,
        *,
        newest_first: bool = False,
    ) -> tuple[Select[Any], int]:
        """`query` in (create_time, id) order from the position `token` names, limited to one
        row more than the page (that row tells whether another page follows); and the page
        size. A token from another query (other `filters`) or a forged one is
        INVALID_ARGUMENT."""
        size = page_size(requested_size)
        created_col, id_col = table.c.create_time, table.c.id
        order = (created_col.desc(), id_col.desc()) if newest_first else (created_col, id_col)
        query = query.order_by(*order)
        position = self.decode(token, filters)
        if position is not None:
            created, last_id = _create_time_and_id(position)
            if newest_first:
                past = or_(created_col < created, and_(created_col == created, id_col < last_id))
            else:
                past = or_(created_col > created, and_(created_col == created, id_col > last_id))
            query = query.where(past)
        return query.limit(size + 1), size

    def next_token(self, rows: Sequence[Any], size: int, filters: Any) -> str:
        """The token of the page after `rows` (fetched by `keyset`), or "" when none
        follows."""
        if len(rows) <= size:
            return ""
        last = rows[size - 1]
        return self.encode([last.create_time.isoformat(), last.id], filters)

    async def fetch_page(
        self,
        session: AsyncSession,
        query: Select[Any],
        table: Table,
        token: str,
        requested_size: int,
        filters: Any,
        *,
        newest_first: bool = False,
    ) -> tuple[Sequence[Any], str]:
        """One page of `query`'s rows (keyset order from `token`) and the next page's token."""
        query, size = self.keyset(
            query, table, token, requested_size, filters, newest_first=newest_first
        )
        rows = (await session.execute(query)).all()
        return rows[:size], self.next_token(rows, size, filters)


def _create_time_and_id(position: list[Any]) -> tuple[datetime, str]:
    try:
        created, last_id = position
        return datetime.fromisoformat(str(created)), str(uuid.UUID(str(last_id)))
    except (TypeError, ValueError) as error:
        raise _bad("cannot be read") from error
