"""The benchmarks at a tiny size, so they cannot rot: every target answers and nothing errors.

Speed is never asserted here; `python -m bench` measures it (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.run import HOST, OURS, Result, Sample, one_stream, pooled
from tests.support import run_group

# Each runs a benchmark's processes: started first in a parallel run (tests/conftest.py), and
# spread over the workers like any test. Nothing here asserts a speed, and a benchmark waits
# up to a minute for each of its servers to listen (bench/run.py's START_LIMIT), so running
# beside other tests slows them without failing them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["upstream", "passthrough", "passthrough-1", "ours"]
# The load options of bench.client, bench.http2 and bench.collector, at their smallest.
TINY_LOAD = ["--streams", "2", "--tokens", "3", "--delay", "0.005", "--duration", "0.2"]


def run_bench(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` from the repository, which must exit 0."""
    finished = run_group([sys.executable, "-m", module, *args], cwd=ROOT, timeout=timeout)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def test_benchmark_runs_every_target_without_errors():
    args = ["--levels", "1,3", "--tokens", "3", "--delay", "0.005", "--duration", "0.2"]
    args += ["--reasoning", "2"]  # a thinking upstream: the first reasoning is timed too
    finished = run_bench("bench", *args, "--idle", "10", "--rounds", "2", timeout=120)
    lines = finished.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    rows = [line.split() for line in lines[header + 2 : header + 2 + 2 * len(TARGETS)]]
    assert [(row[0], int(row[1])) for row in rows] == [
        (target, level) for level in (1, 3) for target in TARGETS
    ]
    assert lines[header].split()[-2:] == ["reasoning", "p50"]
    for row in rows:
        streams, errors = int(row[2]), int(row[3])
        assert streams >= 1 and errors == 0, row
        assert row[-1] != "nan", row  # every target relayed the thinking
    assert "KB RSS per open stream" in finished.stdout
    budget = lines[lines.index("budget:") + 1 :]
    assert budget and all(line.startswith(("PASS", "FAIL")) for line in budget)


def test_benchmark_runs_ours_with_auth_on_and_every_variant():
    # The driver signs a JWT with the AUTH_JWT_SECRET it gives the server: a refused token
    # would make every stream of ours an error. The variants are servers of their own, each
    # with its features on (a budget refusal or a bad token would show as errors too).
    args = ["--levels", "2", "--tokens", "3", "--delay", "0.005", "--duration", "0.2"]
    variants = ["auth", "budgets", "ops", "all"]
    finished = run_bench(
        "bench", *args, "--idle", "5", "--no-shared", "--auth",
        "--variants", ",".join(variants), "--stages", timeout=180,
    )  # fmt: skip
    lines = finished.stdout.splitlines()
    assert "auth on" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    table = lines[header + 2 : lines.index("", header)]
    rows = {row[0]: row for row in (line.split() for line in table) if "ours" in row[0]}
    assert set(rows) == {"ours", *(f"ours+{name}" for name in variants)}
    for row in rows.values():
        streams, errors = int(row[2]), int(row[3])
        assert streams >= 2 and errors == 0, row
    compared = lines[lines.index("features on against off (ours), same run:") + 1 :]
    assert [line.split()[2] for line in compared[: len(variants)]] == [
        f"ours+{name}" for name in variants
    ]
    assert "ours" in finished.stdout.split("idle streams", 1)[1]
    # --stages: every ours target's turns timed by its own probe, stage by stage.
    probed = finished.stdout.split("stages to the first delta", 1)[1].split("idle streams")[0]
    assert [line.split()[0] for line in probed.splitlines() if line and line[0] != " "] == [
        "ours",
        *(f"ours+{name}" for name in variants),
    ]
    assert "  relayed " in probed and "  saved " in probed  # budgets gate: the write is timed


