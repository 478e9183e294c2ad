"""PostgreSQL through SQLAlchemy 2 async + asyncpg: engine, unit of work, Alembic runner."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Table, any_, bindparam, literal, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.selectable import TextualSelect

from pixsim_common.dependencies import with_database


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` (libpq form, as settings hold it) for SQLAlchemy's asyncpg dialect."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("database URL must start with postgresql://")


def libpq_url(url: str) -> str:
    """The same URL in the form asyncpg and libpq accept."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


# asyncpg sends at most 32,767 parameters with one statement; a query whose parameter count
# grows with a caller's list must not exist (an array is one parameter).
MAX_QUERY_PARAMETERS = 32_767


def any_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column = ANY($1)`: one array parameter, however many values (never `IN` over a
    caller-sized list, which is one parameter per value)."""
    return column == any_(literal(list(values), ARRAY(column.type)))  # type: ignore[no-any-return]


def rows_per_statement(columns: int) -> int:
    """How many rows of `columns` values one multi-row statement may carry."""
    return max(1, MAX_QUERY_PARAMETERS // max(columns, 1) // 2)


def insert_or_skip(
    table: Table,
    columns: Sequence[str],
    *,
    values: Sequence[str] | None = None,
    binds: Sequence[BindParameter[Any]] = (),
    conflict: str = "",
) -> TextualSelect:
    """`INSERT ... ON CONFLICT [conflict] DO NOTHING RETURNING` every column of `table`, as
    text built once: the PostgreSQL dialect's ON CONFLICT insert has no cache key, so
    SQLAlchemy compiled it on every call (decision 124). Each column's value is `:column`,
    typed as its column unless `binds` types it otherwise; or `values` gives each one's SQL
    and `binds` all the parameters they name. Built from the table's own column names,
    never from input."""
    if values is None:
        values = [f":{name}" for name in columns]
        typed = {bind.key: bind for bind in binds}
        binds = [typed.get(name, bindparam(name, type_=table.c[name].type)) for name in columns]
    target = f"{conflict} " if conflict else ""
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(values)})"  # noqa: S608
        f" ON CONFLICT {target}DO NOTHING RETURNING {', '.join(c.name for c in table.c)}"
    )
    return text(sql).bindparams(*binds).columns(*table.c)


def create_engine(
    url: str, *, pool_size: int = 10, max_overflow: int | None = None, echo: bool = False
) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        # No ping at checkout: it was three round trips (BEGIN, an empty query, ROLLBACK)
        # before every transaction. A connection broken by a database restart fails its
        # first statement instead; SQLAlchemy then discards every connection of the pool
        # older than the failure, and the failure is transient (UNAVAILABLE to a caller,
        # retried by a consumer), so it costs one retry per process (decision 118).
        pool_recycle=1800,
        echo=echo,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, every statement committing by itself: one round trip instead of
    three (`BEGIN`, the statement, `COMMIT` or `ROLLBACK`). For reads that need no snapshot
    across their statements, and for a write that is all one statement."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def create_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads that need no snapshot across their statements (one statement, or
    statements each of which may see a later moment), and for a write that is one
    statement, on `autocommit(engine)`. Never for a write of several statements: each would
    commit by itself."""
    return create_sessionmaker(autocommit(engine))


class UnitOfWork:
    """One database transaction: everything written through `session` (including outbox
    events) commits together on `commit()`, and is rolled back if the block leaves without it.

        async with UnitOfWork(sessions) as uow:
            ...
            await uow.commit()
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._session: AsyncSession | None = None
        self._committed = False

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("UnitOfWork used outside its 'async with' block")
        return self._session

    async def __aenter__(self) -> UnitOfWork:
        self._session = self._sessions()
        await self._session.begin()
        return self

    async def commit(self) -> None:
        """Write the events its aggregates raised (`outbox.collect`), then commit."""
        from pixsim_common.outbox import write_collected  # the outbox builds on this module

        await write_collected(self.session)
        await self.session.commit()
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self.session
        try:
            if not self._committed:
                await session.rollback()
        finally:
            await session.close()
            self._session = None


def run_migrations(database_url: str, migrations_dir: Path, revision: str = "head") -> None:
    """`alembic upgrade <revision>` for one service, without an alembic.ini file.

    The service's `migrations/env.py` reads the URL from `config.attributes["database_url"]`.
    Blocking: call it before the event loop starts, or in a thread.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = sqlalchemy_url(database_url)
    command.upgrade(config, revision)


async def ensure_migrated(database_url: str, migrations_dir: Path) -> None:
    """Refuse to serve a database that is not at the code's migration head."""
    import asyncpg
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    heads = set(ScriptDirectory.from_config(config).get_heads())

    async def applied() -> set[str]:
        connection = await asyncpg.connect(libpq_url(database_url))
        try:
            return {
                row["version_num"]
                for row in await connection.fetch("SELECT version_num FROM alembic_version")
            }
        except asyncpg.UndefinedTableError:
            return set()
        finally:
            await connection.close()

    # A service restarted while its database restarts waits for it, rather than exiting.
    current = await with_database(applied)
    if current != heads:
        found = ", ".join(sorted(current)) or "no migrations"
        raise SystemExit(
            f"the database is at {found} but this code needs {', '.join(sorted(heads))}: "
            "run the service's `migrate` command first (make run does)"
        )
