"""A throwaway PostgreSQL for the benchmarks that need one (bench.reports, bench.growth).

    with throwaway_postgres() as (admin_url, version): ...        # a server, removed at exit
    with postgres_server() as server: server.stop("immediate"); server.start()   # an outage
    async with fresh_database(admin_url, prefix="bench_x") as url: ...   # a database on it

The server is started as scripts/test starts its own: initdb and pg_ctl from PATH, or Debian's
/usr/lib/postgresql/*/bin; loopback, a free port, no fsync; everything removed at exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from databases import Database, DatabaseURL

from app.dev.threaded_server import free_port

INITDB = ("--auth=trust", "-E", "UTF8", "--no-sync")


def postgres_bindir() -> Path:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        raise SystemExit("error: no PostgreSQL found (initdb); install it or pass --url")
    return candidates[-1].parent


@dataclass
class PostgresServer:
    """A throwaway server's handle: `stop` (as a crash would: `-m immediate` cuts every
    connection) and `start` it again on the same port and data (tests of a database outage)."""

    bindir: Path
    workdir: Path
    port: int
    as_postgres: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        data, log = str(self.workdir / "data"), str(self.workdir / "server.log")
        subprocess.run(
            [*self.as_postgres, str(self.bindir / "pg_ctl"), "-D", data, "-l", log, *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -F"
        self._pg_ctl("-w", "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.workdir / "data" / "postmaster.pid").exists()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port, removed at exit."""
    bindir = postgres_bindir()
    as_postgres: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="streamchat-bench-pg."))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(workdir, "postgres")
        as_postgres = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, workdir, free_port(), as_postgres)
    try:
        subprocess.run(
            [
                *as_postgres,
                *(str(bindir / "initdb"), "-D", str(workdir / "data"), "-U", "postgres", *INITDB),
            ],
            check=True,
            capture_output=True,
        )
        server.start()
        yield server
    finally:
        if server.running:
            with contextlib.suppress(subprocess.CalledProcessError):
                server.stop("fast")
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server on a free loopback port, removed at exit: (admin URL, version)."""
    with postgres_server() as server:
        version = subprocess.run(
            [str(server.bindir / "postgres"), "--version"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        yield server.url, version


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, *, prefix: str, keep: bool = False) -> AsyncIterator[str]:
    """A new database `<prefix>_<pid>` (`<prefix>` if `keep`) on the server `admin_url` names,
    dropped at exit unless `keep`."""
    name = prefix if keep else f"{prefix}_{os.getpid()}"
    admin = Database(admin_url)
    await admin.connect()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield str(DatabaseURL(admin_url).replace(database=name))
        finally:
            if not keep:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.disconnect()
