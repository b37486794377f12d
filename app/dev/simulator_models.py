"""The simulator's `GET /models` payload: OpenRouter's exact shape, with real oddities.

A dozen entries: the default recommended models, the development fallback model, a reasoning
model, a multimodal one, one that caches prompts where a request marks breakpoints (cache read
and write prices) and one that caches by itself (a read price), one billed per request, a free
one, one with a small (4k) context window, the `openrouter/auto` router (whose prices are
"-1"), and entries with missing pricing, a price that is not a number, no `top_provider`, and no
`id` at all. Prices are USD per token, as strings, as OpenRouter sends them; the simulator bills
each model at its own.
"""

from __future__ import annotations

from typing import Any

_CHAT_PARAMETERS = ["max_tokens", "temperature", "top_p", "stop", "frequency_penalty", "seed"]
_TOOLS = ["tools", "tool_choice"]


def _model(
    model_id: str,
    name: str,
    *,
    context: int | None,
    max_completion: int | None,
    prompt: str,
    completion: str,
    inputs: tuple[str, ...] = ("text",),
    parameters: tuple[str, ...] = (),
    request: str = "0",
    image: str = "0",
    default_parameters: dict[str, Any] | None = None,
    tokenizer: str = "Other",
    cache_read: str | None = None,
    cache_write: str | None = None,
) -> dict[str, Any]:
    modality = "+".join(inputs) + "->text"
    cache = {"input_cache_read": cache_read} if cache_read is not None else {}
    if cache_write is not None:
        cache["input_cache_write"] = cache_write
    return {
        "id": model_id,
        "canonical_slug": model_id.split(":", 1)[0],
        "hugging_face_id": None,
        "name": name,
        "created": 1_720_000_000,
        "description": f"{name}, as listed by the OpenRouter simulator.",
        "context_length": context,
        "architecture": {
            "modality": modality,
            "input_modalities": list(inputs),
            "output_modalities": ["text"],
            "tokenizer": tokenizer,
            "instruct_type": None,
        },
        "pricing": {
            "prompt": prompt,
            "completion": completion,
            "request": request,
            "image": image,
            "web_search": "0",
            "internal_reasoning": "0",
            **cache,
        },
        "top_provider": {
            "context_length": context,
            "max_completion_tokens": max_completion,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": [*_CHAT_PARAMETERS, *parameters],
        "default_parameters": default_parameters,
    }


def simulated_models() -> dict[str, Any]:
    """A fresh copy each call, so a test may edit its own."""
    no_pricing = _model(
        "cognitivecomputations/dolphin-mixtral-8x22b",
        "Dolphin 2.9.2 Mixtral 8x22B",
        context=16000,
        max_completion=None,
        prompt="0",
        completion="0",
    )
    del no_pricing["pricing"]
    no_top_provider = _model(
        "nousresearch/hermes-3-llama-3.1-405b",
        "Nous: Hermes 3 405B Instruct",
        context=131072,
        max_completion=None,
        prompt="0.0000007",
        completion="0.0000008",
        parameters=("tools",),
    )
    del no_top_provider["top_provider"]
    return {
        "data": [
            _model(
                "anthropic/claude-3.5-sonnet",
                "Anthropic: Claude 3.5 Sonnet",
                context=200000,
                max_completion=8192,
                prompt="0.000003",
                completion="0.000015",
                image="0.0048",
                inputs=("text", "image", "file"),
                parameters=(*_TOOLS, "top_k"),
                tokenizer="Claude",
            ),
            # Caches only where a request marks `cache_control` (the simulator does as
            # Anthropic does: app/dev/simulator.py), reads at 0.1x the input price, writes
            # at 1.25x: Claude Sonnet 4's prices.
            _model(
                "anthropic/claude-sonnet-4",
                "Anthropic: Claude Sonnet 4",
                context=200000,
                max_completion=64000,
                prompt="0.000003",
                completion="0.000015",
                cache_read="0.0000003",
                cache_write="0.00000375",
                image="0.0048",
                inputs=("text", "image", "file"),
                parameters=(*_TOOLS, "top_k"),
                tokenizer="Claude",
            ),
            _model(
                "openai/gpt-4o",
                "OpenAI: GPT-4o",
                context=128000,
                max_completion=16384,
                prompt="0.0000025",
                completion="0.00001",
                cache_read="0.00000125",  # cached by itself: no breakpoints
                image="0.003613",
                inputs=("text", "image", "file"),
                parameters=(*_TOOLS, "response_format", "structured_outputs", "logprobs"),
                tokenizer="GPT",
            ),
            _model(
                "openai/gpt-4o-mini",
                "OpenAI: GPT-4o-mini",
                context=128000,
                max_completion=16384,
                prompt="0.00000015",
                completion="0.0000006",
                image="0.000217",
                inputs=("text", "image", "file"),
                parameters=(*_TOOLS, "response_format", "structured_outputs"),
                tokenizer="GPT",
            ),
            _model(
                "meta-llama/llama-3.1-70b-instruct",
                "Meta: Llama 3.1 70B Instruct",
                context=131072,
                max_completion=None,
                prompt="0.0000001",
                completion="0.00000028",
                parameters=tuple(_TOOLS),
                tokenizer="Llama3",
            ),
            _model(
                "mistralai/mixtral-8x7b-instruct",
                "Mistral: Mixtral 8x7B Instruct",
                context=32768,
                max_completion=16384,
                prompt="0.00000008",
                completion="0.00000024",
                parameters=tuple(_TOOLS),
                tokenizer="Mistral",
            ),
            _model(
                "deepseek/deepseek-r1",
                "DeepSeek: R1",
                context=163840,
                max_completion=163840,
                prompt="0.0000004",
                completion="0.000002",
                parameters=("reasoning", "include_reasoning", *_TOOLS),
                default_parameters={"temperature": None, "top_p": None},
                tokenizer="DeepSeek",
            ),
            _model(
                "google/gemini-2.0-flash-001",
                "Google: Gemini 2.0 Flash",
                context=1048576,
                max_completion=8192,
                prompt="0.0000001",
                completion="0.0000004",
                image="0.0000258",
                inputs=("text", "image", "file", "audio", "video"),
                parameters=(*_TOOLS, "response_format", "structured_outputs"),
                tokenizer="Gemini",
            ),
            _model(
                "perplexity/sonar",
                "Perplexity: Sonar",
                context=127072,
                max_completion=None,
                prompt="0.000001",
                completion="0.000001",
                request="0.005",
                inputs=("text", "image"),
            ),
            _model(
                "meta-llama/llama-3.2-3b-instruct:free",
                "Meta: Llama 3.2 3B Instruct (free)",
                context=131072,
                max_completion=4096,
                prompt="0",
                completion="0",
                tokenizer="Llama3",
            ),
            _model(
                "gryphe/mythomax-l2-13b",
                "MythoMax 13B",
                context=4096,
                max_completion=4096,
                prompt="0.000000065",
                completion="0.000000065",
                tokenizer="Llama2",
            ),
            _model(
                "openrouter/auto",
                "Auto Router",
                context=2000000,
                max_completion=None,
                prompt="-1",
                completion="-1",
                inputs=("text", "image"),
                parameters=tuple(_TOOLS),
                tokenizer="Router",
            ),
            _model(
                "thedrummer/rocinante-12b",
                "TheDrummer: Rocinante 12B",
                context=32768,
                max_completion=None,
                prompt="0.00000025",
                completion="abc",
            ),
            no_pricing,
            no_top_provider,
            {"name": "An entry without an id", "pricing": {"prompt": "0.000001"}},
        ]
    }
