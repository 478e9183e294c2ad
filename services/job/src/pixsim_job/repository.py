"""Persistence of the job service. Its tables are declared on `metadata`, which
`migrations/env.py` compares against; the outbox and inbox come from pixsim_common."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()
