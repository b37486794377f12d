"""Shutdown and crashes, with the server in its own process: SIGTERM drains live replies,
SIGKILL loses at most a checkpoint interval, and the next start-up recovers the rest."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import signal
import subprocess
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import pytest
from databases import Database
from httpx_sse import EventSource

from app.admission.turn_write import TurnWrite
from app.agents.config import load_agents
from app.agents.overrides import Agents
from app.billing.budgets import SpendControl, utc_now
from app.core.run_request import RunRequest
from app.dev.simulator import Behaviour, Generation
from app.replies.registry import Runs
from app.replies.replay import StoredReply
from app.replies.runs import Run
from app.settings import Settings
from app.storage.ledger import GenerationRecord, Ledger
from app.storage.replies import Replies, TurnIds
from app.storage.store import Store
from app.storage.tables import new_id, now
from app.upstream.models_catalog import ModelCatalog
from app.upstream.openrouter import OpenRouterClient
from tests.support import (
    SHARED_STREAM_SECRET,
    SSE,
    ServerProcess,
    content_of,
    generation_rows,
    local_client,
    migrated_store,
    reply_row,
    save_reply,
    settled_generations,
    turn_rows,
    wait_for,
)

TOKENS = [f" w{i}" for i in range(400)]


@pytest.fixture
def server_process(start_process) -> Callable[..., ServerProcess]:
    """The suite's `start_process`, checkpointing often, signing stream tokens as the
    `start_server(stream_token_secret=SHARED_STREAM_SECRET)` apps here do."""
    return functools.partial(
        start_process,
        CHECKPOINT_INTERVAL="0.2",
        GENERATION_LOOKUP_TIMEOUT="3",
        STREAM_TOKEN_SECRET=SHARED_STREAM_SECRET,
    )


class Reader(threading.Thread):
    """Reads one SSE stream to its end in the background, keeping every event."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.events: list[SSE] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=30) as http,
                http.stream("POST", self.url, json=self.body) as response,
            ):
                for sse in EventSource(response).iter_sse():
                    self.events.append(SSE(sse.id, sse.event, json.loads(sse.data)))
        except Exception as exc:  # the test asserts on it
            self.error = exc

    def deltas(self) -> int:
        return sum(e.event == "delta" for e in self.events)


@asynccontextmanager
async def runs_in_process(
    settings: Settings, store_class: type[Store] = Store
) -> AsyncIterator[Runs]:
    """Our runs, store and OpenRouter client in the test's own event loop, without a server:
    for the cases that need to step in between two of their moves."""
    async with (
        migrated_store(settings.database_url, store_class) as store,
        httpx.AsyncClient() as http,
    ):
        client = OpenRouterClient(
            http, base_url=settings.base_url, api_key=None, app_url="x", app_title="t"
        )
        agents = Agents(load_agents(settings.agents_file))
        models = ModelCatalog(client=client, store=store, ttl=60, recommended=())
        spend = SpendControl(settings=settings, store=store, models=models, clock=utc_now)
        yield Runs(store=store, client=client, settings=settings, agents=agents, spend=spend)


def start_chat_run(runs: Runs) -> Run:
    """A one-message chat turn in a new conversation, as POST /api/chat starts it."""
    ids = TurnIds.allocate(None)
    request = RunRequest(
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        user_id="dev",
        agent="chat",
        model="openai/gpt-4o",
        fallback_models=(),
        temperature=0.7,
        max_tokens=100,
        messages=[{"role": "user", "content": "q"}],
    )
    return runs.start(request, turn=TurnWrite(lambda: turn_rows(runs.store, ids)))


