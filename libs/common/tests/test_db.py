"""Sessions against a real PostgreSQL: reads in one round trip, writes in a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from pixsim_common.db import create_read_sessionmaker

from .conftest import MessagingDatabase

pytestmark = pytest.mark.integration

# The id of the statement's transaction (assigned on first use): two statements in one
# transaction see the same id.
TRANSACTION_ID = text("SELECT txid_current()")


async def test_a_read_session_sends_each_statement_alone_and_a_session_one_transaction(
    messaging_db: MessagingDatabase,
) -> None:
    reads = create_read_sessionmaker(messaging_db.engine)
    async with reads() as session:  # no BEGIN was sent: each statement is its own
        assert await session.scalar(TRANSACTION_ID) != await session.scalar(TRANSACTION_ID)
    async with messaging_db.sessions() as session:
        assert await session.scalar(TRANSACTION_ID) == await session.scalar(TRANSACTION_ID)


async def test_the_pool_a_read_session_used_still_runs_writes_in_a_transaction(
    messaging_db: MessagingDatabase,
) -> None:
    """The read sessions' AUTOCOMMIT is the connection's only while a read holds it."""
    reads = create_read_sessionmaker(messaging_db.engine)
    for _ in range(3):  # the pool's connections have all served reads
        async with reads() as session:
            await session.execute(text("SELECT 1"))
    async with messaging_db.sessions() as session, session.begin():
        await session.execute(text("INSERT INTO effects VALUES ('read-pool', 'j')"))
        assert await session.scalar(TRANSACTION_ID) == await session.scalar(TRANSACTION_ID)
        await session.rollback()
    async with reads() as session:
        left = await session.scalar(
            text("SELECT count(*) FROM effects WHERE event_id = 'read-pool'")
        )
    assert left == 0
