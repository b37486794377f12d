"""Upstream faults end to end: what the client sees, what is saved, and what it cost.

Every fault after the stream began must end in exactly one `event: error` (never a `done` that
passes a cut reply off as whole), the reply saved as `error` with the content that did arrive,
and its generation row settled from the generation record (the stream never sent usage).
Retries before the first token are tested with the runs code; here only "4xx is not retried".
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from app.core.money import to_picos
from app.dev.simulator import Behaviour
from tests.support import SSE, content_of, local_client, read_sse, reply_row, settled_generations

TOKENS = ["Hel", "lo", " there", "!"]


def assert_ends_in_one_error(events: list[SSE], deltas: list[str]) -> dict[str, Any]:
    assert [e.event for e in events] == ["meta"] + ["delta"] * len(deltas) + ["error"]
    assert [e.data["content"] for e in events if e.event == "delta"] == deltas
    error = events[-1].data
    assert error["message_id"] == events[0].data["message_id"] and error["status"] == "error"
    return error


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "upstream_400"),
        (401, "upstream_401"),
        (402, "insufficient_credits"),  # not the in-flight budget: out of credits
        (403, "upstream_403"),  # no moderation reasons
    ],
)
def test_refused_before_the_stream_is_an_error_not_retried_and_not_billed(
    client, fake, database, status, code
):
    fake.default = Behaviour(status=status)  # a retry would be refused again, and counted

    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})

    error = assert_ends_in_one_error(events, [])
    assert error["code"] == code and error["retryable"] is False
    assert error["message"] == f"simulated upstream error {status}"
    assert len(fake.requests) == 1
    message_id = events[0].data["message_id"]
    reply = reply_row(database, message_id)
    assert (reply["status"], reply["content"], reply["error_code"]) == ("error", "", code)
    [row] = settled_generations(database, message_id)
    assert (row["status"], row["error_code"], row["generation_id"]) == ("error", code, None)
    assert (row["cost_picousd"], row["cost_source"]) == (0, "not_billed")
    assert fake.generation_lookups == {}


@pytest.mark.parametrize(
    ("code", "with_choices", "retryable"),
    [
        (502, True, True),
        (502, False, True),
        ("server_error", True, False),
        ("server_error", False, False),
    ],
    ids=["numeric-with-choices", "numeric-no-choices", "string-with-choices", "string-no-choices"],
)
def test_an_error_chunk_mid_stream_ends_the_reply_in_error(
    client, fake, database, code, with_choices, retryable
):
    fake.enqueue(
        Behaviour(tokens=TOKENS, error_after=2, error_code=code, error_with_choices=with_choices)
    )

    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})

    error = assert_ends_in_one_error(events, TOKENS[:2])
    assert error["code"] == f"upstream_{code}" and error["retryable"] is retryable
    assert error["message"] == "simulated mid-stream failure"
    message_id = events[0].data["message_id"]
    reply = reply_row(database, message_id)
    assert (reply["status"], reply["content"], reply["error_code"]) == (
        "error",
        "Hello",
        f"upstream_{code}",
    )
    [generation] = fake.generations.values()
    [row] = settled_generations(database, message_id)
    assert (row["status"], row["generation_id"]) == ("error", generation.id)
    # No inference charge for a generation that ended in error: the record says 0.
    assert (row["cost_source"], row["cost_picousd"]) == ("generation", 0)
    # Replayed later, the reply ends the same way it did live.
    replayed = read_sse(client, "GET", f"/api/messages/{message_id}/stream")
    assert replayed[-1].event == "error" and replayed[-1].data == error


@pytest.mark.parametrize(
    ("behaviour", "code", "retryable"),
    [
        (Behaviour(tokens=TOKENS, malformed_after=2), "upstream_protocol_error", False),
        (Behaviour(tokens=TOKENS, drop_after=2), "upstream_connection_error", True),
    ],
    ids=["malformed-chunk", "dropped-connection"],
)
def test_a_broken_stream_ends_in_error_and_its_cost_comes_from_the_generation_record(
    client, fake, database, behaviour, code, retryable
):
    fake.enqueue(behaviour)

    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})

    error = assert_ends_in_one_error(events, TOKENS[:2])
    assert (error["code"], error["retryable"]) == (code, retryable)
    message_id = events[0].data["message_id"]
    reply = reply_row(database, message_id)
    assert (reply["status"], reply["content"], reply["error_code"]) == ("error", "Hello", code)
    [row] = settled_generations(database, message_id)
    [generation] = fake.generations.values()
    assert generation.cancelled and generation.cost > 0
    assert (row["status"], row["error_code"], row["generation_id"]) == (
        "error",
        code,
        generation.id,
    )
    assert (row["cost_source"], row["cost_picousd"]) == ("generation", to_picos(generation.cost))
    assert len(fake.requests) == 1  # tokens had gone out: a retry would repeat them


def test_a_stall_past_the_read_timeout_is_a_timeout_error(start_server, fake, database):
    server = start_server(upstream_read_timeout=0.5)
    fake.enqueue(Behaviour(tokens=TOKENS, stall_after=2))
    # The fake learns that the stream was abandoned only when our side closes it; one 404 first
    # is what OpenRouter does too, and lets that land before the record is read.
    fake.generation_404s = 1

    with local_client(server.url) as http:
        events = read_sse(http, "POST", "/api/chat", json={"message": "hi"})

    # The fake's stall never ends on its own: the reply ended because our read timed out
    # (the code says so) and only then did our side hang up on it (`cancelled`, below).
    error = assert_ends_in_one_error(events, TOKENS[:2])
    assert (error["code"], error["retryable"]) == ("upstream_timeout", True)
    message_id = events[0].data["message_id"]
    reply = reply_row(database, message_id)
    assert (reply["status"], reply["content"], reply["error_code"]) == (
        "error",
        "Hello",
        "upstream_timeout",
    )
    [row] = settled_generations(database, message_id)
    [generation] = fake.generations.values()
    assert generation.cancelled and fake.generation_lookups[generation.id] == 2
    assert (row["cost_source"], row["cost_picousd"]) == ("generation", to_picos(generation.cost))


def test_a_stream_ending_after_finish_without_usage_completes_and_reconciles(
    client, fake, database
):
    fake.enqueue(Behaviour(tokens=TOKENS, no_usage=True, cost=Decimal("0.00042")))
    fake.generation_404s = 1  # still unknown right after the stream, as on OpenRouter

    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})

    assert [e.event for e in events] == ["meta"] + ["delta"] * len(TOKENS) + ["done"]
    done = events[-1].data
    assert (done["status"], done["finish_reason"], done["cost_usd"]) == ("complete", "stop", None)
    message_id = events[0].data["message_id"]
    reply = reply_row(database, message_id)
    assert (reply["status"], reply["content"], reply["error_code"]) == (
        "complete",
        "Hello there!",
        None,
    )
    [row] = settled_generations(database, message_id)
    [generation] = fake.generations.values()
    assert (row["status"], row["generation_id"]) == ("complete", generation.id)
    assert (row["cost_source"], row["cost_picousd"]) == ("generation", 420_000_000)
    assert row["completion_tokens"] == len(TOKENS)
    assert fake.generation_lookups[generation.id] == 2


# Every order in which the end of a stream can come: finish_reason, usage, an in-band error
# (alone, or carrying the usage, as recorded from a free model at its token limit) and [DONE].
ENDINGS = sorted(
    {
        *itertools.permutations(("finish", "usage", "error", "done")),
        *itertools.permutations(("finish", "error+usage", "done")),
        ("finish", "finish", "error+usage", "done"),  # the recorded one
    }
)


@pytest.mark.parametrize("ending", ENDINGS, ids=["-".join(ending) for ending in ENDINGS])
def test_every_order_of_the_streams_end_is_read_to_its_last_word(client, fake, database, ending):
    fake.enqueue(Behaviour(tokens=TOKENS, ending=ending, error_code=400, finish_reason="length"))

    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})

    # Nothing after [DONE] is read, and an error ends the stream whenever it comes.
    heard = ending[: ending.index("done")]
    failed = next((i for i, piece in enumerate(heard) if piece.startswith("error")), None)
    heard = heard if failed is None else heard[: failed + 1]
    message_id = events[0].data["message_id"]
    reply = reply_row(database, message_id)
    if failed is not None:
        error = assert_ends_in_one_error(events, TOKENS)
        assert error["code"] == "upstream_400"
        assert (reply["status"], reply["error_code"]) == ("error", "upstream_400")
    elif "finish" in heard:
        assert events[-1].event == "done" and events[-1].data["status"] == "complete"
        assert events[-1].data["finish_reason"] == "length"
        assert reply["status"] == "complete"
    else:
        error = assert_ends_in_one_error(events, TOKENS)
        assert error["code"] == "upstream_connection_error"
    assert reply["content"] == "".join(TOKENS)
    [generation] = fake.generations.values()
    [row] = settled_generations(database, message_id)
    if any("usage" in piece for piece in heard):
        assert (row["cost_source"], row["cost_picousd"]) == ("usage", to_picos(generation.cost))
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            generation.prompt_tokens,
            len(TOKENS),
        )
    else:
        assert row["cost_source"] == "generation"


def test_usage_inside_a_chunk_that_still_has_a_choice_is_counted_once(client, fake, database):
    fake.enqueue(Behaviour(tokens=TOKENS, usage_in_choice_chunk=True, cost=Decimal("0.0003")))

    events = read_sse(client, "POST", "/api/chat", json={"message": "hi"})

    assert events[-1].event == "done" and events[-1].data["cost_usd"] == 0.0003
    [row] = settled_generations(database, events[0].data["message_id"])
    assert (row["cost_source"], row["cost_picousd"]) == ("usage", 300_000_000)
    assert row["completion_tokens"] == len(TOKENS)
    assert fake.generation_lookups == {}


def test_reasoning_is_never_relayed_or_saved_as_content(client, fake, database):
    fake.enqueue(Behaviour(tokens=["Yes", "."], reasoning=["Let me think", " it over"]))

    events = read_sse(client, "POST", "/api/chat", json={"message": "Is it?"})

    assert [e.event for e in events] == ["meta", "reasoning", "reasoning", "delta", "delta", "done"]
    assert content_of(events) == "Yes."
    message_id = events[0].data["message_id"]
    row = reply_row(database, message_id)
    assert (row["content"], row["reasoning"]) == ("Yes.", "Let me think it over")
    [row] = settled_generations(database, message_id)
    assert row["reasoning_tokens"] == 2


def test_a_turn_the_database_cannot_save_ends_in_storage_error(fake, database, client):
    # The turn's rows are written while the upstream request starts; when they cannot be, the
    # caller gets a 503 that says so before any event (the reply is stopped at once), rather
    # than a stream of a reply nobody could find again.
    database.execute("ALTER TABLE messages RENAME TO messages_elsewhere")
    fake.default = Behaviour(tokens=["slow"] * 40, delay=0.05)
    response = client.post("/api/chat", json={"message": "hello"})
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": "storage_error",
        "message": "the conversation could not be saved",
    }

    # The two-step form hands out ids only once they can be found.
    response = client.post("/api/chat/messages", json={"message": "hello"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_error"
