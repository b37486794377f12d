"""Benchmark our server against a raw pass-through proxy, both in front of the same fake upstream.

    .venv/bin/python -m bench                      # levels 1, 50, 200 and the idle-memory test
    .venv/bin/python -m bench --quick              # a short run, for a quick look
    .venv/bin/python -m bench --rounds 3           # each measurement 3 times, in turns, pooled
    .venv/bin/python -m bench --auth               # ours verifying a user's JWT on every reply
    .venv/bin/python -m bench --budgets            # ours with every spend limit on (never reached)
    .venv/bin/python -m bench --processes 2 --redis  # two servers, one database, with(out) Redis
    .venv/bin/python -m bench --jobs               # and ours' /v1/chat/completions (issue 32)

Every server is its own process: the fake upstream (`bench.fake_upstream`), the pass-through
with the client pool (`passthrough`), the pass-through on one shared client (`passthrough-1`,
the httpcore pool trap), and ours (`python -m app serve`, SQLite; with `--auth`, APP_ENV=production
and AUTH_MODE=jwt, each request carrying an HS256 token this driver signs with the AUTH_JWT_SECRET
it gives the server; without, AUTH_MODE=dev, which production refuses, so APP_ENV=development
against the same fake upstream). The load
driver is this process: raw asyncio sockets speaking HTTP/1.1, one connection per stream, so it
stays lean; it still shares the machine's cores with the servers, which is why results are
given as ratios to the pass-through. Targets run one after another, never at the same time;
with `--rounds N`, N times each at every level, in alternating order, and each target's N
measurements are pooled (all their streams, CPU and time together).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt

from app.dev.threaded_server import free_port

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
MESSAGE = "Tell me about benchmarks"
AUTH_JWT_SECRET = "bench-not-a-real-secret-0123456789abcdef"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


# --- the processes ------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log: Path
    probed: bool = False  # ours with STAGE_PROBE on (--stages), read with ADMIN_TOKEN

    @property
    def ports(self) -> list[int]:
        return [self.port]

    async def stages(self, method: str) -> dict[str, list[float]]:
        """The stage probe's samples (GET) or none, having cleared them (DELETE)."""
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{self.port}") as http:
            response = await http.request(
                method, "/api/admin/stages", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            response.raise_for_status()
            return response.json()["stages"] if method == "GET" else {}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads

    def memory_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {key} for {self.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Group:
    """Several processes measured as one target (two dynos, as a router would spread them):
    the streams go to each in turn, and their CPU and memory are summed."""

    name: str
    servers: list[Server]
    probed: bool = False  # the stage probe is read from one process only: not for groups

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def cpu_seconds(self) -> float:
        return sum(server.cpu_seconds() for server in self.servers)

    def memory_kb(self, key: str) -> int:
        return sum(server.memory_kb(key) for server in self.servers)


# A bound on waiting for a server to listen, not a speed: a loaded machine (the test suite runs
# these beside other tests) can take tens of seconds to start a Python process.
START_LIMIT = 60.0


def _wait_for_port(server: Server, timeout: float = START_LIMIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection((HOST, server.port), 0.2):
            return
        time.sleep(0.05)
    tail = server.log.read_text()[-2000:] if server.log.exists() else ""
    server.stop()
    raise RuntimeError(f"{server.name} did not start on port {server.port}:\n{tail}")


class Processes:
    """Starts servers in a scratch directory and stops every one of them on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Server:
        port = free_port(HOST)
        log = self.workdir / f"{name}.log"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {}), "PORT": str(port)}
        command = [sys.executable, *[a.replace("{port}", str(port)) for a in args]]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=self.workdir, env=full_env, stdout=out, stderr=subprocess.STDOUT
            )
        server = Server(name, port, process, log)
        self.servers.append(server)
        _wait_for_port(server)
        return server

    def fake_upstream(
        self, name: str, *, tokens: int, delay: float, server: str = "uvicorn", reasoning: int = 0
    ) -> Server:
        args = ["-m", "bench.fake_upstream", "--port", "{port}", "--server", server]
        args += ["--reasoning", str(reasoning)]
        return self.start(name, [*args, "--tokens", str(tokens), "--delay", str(delay)])

    def passthrough(self, name: str, upstream: Server, *, clients: int | None = None) -> Server:
        args = ["-m", "bench.passthrough", "--port", "{port}", "--upstream", _api(upstream)]
        return self.start(name, args + (["--clients", str(clients)] if clients else []))

    def ours(
        self,
        name: str,
        upstream: Server,
        *,
        auth: bool,
        settings: dict[str, str] | None = None,
        serve: tuple[str, ...] = ("-m", "app", "serve"),
        stages: bool = False,
    ) -> Server:
        env = {
            **(
                {"APP_ENV": "production", "AUTH_JWT_SECRET": AUTH_JWT_SECRET}
                if auth
                else {"APP_ENV": "development", "AUTH_MODE": "dev"}
            ),
            "OPENROUTER_API_KEY": "bench-not-a-real-key",
            "OPENROUTER_MODEL": "openai/gpt-4o",
            "OPENROUTER_BASE_URL": _api(upstream),
            "DATABASE_URL": f"sqlite:///{self.workdir / name}.db",
            "HOST": HOST,
            # Every bench reply opens a conversation, so titles would add an upstream call per
            # reply that the pass-through never makes: measured apart from the reply, if at all.
            "AUTO_TITLES": "false",
            **({"STAGE_PROBE": "true", "ADMIN_TOKEN": ADMIN_TOKEN} if stages else {}),
            **(settings or {}),
        }
        migrate = subprocess.run(
            [sys.executable, "-m", "app", "migrate"],
            cwd=self.workdir,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
        server = self.start(name, list(serve), env)
        server.probed = stages
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


def _api(server: Server) -> str:
    return f"http://{HOST}:{server.port}/api/v1"


# --- the load driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """How to ask a target for one reply and how to see its first token and its end."""

    path: str
    body: bytes
    first_token: re.Pattern[bytes]
    end: bytes
    # Set when the upstream thinks first (--reasoning): its first reasoning is timed too.
    first_reasoning: re.Pattern[bytes] | None = None
    headers: str = ""  # more header lines, each ending in CRLF

    def request(self, port: int) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{self.headers}"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + self.body


# OpenRouter's wire format: the role chunk has empty content, so the first token is the first
# non-empty content; what the pass-through relays is byte for byte the same.
OPENROUTER = Protocol(
    "/api/v1/chat/completions",
    (
        '{"model":"openai/gpt-4o","stream":true,'
        f'"messages":[{{"role":"user","content":"{MESSAGE}"}}]}}'
    ).encode(),
    re.compile(rb'"content": "[^"]'),
    b"data: [DONE]",
)
PASSTHROUGH = Protocol(
    "/api/chat", f'{{"message":"{MESSAGE}"}}'.encode(), OPENROUTER.first_token, OPENROUTER.end
)
OURS = Protocol("/api/chat", PASSTHROUGH.body, re.compile(rb"event: delta"), b"event: done")
# The markers of a first reasoning delta: OpenRouter's (relayed as is by the pass-through), ours.
UPSTREAM_REASONING = re.compile(rb'"reasoning": "[^"]')
OURS_REASONING = re.compile(rb"event: reasoning")


def jobs_protocol(key: str) -> Protocol:
    """OpenAI-shaped requests to ours' `/v1/chat/completions` with a service key: the body the
    upstream itself is sent, and its chunks relayed as they came, so the same markers."""
    headers = f"Authorization: Bearer {key}\r\nX-Job: bench\r\n"
    return dataclasses.replace(OPENROUTER, path="/v1/chat/completions", headers=headers)


async def service_key(server: Server) -> str:
    """A service key of ours with no limit of its own (a job's reservation rides beside its
    call, as a turn's does with no budget)."""
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}") as http:
        response = await http.post(
            "/api/admin/keys",
            json={"label": "bench", "models": "*"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        response.raise_for_status()
        return response.json()["key"]


def jobs_lines(by: dict[tuple[str, int], Result], levels: list[int]) -> tuple[str, list[str]]:
    """The jobs target against the pass-through (issue 32's goals, at 50 and 200 streams: CPU
    per reply <= 1.3x, first token added <= 1.5x, no errors)."""
    lines, verdicts = [], []
    for level in levels:
        jobs, floor, up = by[("jobs", level)], by[("passthrough", level)], by[("upstream", level)]
        added, floor_added = added_ttft_ms(jobs, up), added_ttft_ms(floor, up)
        cpu = jobs.cpu_ms_per_reply / floor.cpu_ms_per_reply
        ttft = added / max(MIN_ADDED_MS, floor_added)
        lines.append(
            f"level {level:>4}: jobs ttft added {added:.1f} ms vs pass-through "
            f"{floor_added:.1f} ms (x{ttft:.2f}); cpu/reply x{cpu:.2f}; "
            f"replies/s x{jobs.replies_per_s / floor.replies_per_s:.2f}; errors {jobs.errors}"
        )
        if level in (50, 200):
            verdicts.append(
                _verdict(cpu <= 1.3, f"jobs, {level} streams: cpu/reply x{cpu:.2f} <= 1.3")
            )
            verdicts.append(
                _verdict(ttft <= 1.5, f"jobs, {level} streams: ttft added x{ttft:.2f} <= 1.5")
            )
            verdicts.append(
                _verdict(jobs.errors == 0, f"jobs, {level} streams: {jobs.errors} errors == 0")
            )
    return "\n".join(lines), verdicts


def ours_protocol(auth: bool) -> Protocol:
    """OURS, signed in as one user with a token signed once (the server verifies it on every
    request, which is the cost `--auth` measures)."""
    if not auth:
        return OURS
    claims = {"sub": "bench-user", "exp": int(time.time()) + 86400}
    signed = jwt.encode(claims, AUTH_JWT_SECRET, algorithm="HS256")
    return dataclasses.replace(OURS, headers=f"Authorization: Bearer {signed}\r\n")


TAIL = 64  # bytes kept between reads, so a marker split across two reads is still seen


@dataclass
class Sample:
    ok: bool
    ttft: float | None = None
    total: float | None = None
    ttfr: float | None = None  # time to the first reasoning delta, when timed


async def one_stream(port: int, protocol: Protocol, time_limit: float) -> Sample:
    start = time.perf_counter()
    first = thought = None
    writer = None
    try:
        async with asyncio.timeout(time_limit):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(protocol.request(port))
            window = await reader.read(65536)
            if not window.startswith(b"HTTP/1.1 200"):
                return Sample(False)
            while window:
                if first is None and protocol.first_token.search(window):
                    first = time.perf_counter()
                if (
                    thought is None
                    and protocol.first_reasoning is not None
                    and protocol.first_reasoning.search(window)
                ):
                    thought = time.perf_counter()
                if protocol.end in window:
                    return Sample(
                        first is not None,
                        first and first - start,
                        time.perf_counter() - start,
                        thought and thought - start,
                    )
                more = await reader.read(65536)
                if not more:  # closed before its end: at EOF, read() returns without waiting
                    return Sample(False)
                window = window[-TAIL:] + more
            return Sample(False)
    except (OSError, TimeoutError):
        return Sample(False)
    finally:
        if writer is not None:
            writer.close()


async def drive(
    ports: list[int], protocol: Protocol, *, concurrency: int, duration: float, time_limit: float
) -> tuple[list[Sample], float]:
    """`concurrency` workers each start streams back to back until `duration` has passed; worker
    i on `ports[i % len(ports)]` (one port per process of the target)."""
    samples: list[Sample] = []
    deadline = time.perf_counter() + duration

    async def worker(port: int) -> None:
        while True:  # at least one stream each, so a warm-up is `duration=0`
            samples.append(await one_stream(port, protocol, time_limit))
            if time.perf_counter() >= deadline:
                return

    start = time.perf_counter()
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(concurrency)))
    return samples, time.perf_counter() - start


# --- one measurement ----------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    level: int
    streams: int
    errors: int
    elapsed: float
    ttft: list[float]
    totals: list[float]
    cpu: float
    peak_rss_kb: int
    driver_cpu: float
    ttfr: list[float] = dataclasses.field(default_factory=list)  # first reasoning (--reasoning)
    # --stages: the server's own timing of each stage to the first delta, ms (app/core/stages.py)
    stages: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def replies_per_s(self) -> float:
        return (self.streams - self.errors) / self.elapsed

    @property
    def cpu_ms_per_reply(self) -> float:
        return 1000 * self.cpu / max(1, self.streams - self.errors)

    def ttft_ms(self, q: float) -> float:
        return 1000 * quantile(self.ttft, q)


def pooled(results: list[Result]) -> Result:
    """One target's rounds at one level as a single measurement: all their streams together."""
    first = results[0]
    return Result(
        target=first.target,
        level=first.level,
        streams=sum(r.streams for r in results),
        errors=sum(r.errors for r in results),
        elapsed=sum(r.elapsed for r in results),
        ttft=[t for r in results for t in r.ttft],
        totals=[t for r in results for t in r.totals],
        cpu=sum(r.cpu for r in results),
        peak_rss_kb=max(r.peak_rss_kb for r in results),
        driver_cpu=sum(r.driver_cpu for r in results),
        ttfr=[t for r in results for t in r.ttfr],
        stages={
            stage: [ms for r in results for ms in r.stages.get(stage, [])] for stage in first.stages
        },
    )


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _driver_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(
    server: Server | Group, protocol: Protocol, *, level: int, duration: float, time_limit: float
) -> Result:
    # Warm-up: fill connection pools and caches the same way for every target.
    await drive(server.ports, protocol, concurrency=level, duration=0.0, time_limit=time_limit)
    if server.probed:
        await server.stages("DELETE")
    cpu, driver = server.cpu_seconds(), _driver_cpu()
    samples, elapsed = await drive(
        server.ports, protocol, concurrency=level, duration=duration, time_limit=time_limit
    )
    cpu, driver = server.cpu_seconds() - cpu, _driver_cpu() - driver
    stages = await server.stages("GET") if server.probed else {}
    good = [s for s in samples if s.ok]
    return Result(
        target=server.name,
        level=level,
        streams=len(samples),
        errors=len(samples) - len(good),
        elapsed=elapsed,
        ttft=[s.ttft for s in good if s.ttft is not None],
        totals=[s.total for s in good if s.total is not None],
        cpu=cpu,
        peak_rss_kb=server.memory_kb("VmHWM"),
        driver_cpu=driver,
        ttfr=[s.ttfr for s in good if s.ttfr is not None],
        stages=stages,
    )


async def idle_memory(
    server: Server, protocol: Protocol, *, streams: int, time_limit: float
) -> float:
    """KB of server RSS per open stream whose upstream sends nothing after its headers."""
    before = server.memory_kb("VmRSS")
    opened: list[asyncio.StreamWriter] = []
    ready = 0
    try:
        async with asyncio.timeout(time_limit):
            for start in range(0, streams, 100):  # in batches, so no listen backlog overflows
                batch = [
                    asyncio.open_connection(HOST, server.port)
                    for _ in range(start, min(streams, start + 100))
                ]
                for reader, writer in await asyncio.gather(*batch):
                    writer.write(protocol.request(server.port))
                    opened.append(writer)
                    ready += await _first_bytes(reader)
        after = server.memory_kb("VmRSS")
    finally:
        for writer in opened:
            writer.close()
    if ready != streams:
        raise RuntimeError(f"{server.name}: only {ready} of {streams} idle streams answered")
    return (after - before) / streams


async def _first_bytes(reader: asyncio.StreamReader) -> int:
    """1 once the stream has started (status 200 and its first event), else 0."""
    data = await reader.read(65536)
    while data and b"data:" not in data:
        data += await reader.read(65536)
    return int(data.startswith(b"HTTP/1.1 200"))


# --- the report ---------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    header = (
        f"{'target':<15}{'level':>6}{'streams':>8}{'errors':>7}{'reply/s':>9}"
        f"{'ttft p50':>10}{'p95':>8}{'p99':>8}{'total p50':>11}{'cpu ms/reply':>14}"
        f"{'peak MB':>9}{'driver cpu%':>12}"
    )
    timed_thinking = any(r.ttfr for r in results)
    if timed_thinking:
        header += f"{'reasoning p50':>15}"  # time to the first reasoning delta
    lines = [header, "-" * len(header)]
    for r in results:
        line = (
            f"{r.target:<15}{r.level:>6}{r.streams:>8}{r.errors:>7}{r.replies_per_s:>9.1f}"
            f"{r.ttft_ms(0.5):>10.1f}{r.ttft_ms(0.95):>8.1f}{r.ttft_ms(0.99):>8.1f}"
            f"{1000 * quantile(r.totals, 0.5):>11.1f}{r.cpu_ms_per_reply:>14.2f}"
            f"{r.peak_rss_kb / 1024:>9.1f}{100 * r.driver_cpu / r.elapsed:>12.0f}"
        )
        if timed_thinking:
            line += f"{1000 * quantile(r.ttfr, 0.5):>15.1f}"
        lines.append(line)
    return "\n".join(lines)


# Below this, what the pass-through adds is noise; comparing against it would only measure noise.
MIN_ADDED_MS = 0.5


def added_ttft_ms(result: Result, upstream: Result) -> float:
    return result.ttft_ms(0.5) - upstream.ttft_ms(0.5)


def ratios(by: dict[tuple[str, int], Result], levels: list[int]) -> tuple[str, list[str]]:
    lines, verdicts = [], []
    for level in levels:
        ours, floor, up = by[("ours", level)], by[("passthrough", level)], by[("upstream", level)]
        ours_added, floor_added = added_ttft_ms(ours, up), added_ttft_ms(floor, up)
        lines.append(
            f"level {level:>4}: ttft added over upstream: ours {ours_added:.1f} ms, pass-through "
            f"{floor_added:.1f} ms (x{ours_added / max(MIN_ADDED_MS, floor_added):.2f}); "
            f"cpu/reply x{ours.cpu_ms_per_reply / floor.cpu_ms_per_reply:.2f}; "
            f"replies/s x{ours.replies_per_s / floor.replies_per_s:.2f}; "
            f"peak RSS x{ours.peak_rss_kb / floor.peak_rss_kb:.2f}"
        )
        if ("passthrough-1", level) in by:
            one = by[("passthrough-1", level)]
            lines.append(
                f"            one shared client vs pool (pass-through): replies/s "
                f"x{one.replies_per_s / floor.replies_per_s:.2f}, cpu/reply "
                f"x{one.cpu_ms_per_reply / floor.cpu_ms_per_reply:.2f}"
            )
        if level == 50:
            verdicts.append(
                _verdict(
                    ours_added <= 2 * max(MIN_ADDED_MS, floor_added),
                    f"50 streams: ttft added {ours_added:.1f} ms <= 2 x pass-through's "
                    f"{floor_added:.1f} ms",
                )
            )
            verdicts.append(
                _verdict(
                    ours.cpu_ms_per_reply <= 2 * floor.cpu_ms_per_reply,
                    f"50 streams: cpu/reply {ours.cpu_ms_per_reply:.2f} ms <= 2 x pass-through's "
                    f"{floor.cpu_ms_per_reply:.2f} ms",
                )
            )
        if level == 200:
            verdicts.append(_verdict(ours.errors == 0, f"200 streams: {ours.errors} errors == 0"))
            verdicts.append(
                _verdict(
                    ours.replies_per_s >= 0.75 * floor.replies_per_s,
                    f"200 streams: replies/s {ours.replies_per_s:.1f} within 25% of "
                    f"pass-through's {floor.replies_per_s:.1f}",
                )
            )
    return "\n".join(lines), verdicts


def _verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=None, help="concurrent streams, e.g. 1,50,200")
    parser.add_argument("--tokens", type=int, default=None, help="upstream chunks per reply (50)")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument(
        "--reasoning",
        type=int,
        default=0,
        help="reasoning chunks before the content; times the first reasoning too (0)",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement (8)")
    parser.add_argument("--idle", type=int, default=None, help="idle streams for memory (1000)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measurements per target and level, pooled (1)"
    )
    parser.add_argument("--clients", type=int, default=None, help="pass-through pool size")
    parser.add_argument("--no-shared", action="store_true", help="skip the one-client pass-through")
    parser.add_argument("--quick", action="store_true", help="levels 1,20, 2 s each, 200 idle")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a budget fails")
    parser.add_argument(
        "--auth", action="store_true", help="ours in AUTH_MODE=jwt, every request with a JWT"
    )
    parser.add_argument(
        "--budgets",
        action="store_true",
        help="ours with every spend limit on, none ever reached (docs/budgets.md); "
        "without --auth the dev user is charged",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="ours with /metrics on (METRICS_TOKEN) and JSON logs; default: neither, text logs",
    )
    parser.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: two servers on one database instead (bench.scale_out)",
    )
    parser.add_argument("--redis", action="store_true", help="with --processes 2: and Redis too")
    parser.add_argument(
        "--profile",
        choices=("production",),
        help="production: auth, budgets, limits, metrics and JSON logs on, SQLite and "
        "PostgreSQL; with --processes 2 --redis, two processes on one PostgreSQL and Redis too "
        "(bench.production)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="ours (and variants) with STAGE_PROBE on: where the first token's time goes, "
        "stage by stage (app/core/stages.py)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help=f"more targets, ours with features on, in the same rounds: a comma list of "
        f"{', '.join(VARIANTS)}; each is compared with ours (features off) in the same run",
    )
    parser.add_argument(
        "--jobs",
        action="store_true",
        help="and a target of ours' /v1/chat/completions, driven with OpenAI-shaped requests "
        "and a service key (docs/jobs.md)",
    )
    parser.add_argument(
        "--postgres-url",
        help="with --profile: a PostgreSQL server (an account that may CREATE DATABASE) to use "
        "instead of a throwaway one",
    )
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    if args.redis and args.processes != 2:
        parser.error("--redis goes with --processes 2")
    if args.profile and (args.auth or args.budgets or args.ops or args.variants or args.reasoning):
        parser.error("--profile production sets its own features; it takes no feature flags")
    if args.jobs and (args.profile or args.processes == 2):
        parser.error("--jobs goes with the plain run (one process, no --profile)")
    if args.postgres_url and not args.profile:
        parser.error("--postgres-url goes with --profile production")
    if args.profile and args.processes == 2 and not args.redis:
        parser.error("--profile production runs two processes with Redis: add --redis")
    quick = args.quick
    args.levels = [int(x) for x in (args.levels or ("1,20" if quick else "1,50,200")).split(",")]
    args.tokens = args.tokens if args.tokens is not None else (20 if quick else 50)
    args.duration = args.duration if args.duration is not None else (2.0 if quick else 8.0)
    args.idle = args.idle if args.idle is not None else (200 if quick else 1000)
    return args


def ops_settings(args: argparse.Namespace) -> dict[str, str]:
    """Metrics and JSON logs on (`--ops`) or off: production's log default is JSON, so off
    names text explicitly, and the two runs differ in exactly these two settings."""
    if args.ops:
        return {"METRICS_TOKEN": "bench-metrics-token-0123456789abcdef", "LOG_FORMAT": "json"}
    return {"LOG_FORMAT": "text"}


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        procs = Processes(Path(workdir))
        try:
            yield procs
        finally:
            procs.stop_all()


# Every check a turn can meet (the override read, the price lookup, the sums and the live count
# in the reservation's INSERT), with limits no run reaches: what budgets cost, not what they refuse.
SPEND_LIMITS = {
    "BUDGET_USER_DAILY_USD": "1000000",
    "BUDGET_USER_MONTHLY_USD": "1000000",
    "BUDGET_GLOBAL_DAILY_USD": "1000000",
    "LIMIT_USER_CONCURRENT": "100000",
    "LIMIT_USER_RPM": "10000000",
}


@dataclass(frozen=True)
class Variant:
    """Ours with features on, measured as a target of its own beside plain ours."""

    auth: bool = False
    budgets: bool = False
    ops: bool = False

    def settings(self) -> dict[str, str]:
        return {
            **(SPEND_LIMITS if self.budgets else {}),
            **ops_settings(argparse.Namespace(ops=self.ops)),
        }


# `--variants`: what each feature costs, on against off in one run (interleaved rounds, so a
# machine that drifts weighs on both alike; separate runs vary by more than the features cost).
VARIANTS = {
    "auth": Variant(auth=True),
    "budgets": Variant(budgets=True),
    "ops": Variant(ops=True),
    "all": Variant(auth=True, budgets=True, ops=True),
}


def variant_lines(by: dict[tuple[str, int], Result], names: list[str], levels: list[int]) -> str:
    """Each variant against plain ours, per level: CPU per reply and time to first token."""
    lines = []
    for level in levels:
        ours, up = by[("ours", level)], by[("upstream", level)]
        for name in names:
            v = by[(f"ours+{name}", level)]
            lines.append(
                f"level {level:>4}: ours+{name:<8} cpu/reply {v.cpu_ms_per_reply:.2f} ms vs "
                f"{ours.cpu_ms_per_reply:.2f} ms "
                f"({100 * (v.cpu_ms_per_reply / ours.cpu_ms_per_reply - 1):+.1f}%); ttft added "
                f"{added_ttft_ms(v, up):.1f} ms vs {added_ttft_ms(ours, up):.1f} ms; replies/s "
                f"x{v.replies_per_s / ours.replies_per_s:.2f}; errors {v.errors}"
            )
    return "\n".join(lines)


# The upstream's own wait for its first token: in the time to first token, not in what we add.
UPSTREAMS_OWN = "first_chunk"


def stage_table(results: list[Result], levels: list[int]) -> str:
    """Per probed target and level, each stage's mean and p50 (ms) and its share of what the
    server adds (every stage but the upstream's own wait; means, so the shares add up)."""
    lines = [
        "stages to the first delta (server-side, STAGE_PROBE): mean / p50 ms, share of what "
        f"the server adds (all but {UPSTREAMS_OWN}, the upstream's own wait)"
    ]
    for target in dict.fromkeys(r.target for r in results if r.stages):
        by_level = {r.level: r.stages for r in results if r.target == target}
        lines.append(f"{target:<14}" + "".join(f"{f'{level} streams':>26}" for level in levels))
        names = [
            n for n in next(iter(by_level.values())) if any(s.get(n) for s in by_level.values())
        ]
        added = {
            level: sum(
                sum(ms) / len(ms) for name, ms in stages.items() if ms and name != UPSTREAMS_OWN
            )
            for level, stages in by_level.items()
        }
        for name in names:
            cells = []
            for level in levels:
                ms = by_level[level].get(name, [])
                if not ms:
                    cells.append(f"{'-':>26}")
                    continue
                mean = sum(ms) / len(ms)
                share = "" if name == UPSTREAMS_OWN else f"{100 * mean / added[level]:.0f}%"
                cells.append(f"{mean:>10.2f} /{quantile(ms, 0.5):>7.2f}{share:>7}")
            lines.append(f"  {name:<12}" + "".join(cells))
        lines.append(
            f"  {'added':<12}" + "".join(f"{added[level]:>10.2f}{'':>16}" for level in levels)
        )
    return "\n".join(lines)


Target = tuple[Server | Group, Protocol]


async def measure_rounds(
    targets: list[Target], args: argparse.Namespace, *, time_limit: float
) -> list[Result]:
    """Every target at every level, `args.rounds` times each, pooled per target and level."""
    results: list[Result] = []
    for level in args.levels:
        rounds: dict[str, list[Result]] = {server.name: [] for server, _ in targets}
        for round_ in range(args.rounds):
            # Turn by turn, in alternating order: a machine that slows down or speeds up
            # during a level weighs on every target alike.
            for server, protocol in targets[:: -1 if round_ % 2 else 1]:
                result = await measure(
                    server, protocol, level=level, duration=args.duration, time_limit=time_limit
                )
                rounds[server.name].append(result)
                print(
                    f"  measured {result.target} at {level} streams "
                    f"(round {round_ + 1} of {args.rounds})",
                    file=sys.stderr,
                    flush=True,
                )
        results.extend(pooled(rounds[server.name]) for server, _ in targets)
    return results


async def main_async(args: argparse.Namespace) -> list[str]:
    time_limit = 60.0 + args.tokens * args.delay
    with processes() as procs:
        upstream = procs.fake_upstream(
            "upstream", tokens=args.tokens, delay=args.delay, reasoning=args.reasoning
        )

        def timed(protocol: Protocol, first_reasoning: re.Pattern[bytes]) -> Protocol:
            """The protocol, timing the first reasoning as well when the upstream thinks."""
            if not args.reasoning:
                return protocol
            return dataclasses.replace(protocol, first_reasoning=first_reasoning)

        upstream_mark = UPSTREAM_REASONING
        targets: list[Target] = [
            (upstream, timed(OPENROUTER, upstream_mark)),
            (
                procs.passthrough("passthrough", upstream, clients=args.clients),
                timed(PASSTHROUGH, upstream_mark),
            ),
        ]
        if not args.no_shared:
            targets.append(
                (
                    procs.passthrough("passthrough-1", upstream, clients=1),
                    timed(PASSTHROUGH, upstream_mark),
                )
            )
        spend = SPEND_LIMITS if args.budgets else None
        targets.append(
            (
                procs.ours(
                    "ours",
                    upstream,
                    auth=args.auth,
                    settings={**(spend or {}), **ops_settings(args)},
                    stages=args.stages,
                ),
                timed(ours_protocol(args.auth), OURS_REASONING),
            )
        )
        for name in args.variants:
            variant = VARIANTS[name]
            targets.append(
                (
                    procs.ours(
                        f"ours+{name}",
                        upstream,
                        auth=variant.auth,
                        settings=variant.settings(),
                        stages=args.stages,
                    ),
                    timed(ours_protocol(variant.auth), OURS_REASONING),
                )
            )
        if args.jobs:
            jobs = procs.ours(
                "jobs",
                upstream,
                auth=False,
                settings={"ADMIN_TOKEN": ADMIN_TOKEN, **ops_settings(args)},
            )
            targets.append((jobs, timed(jobs_protocol(await service_key(jobs)), upstream_mark)))
        results = await measure_rounds(targets, args, time_limit=time_limit)
    print(table(results))
    by = {(r.target, r.level): r for r in results}
    summary, verdicts = ratios(by, args.levels)
    print("\nratios to the pass-through (pool), ttft at p50:")
    print(summary)
    if args.jobs:
        lines, jobs_verdicts = jobs_lines(by, args.levels)
        print("\njobs (/v1/chat/completions) against the pass-through, same run:")
        print(lines)
        verdicts.extend(jobs_verdicts)
    if args.variants:
        print("\nfeatures on against off (ours), same run:")
        print(variant_lines(by, args.variants, args.levels))
    if args.stages:
        print("\n" + stage_table(results, args.levels))
    if args.idle:
        print(f"\nidle streams ({args.idle}, upstream silent after its first chunk):")
        with processes() as procs:
            slow = procs.fake_upstream("slow-upstream", tokens=1, delay=3600.0)
            per_stream = {}
            for server, protocol in [
                (procs.passthrough("passthrough", slow, clients=args.clients), PASSTHROUGH),
                (
                    procs.ours("ours", slow, auth=args.auth, settings=ops_settings(args)),
                    ours_protocol(args.auth),
                ),
            ]:
                per_stream[server.name] = await idle_memory(
                    server, protocol, streams=args.idle, time_limit=120.0
                )
                print(f"  {server.name:<13} {per_stream[server.name]:.1f} KB RSS per open stream")
            verdicts.append(
                _verdict(
                    per_stream["ours"] < 50,
                    f"{args.idle} idle streams: {per_stream['ours']:.1f} KB each < 50 KB",
                )
            )
    return verdicts


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"