def test_benchmark_runs_the_jobs_target_with_a_service_key():
    # Issue 32's target: OpenAI-shaped requests to /v1/chat/completions with a key the driver
    # makes through the admin API; a refused key or request would show as errors.
    args = ["--levels", "2", "--tokens", "3", "--delay", "0.005", "--duration", "0.2"]
    finished = run_bench("bench", *args, "--idle", "0", "--no-shared", "--jobs", timeout=120)
    lines = finished.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    table = lines[header + 2 : lines.index("", header)]
    rows = {row[0]: row for row in (line.split() for line in table)}
    assert int(rows["jobs"][2]) >= 2 and int(rows["jobs"][3]) == 0, rows["jobs"]
    compared = lines[
        lines.index("jobs (/v1/chat/completions) against the pass-through, same run:") + 1
    ]
    assert compared.startswith("level    2: jobs ttft added")


def test_rounds_are_pooled_into_one_measurement():
    def result(streams: int, errors: int, elapsed: float, cpu: float, ttft: list[float]):
        return Result("ours", 50, streams, errors, elapsed, ttft, ttft, cpu, 1000, 0.1)

    first = result(10, 0, 1.0, 0.05, [0.010] * 10)
    second = result(31, 1, 2.0, 0.25, [0.030] * 30)
    both = pooled([first, second])
    assert (both.streams, both.errors, both.elapsed) == (41, 1, 3.0)
    assert both.replies_per_s == 40 / 3.0  # not the mean of 10/s and 15/s
    assert both.cpu_ms_per_reply == 1000 * 0.30 / 40
    assert both.ttft_ms(0.5) == 30.0  # the median of all 40 streams, not of the two medians


def test_the_upstream_side_benchmark_runs_both_readers():
    finished = run_bench("bench.client", *TINY_LOAD, timeout=60)
    readers = [line.split()[0] for line in finished.stdout.splitlines()]
    assert readers == ["raw", "openrouter"]
    assert all("cpu ms/reply" in line for line in finished.stdout.splitlines())


def test_the_http2_benchmark_measures_both_protocols():
    finished = run_bench(
        "bench.http2", *TINY_LOAD, "--idle", "5", "--stop-tokens", "20", timeout=60
    )
    rows = [line.split(maxsplit=2)[:2] for line in finished.stdout.splitlines()]
    assert rows == [[p, m] for p in ("HTTP/1.1", "HTTP/2") for m in ("cpu", "idle", "stop")]
    # What the server relies on, over HTTP/1.1: leaving a stream tells the upstream to stop.
    assert "upstream learnt of it: yes" in finished.stdout.splitlines()[2]


def test_the_collector_benchmark_probes_both_variants():
    finished = run_bench("bench.collector", *TINY_LOAD, "--rounds", "1", timeout=120)
    assert "failed" not in finished.stderr
    rows = [line.split() for line in finished.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["python", "frozen"]
    assert all(int(row[1]) > 0 for row in rows)


def test_the_per_token_benchmark_times_both_replies():
    finished = run_bench(
        "bench.pertoken", "--tokens", "4", "--few", "2", "--replies", "2", "--repeat", "1",
        timeout=60,
    )  # fmt: skip
    lines = finished.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["2", "tokens:"], ["4", "tokens:"]]
    assert lines[2].startswith("per token:")


def test_the_idle_benchmark_measures_both_and_traces_ours():
    finished = run_bench(
        "bench.idle", "--streams", "3", "--trace", "--top", "3", "--tracebacks", "1", timeout=240
    )
    lines = finished.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["passthrough", "ours", "ours"]
    assert any(line.startswith("tracemalloc, ours, 3 streams") for line in lines)


