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
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from databases import Database, DatabaseURL
from httpx_sse import connect_sse

from app.dev.threaded_server import ThreadedServer, free_port
from app.settings import Settings, normalize_database_url
from app.storage.database import is_sqlite, open_database
from app.storage.ledger import GenerationRecord
from app.storage.migrations import migrate
from app.storage.replies import TurnIds
from app.storage.store import Store
from app.upstream.pool import tls_context

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


def chat_turn(
    client: httpx.Client, message: str = "Hi", conversation_id: str | None = None
) -> dict[str, Any]:
    """A one-step chat turn (`POST /api/chat`) read to its end, in a new conversation of the
    client's user or in `conversation_id`: its `meta` event's data (`conversation_id`,
    `user_message_id`, `message_id`, the reply's)."""
    body = {"message": message, **({"conversation_id": conversation_id} if conversation_id else {})}
    events = read_sse(client, "POST", "/api/chat", json=body)
    assert events[-1].event == "done", events[-1]
    return events[0].data


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


@contextmanager
def make_database(tmp_path: Path) -> Iterator[DatabaseHandle]:
    """An empty database of the caller's own: a SQLite file, or a new PostgreSQL one when
    TEST_POSTGRES_URL is set."""
    if not os.environ.get("TEST_POSTGRES_URL"):
        yield DatabaseHandle(normalize_database_url(f"sqlite:///{tmp_path / 'test.db'}"))
        return
    name = _create_postgres_database()
    try:
        yield _postgres_database(name)
    finally:
        _drop_postgres_database(name)


def _postgres_admin(statement: str) -> None:
    """One statement on TEST_POSTGRES_URL's server (CREATE and DROP DATABASE)."""
    admin_url = normalize_database_url(os.environ["TEST_POSTGRES_URL"])
    run_async(_on_own_connection(admin_url, lambda db: db.execute(statement)))


def _create_postgres_database() -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    _postgres_admin(f'CREATE DATABASE "{name}"')
    return name


def _drop_postgres_database(name: str) -> None:
    _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _postgres_database(name: str) -> DatabaseHandle:
    admin_url = normalize_database_url(os.environ["TEST_POSTGRES_URL"])
    return DatabaseHandle(str(DatabaseURL(admin_url).replace(database=name)))


async def _migrate(url: str) -> None:
    database = await open_database(url, max_size=1)
    try:
        await migrate(database, url=url)
    finally:
        await database.disconnect()


# The shape of a PostgreSQL database, as far as a test could change it: tables and columns,
# indexes, constraints, triggers, functions, and the migrations recorded as applied.
_SHAPE = """
SELECT md5(string_agg(line, ';' ORDER BY line)) FROM (
    SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable,
                  column_default) AS line
      FROM information_schema.columns WHERE table_schema = current_schema()
    UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = current_schema()
    UNION ALL SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
      FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'function ' || proname FROM pg_proc
      WHERE pronamespace = current_schema()::regnamespace
    UNION ALL SELECT format('migration %s %s', version, name) FROM schema_migrations
) AS shape
"""


class MigratedDatabases:
    """Databases with every migration applied, for one test process's tests in turn (each
    xdist worker has its own): the `database` fixture's.

    On SQLite each test gets a copy of a file migrated once. On PostgreSQL, where a CREATE
    DATABASE costs about a second of the server's time and migrating half as much again, one
    database is migrated once and handed from test to test, emptied in between (one TRUNCATE);
    after a test that changed its shape (DDL, a row of `schema_migrations`) it is dropped, and
    the next test gets a new one."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._postgres = bool(os.environ.get("TEST_POSTGRES_URL"))
        self._sqlite_template: Path | None = None
        self._reused: DatabaseHandle | None = None
        self._shape: str | None = None  # the migrated shape, read once

    @contextmanager
    def database(self, tmp_path: Path) -> Iterator[DatabaseHandle]:
        if not self._postgres:
            path = tmp_path / "test.db"
            shutil.copyfile(self._sqlite_file(), path)
            yield DatabaseHandle(normalize_database_url(f"sqlite:///{path}"))
            return
        if self._reused is None:
            handle = _postgres_database(_create_postgres_database())
            run_async(_migrate(handle.url))
            self._reused = handle
            self._shape = self._shape or run_async(self._shape_of(handle.url))
        try:
            yield self._reused
        finally:
            if not run_async(self._emptied(self._reused.url)):
                self._drop()

    def close(self) -> None:
        if self._reused is not None:
            self._drop()

    def _sqlite_file(self) -> Path:
        if self._sqlite_template is None:
            path = self._tmp_path / "migrated.db"
            run_async(_migrate(normalize_database_url(f"sqlite:///{path}")))
            # The last connection's close folds the write-ahead log into the file: one file.
            assert not path.with_name(f"{path.name}-wal").exists()
            self._sqlite_template = path
        return self._sqlite_template

    def _drop(self) -> None:
        assert self._reused is not None
        _drop_postgres_database(DatabaseURL(self._reused.url).database)
        self._reused = None

    @staticmethod
    async def _shape_of(url: str) -> str:
        return await _on_own_connection(url, lambda db: db.fetch_val(_SHAPE))

    async def _emptied(self, url: str) -> bool:
        """Empty every table but `schema_migrations`, if the shape is still the migrated one
        (False if not: the database must go). Whatever the test left connected is cut off
        first, so nothing holds a lock the TRUNCATE would wait on."""

        async def empty(db: Database) -> bool:
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            try:
                if await db.fetch_val(_SHAPE) != self._shape:
                    return False
            except Exception:  # a table the query reads was dropped or renamed
                return False
            tables = await db.fetch_all(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename <> 'schema_migrations'"
            )
            names = ", ".join(f'"{row[0]}"' for row in tables)
            await db.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
            return True

        return await _on_own_connection(url, empty)


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


def local_client(url: str, *, timeout: float = 10, **kwargs: Any) -> httpx.Client:
    """A client of a server under test at `url`. It shares the process's TLS context (the
    servers speak plain HTTP on loopback): building one per client parses the CA bundle, about
    a third of a small test's CPU."""
    return httpx.Client(base_url=url, timeout=timeout, verify=tls_context(), **kwargs)


def run_group(
    args: list[str], *, timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(args, capture_output=True, text=True)` in a process group of its own,
    all of which is killed if it outlives `timeout`. A benchmark starts servers of its own:
    `subprocess.run` would kill only the benchmark, leaving them running to the end of the
    suite (and holding its output pipe open)."""
    with subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"{' '.join(args[:4])} ran past {timeout} s: {stderr[-3000:]}"
            ) from None
        finally:
            # Whatever it left behind (a server its finally block never reached) goes too.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


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

    def client(self, **kwargs: Any) -> httpx.Client:
        return local_client(self.url, **{"timeout": 30, **kwargs})

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
