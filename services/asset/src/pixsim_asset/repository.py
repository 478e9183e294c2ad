"""The asset tables, and reading and writing `Asset` records.

Deduplication rests on two partial unique indexes over live (not deleted) assets: one file
per owner by `sha256`, and one asset per owner by `(provider_id, provider_asset_id)`. An
insert that collides with either does nothing, and the caller reads the asset that won, so
concurrent creations of the same content give one asset whatever their timing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim_asset.domain import (
    Asset,
    LineageEdge,
    Origin,
    Relative,
    StoredFile,
    Variant,
    media_type_of,
)
from pixsim_common.db import any_of, insert_or_skip
from pixsim_common.pagination import PageTokens

metadata = MetaData()

LIVE = text("deleted_at IS NULL")

assets = Table(
    "assets",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True, server_default=func.gen_random_uuid()),
    Column("owner_id", Text, nullable=False),
    Column("media_type", Integer, nullable=False),
    Column("display_name", Text, nullable=False, server_default=""),
    Column("provider_id", Text),
    Column("provider_asset_id", Text),
    Column("source_job_id", UUID(as_uuid=False)),
    Column("remote_uri", Text, nullable=False, server_default=""),
    Column("storage_uri", Text, nullable=False),
    Column("sync_status", Text, nullable=False),
    Column("sync_error", Text, nullable=False, server_default=""),
    Column("sha256", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("mime_type", Text, nullable=False),
    Column("width", Integer, nullable=False, server_default="0"),
    Column("height", Integer, nullable=False, server_default="0"),
    Column("duration_seconds", Float, nullable=False, server_default="0"),
    Column("codec", Text, nullable=False, server_default=""),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Index("assets_one_file_per_owner", "owner_id", "sha256", unique=True, postgresql_where=LIVE),
    Index(
        "assets_one_per_provider_result",
        "owner_id",
        "provider_id",
        "provider_asset_id",
        unique=True,
        postgresql_where=text("deleted_at IS NULL AND provider_asset_id IS NOT NULL"),
    ),
    Index(
        "assets_by_owner_newest",
        "owner_id",
        text("create_time DESC"),
        text("id DESC"),
        postgresql_where=LIVE,
    ),
    Index("assets_by_source_job", "source_job_id"),
)

asset_variants = Table(
    "asset_variants",
    metadata,
    Column("asset_id", UUID(as_uuid=False), ForeignKey("assets.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("storage_uri", Text, nullable=False),
    Column("mime_type", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    PrimaryKeyConstraint("asset_id", "kind"),
)

asset_lineage = Table(
    "asset_lineage",
    metadata,
    Column("child_id", UUID(as_uuid=False), ForeignKey("assets.id"), nullable=False),
    Column("parent_id", UUID(as_uuid=False), ForeignKey("assets.id"), nullable=False),
    Column("role", Integer, nullable=False),
    Column("operation_type", Integer, nullable=False),
    PrimaryKeyConstraint("child_id", "parent_id", "role"),
    Index("asset_lineage_by_parent", "parent_id"),
)


# Every stored file and how many things hold it: live assets and variants, and creations in
# progress (a claim is taken before a file is put, and kept by the row that names it). A
# file nothing holds is `orphaned_at`, and the collector deletes it after a grace period,
# holding the row's lock while it deletes: a new claim on the same content waits for that,
# then finds no row, makes one and puts the file again. So a file is never deleted under an
# asset that names it, however a deletion and a dedup race.
blobs = Table(
    "blobs",
    metadata,
    Column("uri", Text, primary_key=True),
    Column("refs", Integer, nullable=False, server_default="0"),
    Column("orphaned_at", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("refs >= 0", name="blob_refs_not_negative"),
    Index("blobs_orphaned", "orphaned_at", postgresql_where=text("refs = 0")),
)

# The content URI is derived from the bytes, never chosen by a caller; the update only
# counts, so sharing one row across owners reaches nothing of theirs.
_CLAIM = text(
    "INSERT INTO blobs (uri, refs) SELECT u, 1 FROM unnest(CAST(:uris AS text[])) AS u"
    " ORDER BY u ON CONFLICT (uri) DO UPDATE SET refs = blobs.refs + 1, orphaned_at = NULL,"
    " update_time = now()"
)
# Rows are locked in uri order, as _CLAIM's insert takes them: an UPDATE alone locks in
# whatever order its scan meets them, and two releases (or a release and a claim) of the
# same files, e.g. concurrent duplicates of one upload, deadlocked.
_RELEASE = text(
    "UPDATE blobs SET refs = blobs.refs - 1, update_time = now(),"
    " orphaned_at = CASE WHEN blobs.refs = 1 THEN now() ELSE blobs.orphaned_at END"
    " FROM (SELECT uri FROM blobs WHERE uri = ANY(CAST(:uris AS text[]))"
    " ORDER BY uri FOR UPDATE) AS locked"
    " WHERE blobs.uri = locked.uri"
)


async def claim_blobs(session: AsyncSession, uris: Iterable[str]) -> None:
    """Hold these files (one more reference each) before they are put."""
    wanted = sorted(set(uris))
    if wanted:
        await session.execute(_CLAIM, {"uris": wanted})


async def release_blobs(session: AsyncSession, uris: Iterable[str]) -> None:
    """One reference fewer each; a file nothing holds any more is orphaned from now."""
    wanted = sorted(set(uris))
    if wanted:
        await session.execute(_RELEASE, {"uris": wanted})


async def collectable_blobs(session: AsyncSession, grace_seconds: float, limit: int) -> list[str]:
    """Orphaned files past their grace period, locked (other collectors skip them)."""
    result = await session.scalars(
        text(
            "SELECT uri FROM blobs WHERE refs = 0"
            " AND orphaned_at <= now() - make_interval(secs => :grace)"
            " ORDER BY orphaned_at LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"grace": grace_seconds, "limit": limit},
    )
    return list(result)


async def forget_blob(session: AsyncSession, uri: str) -> None:
    await session.execute(text("DELETE FROM blobs WHERE uri = :uri"), {"uri": uri})


async def uris_of(session: AsyncSession, asset_id: str) -> list[str]:
    """The files an asset holds: its own and its variants'."""
    own = await session.scalar(select(assets.c.storage_uri).where(assets.c.id == asset_id))
    variants = await session.scalars(
        select(asset_variants.c.storage_uri).where(asset_variants.c.asset_id == asset_id)
    )
    return [u for u in [own, *variants] if u]


