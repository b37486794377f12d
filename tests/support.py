"""Test helpers: reading SSE streams, querying the test database, polling, one app server handle.

One of each: a helper needed by two test modules lives here, not copied under another name."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from databases import Database, DatabaseURL
from httpx_sse import connect_sse

from app.dev.threaded_server import ThreadedServer, free_port
from app.settings import Settings, normalize_database_url
from app.storage.database import is_sqlite, open_database, sqlite_path
from app.storage.ledger import GenerationRecord
from app.storage.migrations import migrate
from app.storage.replies import TurnIds
from app.storage.store import Store

# Every process serving one database signs stream tokens with the same key (production requires
# STREAM_TOKEN_SECRET or AUTH_JWT_SECRET), so a stream_url one server gave out works on another.
SHARED_STREAM_SECRET = "stream-token-secret-shared-by-every-process"

T = TypeVar("T")
S = TypeVar("S", bound=Store)


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


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from sync test code, even where a loop is already running
    in this thread (Playwright's sync API keeps one): in a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class DatabaseHandle:
    url: str

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a query, read with a connection of its own (not the app's)."""
        rows = run_async(_on_own_connection(self.url, lambda db: db.fetch_all(sql, params)))
        return [dict(row._mapping) for row in rows]

    def execute(self, sql: str) -> None:
        """Run one statement (DDL too) on a connection of its own."""
        run_async(_on_own_connection(self.url, lambda db: db.execute(sql)))


