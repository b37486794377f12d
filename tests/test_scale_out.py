"""Two real server processes (`python -m app serve`, as on two dynos) on one database, with and
without Redis: every process serves every reply, Stop and agent changes hold across processes,
and neither a SIGTERM of the owner nor the loss of Redis loses an event.

Replies pause mid-stream on a gate (`Behaviour.pause_after`/`resume`) while the test acts, so
nothing here waits on timing. CHECKPOINT_INTERVAL is long where a test proves an event came
through Redis: the database would not have it for a minute.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.dev.simulator import Behaviour
from app.dev.threaded_server import free_port
from app.replies.redis_log import stream_key
from tests.http.identity_support import AUDIENCE, ISSUER, SECRET, token
from tests.support import (
    SHARED_STREAM_SECRET,
    SSE,
    ServerProcess,
    content_of,
    read_some,
    read_sse,
    reply_row,
    wait_for,
)

ADMIN = "scale-out-admin-token-0123456789"
TOKENS = [f"t{i} " for i in range(8)]


@pytest.fixture
def start_process(start_process) -> Callable[..., ServerProcess]:
    """The suite's `start_process`, with an admin token and 10 s to drain on SIGTERM."""
    return functools.partial(start_process, ADMIN_TOKEN=ADMIN, SHUTDOWN_GRACE="10")


@contextmanager
def own_redis(tmp_path: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server of this test's own (it gets killed), like scripts/test's: loopback, a
    free port (or `port`, to bring it back), no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing in CI")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with Redis.from_url(url) as probe:
            wait_for(lambda: _pong(probe), what="redis-server to answer")
        yield url, server
    finally:
        server.kill()
        server.wait()


def _pong(redis: Redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisConnectionError:
        return False


def start_paused_reply(
    fake, owner: ServerProcess, *, pause_after: int = 3
) -> tuple[str, threading.Event]:
    """A chat turn on `owner` whose upstream pauses after `pause_after` tokens until the
    returned gate is set; its message id."""
    gate = threading.Event()
    fake.enqueue(Behaviour(tokens=TOKENS, pause_after=pause_after, resume=gate))
    with owner.client() as http:
        answer = http.post("/api/chat/messages", json={"message": "hello"})
    assert answer.status_code == 202, answer.text
    return answer.json()["message_id"], gate


def stream_url(message_id: str) -> str:
    return f"/api/messages/{message_id}/stream"


def assert_whole(events: list[SSE], reference: list[SSE]) -> None:
    """Every event exactly once, in order, with the owner's ids and content."""
    assert [e.id for e in events] == [str(i) for i in range(1, len(reference) + 1)]
    assert [(e.id, e.event, e.data) for e in events] == [(e.id, e.event, e.data) for e in reference]


# --- with Redis ---------------------------------------------------------------------------------


def test_a_follower_elsewhere_is_served_live_from_redis_with_the_owners_ids(
    fake, start_process, redis_url
):
    a = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="60")
    b = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="60")
    message_id, gate = start_paused_reply(fake, a)
    url = stream_url(message_id)
    with b.client() as on_b, a.client() as on_a:
        head = read_some(on_b, url, 4)  # meta and the 3 tokens before the pause
        assert [e.event for e in head] == ["meta", "delta", "delta", "delta"]
        rest: list[SSE] = []
        with connect_sse(on_b, "GET", url, headers={"Last-Event-ID": "3"}) as source:
            for sse in source.iter_sse():
                rest.append(SSE(sse.id, sse.event, json.loads(sse.data)))
                # Event 4 came while the reply is paused: this follower is attached. What
                # follows can only come live: the database has no tokens for 60 s, and a
                # follower from the database would poll it once a minute.
                if len(rest) == 1:
                    gate.set()
        owners = read_sse(on_a, "GET", url)
    assert_whole(head[:3] + rest, owners)
    assert content_of(owners) == "".join(TOKENS)
    assert owners[-1].event == "done"


