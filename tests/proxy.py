"""A TCP proxy in front of the app that can cut its reply streams, as a router or a flaky
network would: the browser sees its `EventSource` connection drop and must resume by itself.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field

# A keep-alive connection carries many requests; each starts with its request line.
REQUEST_START = re.compile(rb"^(?=(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /)", re.MULTILINE)


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    requests: list[bytearray] = field(default_factory=list)  # what the client sent, by request

    @property
    def is_stream(self) -> bool:
        """Whether its latest request is for a reply stream (which then holds it open)."""
        return bool(self.requests) and is_stream_request(self.requests[-1])

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def is_stream_request(request: bytes) -> bool:
    request_line = request.split(b"\r\n", 1)[0]
    return request_line.startswith(b"GET /api/messages/") and b"/stream" in request_line


class CuttingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._connections: list[_Connection] = []
        self._requests: list[bytearray] = []  # of all connections, in the order they came
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def stream_requests(self) -> list[bytes]:
        """Every reply-stream request so far (request line and headers), oldest first."""
        with self._lock:
            return [bytes(r) for r in self._requests if is_stream_request(r)]

    def requests_to(self, path: str) -> list[bytes]:
        """Every request for `path` (any query string) so far, as the app received it."""
        line = f" {path}".encode()
        with self._lock:
            return [
                bytes(r)
                for r in self._requests
                if r.split(b"\r\n", 1)[0].split(b"?")[0].endswith(line)
            ]

    def cut_streams(self) -> int:
        """Drop every open reply-stream connection; returns how many were cut."""
        with self._lock:
            streams = [c for c in self._connections if c.is_stream and c.client.fileno() != -1]
        for connection in streams:
            connection.close()
        return len(streams)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the server is gone (a browser reconnecting after its test)
                client.close()
                continue
            connection = _Connection(client, upstream)
            with self._lock:
                self._connections.append(connection)
            for source, sink, record in (
                (connection.client, connection.upstream, True),
                (connection.upstream, connection.client, False),
            ):
                threading.Thread(
                    target=self._pump, args=(connection, source, sink, record), daemon=True
                ).start()

    def _record(self, connection: _Connection, data: bytes) -> None:
        with self._lock:
            for piece in REQUEST_START.split(data):
                if piece and REQUEST_START.match(piece):
                    request = bytearray(piece)
                    connection.requests.append(request)
                    self._requests.append(request)
                elif piece and connection.requests:
                    connection.requests[-1].extend(piece)

    def _pump(
        self,
        connection: _Connection,
        source: socket.socket,
        sink: socket.socket,
        record: bool,
    ) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    self._record(connection, data)
                sink.sendall(data)
        except OSError:
            pass  # cut, or the other side went away
        finally:
            connection.close()
