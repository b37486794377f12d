"""`python -m app token --user alice`: a token the server under AUTH_MODE=jwt accepts as
alice's; refused, in one line, where no token the server would accept can be made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.http.identity_support import AUDIENCE, ISSUER, SECRET

JWT = {
    "AUTH_MODE": "jwt",
    "AUTH_JWT_SECRET": SECRET,
    "AUTH_JWT_AUDIENCE": AUDIENCE,
    "AUTH_JWT_ISSUER": ISSUER,
}


def token_command(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app token …` with only `env` set, in a directory without a `.env` file."""
    return subprocess.run(
        [sys.executable, "-m", "app", "token", *args],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_minted_token_signs_alice_in(tmp_path, start_server):
    made = token_command(tmp_path, "--user", "alice", **JWT)
    assert made.returncode == 0, made.stderr
    user_token = made.stdout.strip()
    assert SECRET not in made.stdout + made.stderr
    server = start_server(
        auth_mode="jwt", auth_jwt_secret=SECRET, auth_jwt_audience=AUDIENCE, auth_jwt_issuer=ISSUER
    )
    me = httpx.get(
        f"{server.url}/api/me", headers={"Authorization": f"Bearer {user_token}"}, timeout=5
    )
    assert me.status_code == 200, me.text
    assert me.json()["user_id"] == "alice"
    # Without it, the same server refuses.
    assert httpx.get(f"{server.url}/api/me", timeout=5).status_code == 401


def test_production_without_the_secret_refuses_in_one_line(tmp_path):
    refused = token_command(
        tmp_path,
        "--user",
        "alice",
        APP_ENV="production",
        OPENROUTER_API_KEY="sk-or-test-secret-key",
        OPENROUTER_MODEL="openai/gpt-4o",
        AUTH_JWKS_URL="https://host.example/jwks.json",
        STREAM_TOKEN_SECRET="stream-token-secret-0123456789abcdef",
        DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
    )
    assert refused.returncode == 2
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: `token` needs AUTH_JWT_SECRET"), line


def test_a_token_needs_a_user(tmp_path):
    refused = token_command(tmp_path, **JWT)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: `token` needs --user <user id>"
