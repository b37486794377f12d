"""Run an ASGI app under a real uvicorn server in a background thread.

Used for the development simulator and by the tests: streaming, pings and disconnects only
behave as in production over a real socket (in-process transports buffer the whole body).
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ThreadedServer:
    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, **config) -> None:
        self.host = host
        self.port = port or free_port(host)
        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "on")
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, **config))
        self._thread = threading.Thread(
            target=self.server.run, name=f"uvicorn:{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