def test_a_client_reconnecting_at_random_to_either_process_gets_every_event_once(
    fake, start_process, redis_url
):
    a = start_process(REDIS_URL=redis_url)
    b = start_process(REDIS_URL=redis_url)
    fake.enqueue(Behaviour(tokens=[f"w{i} " for i in range(60)], delay=0.01))
    seed = random.randrange(1 << 30)
    print(f"reconnecting at random points, seed {seed}")  # shown if the test fails
    pick = random.Random(seed)
    with a.client() as on_a, b.client() as on_b:
        message_id = on_a.post("/api/chat/messages", json={"message": "hi"}).json()["message_id"]
        got: list[SSE] = []
        for turn in range(1000):
            http = (on_a, on_b)[turn % 2]
            after = got[-1].id if got else "0"
            got += read_some(
                http, stream_url(message_id), pick.randint(1, 6), headers={"Last-Event-ID": after}
            )
            if got[-1].event in ("done", "error"):
                break
        owners = read_sse(on_a, "GET", stream_url(message_id))
    assert_whole(got, owners)
    assert owners[-1].event == "done"


def test_stop_sent_to_another_process_reaches_the_owner_through_redis(
    fake, start_process, redis_url
):
    # The heartbeat (the database's way) is a minute away: only Redis can bring it in time.
    slow_beat = {"CHECKPOINT_INTERVAL": "60", "STALE_REPLY_AFTER": "600"}
    a = start_process(REDIS_URL=redis_url, **slow_beat)
    b = start_process(REDIS_URL=redis_url, **slow_beat)
    _stop_from_b(fake, a, b)


def test_an_agent_change_on_one_process_is_seen_by_the_other_through_redis(
    start_process, redis_url
):
    slow_beat = {"CHECKPOINT_INTERVAL": "60", "STALE_REPLY_AFTER": "600"}
    a = start_process(REDIS_URL=redis_url, **slow_beat)
    b = start_process(REDIS_URL=redis_url, **slow_beat)
    _agent_change_seen(a, b)


def test_sigterm_of_the_owner_while_another_process_follows(
    fake, start_process, redis_url, database
):
    a = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="60")
    b = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="60")
    message_id, gate = start_paused_reply(fake, a)
    got: list[SSE] = []
    with b.client() as on_b, connect_sse(on_b, "GET", stream_url(message_id)) as source:
        for sse in source.iter_sse():
            got.append(SSE(sse.id, sse.event, json.loads(sse.data)))
            if len(got) == 4:  # paused: the owner is told to stop, and resumes once draining
                a.popen.send_signal(signal.SIGTERM)
                wait_for(
                    lambda: "waiting up to 10s for 1 live replies" in a.output(),
                    timeout=30,
                    what="the owner to drain its live reply",
                )
                gate.set()
    assert a.popen.wait(30) in (0, -signal.SIGTERM)
    assert [e.id for e in got] == [str(i) for i in range(1, len(TOKENS) + 3)]
    assert content_of(got) == "".join(TOKENS)
    assert got[-1].event == "done"
    saved = reply_row(database, message_id)
    assert (saved["status"], saved["content"]) == ("complete", "".join(TOKENS))


