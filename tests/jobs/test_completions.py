"""`/v1/chat/completions` through the official `openai` SDK against a real server: streaming
and not, JSON schema, a tool call round trip, the ledger row (and nothing else) it leaves."""

from __future__ import annotations

import json

import httpx
import openai

from app.core.money import parse_amount, to_picos
from app.dev.simulator import Behaviour
from tests.jobs.conftest import make_key, sdk
from tests.support import wait_for

HI = [{"role": "user", "content": "hello there"}]
SCHEMA = {
    "name": "company",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "employees": {"type": "integer"},
            "sector": {"type": "string", "enum": ["tech", "retail"]},
            "public": {"type": "boolean"},
        },
        "required": ["name", "employees", "sector", "public"],
        "additionalProperties": False,
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def cost_picos(usage) -> int:
    """`usage.cost` as the SDK parsed it (a JSON number), in pico-dollars."""
    return to_picos(parse_amount(usage.model_extra["cost"]))


def ledger(database, generation_id: str) -> dict:
    """The job's generation row once its cost is no longer pending."""

    def settled():
        rows = database.query(
            "SELECT * FROM generations WHERE generation_id = :id", id=generation_id
        )
        return rows[0] if rows and rows[0]["cost_source"] != "pending" else None

    return wait_for(settled, what=f"the ledger row of {generation_id}")


def reservation_of(database, message_id: str) -> dict:
    def ended():
        rows = database.query("SELECT * FROM budget_reservations WHERE id = :id", id=message_id)
        return rows[0] if rows and rows[0]["state"] != "held" else None

    return wait_for(ended, what="the job's reservation to settle")


def test_a_completion_answers_with_the_generation_id_and_its_exact_cost(
    client, key, fake, database
):
    answer = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=HI,
        temperature=0.2,
        max_tokens=50,
        stop=["\n\n"],
        user="row-17",
        extra_headers={"X-Job": "enrich:companies"},
    )
    generation = fake.generations[answer.id]
    assert answer.id.startswith("gen-sim-")
    assert "You said: hello there" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == generation.prompt_tokens
    assert answer.usage.completion_tokens == generation.completion_tokens
    assert cost_picos(answer.usage) == to_picos(generation.cost)

    sent = fake.requests[-1]["body"]
    assert sent["model"] == "openai/gpt-4o" and sent["messages"] == HI
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["user"]) == (
        0.2,
        50,
        ["\n\n"],
        "row-17",
    )
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-or-test-secret-key"

    row = ledger(database, answer.id)
    assert row["key_id"] == key["id"] and row["job"] == "enrich:companies"
    assert row["agent"] == "jobs" and row["user_id"] is None
    assert row["status"] == "complete" and row["cost_source"] == "usage"
    assert row["cost_picousd"] == to_picos(generation.cost)
    assert row["prompt_tokens"] == generation.prompt_tokens
    reserved = reservation_of(database, row["message_id"])
    assert reserved["state"] == "settled" and reserved["amount_picousd"] == row["cost_picousd"]
    assert reserved["user_id"] == f"key:{key['id']}"
    # Nothing of the messages is kept: no conversation, no message, no content row.
    assert database.query("SELECT * FROM messages") == []
    assert database.query("SELECT * FROM conversations") == []
    assert database.query("SELECT * FROM job_contents") == []


def test_a_stream_relays_every_chunk_then_usage_with_the_exact_cost(client, fake, database):
    fake.default = Behaviour(tokens=["One", " two", " three"])
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            metadata={"job": "daily digest"},
        )
    )
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1
    [generation_id] = ids
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    generation = fake.generations[generation_id]
    assert cost_picos(usage) == to_picos(generation.cost)
    assert "metadata" not in fake.requests[-1]["body"]
    row = ledger(database, generation_id)
    assert row["job"] == "daily digest" and row["status"] == "complete"
    assert row["cost_source"] == "usage" and row["cost_picousd"] == to_picos(generation.cost)
    assert row["completion_tokens"] == 3
    assert reservation_of(database, row["message_id"])["amount_picousd"] == row["cost_picousd"]


def test_a_json_schema_answer_streamed_or_not(client, fake):
    whole = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": "Describe ACME"}],
        response_format={"type": "json_schema", "json_schema": SCHEMA},
    )
    company = json.loads(whole.choices[0].message.content)
    assert set(company) == {"name", "employees", "sector", "public"}
    assert company["sector"] in ("tech", "retail") and isinstance(company["employees"], int)
    assert fake.requests[-1]["body"]["response_format"]["json_schema"] == SCHEMA

    streamed = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": "Describe ACME"}],
        response_format={"type": "json_schema", "json_schema": SCHEMA},
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert json.loads(text) == company


def test_a_tool_call_round_trip(client, fake, database):
    messages = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    first = client.chat.completions.create(
        model="openai/gpt-4o", messages=messages, tools=[WEATHER], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "days"}
    assert fake.requests[-1]["body"]["tools"] == [WEATHER]

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = client.chat.completions.create(
        model="openai/gpt-4o", messages=messages, tools=[WEATHER]
    )
    assert "sunny, 21C" in second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop"
    assert fake.requests[-1]["body"]["messages"][-1]["tool_call_id"] == call.id
    assert ledger(database, second.id)["cost_source"] == "usage"

    # Streamed, the call comes in pieces the SDK's stream puts back together.
    stream = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=messages[:1],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    pieces = [
        c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls
    ]
    assert pieces[0][0].function.name == "get_weather"
    assert json.loads("".join(p[0].function.arguments or "" for p in pieces)) == arguments


def test_models_lists_what_the_key_may_use(server, client):
    ids = [model.id for model in client.models.list()]
    assert "openai/gpt-4o" in ids and len(ids) > 2
    narrow = make_key(server, models=["openai/gpt-4o-mini"])
    with sdk(server, narrow["key"]) as limited:
        assert [model.id for model in limited.models.list()] == ["openai/gpt-4o-mini"]
        assert limited.models.retrieve("openai/gpt-4o-mini").owned_by == "openai"
        try:
            limited.models.retrieve("openai/gpt-4o")
        except openai.NotFoundError as exc:
            assert exc.code == "model_not_found"
        else:
            raise AssertionError("a model the key may not use was found")


def test_store_content_keeps_what_a_job_sent_and_got(server, database):
    keeping = make_key(server, store_content=True)
    with sdk(server, keeping["key"]) as client:
        answer = client.chat.completions.create(model="openai/gpt-4o", messages=HI)
        stream = client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
        streamed = list(stream)  # read to its end: the job is over
        streamed_id = streamed[0].id
    rows = wait_for(
        lambda: (r := database.query("SELECT * FROM job_contents")) and len(r) == 2 and r,
        what="two content rows",
    )
    assert all(json.loads(row["request"])["messages"] == HI for row in rows)
    responses = [row["response"] for row in rows]
    assert any(json.loads(r).get("id") == answer.id for r in responses if r.startswith("{"))
    assert any(streamed_id in r and "\n" in r for r in responses)
    assert {row["key_id"] for row in rows} == {keeping["id"]}


def test_the_sdk_raw_body_is_openai_shaped(server, key):
    """What a client that is not the SDK sees: OpenAI's shapes, byte for byte where they matter."""
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "openai/gpt-4o", "messages": HI, "n": 2},
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Unrecognized request argument supplied: n",
            "type": "invalid_request_error",
            "code": "unknown_parameter",
            "param": "n",
        }
    }
