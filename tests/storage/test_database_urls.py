"""DATABASE_URL in the forms users paste, and the pool settings reaching the driver."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from databases import DatabaseURL
from pydantic import ValidationError

from app.settings import Settings, normalize_database_url
from app.storage.database import (
    DatabaseUnreachable,
    connect_database,
    is_sqlite,
    open_database,
)


@pytest.mark.parametrize(
    ("pasted", "normalized"),
    [
        (
            "sqlite:///./data/app.storage.database",
            "sqlite+aiosqlite:///./data/app.storage.database",
        ),
        (
            "sqlite+aiosqlite:////abs/app.storage.database",
            "sqlite+aiosqlite:////abs/app.storage.database",
        ),
        ("postgres://u:p@db.example:5432/d1", "postgresql://u:p@db.example:5432/d1"),
        ("postgresql+asyncpg://u:p@h/d", "postgresql://u:p@h/d"),
        ("postgresql+psycopg2://u:p@h/d", "postgresql://u:p@h/d"),
        (
            " postgres://u:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d8?sslmode=require\n",
            "postgresql://u:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d8?ssl=require",
        ),
        (
            "postgresql://u@h/d?application_name=web&sslmode=verify-full",
            "postgresql://u@h/d?application_name=web&ssl=verify-full",
        ),
    ],
)
def test_pasted_urls_become_what_our_drivers_take(pasted, normalized):
    assert normalize_database_url(pasted) == normalized


def test_a_heroku_url_reaches_asyncpg_with_every_part_and_ssl():
    url = DatabaseURL(
        normalize_database_url("postgres://usr:p%40ss@ec2.example.com:5433/dbname?sslmode=require")
    )
    assert (url.hostname, url.port, url.username, url.password, url.database) == (
        "ec2.example.com",
        5433,
        "usr",
        "p@ss",
        "dbname",
    )
    assert url.options == {"ssl": "require"}


@pytest.mark.parametrize("url", ["mysql://u:p@h/d", "postgresq://h/d", ""])
def test_other_schemes_are_refused_with_the_setting_named(url):
    with pytest.raises(ValidationError, match="DATABASE_URL must start with"):
        Settings(_env_file=None, database_url=url)


def test_pool_bounds_are_checked():
    with pytest.raises(ValidationError, match="DATABASE_POOL_MIN must not exceed"):
        Settings(_env_file=None, database_pool_min=6, database_pool_max=5)


def test_migrate_command_reports_a_bad_url_in_one_line_without_the_password(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "mysql://u:hunter2@h/d"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "DATABASE_URL" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


postgres_only = pytest.mark.skipif(
    "TEST_POSTGRES_URL" not in os.environ,
    reason="pool and SSL options only apply to PostgreSQL (set TEST_POSTGRES_URL)",
)


@postgres_only
def test_sslmode_from_the_url_reaches_the_connection(database):
    """`require` gets an encrypted connection, or none at all from a server without SSL."""
    assert not is_sqlite(database.url)
    server_ssl = database.query("SHOW ssl")[0]["ssl"] == "on"
    url = normalize_database_url(f"{database.url}?sslmode=require")

    async def encrypted() -> bool:
        db = await open_database(url, max_size=1)
        try:
            return await db.fetch_val("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            await db.disconnect()

    if server_ssl:
        assert asyncio.run(encrypted()) is True
    else:
        with pytest.raises(DatabaseUnreachable, match="SSL"):
            asyncio.run(encrypted())


@postgres_only
def test_pool_size_and_command_timeout_reach_asyncpg(make_settings):
    settings = make_settings(database_pool_min=1, database_pool_max=2, database_command_timeout=0.5)

    async def run() -> tuple[set[int], bool]:
        db = await connect_database(settings)
        try:
            pids = await asyncio.gather(
                *(db.fetch_val("SELECT pg_backend_pid() FROM pg_sleep(0.05)") for _ in range(8))
            )
            try:
                await db.fetch_val("SELECT pg_sleep(5)")
            except TimeoutError:
                timed_out = True
            else:
                timed_out = False
            return set(pids), timed_out
        finally:
            await db.disconnect()

    pids, timed_out = asyncio.run(run())
    assert 1 <= len(pids) <= 2
    assert timed_out