def test_sigterm_lets_short_replies_finish_and_saves_long_ones_as_interrupted(
    server_process, start_server, fake, database
):
    # Queue order = request order: the short reply is started first.
    fake.enqueue(Behaviour(tokens=TOKENS[:12], delay=0.1), Behaviour(tokens=TOKENS, delay=0.05))
    server = server_process(SHUTDOWN_GRACE="2")
    short = Reader(f"{server.url}/api/chat", {"message": "short"})
    short.start()
    wait_for(lambda: short.deltas() >= 1, what="the short reply to start")
    long = Reader(f"{server.url}/api/chat", {"message": "long"})
    long.start()
    wait_for(lambda: long.deltas() >= 2, what="the long reply to start")

    server.popen.send_signal(signal.SIGTERM)
    # uvicorn exits by re-raising the signal once its graceful shutdown is complete
    try:
        exit_code = server.popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        # and show what it was doing instead of exiting
        raise AssertionError(
            "no exit 20 s after SIGTERM:\n" + server.stop(signal.SIGKILL)
        ) from None
    assert exit_code == -signal.SIGTERM
    log = server.output()
    assert "Application shutdown complete" in log, log
    short.join(5)
    long.join(5)

    assert short.error is None and long.error is None
    assert short.events[-1].event == "done" and short.events[-1].data["status"] == "complete"
    assert long.events[-1].event == "error"
    assert long.events[-1].data["code"] == "interrupted" and long.events[-1].data["retryable"]

    short_id, long_id = short.events[0].data["message_id"], long.events[0].data["message_id"]
    assert reply_row(database, short_id)["status"] == "complete"
    assert reply_row(database, short_id)["content"] == "".join(TOKENS[:12])
    interrupted = reply_row(database, long_id)
    assert interrupted["status"] == "interrupted"
    assert interrupted["content"] == content_of(long.events)
    assert 0 < len(interrupted["content"]) < len("".join(TOKENS))

    # A cost lookup cut short by the shutdown is finished by the next start-up.
    start_server()
    [row] = settled_generations(database, long_id)
    assert row["cost_source"] == "generation"
    assert row["cost_picousd"] == int(fake.generations[row["generation_id"]].cost * 10**12)
    [row] = settled_generations(database, short_id)
    assert row["cost_source"] == "usage"


def test_a_crash_before_the_first_checkpoint_still_recovers_the_cost(
    server_process, start_server, fake, database
):
    fake.enqueue(Behaviour(tokens=TOKENS, delay=0.05))
    server = server_process(CHECKPOINT_INTERVAL="60")  # no content checkpoint during this test
    started = httpx.post(f"{server.url}/api/chat/messages", json={"message": "long"}).json()
    message_id = started["message_id"]
    # The generation's id is saved as soon as OpenRouter answers, not at the first checkpoint.
    wait_for(lambda: generation_rows(database, message_id), what="the generation row")

    server.stop(signal.SIGKILL)
    assert reply_row(database, message_id)["content"] == ""

    start_server(stale_reply_after=0.5)
    [generation] = settled_generations(database, message_id)
    assert generation["cost_source"] == "generation" and generation["status"] == "cancelled"
    billed = fake.generations[generation["generation_id"]].cost
    assert billed > 0 and generation["cost_picousd"] == int(billed * 10**12)


def test_a_killed_server_loses_at_most_a_checkpoint_and_recovers_at_start_up(
    server_process, start_server, fake, database
):
    fake.enqueue(Behaviour(tokens=TOKENS, delay=0.05))
    server = server_process()
    started = httpx.post(f"{server.url}/api/chat/messages", json={"message": "long"}).json()
    message_id = started["message_id"]
    # Wait for a checkpoint with content and for the generation row (saved when the stream opened).
    wait_for(lambda: len(reply_row(database, message_id)["content"]) > 10, what="a checkpoint")
    wait_for(lambda: generation_rows(database, message_id), what="the generation row")

    server.stop(signal.SIGKILL)
    checkpointed = reply_row(database, message_id)
    assert checkpointed["status"] == "streaming"

    restarted = start_server(stale_reply_after=0.5, stream_token_secret=SHARED_STREAM_SECRET)
    wait_for(lambda: reply_row(database, message_id)["status"] != "streaming", what="the sweep")
    row = reply_row(database, message_id)
    assert row["status"] == "interrupted" and row["content"] == checkpointed["content"]
    assert "".join(TOKENS).startswith(row["content"])
    [generation] = settled_generations(database, message_id)
    assert generation["cost_source"] == "generation" and generation["status"] == "cancelled"

    with (
        local_client(restarted.url) as http,
        http.stream("GET", started["stream_url"]) as response,
    ):
        events = [SSE(e.id, e.event, json.loads(e.data)) for e in EventSource(response).iter_sse()]
    assert events[0].event == "meta" and content_of(events) == row["content"]
    assert events[-1].event == "error" and events[-1].data["code"] == "interrupted"


