"""A call's token estimate, reserved against the TPM budget before the call is made."""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
# When a request sets no output cap: a reasoning model's typical answer, reconciled after.
DEFAULT_OUTPUT_TOKENS = 1024


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for k, v in value.items() if k in ("content", "text", "input"))
    return 0


def estimate_split(url: str, body: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, the most the request allows itself to answer): priced apart."""
    prompt = body.get("input", body.get("messages", ""))
    messages = len(prompt) if isinstance(prompt, list) else 1
    prompt_tokens = math.ceil(_text_chars(prompt) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages
    if url.endswith("/embeddings"):
        return prompt_tokens, 0  # embeddings answer no tokens
    cap = (
        body.get("max_output_tokens")
        or body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_OUTPUT_TOKENS
    )
    return prompt_tokens, int(cap)


def estimate_tokens(url: str, body: dict[str, Any]) -> int:
    """Prompt size plus the most the request allows itself to answer."""
    return sum(estimate_split(url, body))