def _to_asset(row: Row[Any], variants: Sequence[Variant] = ()) -> Asset:
    return Asset(
        id=row.id,
        owner_id=row.owner_id,
        media_type=row.media_type,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        mime_type=row.mime_type,
        width=row.width,
        height=row.height,
        duration_seconds=row.duration_seconds,
        codec=row.codec,
        storage_uri=row.storage_uri,
        sync_status=row.sync_status,
        create_time=row.create_time,
        update_time=row.update_time,
        display_name=row.display_name,
        remote_uri=row.remote_uri,
        provider_id=row.provider_id or "",
        provider_asset_id=row.provider_asset_id or "",
        source_job_id=row.source_job_id or "",
        sync_error=row.sync_error,
        variants=tuple(variants),
    )


# The columns a new asset is inserted with (the rest take their defaults).
_INSERTED_COLUMNS = (
    "owner_id",
    "media_type",
    "display_name",
    "provider_id",
    "provider_asset_id",
    "source_job_id",
    "remote_uri",
    "storage_uri",
    "sync_status",
    "sha256",
    "size_bytes",
    "mime_type",
    "width",
    "height",
    "duration_seconds",
    "codec",
)
_INSERT_NEW = insert_or_skip(assets, _INSERTED_COLUMNS)


async def insert_new(session: AsyncSession, origin: Origin, stored: StoredFile) -> Asset | None:
    """Insert the asset (and its variants); None when a live asset of the owner already has
    this content or this provider result."""
    info = stored.info
    values = {
        "owner_id": origin.owner_id,
        "media_type": media_type_of(info),
        "display_name": origin.display_name,
        "provider_id": origin.provider_id or None,
        "provider_asset_id": origin.provider_asset_id or None,
        "source_job_id": origin.source_job_id or None,
        "remote_uri": origin.remote_uri,
        "storage_uri": stored.storage_uri,
        "sync_status": "DOWNLOADED",
        "sha256": stored.sha256,
        "size_bytes": info.size_bytes,
        "mime_type": info.mime_type,
        "width": info.width,
        "height": info.height,
        "duration_seconds": info.duration_seconds,
        "codec": info.codec,
    }
    row = (await session.execute(_INSERT_NEW, values)).first()
    if row is None:
        return None
    if stored.variants:
        await session.execute(
            insert(asset_variants),
            [
                {
                    "asset_id": row.id,
                    "kind": v.kind,
                    "storage_uri": v.storage_uri,
                    "mime_type": v.mime_type,
                    "width": v.width,
                    "height": v.height,
                    "size_bytes": v.size_bytes,
                }
                for v in stored.variants
            ],
        )
    return _to_asset(row, stored.variants)