def test_another_process_follows_a_live_reply_and_leaves_it_alone(
    server_process, start_server, fake, database
):
    """Two dynos on one database: the second serves the first's live reply from checkpoints,
    and its orphan sweep does not take a reply that is being heartbeaten for a dead one's."""
    fake.enqueue(Behaviour(tokens=TOKENS[:60], delay=0.05))  # 3 s, longer than STALE_REPLY_AFTER
    first = server_process()
    second = start_server(
        stale_reply_after=1.0, checkpoint_interval=0.1, stream_token_secret=SHARED_STREAM_SECRET
    )
    started = httpx.post(f"{first.url}/api/chat/messages", json={"message": "hi"}).json()

    with (
        local_client(second.url) as http,
        http.stream("GET", started["stream_url"]) as response,
    ):
        events = [SSE(e.id, e.event, json.loads(e.data)) for e in EventSource(response).iter_sse()]
    assert events[-1].event == "done" and events[-1].data["status"] == "complete"
    assert content_of(events) == "".join(TOKENS[:60])
    assert [e.id for e in events] == [str(i) for i in range(1, 63)]
    assert reply_row(database, started["message_id"])["status"] == "complete"


def test_a_reply_followed_through_the_database_is_pinged_while_nothing_changes(database):
    # Another process's reply, followed from its checkpoints: silent proxies must not close
    # the stream between two checkpoints of a slow upstream.
    async def scenario() -> list[list[str]]:
        async with migrated_store(database.url) as store:
            ids = TurnIds.allocate(None)
            await turn_rows(store, ids)
            stored = await StoredReply.load(
                store,
                message_id=ids.message_id,
                user_id="dev",
                poll_interval=0.02,
                ping_interval=0.1,
            )
            assert stored is not None
            batches = stored.follow(0)
            seen = [await anext(batches), await anext(batches), await anext(batches)]
            await store.replies.checkpoint(
                message_id=ids.message_id,
                conversation_id=ids.conversation_id,
                agent="chat",
                user_id="dev",
                content="hello",
                event_lengths=[5],
                records=[],
            )
            seen.append(await anext(batches))
            await batches.aclose()
        return [[event.event for event in batch] for batch in seen]

    assert asyncio.run(scenario()) == [["meta"], [], [], ["delta"]]


def test_shutdown_cancels_a_cost_lookup_but_not_the_write_it_started(make_settings, fake, database):
    # A lookup that got its answer just as shutdown began: its write must land whole, and
    # shutdown must wait for it (a write cut halfway hung a PostgreSQL shutdown in CI).
    generation_id = "gen-ready"
    fake.generations[generation_id] = Generation(
        id=generation_id,
        model="openai/gpt-4o",
        prompt_tokens=3,
        cost=Decimal("0.00042"),
        ended=True,
    )

    class LedgerShutDownMidWrite(Ledger):
        runs: Runs
        shutdown: asyncio.Future[asyncio.Task[None]]

        async def settle_cost(self, **values) -> None:
            self.shutdown.set_result(asyncio.create_task(self.runs.shutdown()))
            # Until shutdown has cancelled the lookup: if this write ran in the lookup's own
            # task, the cancellation would land here and the write would never happen.
            await asyncio.wait(set(self.runs.recovery._lookups))
            await super().settle_cost(**values)

    class StoreShutDownMidWrite(Store):
        def __init__(self, database: Database, **options) -> None:
            super().__init__(database, **options)
            self.ledger = LedgerShutDownMidWrite(database=database, writer=self.writer)

    async def scenario() -> list[dict]:
        async with runs_in_process(make_settings(), StoreShutDownMidWrite) as runs:
            store, ledger = runs.store, runs.store.ledger
            ledger.runs, ledger.shutdown = runs, asyncio.get_running_loop().create_future()
            record = GenerationRecord(
                id=new_id(),
                attempt=1,
                requested_model="openai/gpt-4o",
                started_at=now(),
                generation_id=generation_id,
                status="cancelled",
                ended_at=now(),
            )
            await save_reply(store, records=[record], status="stopped", finish_reason="stopped")
            runs.recovery.reconcile(record_id=record.id, generation_id=generation_id)
            await asyncio.wait_for(await ledger.shutdown, 10)
        return database.query("SELECT * FROM generations WHERE id = :id", id=record.id)

    [row] = asyncio.run(scenario())
    assert (row["cost_source"], row["cost_picousd"]) == ("generation", 420_000_000)


