"""Opaque page tokens (AIP-158) for keyset pagination.

A token is the position after the last item of a page, URL-safe base64 of JSON, bound to the
query it came from (a token from another filter is refused rather than silently misread).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim_common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    return DEFAULT_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)


def _fingerprint(query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:12]


def encode(position: list[Any], query: Any) -> str:
    raw = json.dumps({"p": position, "q": _fingerprint(query)}, default=str).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(token: str, query: Any) -> list[Any] | None:
    """The position a token stands for; None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        position = decoded["p"]
        fingerprint = decoded["q"]
    except (binascii.Error, ValueError, KeyError, TypeError) as error:
        raise _bad("is not a token this service issued") from error
    if fingerprint != _fingerprint(query) or not isinstance(position, list):
        raise _bad("belongs to a different query")
    return position


def _bad(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token {why}",
        [FieldViolation("page_token", why, "INVALID_PAGE_TOKEN")],
        reason="INVALID_PAGE_TOKEN",
    )


def keyset(
    query: Select[Any],
    table: Table,
    token: str,
    requested_size: int,
    filters: Any,
    *,
    newest_first: bool = False,
) -> tuple[Select[Any], int]:
    """`query` in (create_time, id) order from the position `token` names, limited to one
    row more than the page (that row tells whether another page follows); and the page size.

    A token from another query (other `filters`) or a malformed one is INVALID_ARGUMENT.
    """
    size = page_size(requested_size)
    created_col, id_col = table.c.create_time, table.c.id
    order = (created_col.desc(), id_col.desc()) if newest_first else (created_col, id_col)
    query = query.order_by(*order)
    position = decode(token, filters)
    if position is not None:
        created, last_id = datetime.fromisoformat(str(position[0])), str(position[1])
        if newest_first:
            past = or_(created_col < created, and_(created_col == created, id_col < last_id))
        else:
            past = or_(created_col > created, and_(created_col == created, id_col > last_id))
        query = query.where(past)
    return query.limit(size + 1), size


def next_token(rows: Sequence[Any], size: int, filters: Any) -> str:
    """The token of the page after `rows` (fetched by `keyset`), or "" when none follows."""
    if len(rows) <= size:
        return ""
    last = rows[size - 1]
    return encode([last.create_time.isoformat(), last.id], filters)


async def fetch_page(
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
    query, size = keyset(query, table, token, requested_size, filters, newest_first=newest_first)
    rows = (await session.execute(query)).all()
    return rows[:size], next_token(rows, size, filters)
