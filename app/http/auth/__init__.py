"""Who is calling: the host app's users, by the JWTs it signs (issue 17, docs/auth.md).

- `identity`: what routes call: `identify`, `identify_from_query`, `identify_stream`, each
  giving a `Caller(user_id, is_admin)` (`app/http/admin.py`'s `require_admin` builds on them).
- `authenticator`: `Authenticator`, built by the lifespan from the settings (`AppState.auth`).
- `jwt_tokens`: verifying a host-app JWT (PyJWT) into a `Caller`.
- `jwks`: the host app's public keys, fetched from AUTH_JWKS_URL and cached.
- `stream_tokens`: the short-lived tokens our own `stream_url`s carry.
- `errors`: the 401 and 503 answers.
- `redact`: keeps `?access_token=` and `?stream_token=` out of the access log.
"""
