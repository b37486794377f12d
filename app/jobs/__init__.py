"""Jobs: the host app's own calls, through `/v1/chat/completions` and `/v1/models` (OpenAI's
API, for its SDKs), on the platform's OpenRouter key, with the ledger, budgets and limits chat
has (issue 32, docs/jobs.md).

- `keys`: service keys (`sc-…`), kept as hashes, each with its models, budgets and limits.
- `request`: a chat completions body, checked: what goes upstream, the job tag, the bound.
- `service`: `Jobs`, built by the lifespan: a key's admission, the live jobs' heartbeat.
- `relay`: one job: relayed (streaming or not), its ledger row and reservation settled.
- `errors`: OpenAI's error shape, and OpenRouter's refusals as the caller's status.

Routes: app/http/routes/jobs.py (`/v1`), app/http/routes/service_keys.py (`/api/admin/keys`).
"""