def test_redis_killed_mid_stream_loses_nothing_and_new_replies_use_it_again(
    fake, start_process, tmp_path
):
    with own_redis(tmp_path) as (redis_url, redis_server):
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        a = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="0.3")
        b = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="0.3")
        message_id, gate = start_paused_reply(fake, a)
        url = stream_url(message_id)
        on_b_events: list[SSE] = []
        owners: list[SSE] = []
        with a.client() as on_a, b.client() as on_b:
            owner_reader = threading.Thread(
                target=lambda: owners.extend(read_sse(on_a, "GET", url))
            )
            owner_reader.start()
            with connect_sse(on_b, "GET", url) as source:
                for sse in source.iter_sse():
                    on_b_events.append(SSE(sse.id, sse.event, json.loads(sse.data)))
                    if len(on_b_events) == 4:  # live from Redis; now Redis dies mid-reply
                        redis_server.kill()
                        redis_server.wait()
                        gate.set()
            owner_reader.join(30)
            assert_whole(on_b_events, owners)
            assert content_of(owners) == "".join(TOKENS)
            assert owners[-1].data["status"] == "complete"

            # Redis returns: new replies go through it again.
            with own_redis(tmp_path, port) as (revived, _):
                fake.enqueue(Behaviour(tokens=TOKENS))
                again = on_a.post("/api/chat/messages", json={"message": "hi"}).json()
                done = read_sse(on_b, "GET", stream_url(again["message_id"]))
                assert content_of(done) == "".join(TOKENS)
                with Redis.from_url(revived) as check:
                    assert check.xlen(stream_key(again["message_id"])) == len(done)


def test_the_request_rate_window_is_shared_through_redis_and_outlives_it(
    fake, start_process, tmp_path
):
    """LIMIT_USER_RPM with REDIS_URL: one window for both processes; with Redis gone, each
    process counts on its own, and no turn fails for it."""
    with own_redis(tmp_path) as (redis_url, redis_server):
        a = start_process(REDIS_URL=redis_url, LIMIT_USER_RPM="4")
        b = start_process(REDIS_URL=redis_url, LIMIT_USER_RPM="4")
        with a.client() as on_a, b.client() as on_b:

            def turn(http: httpx.Client) -> httpx.Response:
                return http.post("/api/chat/messages", json={"message": "hi"})

            assert [turn(http).status_code for http in (on_a, on_b, on_a, on_b)] == [202] * 4
            for http in (on_a, on_b):
                refused = turn(http)
                assert refused.status_code == 429, refused.text
                assert refused.json()["error"]["code"] == "rate_limited"
                assert refused.headers["RateLimit-Limit"] == "4"
                assert refused.headers["RateLimit-Remaining"] == "0"
                assert 1 <= int(refused.headers["Retry-After"]) <= 60

            redis_server.kill()
            redis_server.wait()
            # Each process's own window: four more turns each, then 429, never a 5xx.
            for http in (on_a, on_b):
                assert [turn(http).status_code for _ in range(5)] == [202] * 4 + [429]


# --- without Redis: the database carries it -----------------------------------------------------


def test_stop_sent_to_another_process_reaches_the_owner_through_the_database(fake, start_process):
    a = start_process(CHECKPOINT_INTERVAL="0.3")
    b = start_process(CHECKPOINT_INTERVAL="0.3")
    _stop_from_b(fake, a, b)


def test_an_agent_change_reaches_the_other_process_through_the_database(start_process):
    a = start_process(CHECKPOINT_INTERVAL="0.3")
    b = start_process(CHECKPOINT_INTERVAL="0.3")
    _agent_change_seen(a, b)


def _stop_from_b(fake, a: ServerProcess, b: ServerProcess) -> None:
    fake.enqueue(Behaviour(tokens=TOKENS, stall_after=3))
    with a.client() as on_a, b.client() as on_b:
        message_id = on_a.post("/api/chat/messages", json={"message": "hi"}).json()["message_id"]
        read_some(on_a, stream_url(message_id), 4)  # the 3 tokens are out: it is streaming
        stopped = on_b.post(f"/api/messages/{message_id}/stop")
        assert stopped.status_code == 202, stopped.text
        assert stopped.json() == {"message_id": message_id, "status": "stopped"}
        events = read_sse(on_a, "GET", stream_url(message_id))
    assert events[-1].event == "done"
    assert events[-1].data["status"] == "stopped"
    assert content_of(events) == "".join(TOKENS[:3])