# find_duplicate's three statements (by content, by provider result, by either), built once.
_SAME_CONTENT = assets.c.sha256 == bindparam("sha256")
_SAME_RESULT = and_(
    assets.c.provider_id == bindparam("provider_id"),
    assets.c.provider_asset_id == bindparam("provider_asset_id"),
)


def _live_of_owner(match: ColumnElement[bool]) -> Select[Any]:
    return select(assets).where(assets.c.owner_id == bindparam("owner_id"), LIVE, match).limit(1)


_DUPLICATE = {
    (True, False): _live_of_owner(_SAME_CONTENT),
    (False, True): _live_of_owner(_SAME_RESULT),
    (True, True): _live_of_owner(or_(_SAME_CONTENT, _SAME_RESULT)),
}


async def find_duplicate(
    session: AsyncSession,
    owner_id: str,
    *,
    sha256: str = "",
    provider_key: tuple[str, str] = ("", ""),
) -> Asset | None:
    """The owner's live asset with this content or this provider result."""
    provider_id, provider_asset_id = provider_key
    if not (sha256 or provider_asset_id):
        return None
    parameters = {
        "owner_id": owner_id,
        "sha256": sha256,
        "provider_id": provider_id,
        "provider_asset_id": provider_asset_id,
    }
    query = _DUPLICATE[bool(sha256), bool(provider_asset_id)]
    row = (await session.execute(query, parameters)).first()
    return (await _with_variants(session, [row]))[0] if row is not None else None


async def _with_variants(session: AsyncSession, rows: Sequence[Row[Any]]) -> list[Asset]:
    ids = [row.id for row in rows]
    found: dict[str, list[Variant]] = {}
    if ids:
        for v in await session.execute(
            select(asset_variants)
            .where(any_of(asset_variants.c.asset_id, ids))
            .order_by(asset_variants.c.kind)
        ):
            found.setdefault(v.asset_id, []).append(
                Variant(v.kind, v.storage_uri, v.mime_type, v.width, v.height, v.size_bytes)
            )
    return [_to_asset(row, found.get(row.id, ())) for row in rows]


async def load(session: AsyncSession, asset_id: str, owner_id: str) -> Asset | None:
    """The owner's live asset; None when missing, deleted or someone else's."""
    rows = (
        await session.execute(
            select(assets).where(assets.c.id == asset_id, assets.c.owner_id == owner_id, LIVE)
        )
    ).all()
    assets_found = await _with_variants(session, rows)
    return assets_found[0] if assets_found else None


