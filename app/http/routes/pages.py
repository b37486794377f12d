"""The browser chat page at `/` and its static files (page, styles, scripts, coach widget)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


async def index(request: Request) -> Response:
    """
    ---
    responses:
      200:
        description: the chat page
        content: {text/html: {schema: {type: string}}}
    """
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


routes = [
    Route("/", index, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
]