def test_a_retrys_generation_id_is_saved_even_while_the_first_one_is_being_written(
    make_settings, fake, database
):
    # The first attempt fails in-band after OpenRouter named its generation; the retry names a
    # second one while the first id's checkpoint is still being written. A crash from then on
    # must still find both generations, so the second id may not wait for a content checkpoint
    # (this retry never sends content: it stalls).
    fake.enqueue(Behaviour(error_after=0, error_code=502), Behaviour(tokens=["x"], stall_after=0))

    class RepliesWithSlowFirstCheckpoint(Replies):
        gate: asyncio.Event
        holding: asyncio.Event

        async def checkpoint(self, **values) -> None:
            if not self.holding.is_set():
                self.holding.set()
                await self.gate.wait()
            await super().checkpoint(**values)

    class StoreWithSlowFirstCheckpoint(Store):
        def __init__(self, database: Database, **options) -> None:
            super().__init__(database, **options)
            self.replies = RepliesWithSlowFirstCheckpoint(
                database=database, writer=self.writer, ledger=self.ledger
            )

    async def scenario() -> tuple[list[str | None], list[dict]]:
        settings = make_settings(checkpoint_interval=60)
        async with runs_in_process(settings, StoreWithSlowFirstCheckpoint) as runs:
            replies = runs.store.replies
            replies.gate, replies.holding = asyncio.Event(), asyncio.Event()
            run = start_chat_run(runs)

            def retry_named() -> bool:
                return len(run.records) == 2 and run.records[1].generation_id is not None

            def both_saved() -> list[dict]:
                saved = generation_rows(database, run.message_id)
                return saved if len(saved) == 2 else []

            await asyncio.wait_for(replies.holding.wait(), 10)
            await asyncio.to_thread(wait_for, retry_named, what="the retry's generation id")
            replies.gate.set()
            # While the retry still streams: what a crash from now on would leave behind.
            saved = await asyncio.to_thread(wait_for, both_saved, what="both generation rows")
            named = [record.generation_id for record in run.records]
            run.cancel("stopped")
            await run.wait()
            await runs.shutdown()
        return named, saved

    named, saved = asyncio.run(scenario())
    assert len(named) == 2 and None not in named
    assert sorted(row["generation_id"] for row in saved) == sorted(named)


def test_a_finished_run_is_freed_at_once_not_by_the_cyclic_collector(make_settings, fake):
    # Under load, a run caught in a reference cycle lives on until a full collection: a
    # self-arming ping closure once held ~300 dead runs at 50 streams, +8 MB of peak memory.
    fake.enqueue(Behaviour(tokens=["a", "b"]))

    async def scenario() -> tuple[list[str], bool]:
        async with runs_in_process(make_settings()) as runs:
            run = start_chat_run(runs)
            names = [e.event async for batch in run.follow(0) for e in batch]
            await runs.shutdown()  # its final write, done in the background
            freed = weakref.ref(run)
            del run
            return names, freed() is None

    gc.disable()
    try:
        names, freed = asyncio.run(scenario())
    finally:
        gc.enable()
    assert names == ["meta", "delta", "delta", "done"]
    assert freed
