"""MAX_BODY_BYTES: a body over the limit is refused with 413 before it is read whole.

Over a real socket, both ways a body can come: with a `Content-Length` (answered before the
body is sent at all) and chunked without one (answered once the count passes the limit, while
the client is still sending). Either way nothing is saved and nothing goes upstream.
"""

from __future__ import annotations

import contextlib
import json
import socket

from tests.support import AppServer, local_client

LIMIT = 100_000
FIFTY_MB = 50 * 1024 * 1024
CHUNK = 16 * 1024


def _connect(server: AppServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


def _head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict]:
    """Status and JSON body of the response, reading on from `data` (what has come so far)."""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    [length] = [
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body[:length])


def _nothing_saved_or_sent(database, fake) -> None:
    assert database.query("SELECT COUNT(*) AS n FROM messages") == [{"n": 0}]
    assert fake.requests == []


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    start_server, database, fake
):
    server = start_server(max_body_bytes=LIMIT)
    with _connect(server) as sock:
        # 50 MB announced, not one byte of it sent: the answer must not wait for the body.
        sock.sendall(_head("/api/chat", f"Content-Length: {FIFTY_MB}"))
        status, body = _response(sock)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    _nothing_saved_or_sent(database, fake)


def test_a_chunked_body_is_refused_once_it_passes_the_limit(start_server, database, fake):
    server = start_server(max_body_bytes=LIMIT)
    chunk = f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n"
    sent = 0
    with _connect(server) as sock:
        start = b'{"message": "hi"'
        sock.sendall(_head("/api/chat", "Transfer-Encoding: chunked") + b"10\r\n" + start + b"\r\n")
        sock.setblocking(False)
        # Keep sending until the server answers; it must answer long before 50 MB. It closes
        # the connection after answering, our bytes unread (so a send may meet the reset); the
        # answer waits in our receive queue all the same.
        received = b""
        while sent < FIFTY_MB and not received:
            with contextlib.suppress(BlockingIOError):
                received = sock.recv(65536)
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
        sock.setblocking(True)
        status, body = _response(sock, received)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    # What the socket buffers hold besides: far less than the 50 MB the client would send.
    assert sent < 10 * 1024 * 1024, sent
    _nothing_saved_or_sent(database, fake)


def test_a_body_at_the_limit_is_read(start_server, fake):
    server = start_server(max_body_bytes=LIMIT)
    prefix = b'{"message": "hi", "stream": false}'
    at_limit = prefix + b" " * (LIMIT - len(prefix))
    with local_client(server.url) as http:
        assert http.post("/api/chat", content=at_limit).status_code == 200
        over = http.post("/api/chat", content=at_limit + b" ")
    assert over.status_code == 413 and over.json()["error"]["code"] == "body_too_large"
    assert len(fake.requests) == 1


def test_the_default_limit_admits_the_largest_valid_request(start_server, fake):
    # On a model whose context window holds it (gpt-4o's 128k tokens would answer 422
    # message_too_long_for_model: the body was admitted, the model could not take it).
    server = start_server(openrouter_model="google/gemini-2.0-flash-001")
    chars = server.settings.max_message_chars
    # A coach turn with both text fields full, every character an emoji, ASCII-only encoding:
    # the longest a valid request gets (12 bytes a character).
    body = json.dumps({"context": "😀" * chars, "question": "😀" * chars}).encode()
    assert len(body) > 2 * chars * 12 > 4 * chars
    with local_client(server.url, timeout=30) as http:
        response = http.post("/api/coach/messages", content=body)
    assert response.status_code == 202, response.text
