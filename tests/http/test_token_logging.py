"""No token in any log line: requests carrying tokens (header, `?access_token=`,
`?stream_token=`, good and bad; a two-step turn's stream_url, read and resumed) go through a
real uvicorn server with its access log on, and everything logged, formatted as uvicorn formats
it, is searched for the tokens."""

from __future__ import annotations

import copy
import io
import logging

from uvicorn.config import LOGGING_CONFIG

from app.core.redact import redact
from app.dev.threaded_server import ThreadedServer
from app.http.auth.stream_tokens import StreamTokens, derive_key
from app.main import create_app
from tests.http.identity_support import JWT_SETTINGS, SECRET, token
from tests.support import local_client, read_sse


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_tokens_never_reach_the_logs(make_settings):
    settings = make_settings(**JWT_SETTINGS)
    user_token = token(SECRET, "HS256")
    bad_token = token("another-secret-of-32-bytes-or-more!!", "HS256")
    stream_token = StreamTokens(derive_key(SECRET.encode()), ttl=60).issue("m1", "user-1")

    # uvicorn's own logging setup, access log on (log_level=info, as in production), with its
    # handlers writing here instead of to stdout/stderr.
    printed = io.StringIO()
    log_config = copy.deepcopy(LOGGING_CONFIG)
    for handler in log_config["handlers"].values():
        handler["stream"] = printed
    server = ThreadedServer(create_app(settings), log_level="info", log_config=log_config)
    everything_else = Capture()  # the app's own loggers, httpx, …: all reach the root
    logging.getLogger().addHandler(everything_else)
    try:
        server.start()
        with local_client(server.url) as http:
            assert http.get("/api/me", headers={"Authorization": f"Bearer {user_token}"}).is_success
            query = {"access_token": user_token, "stream_token": stream_token, "q": "kept"}
            assert http.get("/api/me", params=query).status_code == 401
            bad = http.get("/api/me", headers={"Authorization": f"Bearer {bad_token}"})
            assert bad.status_code == 401
            assert http.get(f"/api/me?%61ccess_token={bad_token}").status_code == 401
            responses = [bad.text, *bad.headers.values()]
            # The two-step flow: the stream_url carries a stream token the server signed.
            started = http.post(
                "/api/chat/messages",
                headers={"Authorization": f"Bearer {user_token}"},
                json={"message": "hi"},
            )
            assert started.status_code == 202, started.text
            issued = started.json()["stream_url"].split("stream_token=", 1)[1]
            assert read_sse(http, "GET", started.json()["stream_url"])[-1].event == "done"
            resumed = http.get(started.json()["stream_url"], headers={"Last-Event-ID": "1"})
            assert resumed.status_code == 200
    finally:
        server.stop()
        logging.getLogger().removeHandler(everything_else)

    access = printed.getvalue()
    assert "/api/me?access_token=[redacted]&stream_token=[redacted]&q=kept" in access, access
    assert "/api/me?%61ccess_token=[redacted] HTTP/1.1" in access, access
    assert "/stream?stream_token=[redacted] HTTP/1.1" in access, access
    logged = "\n".join([access, *everything_else.lines, *responses])
    for secret in (user_token, bad_token, stream_token, issued):
        # The whole token, and each of its parts (a signature alone is a secret too).
        for part in (secret, *secret.split(".")):
            assert part not in logged, part[:12]


def test_redact_leaves_everything_but_token_values_alone():
    assert redact("/a?x=1&access_token=t&y=2") == "/a?x=1&access_token=[redacted]&y=2"
    assert redact("/a?STREAM_TOKEN=t") == "/a?STREAM_TOKEN=[redacted]"
    assert redact("/a?token=t&access_tokens=u") == "/a?token=t&access_tokens=u"
    assert redact("127.0.0.1:5000") == "127.0.0.1:5000"
