"""The browser chat page at `/` and its static files (page, styles, scripts, coach widget)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.http.page_headers import WithPageHeaders, page_headers
from app.http.state import app_state

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


async def index(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the chat page
        content: {text/html: {schema: {type: string}}}
    """
    headers = {"Cache-Control": "no-cache", **page_headers(app_state(request).settings)}
    return FileResponse(STATIC_DIR / "index.html", headers=headers)


routes = [
    Route("/", index, methods=["GET"]),
    Mount("/static", app=WithPageHeaders(StaticFiles(directory=STATIC_DIR)), name="static"),
]
