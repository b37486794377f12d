"""The stage probe (STAGE_PROBE, app/core/stages.py): a real turn through uvicorn, timed from
its request to its first delta on the client's connection, stage by stage, read back at
`/api/admin/stages`."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from app.dev.simulator import Behaviour
from tests.support import local_client, read_sse

ADMIN_TOKEN = "stage-probe-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Every stage a one-step turn passes when no limit applies, in order (`saved` needs a limit).
UNGATED = [
    "identified",
    "validated",
    "admitted",
    "started",
    "upstream",
    "first_chunk",
    "first_delta",
    "relayed",
]


def stages(http: httpx.Client) -> dict[str, list[float]]:
    response = http.get("/api/admin/stages", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["stages"]


def test_each_stage_of_a_turn_is_timed_once_and_they_add_up(start_server, fake):
    server = start_server(stage_probe=True, admin_token=ADMIN_TOKEN)
    with local_client(server.url) as http:
        fake.enqueue(Behaviour(tokens=["a", "b"], delay=0.02))
        read_sse(http, "POST", "/api/chat", json={"message": "hello"})
        timed = stages(http)
        assert [name for name, ms in timed.items() if ms] == UNGATED
        assert all(len(timed[name]) == 1 and timed[name][0] >= 0 for name in UNGATED)
        # The upstream waited 20 ms before its first content: from its headers (when we read
        # them) to that chunk, the upstream's own wait, not ours.
        assert timed["upstream"][0] + timed["first_chunk"][0] >= 20
        # A stream followed by a request of its own is not a turn: no new samples.
        accepted = http.post("/api/chat/messages", json={"message": "again"})
        read_sse(http, "GET", accepted.json()["stream_url"])
        assert all(len(stages(http)[name]) <= 2 for name in UNGATED)

        assert http.delete("/api/admin/stages", headers=ADMIN).status_code == 204
        assert not any(stages(http).values())


def test_a_gated_turn_is_timed_through_its_write(start_server, fake):
    server = start_server(
        stage_probe=True, admin_token=ADMIN_TOKEN, budget_user_daily_usd=Decimal(5)
    )
    with local_client(server.url) as http:
        read_sse(http, "POST", "/api/chat", json={"message": "hello"})
        timed = stages(http)
        assert [name for name, ms in timed.items() if ms] == [
            *UNGATED[:3],
            "saved",
            *UNGATED[3:],
        ]


@pytest.mark.parametrize("probe", [False, True])
def test_the_samples_are_for_admins_and_absent_when_the_probe_is_off(start_server, probe):
    server = start_server(stage_probe=probe, admin_token=ADMIN_TOKEN)
    with local_client(server.url) as http:
        for method in ("GET", "DELETE"):
            anonymous = http.request(method, "/api/admin/stages")
            assert anonymous.status_code == (401 if probe else 404), anonymous.text
            admin = http.request(method, "/api/admin/stages", headers=ADMIN)
            assert admin.status_code == ((200 if method == "GET" else 204) if probe else 404)
