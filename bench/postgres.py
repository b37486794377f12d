"""A throwaway PostgreSQL for the benchmarks that need one (bench.reports, bench.growth).

    with throwaway_postgres() as (admin_url, version): ...        # a server, removed at exit
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


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server on a free loopback port, removed at exit: (admin URL, version)."""
    bindir = postgres_bindir()
    as_postgres: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="streamchat-bench-pg."))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(workdir, "postgres")
        as_postgres = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    port = free_port()
    data = workdir / "data"
    try:
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", *INITDB],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_postgres,
                *(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "server.log")),
                *("-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {workdir} -F", "start"),
            ],
            check=True,
            capture_output=True,
        )
        version = subprocess.run(
            [str(bindir / "postgres"), "--version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", version
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                capture_output=True,
            )
        shutil.rmtree(workdir, ignore_errors=True)


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
