"""Service keys: made by an admin, shown once, kept as a hash, listed, revoked at once; a
user's token opens no job and a service key no user route."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from tests.jobs.conftest import ADMIN, make_key, sdk

HI = [{"role": "user", "content": "hi"}]


def test_a_key_is_shown_once_kept_as_its_hash_and_listed_without_it(server, database):
    made = make_key(
        server,
        label="row enrichment",
        models=["openai/gpt-4o", "openai/gpt-4o-mini"],
        daily_usd=1.5,
        monthly_usd=20,
        rpm=60,
        concurrency=4,
        store_content=True,
    )
    secret = made.pop("key")
    assert secret.startswith("sc-") and len(secret) > 40
    assert made["label"] == "row enrichment"
    assert made["models"] == ["openai/gpt-4o", "openai/gpt-4o-mini"]
    assert (made["daily_usd"], made["monthly_usd"], made["rpm"], made["concurrency"]) == (
        1.5,
        20.0,
        60,
        4,
    )
    assert made["store_content"] is True and made["revoked_at"] is None
    assert secret.startswith(made["hint"].rstrip("…"))
    [row] = database.query("SELECT * FROM service_keys")
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(row)

    listed = httpx.get(f"{server.url}/api/admin/keys", headers=ADMIN).json()["keys"]
    assert listed == [made]
    assert secret not in str(listed)


@pytest.mark.parametrize(
    "body",
    [
        {"models": "*"},
        {"label": "x"},
        {"label": "x", "models": []},
        {"label": "x", "models": ["not a model"]},
        {"label": "x", "models": "*", "daily_usd": -1},
        {"label": "x", "models": "*", "rpm": 0},
        {"label": "x", "models": "*", "store_content": "yes"},
        {"label": "x", "models": "*", "colour": "red"},
    ],
)
def test_a_bad_key_request_is_refused_and_writes_nothing(server, database, body):
    response = httpx.post(f"{server.url}/api/admin/keys", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_field"
    assert database.query("SELECT * FROM service_keys") == []


def test_only_an_admin_makes_lists_and_revokes_keys(server, key):
    url = f"{server.url}/api/admin/keys"
    as_key = {"Authorization": f"Bearer {key['key']}"}
    assert httpx.post(url, json={"label": "x", "models": "*"}, headers=as_key).status_code == 401
    assert httpx.get(url, headers=as_key).status_code == 401
    assert httpx.delete(f"{url}/{key['id']}", headers=as_key).status_code == 401


def test_a_revoked_key_is_refused_at_once(server, key):
    with sdk(server, key["key"]) as client:
        assert client.chat.completions.create(model="openai/gpt-4o", messages=HI).choices
        revoked = httpx.delete(f"{server.url}/api/admin/keys/{key['id']}", headers=ADMIN)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model="openai/gpt-4o", messages=HI)
        assert refused.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    missing = httpx.delete(f"{server.url}/api/admin/keys/{'0' * 32}", headers=ADMIN)
    assert missing.status_code == 404


def test_a_revoked_key_is_refused_by_every_process(jobs_server, key, server):
    """Two servers on one database: revoked through one, refused by the other at once."""
    other = jobs_server()
    with sdk(other, key["key"]) as client:
        assert client.models.list().data
        httpx.delete(f"{server.url}/api/admin/keys/{key['id']}", headers=ADMIN)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_a_service_key_opens_no_user_route_and_a_user_token_no_job(server, key, fake):
    as_key = {"Authorization": f"Bearer {key['key']}"}
    for method, path in (
        ("GET", "/api/conversations"),
        ("GET", "/api/me/usage"),
        ("POST", "/api/chat"),
    ):
        response = httpx.request(
            method, f"{server.url}{path}", headers=as_key, json={"message": "hi"}
        )
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_token"
    # AUTH_MODE=dev takes any user token: it is still no service key.
    with sdk(server, "a-user-token") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="openai/gpt-4o", messages=HI)
    anonymous = httpx.get(f"{server.url}/v1/models")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert fake.requests == []