async def _on_own_connection(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    database = await open_database(url, max_size=1)
    try:
        return await work(database)
    finally:
        await database.disconnect()


def _postgres_admin(statement: str) -> None:
    """One statement on TEST_POSTGRES_URL's server (CREATE and DROP DATABASE)."""
    admin_url = normalize_database_url(os.environ["TEST_POSTGRES_URL"])
    run_async(_on_own_connection(admin_url, lambda db: db.execute(statement)))


@contextmanager
def make_database(
    tmp_path: Path, *, template: DatabaseHandle | None = None
) -> Iterator[DatabaseHandle]:
    """A database of the caller's own: a SQLite file, or a new PostgreSQL one when
    TEST_POSTGRES_URL is set; empty, or a copy of `template` (from `migrated_template`), which
    is much faster than migrating it again."""
    admin_url = os.environ.get("TEST_POSTGRES_URL")
    if not admin_url:
        path = tmp_path / "test.db"
        if template is not None:
            shutil.copyfile(sqlite_path(template.url), path)
        yield DatabaseHandle(normalize_database_url(f"sqlite:///{path}"))
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    # A template nobody is connected to is copied file by file, without replaying its DDL.
    copy = f' TEMPLATE "{DatabaseURL(template.url).database}"' if template is not None else ""
    _postgres_admin(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield DatabaseHandle(
            str(DatabaseURL(normalize_database_url(admin_url)).replace(database=name))
        )
    finally:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_template(tmp_path: Path) -> Iterator[DatabaseHandle]:
    """A database with every migration applied, for `make_database(template=…)` to copy: one
    per test process (each xdist worker has its own `tmp_path` and database name)."""
    with make_database(tmp_path) as template:

        async def migrate_it() -> None:
            database = await open_database(template.url, max_size=1)
            try:
                await migrate(database, url=template.url)
            finally:
                await database.disconnect()

        run_async(migrate_it())
        yield template


@asynccontextmanager
async def migrated_store(url: str, store_class: type[S] = Store) -> AsyncIterator[S]:
    """A store of our own on the test database, outside any server; closed on exit."""
    db = await open_database(url, max_size=2)
    try:
        await migrate(db, url=url)
        store = store_class(db, sqlite_db=is_sqlite(url))
        try:
            yield store
        finally:
            await store.writer.close()
    finally:
        await db.disconnect()


def turn_rows(store: Store, ids: TurnIds) -> Coroutine[Any, Any, None]:
    """The rows a run's start writes for a chat turn: the question, and its reply `streaming`."""
    return store.replies.start_turn(
        ids=ids,
        user_id="dev",
        agent="chat",
        title="q",
        user_content="q",
        requested_model="openai/gpt-4o",
        temperature=0.7,
    )


async def save_reply(
    store: Store,
    *,
    records: list[GenerationRecord],
    conversation_id: str | None = None,
    status: str = "complete",
    finish_reason: str = "stop",
) -> TurnIds:
    """A whole turn written through the store, as a run would: a one-letter reply, after the
    last message of the branch the conversation shows."""
    parent_id = None
    if conversation_id is not None:
        conversation = await store.conversations.get(conversation_id=conversation_id, user_id="dev")
        assert conversation is not None, conversation_id
        parent_id = conversation["active_leaf_id"]
    ids = TurnIds.allocate(conversation_id, parent_id=parent_id)
    await turn_rows(store, ids)
    await store.replies.finish(
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        agent="chat",
        user_id="dev",
        status=status,
        content="a",
        event_lengths=[1],
        model="openai/gpt-4o",
        finish_reason=finish_reason,
        error_code=None,
        error_message=None,
        records=records,
    )
    return ids


def save_conversations(database: DatabaseHandle, count: int) -> None:
    """`count` one-turn chat conversations of the dev user, written through a store of our own."""

    async def save() -> None:
        async with migrated_store(database.url) as store:
            for _ in range(count):
                await save_reply(store, records=[])

    run_async(save())


@dataclass
class AppServer:
    server: ThreadedServer
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()


def wait_for(predicate, *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until `predicate()` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def reply_row(database: DatabaseHandle, message_id: str) -> dict[str, Any]:
    """The reply's `messages` row, as it is now."""
    [row] = database.query("SELECT * FROM messages WHERE id = :id", id=message_id)
    return row


def generation_rows(database: DatabaseHandle, message_id: str) -> list[dict[str, Any]]:
    """The reply's `generations` rows (one per upstream attempt), as they are now."""
    return database.query(
        "SELECT * FROM generations WHERE message_id = :id ORDER BY attempt", id=message_id
    )


def settled_generations(database: DatabaseHandle, message_id: str) -> list[dict[str, Any]]:
    """The reply's `generations` rows once it has some and none has its cost pending: a cost
    looked up from the generation record arrives after the reply ends."""

    def settled() -> list[dict[str, Any]] | None:
        rows = generation_rows(database, message_id)
        return rows if rows and all(r["cost_source"] != "pending" for r in rows) else None

    return wait_for(settled, what=f"the costs of {message_id} to settle")


def read_some(client: httpx.Client, url: str, count: int, **kwargs: Any) -> list[SSE]:
    """The first `count` events of a GET SSE stream, then hang up (a client that leaves)."""
    from httpx_sse import EventSource

    events: list[SSE] = []
    method = kwargs.pop("method", "GET")
    with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        for sse in EventSource(response).iter_sse():
            events.append(SSE(sse.id, sse.event, json.loads(sse.data)))
            if len(events) >= count:
                break
    return events


def accepted(body: dict[str, Any]) -> dict[str, Any]:
    """A two-step turn's `202` body less its stream token, which is issued anew for each answer
    (its expiry is in whole seconds: two answers a second apart differ in it)."""
    return {**body, "stream_url": body["stream_url"].split("?", 1)[0]}


def serve_env(
    *, tmp_path: Path, port: int, database_url: str, fake_url: str, **settings: str
) -> dict[str, str]:
    """The environment of `python -m app serve` in a process of its own: the test's database,
    the fake OpenRouter, `settings` (names as in the environment) over the rest."""
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PORT": str(port),
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "OPENROUTER_API_KEY": "sk-or-test-secret-key",
        "OPENROUTER_MODEL": "openai/gpt-4o",
        "OPENROUTER_BASE_URL": fake_url,
        **settings,
    }


def wait_until_serving(
    process: subprocess.Popen, url: str, *, output: Callable[[], str], timeout: float = 30
) -> None:
    """Until the server process at `url` answers /healthz; if it dies first, fail with its
    `output()`."""
    with httpx.Client(base_url=url, timeout=5) as http:

        def healthy() -> bool:
            assert process.poll() is None, output()
            try:
                return http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=timeout, what="the server process to answer")


@dataclass
class ServerProcess:
    """`python -m app serve` in a process (group) of its own; its stderr, where it logs, goes
    to a file (a pipe nobody reads would fill and stall the server)."""

    url: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def output(self) -> str:
        """What it has logged so far."""
        return self.log_path.read_text(errors="replace")

    def send(self, signal_number: int) -> None:
        """Send a signal (SIGTERM: a graceful shutdown; SIGKILL: a crash) to its process group,
        any worker processes included, unless it has exited."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal_number)

    def stop(self, signal_number: int = signal.SIGTERM, *, timeout: float = 30) -> str:
        """Signal it, wait for its exit (a kill after `timeout`), and return its log."""
        self.send(signal_number)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait()
        return self.output()


@contextmanager
def serve_process(
    *, tmp_path: Path, database_url: str, fake_url: str, **settings: str
) -> Iterator[ServerProcess]:
    """`python -m app serve` on `database_url` and the fake OpenRouter with `settings` (as in
    `serve_env`), answering /healthz when entered; stopped (SIGTERM) on exit if still running.
    The one way the tests start a server process: tests/conftest.py's `start_process` is this
    as a fixture."""
    port = free_port()
    env = serve_env(
        tmp_path=tmp_path, port=port, database_url=database_url, fake_url=fake_url, **settings
    )
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            cwd=tmp_path,  # no .env there: the process sees exactly these settings
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    process = ServerProcess(f"http://127.0.0.1:{port}", popen, log_path)
    try:
        wait_until_serving(popen, process.url, output=process.output)
        yield process
    finally:
        process.stop()
