"""`python -m app check [--ping]` as an operator runs it, against the simulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.dev.threaded_server import free_port
from tests.support import migrated_store

# A `python -m app check` process each: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

KEY = "sk-or-v1-check-secret-0123456789"


def _check(fake_url: str, database_url: str, tmp_path: Path, *args: str, **env: str):
    return subprocess.run(
        [sys.executable, "-m", "app", "check", *args],
        cwd=tmp_path,
        env={
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "APP_ENV": "test",
            "DATABASE_URL": database_url,
            "OPENROUTER_API_KEY": KEY,
            "OPENROUTER_MODEL": "openai/gpt-4o",
            "OPENROUTER_BASE_URL": fake_url,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _migrate(url: str) -> None:
    async with migrated_store(url):
        pass


def test_check_with_ping_passes_and_records_each_ping_in_the_ledger(
    fake, fake_url, database, tmp_path
):
    asyncio.run(_migrate(database.url))
    result = _check(fake_url, database.url, tmp_path, "--ping")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["key", "ok"]
    assert any(line.startswith("credits") and "$87.5 left" in line for line in lines)
    assert any(line.startswith("agent chat") and " ok " in line for line in lines)
    assert any(line.startswith("ping openai/gpt-4o") and "cost $" in line for line in lines)
    assert lines[-1].startswith("all good")
    assert KEY not in result.stdout + result.stderr
    # One ping per model the agents use (chat and coach share one; the titler has its own).
    pinged = [line for line in lines if line.startswith("ping ")]
    pings = database.query("SELECT * FROM generations WHERE agent = 'check'")
    assert len(pings) == len(pinged) >= 1
    assert all(p["cost_source"] == "usage" and p["cost_picousd"] > 0 for p in pings)
    assert all(p["user_id"] is None for p in pings)  # no user's spend: in totals only
    assert all(r["body"]["max_tokens"] == 1 for r in fake.requests[-len(pinged) :])


def test_check_fails_on_a_refused_key(fake, fake_url, database, tmp_path):
    asyncio.run(_migrate(database.url))
    fake.key_status = 401
    result = _check(fake_url, database.url, tmp_path)
    assert result.returncode == 1
    assert "key" in result.stdout and "FAIL" in result.stdout
    assert "OpenRouter refuses the OPENROUTER_API_KEY" in result.stdout


def test_check_fails_on_a_model_missing_from_the_catalog(fake, fake_url, database, tmp_path):
    asyncio.run(_migrate(database.url))
    agents = tmp_path / "agents.toml"
    agents.write_text(
        '[chat]\nmodel = "nobody/no-such-model"\nsystem_prompt = "x"\n'
        '[coach]\nsystem_prompt = "y"\n'
    )
    result = _check(fake_url, database.url, tmp_path, AGENTS_FILE=str(agents))
    assert result.returncode == 1
    assert "nobody/no-such-model is not in the catalog" in result.stdout


def _rows(result) -> dict[str, tuple[str, str]]:
    """The table: check name -> (result, detail)."""
    rows = {}
    for line in result.stdout.splitlines()[:-1]:
        name, rest = line.split("  ", 1)
        outcome, _, detail = rest.strip().partition("  ")
        rows[name.strip()] = (outcome, detail.strip())
    return rows


def test_check_without_a_key_still_checks_the_database_and_the_agents(
    fake, fake_url, database, tmp_path
):
    asyncio.run(_migrate(database.url))
    result = _check(fake_url, database.url, tmp_path, OPENROUTER_API_KEY="")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = _rows(result)
    assert rows["key"] == ("FAIL", "OPENROUTER_API_KEY is not set")
    assert rows["database"][0] == "ok"
    assert rows["agent chat"][0] == rows["agent coach"][0] == "ok"
    assert fake.requests == []


def test_check_without_a_key_in_development_checks_against_the_simulator(
    fake, fake_url, database, tmp_path
):
    asyncio.run(_migrate(database.url))
    result = _check(
        fake_url, database.url, tmp_path, "--ping", APP_ENV="development", OPENROUTER_API_KEY=""
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result)
    assert rows["upstream"][0] == "ok" and "simulator" in rows["upstream"][1]
    assert rows["database"][0] == rows["catalog"][0] == rows["agent chat"][0] == "ok"
    assert rows["ping openai/gpt-4o"][0] == "ok"
    assert fake.requests == []  # the configured upstream is never called


def test_check_reports_an_unmigrated_or_unreachable_database_in_its_table(
    fake, fake_url, database, tmp_path
):
    unreachable = _check(fake_url, f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/db", tmp_path)
    assert unreachable.returncode == 1
    outcome, detail = _rows(unreachable)["database"]
    assert outcome == "FAIL" and "cannot connect" in detail and "secret-pw" not in detail
    assert _rows(unreachable)["key"][0] == "ok"
