"""The attempts against the upstream, alone: no server, no database. A scripted client stands
in for OpenRouter's (the same typed events, the same errors); what is checked is what the run
relies on: retries before anything was relayed and only then, a cost row per attempt, and the
turn's write begun once the request is on the wire, not before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from app.admission.turn_write import TurnWrite
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.core.states import CostSource, GenerationStatus
from app.replies.attempts import Attempts, RetryPolicy
from app.replies.draft import Draft
from app.replies.log import ReplyLog
from app.replies.writer import ReplyWriter
from app.upstream.openrouter import (
    Delta,
    Finish,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamError,
    Usage,
)

REQUEST = RunRequest(
    message_id="m",
    conversation_id="c",
    user_message_id="u",
    user_id="dev",
    agent="chat",
    model="openai/gpt-4o",
    fallback_models=(),
    temperature=0.7,
    max_tokens=100,
    messages=[{"role": "user", "content": "hi"}],
)
USAGE = Usage(
    prompt_tokens=3,
    completion_tokens=2,
    total_tokens=5,
    reasoning_tokens=0,
    cached_tokens=0,
    cost=Decimal("0.001"),
    model="openai/gpt-4o",
    generation_id="gen-1",
)


class ScriptedClient:
    """`stream_chat` as the real client behaves: `sent` resolved once the request is out,
    then each attempt's events, then its error if it has one."""

    def __init__(self, *attempts: tuple[list[Any], UpstreamError | None]) -> None:
        self.attempts = list(attempts)
        self.written_when_first_event: list[bool] = []
        self.turn: TurnWrite | None = None

    async def stream_chat(
        self, body: dict[str, Any], *, sent: asyncio.Future[None] | None = None
    ) -> AsyncIterator[Any]:
        events, error = self.attempts.pop(0)
        if sent is not None:
            sent.set_result(None)
        await asyncio.sleep(0)  # the upstream thinks: the loop runs what `sent` started
        await asyncio.sleep(0)
        assert self.turn is not None
        self.written_when_first_event.append(self.turn.begun)
        for event in events:
            yield event
        if error is not None:
            raise error


async def _attempt(client: ScriptedClient, retry: RetryPolicy) -> tuple[Draft, ReplyLog, bool]:
    """Run the attempts; the draft, the log, and whether they raised."""
    writes: list[str] = []

    async def write() -> None:
        writes.append("turn")

    turn = TurnWrite(write)
    client.turn = turn
    draft, log = Draft(), ReplyLog(ping_interval=60)
    writer = ReplyWriter(
        REQUEST,
        turn=turn,
        draft=draft,
        log=log,
        store=None,  # type: ignore[arg-type]  # no generation id, no interval: no checkpoint
        spawn=asyncio.ensure_future,
        reconcile=lambda **_: None,
        checkpoint_interval=3600,
        on_turn_lost=lambda: None,
        outage=Outage("checkpoints and final writes"),
        final_write_patience=0,
    )
    attempts = Attempts(
        REQUEST,
        client=client,  # type: ignore[arg-type]
        retry=retry,
        draft=draft,
        log=log,
        writer=writer,
    )
    failed = False
    try:
        await attempts.run()
    except UpstreamError:
        failed = True
    assert await turn.written() and writes == ["turn"]  # begun once, however it went
    return draft, log, failed


NO_WAIT = RetryPolicy(max_retries=2, base_delay=0, budget=10)
FINISH = Finish(reason="stop", native_reason="stop", model="openai/gpt-4o", generation_id=None)


def test_a_refusal_before_any_token_is_retried_and_costs_nothing() -> None:
    client = ScriptedClient(
        ([], UpstreamStatusError(503, "busy")),
        ([Delta("hel"), Delta("lo"), FINISH, USAGE], None),
    )
    draft, log, failed = asyncio.run(_attempt(client, NO_WAIT))
    assert not failed and draft.content == "hello"
    first, second = draft.records
    assert (first.status, first.error_code) == (GenerationStatus.ERROR, "upstream_503")
    assert (first.cost, first.cost_source) == (Decimal(0), CostSource.NOT_BILLED)
    assert (second.status, second.cost_source) == (GenerationStatus.COMPLETE, CostSource.USAGE)
    assert [event.event for event in log.events] == ["delta", "delta"]
    assert draft.event_lengths(log.events) == [3, 2]


def test_once_text_was_relayed_a_cut_is_not_retried() -> None:
    client = ScriptedClient(
        ([Delta("half")], UpstreamStreamError("cut", usage=USAGE)),
        ([Delta("never")], None),
    )
    draft, _, failed = asyncio.run(_attempt(client, NO_WAIT))
    assert failed and draft.content == "half" and len(draft.records) == 1
    # The failed generation's usage still counts: OpenRouter bills it.
    assert draft.records[0].cost == Decimal("0.001")


def test_the_retry_budget_ends_the_retries() -> None:
    client = ScriptedClient(
        ([], UpstreamStatusError(429, "slow down", retry_after=5)),
        ([Delta("late")], None),
    )
    _, _, failed = asyncio.run(_attempt(client, RetryPolicy(max_retries=2, base_delay=0, budget=1)))
    assert failed


def test_the_turn_write_begins_once_the_request_is_out_before_the_first_event() -> None:
    client = ScriptedClient(([Delta("x")], None))
    asyncio.run(_attempt(client, NO_WAIT))
    assert client.written_when_first_event == [True]


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        (UpstreamStatusError(429, "slow", retry_after=2.5), 1, 2.5),  # the upstream says when
        (UpstreamStatusError(400, "bad request"), 1, None),  # not retryable
        (UpstreamStatusError(503, "busy"), 3, None),  # past UPSTREAM_MAX_RETRIES
    ],
)
def test_retry_delays(error: UpstreamError, attempt: int, expected: float | None) -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.5, budget=10)
    assert policy.delay(error, attempt) == expected


def test_a_backoff_doubles_with_jitter() -> None:
    policy = RetryPolicy(max_retries=5, base_delay=0.5, budget=10)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        delay = policy.delay(UpstreamStatusError(503, "busy"), attempt)
        assert delay is not None and base / 2 <= delay <= base
