"""The chat page, the costs page and the static files (the widget's among them) carry the
Content-Security-Policy, Referrer-Policy and nosniff headers (issue 30, item 1); the frame
ancestors are the operator's setting."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from app.settings import Settings

PATHS = ["/", "/admin/costs", "/static/app.js", "/static/coach.js", "/static/coach.css"]


@pytest.mark.parametrize("path", PATHS)
def test_pages_and_their_files_send_the_security_headers(server, path):
    response = httpx.get(f"{server.url}{path}", timeout=5)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["frame-ancestors"] == "'self'"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_frame_ancestors_come_from_the_setting(start_server):
    server = start_server(csp_frame_ancestors="'self'  https://host.example")
    policy = httpx.get(server.url, timeout=5).headers["content-security-policy"]
    assert policy.endswith("frame-ancestors 'self' https://host.example")


@pytest.mark.parametrize(
    "value", ["", "'self'; script-src *", "javascript:", "https://host.example/path"]
)
def test_a_frame_ancestors_that_is_not_sources_is_refused(value):
    with pytest.raises(ValidationError, match=r"frame|origin"):
        Settings(_env_file=None, csp_frame_ancestors=value)
