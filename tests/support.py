"""Test helpers: reading SSE streams, querying the test database, one app server handle."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from databases import DatabaseURL
from httpx_sse import connect_sse

from app.db import open_database
from app.settings import Settings, normalize_database_url
from app.threaded_server import ThreadedServer


@dataclass
class SSE:
    id: str
    event: str
    data: dict[str, Any]


def read_sse(client: httpx.Client, method: str, url: str, **kwargs: Any) -> list[SSE]:
    """All events of one SSE response, read to its end."""
    with connect_sse(client, method, url, **kwargs) as source:
        assert source.response.status_code == 200, source.response.read()
        return [SSE(e.id, e.event, json.loads(e.data)) for e in source.iter_sse()]


def content_of(events: list[SSE]) -> str:
    return "".join(e.data["content"] for e in events if e.event == "delta")


@dataclass
class DatabaseHandle:
    url: str

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a query, read with a connection of its own (not the app's)."""

        async def run() -> list[dict[str, Any]]:
            database = await open_database(self.url, max_size=1)
            try:
                return [dict(row._mapping) for row in await database.fetch_all(sql, params)]
            finally:
                await database.disconnect()

        return asyncio.run(run())


@contextmanager
def make_database(tmp_path: Path) -> Iterator[DatabaseHandle]:
    """A fresh database: a SQLite file, or a new PostgreSQL database if TEST_POSTGRES_URL is set."""
    admin_url = os.environ.get("TEST_POSTGRES_URL")
    if not admin_url:
        yield DatabaseHandle(normalize_database_url(f"sqlite:///{tmp_path / 'test.db'}"))
        return
    admin_url = normalize_database_url(admin_url)
    name = f"test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        database = await open_database(admin_url, max_size=1)
        try:
            await database.execute(statement)
        finally:
            await database.disconnect()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield DatabaseHandle(str(DatabaseURL(admin_url).replace(database=name)))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class AppServer:
    server: ThreadedServer
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
