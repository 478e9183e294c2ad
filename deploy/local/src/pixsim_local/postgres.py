"""A throwaway PostgreSQL 15 cluster, and one database and one role per service inside it.

The cluster runs from the machine's PostgreSQL 15 binaries (Debian's `postgresql-15`). As root
it runs as the `postgres` user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg

from pixsim_local.processes import ManagedProcess, hand_over, open_path_to, unprivileged_user

SUPERUSER = "postgres"
PG_MAJOR = "15"


def find_bindir() -> Path:
    """The directory of `initdb` and `postgres` for PostgreSQL 15."""
    candidates = [os.environ.get("PIXSIM_PG_BINDIR", ""), f"/usr/lib/postgresql/{PG_MAJOR}/bin"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError(
        "PostgreSQL 15 binaries not found; install Debian's postgresql-15 "
        "(deploy/local/install.sh does) or set PIXSIM_PG_BINDIR"
    )


@dataclass(frozen=True, slots=True)
class ServiceDatabase:
    """A service's own database and the role that owns it."""

    name: str
    role: str
    password: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """A libpq URL; `pixsim_common.db` adapts it for SQLAlchemy."""
        return (
            f"postgresql://{quote(self.role)}:{quote(self.password)}"
            f"@{self.host}:{self.port}/{quote(self.name)}"
        )


class PostgresCluster:
    """A cluster this process started (or an existing one given by a superuser URL)."""

    def __init__(
        self,
        admin_url: str,
        process: ManagedProcess | None = None,
        restart_with: tuple[Path, int, bool] | None = None,
    ) -> None:
        self.admin_url = admin_url
        self.process = process
        # (data_dir, port, durable) of a cluster this process started, to start it again.
        self._restart_with = restart_with
        parts = urlsplit(admin_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432

    @classmethod
    async def start(
        cls, data_dir: Path, port: int, *, durable: bool = False, timeout: float = 60.0
    ) -> PostgresCluster:
        """initdb into `data_dir` (if empty) and run postgres on 127.0.0.1:`port`.

        `durable=False` (tests, benchmarks of our code) turns off fsync: a crash of the machine
        may lose the cluster, which is thrown away anyway; a crash of postgres itself may not.
        """
        bindir = find_bindir()
        user = unprivileged_user()
        open_path_to(data_dir.parent, user)
        data_dir.mkdir(parents=True, exist_ok=True)
        password_file = data_dir.parent / f"{data_dir.name}.superuser-password"
        if not (data_dir / "PG_VERSION").exists():
            password = secrets.token_urlsafe(18)
            password_file.write_text(password)
            password_file.chmod(0o600)
            hand_over(data_dir, user)
            hand_over(password_file, user)
            initdb = ManagedProcess(
                "initdb",
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    SUPERUSER,
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={password_file}",
                    "--no-sync",
                ],
                data_dir.parent / f"{data_dir.name}.initdb.log",
                user=user,
            )
            if initdb.process.wait(timeout) != 0:
                raise RuntimeError(f"initdb failed:\n{initdb.log_tail()}")
            initdb.stop()
        password = password_file.read_text().strip()
        socket_dir = data_dir / "socket"
        socket_dir.mkdir(exist_ok=True)
        hand_over(socket_dir, user)
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(socket_dir),
            "max_connections": "300",
            "shared_buffers": "256MB",
            "fsync": "on" if durable else "off",
            # On even when not durable: off, a crash of postgres itself (the chaos run
            # makes one) loses the last commits from its WAL buffers; with fsync off, a
            # synchronous commit costs a write() to the OS cache, no disk wait.
            "synchronous_commit": "on",
            "full_page_writes": "on" if durable else "off",
        }
        argv = [str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log_path = data_dir.parent / f"{data_dir.name}.log"
        log_path.touch()
        hand_over(log_path, user)
        process = ManagedProcess("postgres", argv, log_path, user=user)
        cluster = cls(
            f"postgresql://{SUPERUSER}:{quote(password)}@127.0.0.1:{port}/postgres",
            process,
            (data_dir, port, durable),
        )
        await cluster.wait_ready(timeout)
        return cluster

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None:
                self.process.check_alive()
            try:
                connection = await asyncpg.connect(self.admin_url, timeout=2)
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            await connection.close()
            return

    async def create_service_database(self, name: str) -> ServiceDatabase:
        """A database `name` owned by a role `name`, which no other role may connect to.

        Idempotent: an existing role gets a new password, an existing database is kept.
        """
        password = secrets.token_urlsafe(18)
        connection = await asyncpg.connect(self.admin_url)
        try:
            role = _quote_ident(name)
            exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
            verb = "ALTER" if exists else "CREATE"
            # Utility statements take no parameters; the password is URL-safe base64.
            await connection.execute(f"{verb} ROLE {role} LOGIN PASSWORD '{password}'")
            if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await connection.execute(f"CREATE DATABASE {role} OWNER {role}")
            await connection.execute(f"REVOKE CONNECT ON DATABASE {role} FROM PUBLIC")
            await connection.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
            await connection.execute(f"GRANT CONNECT ON DATABASE {role} TO {role}")
        finally:
            await connection.close()
        return ServiceDatabase(name, name, password, self.host, self.port)

    async def drop_database(self, name: str) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
        finally:
            await connection.close()

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of a cluster we started; an existing one is left alone."""
        if self.process is not None:
            self.process.stop(sig=signal.SIGINT)

    async def crash_and_restart(self) -> None:
        """Immediate shutdown (SIGQUIT: no checkpoint, every connection cut, WAL replayed at
        the next start, as after a crash), then start again on the same data and port."""
        if self.process is None or self._restart_with is None:
            raise RuntimeError("only a cluster this process started can be restarted")
        data_dir, port, durable = self._restart_with
        await asyncio.to_thread(self.process.stop, sig=signal.SIGQUIT)
        self.process = (await PostgresCluster.start(data_dir, port, durable=durable)).process


def _quote_ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'