def _agent_change_seen(a: ServerProcess, b: ServerProcess) -> None:
    def temperature(http: httpx.Client) -> float:
        return http.get("/api/catalog").json()["agents"]["chat"]["temperature"]

    with a.client() as on_a, b.client() as on_b:
        before = temperature(on_b)
        changed = on_a.put(
            "/api/catalog/agents/chat",
            json={"temperature": 1.234},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert changed.status_code == 200, changed.text
        assert before != 1.234
        wait_for(lambda: temperature(on_b) == 1.234, timeout=20, what="B to see the change")
        reset = on_a.delete(
            "/api/catalog/agents/chat", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert reset.status_code == 200, reset.text
        wait_for(lambda: temperature(on_b) == before, timeout=20, what="B to see the reset")


# --- whose reply: every source checks the owner ------------------------------------------------


def test_another_users_reply_followed_through_redis_is_not_there_for_them(
    fake, start_process, redis_url
):
    """On a process that would serve the reply from Redis (it is live on the other one), user B
    gets for A's reply exactly what an id that does not exist gets: streaming it, resuming it on
    a one-step GET form, stopping it. A, on that same process, follows it live from Redis,
    resumes it by `<message_id>:<n>` and stops it there."""
    jwt_mode = {
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_JWT_AUDIENCE": AUDIENCE,
        "AUTH_JWT_ISSUER": ISSUER,
        "STREAM_TOKEN_SECRET": SHARED_STREAM_SECRET,
    }
    a = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="60", **jwt_mode)
    b = start_process(REDIS_URL=redis_url, CHECKPOINT_INTERVAL="60", **jwt_mode)
    as_a = {"Authorization": f"Bearer {token(SECRET, 'HS256', sub='user-a')}"}
    as_b = {"Authorization": f"Bearer {token(SECRET, 'HS256', sub='user-b')}"}
    fake.enqueue(Behaviour(tokens=TOKENS, stall_after=3))
    with a.client() as on_a, b.client() as on_b:
        accepted = on_a.post("/api/chat/messages", json={"message": "hi"}, headers=as_a)
        assert accepted.status_code == 202, accepted.text
        message_id = accepted.json()["message_id"]
        head = read_some(on_a, accepted.json()["stream_url"], 4)  # it is streaming
        assert [e.event for e in head] == ["meta", "delta", "delta", "delta"]
        nobody = "0" * 32

        def on_b_as_b(method: str, url: str, **kwargs) -> tuple[int, object]:
            answer = on_b.request(method, url, headers={**as_b, **kwargs.pop("headers", {})})
            return answer.status_code, answer.json()

        for reply in (message_id, nobody):
            # The same answer for A's reply as for none, with the reply's id in the message.
            calls = [
                on_b_as_b("GET", f"/api/messages/{reply}/stream"),
                on_b_as_b("POST", f"/api/messages/{reply}/stop"),
                on_b_as_b("GET", "/api/chat/stream", headers={"Last-Event-ID": f"{reply}:1"}),
            ]
            for status, body in calls:
                assert status == 404, body
                assert body["error"]["code"] == "message_not_found", body
        with Redis.from_url(redis_url) as check:  # B's calls left A's stream alone
            assert check.xlen(stream_key(message_id)) == 4

        # A, on B's process: the reply from Redis, resumed on the one-step GET form.
        resumed = read_some(
            on_b, "/api/chat/stream", 2, headers={**as_a, "Last-Event-ID": f"{message_id}:2"}
        )
        assert [e.id for e in resumed] == [f"{message_id}:3", f"{message_id}:4"]
        assert [e.data for e in resumed] == [e.data for e in head[2:]]
        stopped = on_b.post(f"/api/messages/{message_id}/stop", headers=as_a)
        assert stopped.status_code == 202, stopped.text
        assert stopped.json() == {"message_id": message_id, "status": "stopped"}
        events = read_sse(on_b, "GET", f"/api/messages/{message_id}/stream", headers=as_a)
    assert content_of(events) == "".join(TOKENS[:3])
    assert events[-1].data["status"] == "stopped"
