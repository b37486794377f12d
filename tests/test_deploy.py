"""The Procfile's own commands, run as Heroku runs them (bash, $PORT, config vars in the
environment) against the suite's database: the web process refuses an unmigrated database,
the release phase migrates it, and then the web process serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.dev.threaded_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def _env(database_url: str, port: int) -> dict[str, str]:
    # `python` and `uvicorn` resolve to this interpreter's, as they do on a dyno's PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {
        "PATH": path,
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "OPENROUTER_SIMULATOR": "true",
        # Production verifies the host app's JWTs (and derives the stream-token key from this).
        "AUTH_JWT_SECRET": "deploy-test-secret-0123456789abcdef",
    }


def test_procfile_release_then_web_on_the_suites_database(database, tmp_path):
    commands = _procfile()
    assert set(commands) == {"release", "web"}
    port = free_port()
    env = _env(database.url, port)

    refused = subprocess.run(
        ["bash", "-c", commands["web"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "lacks migration(s) 1" in refused.stderr
    assert "run `python -m app migrate`" in refused.stderr

    release = subprocess.run(
        ["bash", "-c", commands["release"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert release.returncode == 0, release.stderr
    assert release.stdout.startswith("migrations applied: [1")

    web = subprocess.Popen(
        ["bash", "-c", commands["web"]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while True:
                assert web.poll() is None, web.stderr.read().decode()
                try:
                    health = http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "web did not answer within 30s"
                    time.sleep(0.05)
            assert health.json()["database"] == "ok"
            reply = http.post("/api/chat", json={"message": "hello", "stream": False})
            assert reply.status_code == 200, reply.text
            listed = http.get("/api/conversations").json()["conversations"]
            assert [c["message_count"] for c in listed] == [2]
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        _, err = web.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught, as a dyno expects.
    assert web.returncode in (0, -signal.SIGTERM), err.decode()
