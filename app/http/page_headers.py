"""The headers of everything a browser renders from us: the chat page, the costs page and the
static files (the widget's script and styles among them).

The Content-Security-Policy is the page's second line against model output (markdown.js makes
a reply's image a link, so nothing renders one): `default-src 'self'` lets no script, style,
font or connection come from elsewhere, and `img-src 'self' data:` no image, so text that got
into a model's context cannot make the page send the conversation anywhere by being shown.
`frame-ancestors` is the operator's (CSP_FRAME_ANCESTORS). `Referrer-Policy: no-referrer`: a
link in a reply, once clicked, does not learn which conversation it was in. `nosniff`: a file
is only ever what its Content-Type says.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings


def page_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            f"form-action 'self'; frame-ancestors {settings.csp_frame_ancestors}"
        ),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


class WithPageHeaders:
    """An ASGI app (the static files) whose responses carry `page_headers`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [
            (name.lower().encode(), value.encode())
            for name, value in page_headers(scope["state"]["app"].settings).items()
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
