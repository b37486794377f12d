"""What wraps every route: CORS when CORS_ORIGINS allows other origins, and the body limit.

Pure ASGI, not Starlette's `BaseHTTPMiddleware`: that one would put each response, SSE streams
included, through a memory stream and an extra task.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response
from app.settings import Settings

# The one route whose body is a file: its own, larger limit, and its own code.
UPLOAD_PATH = "/api/uploads"


def _too_large(limit: int, *, upload: bool = False) -> ApiError:
    if upload:
        return ApiError(
            413, "upload_too_large", f"the upload is larger than MAX_UPLOAD_BYTES ({limit} bytes)"
        )
    return ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")


class BodyLimit:
    """Refuse a request body over `max_bytes` before it is read whole.

    A declared `Content-Length` over the limit is answered at once, the body unread. A body
    without one (chunked) is counted as it arrives: the route that reads it gets the 413 raised
    from `receive` once the count passes the limit, so at most `max_bytes` plus one chunk is
    ever held. `POST /api/uploads` has its own limit (`upload_bytes`: MAX_UPLOAD_BYTES and the
    multipart framing; 413 upload_too_large), the route counts the file itself.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int, max_upload: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.upload_bytes, self.max_upload = upload_bytes, max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        limit = self.upload_bytes if upload else self.max_bytes
        too_large = _too_large(self.max_upload if upload else limit, upload=upload)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        # The server has already refused a Content-Length that is not a number; a length of
        # more digits than int() will read from text is over any limit.
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            error = too_large
            await error_response(error.status, error.code, error.message)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, counted, send)


# What the coach widget (and a host page's own client) sends: JSON, a bearer token, the event
# to resume after, and a retried POST's key.
CORS_HEADERS = ["Accept", "Content-Type", "Authorization", "Last-Event-ID", "Idempotency-Key"]


def http_middleware(settings: Settings) -> list[Middleware]:
    """The app's middleware, outermost first: CORS outside, so that a 413 can be read too."""
    middleware = []
    if settings.cors_origins:  # none by default: same-origin pages need no CORS at all
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=CORS_HEADERS,
                max_age=600,
            )
        )
    return [
        *middleware,
        Middleware(
            BodyLimit,
            max_bytes=settings.body_limit,
            upload_bytes=settings.upload_body_limit,
            max_upload=settings.max_upload_bytes,
        ),
    ]
