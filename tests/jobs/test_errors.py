"""Each refusal of `/v1/chat/completions` as the official SDK raises it: OpenAI's error shape
and the status its exception classes map, with nothing sent upstream for our own refusals."""

from __future__ import annotations

import openai
import pytest

from app.dev.simulator import Behaviour, error_behaviour
from tests.jobs.conftest import make_key, sdk
from tests.support import wait_for

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"extra_body": {"n": 2}}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"max_tokens": 10, "max_completion_tokens": 10}, "max_completion_tokens"),
        ({"model": "gpt 4"}, "model"),
    ],
)
def test_a_malformed_request_is_a_bad_request(client, fake, kwargs, param):
    arguments = {"model": "openai/gpt-4o", "messages": HI, **kwargs}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**arguments)
    assert refused.value.status_code == 400
    assert refused.value.param == param
    assert refused.value.type == "invalid_request_error"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"metadata": {"job": "x" * 101}}, "metadata.job"),
        ({"extra_headers": {"X-Job": "tab\there"}}, "X-Job"),
    ],
)
def test_a_value_out_of_range_is_unprocessable(client, fake, kwargs, param):
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="openai/gpt-4o", messages=HI, **kwargs)
    assert refused.value.param == param
    assert fake.requests == []


def test_a_model_the_key_may_not_use_is_forbidden_and_an_unknown_one_not_found(server, fake):
    narrow = make_key(server, models=["openai/gpt-4o-mini"])
    with sdk(server, narrow["key"]) as client:
        with pytest.raises(openai.PermissionDeniedError) as forbidden:
            client.chat.completions.create(model="openai/gpt-4o", messages=HI)
        assert forbidden.value.code == "model_not_allowed"
    anything = make_key(server)
    with sdk(server, anything["key"]) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="nobody/no-such-model", messages=HI)
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert fake.requests == []


def test_a_budget_a_call_cannot_fit_is_refused_with_402(server, fake):
    tight = make_key(server, daily_usd=0.000001)
    with sdk(server, tight["key"]) as client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="openai/gpt-4o", messages=HI, max_tokens=100)
    assert refused.value.status_code == 402
    assert refused.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota"
    assert fake.requests == []


def test_an_unknown_price_under_a_budget_is_a_conflict(jobs_server, fake):
    for model in fake.models_payload["data"]:
        if model.get("id") == "openai/gpt-4o":
            model["pricing"] = {}
    server = jobs_server()
    budgeted = make_key(server, daily_usd=5)
    with sdk(server, budgeted["key"]) as client:
        with pytest.raises(openai.ConflictError) as refused:
            client.chat.completions.create(model="openai/gpt-4o", messages=HI, max_tokens=10)
        assert refused.value.code == "price_unknown"
    unbudgeted = make_key(server)
    with sdk(server, unbudgeted["key"]) as client:
        assert client.chat.completions.create(model="openai/gpt-4o", messages=HI).choices


def test_the_keys_rate_is_a_rate_limit_with_retry_after(server, fake):
    slow = make_key(server, rpm=1)
    with sdk(server, slow["key"]) as client:
        client.chat.completions.create(model="openai/gpt-4o", messages=HI)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="openai/gpt-4o", messages=HI)
    assert refused.value.code == "rate_limited"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("kind", "exception", "status"),
    [
        ("moderation", openai.PermissionDeniedError, 403),
        ("no_provider", openai.InternalServerError, 503),
        ("provider_down", openai.InternalServerError, 502),
        ("timeout", openai.InternalServerError, 504),
        ("insufficient_credits", openai.InternalServerError, 502),
    ],
)
def test_openrouters_refusals_reach_the_sdk_as_their_class(
    client, fake, database, kind, exception, status
):
    for stream in (False, True):
        fake.enqueue(error_behaviour(kind))
        with pytest.raises(exception) as refused:
            answer = client.chat.completions.create(
                model="openai/gpt-4o", messages=HI, stream=stream
            )
            list(answer) if stream else None
        assert refused.value.status_code == status
        assert "SECRET FLAGGED TEXT" not in str(refused.value.body)
    # A stream's row is written as its response ends: read once both are over.
    rows = wait_for(
        lambda: (
            (r := database.query("SELECT status, cost_source, cost_picousd FROM generations"))
            and len(r) == 2
            and all(row["status"] != "streaming" for row in r)
            and r
        ),
        what="both jobs' rows",
    )
    assert rows == [{"status": "error", "cost_source": "not_billed", "cost_picousd": 0}] * 2


def test_openrouters_rate_limit_keeps_its_retry_after(client, fake):
    fake.enqueue(Behaviour(status=429, retry_after="7"))
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="openai/gpt-4o", messages=HI)
    assert refused.value.response.headers["retry-after"] == "7"


def test_an_error_mid_stream_is_raised_by_the_sdk_not_a_short_answer(client, fake, database):
    fake.enqueue(Behaviour(tokens=["a", "b", "c", "d"], error_after=2))
    stream = client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
    seen = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "ab"
    [row] = wait_for(
        lambda: (
            (r := database.query("SELECT status FROM generations"))
            and r[0]["status"] != "streaming"
            and r
        ),
        what="the job's row",
    )
    assert row["status"] == "error"


def test_a_stream_cut_before_its_end_is_an_error_to_the_sdk(client, fake):
    fake.enqueue(Behaviour(tokens=["a", "b", "c"], drop_after=1))
    stream = client.chat.completions.create(model="openai/gpt-4o", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        list(stream)
