"""A `/v1/chat/completions` body, checked: what goes upstream, what the job is called, and
what bounds its cost.

The fields OpenRouter takes as OpenAI does are passed through as they came, after a check of
their shape; any other field is refused (400, `param` naming it), as OpenAI's API refuses an
argument it does not know. `metadata.job` (or the `X-Job` header) names the job in the
ledger and is not sent upstream; `stream_options` is accepted and not sent (OpenRouter always
sends usage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.model_id import MODEL_ID
from app.jobs.errors import invalid, unknown_parameter, unprocessable

# Passed upstream as they came (after the checks below).
PASSED = (
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "response_format",
    "tools",
    "tool_choice",
    "reasoning",
    "user",
)
ACCEPTED = frozenset((*PASSED, "stream", "stream_options", "metadata"))
ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))
RESPONSE_FORMATS = frozenset(("text", "json_object", "json_schema"))
TOOL_CHOICES = frozenset(("none", "auto", "required"))
MAX_JOB_CHARS = 100
MAX_USER_CHARS = 256
MAX_STOPS = 4


@dataclass(frozen=True)
class JobRequest:
    model: str
    body: dict[str, Any]  # what goes upstream (without `stream`: the client call adds it)
    stream: bool
    max_tokens: int | None  # the completion's bound, when the caller gave one
    job: str | None


def job_tag(value: Any, *, param: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_JOB_CHARS
        or not value.isprintable()
    ):
        raise unprocessable(f"a job tag is 1 to {MAX_JOB_CHARS} printable characters", param=param)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"`{name}` must be a number", param=name)
    if not low <= value <= high:
        raise unprocessable(f"`{name}` must be from {low:g} to {high:g}", param=name)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"`{name}` must be an integer", param=name)
    if value < 1:
        raise unprocessable(f"`{name}` must be at least 1", param=name)
    return value


def _messages(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise invalid("`messages` must be a non-empty array of messages", param="messages")
    for index, message in enumerate(value):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(f"`{param}` must be an object", param=param)
        role = message.get("role")
        if role not in ROLES:
            raise invalid(
                f"`{param}.role` must be one of {', '.join(sorted(ROLES))}", param=f"{param}.role"
            )
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise invalid(f"`{param}.content` is required", param=f"{param}.content")
        if content is not None and not isinstance(content, str | list):
            raise invalid(
                f"`{param}.content` must be a string or an array of parts",
                param=f"{param}.content",
            )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise invalid(
                f"`{param}.tool_call_id` is required for a tool message",
                param=f"{param}.tool_call_id",
            )


def _stop(value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOPS
        or not all(isinstance(s, str) for s in value)
    ):
        raise invalid(f"`stop` must be a string or up to {MAX_STOPS} strings", param="stop")


def _response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise invalid(
            "`response_format.type` must be one of " + ", ".join(sorted(RESPONSE_FORMATS)),
            param="response_format",
        )
    if value["type"] == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise invalid(
                "`response_format.json_schema` must be an object with a `name`",
                param="response_format.json_schema",
            )


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("`tools` must be an array", param="tools")
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
            ):
                raise invalid(
                    f"`tools[{index}]` must be a function tool with a name",
                    param=f"tools[{index}]",
                )
    choice = body.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise invalid(
            "`tool_choice` must be none, auto, required or a function", param="tool_choice"
        )


def job_request(body: dict[str, Any], *, header_job: str | None) -> JobRequest:
    """The checked request; 400 (or 422 for a value out of range) naming the parameter."""
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise unknown_parameter(unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not MODEL_ID.match(model):
        raise invalid("`model` must be an OpenRouter model id such as openai/gpt-4o", param="model")
    _messages(body.get("messages"))
    _number(body, "temperature", 0, 2)
    max_tokens = _positive_int(body, "max_tokens")
    max_completion = _positive_int(body, "max_completion_tokens")
    if max_tokens is not None and max_completion is not None:
        raise invalid(
            "give one of `max_tokens`, `max_completion_tokens`", param="max_completion_tokens"
        )
    _stop(body.get("stop"))
    _response_format(body.get("response_format"))
    _tools(body)
    if body.get("reasoning") is not None and not isinstance(body["reasoning"], dict):
        raise invalid("`reasoning` must be an object", param="reasoning")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise invalid(f"`user` must be a string of at most {MAX_USER_CHARS}", param="user")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("`stream` must be true or false", param="stream")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise invalid("`stream_options` must be an object", param="stream_options")
    metadata = body.get("metadata")
    job = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise invalid("`metadata` must be an object", param="metadata")
        if "job" in metadata:
            job = job_tag(metadata["job"], param="metadata.job")
    if header_job is not None:
        header = job_tag(header_job, param="X-Job")
        if job is not None and job != header:
            raise invalid("`X-Job` and `metadata.job` name different jobs", param="metadata.job")
        job = header
    upstream = {name: body[name] for name in PASSED if body.get(name) is not None}
    # One name upstream, the one OpenRouter documents; the bound the budget reserves for.
    bound = max_completion if max_completion is not None else max_tokens
    upstream.pop("max_completion_tokens", None)
    if bound is not None:
        upstream["max_tokens"] = bound
    return JobRequest(model=model, body=upstream, stream=stream, max_tokens=bound, job=job)
