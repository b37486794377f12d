"""OpenRouter model ids (`provider/model`, e.g. `openai/gpt-4o`): one pattern, one check, and
`ModelId`, the pydantic type that applies them.

Settings, the agents file and run-time agent overrides all name models; checking them the same
way means an id one of them accepts is never refused by another. The model catalog is the
exception on purpose: it keeps whatever ids OpenRouter lists.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def check_model_id(value: str) -> str:
    """`value` without surrounding spaces, if it is a model id; else ValueError."""
    value = value.strip()
    if not MODEL_ID.match(value):
        raise ValueError(f"must look like provider/model, e.g. openai/gpt-4o (got {value!r})")
    return value


ModelId = Annotated[str, AfterValidator(check_model_id)]