async def load_many(session: AsyncSession, ids: Sequence[str], owner_id: str) -> list[Asset]:
    """The owner's live assets among `ids`, in the order asked, each once."""
    rows = (
        await session.execute(
            select(assets).where(any_of(assets.c.id, set(ids)), assets.c.owner_id == owner_id, LIVE)
        )
    ).all()
    by_id = {a.id: a for a in await _with_variants(session, rows)}
    ordered = dict.fromkeys(i for i in ids if i in by_id)
    return [by_id[i] for i in ordered]


async def owned_ids(session: AsyncSession, ids: Iterable[str], owner_id: str) -> set[str]:
    wanted = set(ids)
    if not wanted:
        return set()
    result = await session.scalars(
        select(assets.c.id).where(any_of(assets.c.id, wanted), assets.c.owner_id == owner_id, LIVE)
    )
    return set(result)


async def add_lineage(session: AsyncSession, child_id: str, edges: Sequence[LineageEdge]) -> None:
    if not edges:
        return
    await session.execute(
        insert(asset_lineage)
        .values(
            [
                {
                    "child_id": child_id,
                    "parent_id": e.parent_id,
                    "role": e.role,
                    "operation_type": e.operation_type,
                }
                for e in edges
            ]
        )
        .on_conflict_do_nothing()
    )


async def lineage(
    session: AsyncSession, asset_id: str, owner_id: str
) -> tuple[list[Relative], list[Relative]]:
    """(parents, children) of an asset, each a live asset of the owner, oldest first."""
    edges = asset_lineage.c
    return (
        await _relatives(session, owner_id, edges.child_id == asset_id, edges.parent_id),
        await _relatives(session, owner_id, edges.parent_id == asset_id, edges.child_id),
    )


async def _relatives(
    session: AsyncSession, owner_id: str, this_end: Any, other_end: Any
) -> list[Relative]:
    other = assets.alias("other")
    rows = await session.execute(
        select(other_end, asset_lineage.c.role, asset_lineage.c.operation_type)
        .join(other, other.c.id == other_end)
        .where(this_end, other.c.owner_id == owner_id, other.c.deleted_at.is_(None))
        .order_by(other.c.create_time, other_end, asset_lineage.c.role)
    )
    return [Relative(*row) for row in rows]


async def soft_delete(session: AsyncSession, asset_id: str, owner_id: str) -> Asset | None:
    """Mark the owner's live asset deleted; None when there is none to delete."""
    row = (
        await session.execute(
            update(assets)
            .where(assets.c.id == asset_id, assets.c.owner_id == owner_id, LIVE)
            .values(deleted_at=func.now(), update_time=func.now())
            .returning(*assets.c)
        )
    ).first()
    return _to_asset(row) if row is not None else None


async def list_page(
    session: AsyncSession,
    tokens: PageTokens,
    owner_id: str,
    filters: dict[str, Any],
    *,
    page_token: str,
    page_size: int,
) -> tuple[list[Asset], str]:
    """One page of the owner's live assets, newest first, and the next page's token.

    `filters` may hold media_type, provider_id, sync_status, source_job_id (values that are
    empty or 0 do not filter) and create_time_start / create_time_end (datetimes)."""
    query = select(assets).where(assets.c.owner_id == owner_id, LIVE)
    for column in ("media_type", "provider_id", "sync_status", "source_job_id"):
        if filters.get(column):
            query = query.where(assets.c[column] == filters[column])
    if filters.get("create_time_start") is not None:
        query = query.where(assets.c.create_time >= filters["create_time_start"])
    if filters.get("create_time_end") is not None:
        query = query.where(assets.c.create_time < filters["create_time_end"])
    rows, token = await tokens.fetch_page(
        session, query, assets, page_token, page_size, filters, newest_first=True
    )
    return await _with_variants(session, rows), token
