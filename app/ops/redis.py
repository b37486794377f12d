"""Redis clients for REDIS_URL (Heroku Key-Value Store, or any Redis 5+).

Redis only ever speeds things up here: every caller copes with it being away (see
`app/replies/redis_log.py`, `app/replies/signals.py`), so a client gives up fast rather than
retrying for seconds the way redis-py does by default.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# What a Redis that went away raises: redis-py's own errors, and the socket's.
REDIS_FAULTS = (RedisError, OSError)


def client_options(url: str, *, read_timeout: float | None) -> dict[str, Any]:
    """redis-py's options for `url`. `read_timeout` bounds each reply's wait (None: none, for
    the blocking reader and pub/sub, whose waits are long by design)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": read_timeout,
        # A half-open connection (the server gone without a FIN) is found by the kernel.
        "socket_keepalive": True,
        # Once, at once: a pooled connection that died with a restarted server reconnects on
        # the retry; a server that is down fails in milliseconds, and callers fall back.
        "retry": Retry(NoBackoff(), 1),
    }
    if url.startswith("rediss://"):
        # Heroku's Key-Value Store speaks TLS with a self-signed certificate: there is no CA
        # to verify it against (Heroku's documented setting).
        options["ssl_cert_reqs"] = "none"
    return options


def connect_redis(url: str, *, read_timeout: float | None = 5.0) -> Redis:
    """A client (a pool of connections, opened on first use): no I/O here."""
    return Redis.from_url(url, **client_options(url, read_timeout=read_timeout))