def test_the_driver_counts_a_stream_cut_short_as_an_error_and_goes_on():
    """A target that closes a stream before its end: one failed sample, not a driver spinning
    on the closed connection (which never waits, so its time limit could never fire)."""

    async def scenario() -> Sample:
        async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nevent: delta\ndata: {}\n\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(cut_short, HOST, 0)
        async with server:
            return await one_stream(server.sockets[0].getsockname()[1], OURS, time_limit=5.0)

    outcome: list[Sample] = []
    thread = threading.Thread(target=lambda: outcome.append(asyncio.run(scenario())), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the driver is stuck on a closed connection"
    assert outcome == [Sample(False)]


def test_the_scale_out_benchmark_measures_both_configurations():
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing in CI")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    # A reply of 1 s: B's follower times the tokens that reach it after it attached (those
    # before come at once), so a reply must outlast its attaching, which on a loaded machine
    # took longer than 3 tokens 5 ms apart ("(0 tokens)").
    args = ["--levels", "2", "--tokens", "10", "--delay", "0.1", "--duration", "0.2"]
    finished = run_bench("bench", "--processes", "2", "--redis", *args, timeout=180)
    lines = finished.stdout.splitlines()
    for label in ("database", "redis"):
        [delay] = [line for line in lines if line.startswith(f"{label} ") and "delay" in line]
        assert "p50" in delay and "(0 tokens)" not in delay
        [load] = [line for line in lines if line.startswith(f"{label} ") and "level" in line]
        assert load.count(", 0 errors") == 2, load
    assert any("owner's cpu per reply with Redis" in line for line in lines)


@pytest.mark.db  # TEST_POSTGRES_URL: its PostgreSQL part runs in that pass
def test_the_reports_benchmark_builds_a_ledger_and_times_both_variants():
    """On the suite's PostgreSQL (a database of its own there, dropped at exit)."""
    admin_url = os.environ.get("TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("the reports benchmark is PostgreSQL's (set TEST_POSTGRES_URL)")
    finished = run_bench(
        "bench.reports", "--url", admin_url, "--rows", "2000", "--rounds", "1", timeout=120
    )
    out = finished.stdout
    assert "built: 2,000 generations (0 without a user)" in out, out
    assert out.count("  before: ") == out.count("  now: ") == 4, out


@pytest.mark.db  # TEST_POSTGRES_URL: its PostgreSQL part runs in that pass
def test_the_production_profile_runs_every_target_on_both_databases():
    """On the suite's PostgreSQL (databases of its own there, dropped at exit) and a
    throwaway redis-server: the production-shape servers answer every stream, signed in."""
    admin_url = os.environ.get("TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("the production profile needs PostgreSQL (set TEST_POSTGRES_URL)")
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing in CI")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    args = ["--levels", "2", "--tokens", "3", "--delay", "0.005", "--duration", "0.2"]
    finished = run_bench(
        "bench", "--profile", "production", "--processes", "2", "--redis",
        "--postgres-url", admin_url, *args, "--idle", "5", "--stages", timeout=240,
    )  # fmt: skip
    lines = finished.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    rows = {row[0]: row for row in (line.split() for line in lines[header + 2 : header + 8])}
    assert set(rows) == {
        "upstream", "passthrough", "prod-sqlite", "prod-pg", "passthrough-x2", "prod-pg-x2"
    }  # fmt: skip
    for row in rows.values():
        streams, errors = int(row[2]), int(row[3])
        assert streams >= 2 and errors == 0, row
    compared = [line for line in lines if line.startswith("level    2:")]
    assert [line.split()[2] for line in compared] == ["prod-sqlite", "prod-pg", "prod-pg-x2"]
    probed = finished.stdout.split("stages to the first delta", 1)[1].split("idle streams")[0]
    assert [line.split()[0] for line in probed.splitlines() if line and line[0] != " "] == [
        "prod-sqlite",
        "prod-pg",
    ]
    idle = finished.stdout.split("idle streams", 1)[1]
    assert all(f"{name} " in idle for name in ("passthrough", "prod-sqlite", "prod-pg"))
    budget = lines[lines.index("budget:") + 1 :]
    assert len(budget) == 2 and all(line.startswith(("PASS", "FAIL")) for line in budget)


GROWTH_CASES = {
    "conversation: time to first delta",
    "conversation: server CPU per turn",
    "conversation: list (GET)",
    "conversation: replay (GET /{id})",
    "reply: gap between deltas",
    "reply: server CPU per token (us)",
    "reply: replay (GET stream)",
    "reply: its conversation (GET)",
    "db: list, first page, light user",
    "db: conversation (GET /{id}), light user",
    "db: replay of a finished reply, light user",
    "db: /api/me/costs, light user",
    "db: list, first page",
    "db: conversation (GET /{id})",
    "db: replay of a finished reply",
    "db: /api/me/costs",
    "db: list, heavy user",
    "db: /api/admin/costs",
    "db: /api/me/costs, heavy user",
    "small context: time to first delta",
    "small context: server CPU per turn",
}
GROWTH_PLANS = [
    "list, first page",
    "list, a later page",
    "conversation (GET /{id})",
    "replay of a finished reply",
    "history sent upstream",
    "/api/me/costs",
    "/api/admin/costs",
]


@pytest.mark.db  # TEST_POSTGRES_URL: its PostgreSQL part runs in that pass
def test_the_growth_benchmark_measures_every_case_on_each_database():
    """Tiny sizes: every case measured and given a verdict, /api/me/costs before and after
    migration 14, a plan for every query; on the pass's database (scripts/test's PostgreSQL
    pass sets TEST_POSTGRES_URL, its SQLite pass does not)."""
    args = ["--turns", "4", "--window", "2", "--tokens", "60", "--messages", "6000"]
    args += ["--requests", "2", "--deep", "2"]  # the heavy user: 60 conversations, 2 pages
    databases = ["sqlite"]
    admin_url = os.environ.get("TEST_POSTGRES_URL")
    if admin_url:
        databases = ["postgresql"]
        args += ["--postgres-url", admin_url]
    finished = run_bench("bench.growth", *args, "--databases", ",".join(databases), timeout=120)
    lines = finished.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case"))
    rows = lines[header + 2 : lines.index("", header)]
    for database in databases:
        mine = [row for row in rows if row[45:56].strip() == database]
        cases = [row[:44].strip() for row in mine]
        assert set(cases) == GROWTH_CASES, cases
        assert cases.count("db: /api/me/costs, light user") == 2  # empty db; before and after
        assert all(row.endswith(("flat", "grows")) or "with its answer" in row for row in mine)
        plans = [line for line in lines if line.startswith(f"{database:<10} ")]
        assert [line[11:40].strip() for line in plans] == GROWTH_PLANS
        assert f"{database}: history sent upstream: after 2 turns 4 messages" in finished.stdout
        # The small-context model's last turn was cut to fit its window: the case measures it.
        assert re.search(
            rf"{database}: small context \(gryphe/mythomax-l2-13b, 4,096 tokens\): turn 2 .*; "
            r"turn 4 sent \d+ messages, [\d,]+ bytes \(history: \d+ sent, [1-9]\d* left out\)",
            finished.stdout,
        ), finished.stdout


def test_the_growth_benchmark_runs_only_the_cases_asked_for():
    """`--cases small-context`: that case alone (issue 29's turn 200 against turn 10 on a
    small-context model), at 4 turns: its two rows, no other, and no database fill."""
    args = ["--cases", "small-context", "--databases", "sqlite", "--turns", "4", "--window", "2"]
    finished = run_bench("bench.growth", *args, timeout=120)
    lines = finished.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case"))
    rows = lines[header + 2 : lines.index("", header)]
    assert [row[:44].strip() for row in rows] == [
        "small context: time to first delta",
        "small context: server CPU per turn",
    ]
    assert all(row.endswith(("flat", "grows")) for row in rows), rows
    assert "filled" not in finished.stdout and "plans" not in finished.stdout


def test_caching_measures_a_conversation_with_and_without():
    """bench.caching at 3 turns: both conversations run, and the saving the server reports
    equals the difference the prices make (the script asserts it)."""
    finished = run_bench("bench.caching", "--turns", "3", timeout=240)
    assert '"prompt_cost_ratio"' in finished.stdout


def test_attachments_measures_an_upload_and_its_turn():
    """bench.attachments with a small PDF: every step runs (each asserts its answer) and is
    measured."""
    finished = run_bench("bench.attachments", "--pdf-mb", "0.3", timeout=120)
    steps = json.loads(finished.stdout.strip().splitlines()[-1])["steps"]
    assert [s["step"] for s in steps][:3] == [
        "turn without attachments",
        "upload of the PDF",
        "turn with the PDF",
    ]
