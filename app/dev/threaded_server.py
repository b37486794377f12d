"""Run an ASGI app under a real uvicorn server in a background thread.

Used for the development simulator and by the tests: streaming, pings and disconnects only
behave as in production over a real socket (in-process transports buffer the whole body).

Such a server is a guest in a process whose logging belongs to someone else (the real server,
pytest). uvicorn's logging options act on the process-wide `uvicorn.*` loggers: `log_level`
sets their levels and the default `log_config` re-installs uvicorn's handlers. The simulator's
`log_level="warning"` thus silenced the real server's access log and "Uvicorn running on" line.
So uvicorn is told to leave logging alone, and this server's own lines below `log_level` are
dropped by a filter that knows them by the thread they are logged from.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

# The loggers a uvicorn server writes its start-up, error and access lines to.
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class _OwnLinesBelow(logging.Filter):
    """Drops the records one thread logs below a level; other threads' pass untouched."""

    def __init__(self, thread_name: str, level: int) -> None:
        super().__init__()
        self.thread_name, self.level = thread_name, level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != self.thread_name or record.levelno >= self.level


class ThreadedServer:
    def __init__(
        self,
        app,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        **config,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        config.setdefault("lifespan", "on")
        # A caller that wants uvicorn's own logging set-up (a test reading the access log as
        # production prints it) passes `log_config`; by default logging is left alone.
        config.setdefault("log_config", None)
        # workers=1: uvicorn.Config reads WEB_CONCURRENCY otherwise; a thread is one server.
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=self.host,
                port=self.port,
                log_level=None,
                workers=1,
                **config,
            )
        )
        self._thread = threading.Thread(
            target=self.server.run, name=f"uvicorn:{self.port}", daemon=True
        )
        self._filter = _OwnLinesBelow(self._thread.name, logging.getLevelName(log_level.upper()))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
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
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
