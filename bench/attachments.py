"""What a PDF attachment costs the server (issue #35): its peak memory and CPU time for the
upload and for a turn that sends it, beside a turn without one.

    .venv/bin/python -m bench.attachments                          # SQLite in a temp dir, 5 MB
    .venv/bin/python -m bench.attachments --database postgresql://…/db --pdf-mb 5

A server of ours (`python -m app serve`, AUTH_MODE=dev) and the simulator each run in a process
of their own, so the server's figures are its own: peak RSS (`VmHWM` of /proc/<pid>/status,
which only grows: each step's rise is what it took beyond every step before) and CPU time
(user + system, /proc/<pid>/stat) around each step, after three warm-up turns. The PDF is
three pages of noise (it does not compress), `--pdf-mb` megabytes. The turns go to
`openai/gpt-4o`, which reads files: the whole PDF goes upstream as a data URL. The lines are
read by people (docs/attachments.md keeps the figures); nothing here is a verdict.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def usage(pid: int) -> tuple[int, float]:
    """The process's peak RSS (KiB) and CPU time (s) so far."""
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return peak, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def noise_pdf(megabytes: float) -> bytes:
    """Three pages of random pixels, about `megabytes` MB in all (JPEG at quality 95)."""
    side = int((megabytes * 1_000_000 / 3 / 1.18) ** 0.5)
    rng = random.Random(7)
    pages = [Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)) for _ in range(3)]
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], quality=95)
    return out.getvalue()


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within 60 s")


def measure(database: str, pdf: bytes) -> list[dict[str, Any]]:
    sim_port, port = free_port(), free_port()
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import uvicorn; from app.dev.simulator import FakeOpenRouter; "
            f"uvicorn.run(FakeOpenRouter().app, port={sim_port}, log_level='warning')",
        ],
        cwd=ROOT,
    )
    env = {
        **os.environ,
        "PORT": str(port),
        "APP_ENV": "development",
        "AUTH_MODE": "dev",
        "OPENROUTER_API_KEY": "sk-or-bench",
        "OPENROUTER_MODEL": "openai/gpt-4o",
        "OPENROUTER_BASE_URL": f"http://127.0.0.1:{sim_port}/api/v1",
        "DATABASE_URL": database,
        "MIGRATE_ON_START": "true",
        "AUTO_TITLES": "false",
        "LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env)
    steps: list[dict[str, Any]] = []
    try:
        wait_for(f"http://127.0.0.1:{sim_port}/api/v1/models")
        wait_for(f"http://127.0.0.1:{port}/healthz")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:

            def turn(**extra: Any) -> dict[str, Any]:
                body = {"message": "Summarise it, please.", "stream": False, **extra}
                answer = http.post("/api/chat", json=body)
                assert answer.status_code == 200, answer.text
                return answer.json()

            def step(name: str, action: Callable[[], Any]) -> Any:
                peak, cpu = usage(server.pid)
                result = action()
                peak_after, cpu_after = usage(server.pid)
                steps.append(
                    {
                        "step": name,
                        "peak_rss_mib": round(peak_after / 1024, 1),
                        "peak_rise_mib": round((peak_after - peak) / 1024, 1),
                        "cpu_ms": round((cpu_after - cpu) * 1000),
                    }
                )
                return result

            for _ in range(3):  # imports, pools, the catalog
                turn()
            step("turn without attachments", turn)
            files = {"file": ("doc.pdf", pdf, "application/pdf")}
            uploaded = step("upload of the PDF", lambda: http.post("/api/uploads", files=files))
            assert uploaded.status_code == 201, uploaded.text
            upload_id = uploaded.json()["id"]
            step("turn with the PDF", lambda: turn(attachments=[upload_id]))
            step("turn with the PDF, again", lambda: turn(attachments=[upload_id]))
            step("turn without attachments, after", turn)
    finally:
        server.terminate()
        simulator.terminate()
        server.wait()
        simulator.wait()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="a database URL (default: SQLite in a temp dir)")
    parser.add_argument("--pdf-mb", type=float, default=5.0)
    args = parser.parse_args()
    pdf = noise_pdf(args.pdf_mb)
    with tempfile.TemporaryDirectory() as folder:
        database = args.database or f"sqlite:///{folder}/bench.db"
        steps = measure(database, pdf)
    print(f"PDF: {len(pdf):,} bytes, 3 pages; database: {database.split(':', 1)[0]}")
    for s in steps:
        print(
            f"{s['step']:34s} peak RSS {s['peak_rss_mib']:7.1f} MiB "
            f"(+{s['peak_rise_mib']:5.1f})  CPU {s['cpu_ms']:5d} ms"
        )
    print(json.dumps({"pdf_bytes": len(pdf), "steps": steps}))


if __name__ == "__main__":
    main()
