"""What the simulated model answers: prompt extraction, model rules, usage and body shapes.

Everything here is a pure function of the request body (plus whether the prompt was seen
before), so tests elsewhere can compute the exact answer and usage they should receive.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

ECHO_PREFIX = "ECHO: "
ECHO_LIMIT_CHARS = 4000
TOKENS_PER_MESSAGE = 4
# OpenAI caches prompts of 1024 tokens or more, in blocks of 128 tokens.
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK_TOKENS = 128
REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
EMBEDDING_DIMENSIONS = 8


class ApiError(Exception):
    """An answer in OpenAI's error envelope (a 4xx/5xx the client must handle)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Prompt:
    """The text a request asks about, and the per-message facts usage and rules need."""

    text: str
    message_chars: tuple[int, ...]
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's own hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def is_reasoning_model(model: str) -> bool:
    return model.startswith(REASONING_MODEL_PREFIXES)


def answer_text(prompt_text: str) -> str:
    return ECHO_PREFIX + prompt_text[:ECHO_LIMIT_CHARS]


def input_tokens_for(message_chars: tuple[int, ...]) -> int:
    tokens = sum(math.ceil(chars / 4) + TOKENS_PER_MESSAGE for chars in message_chars)
    return max(1, tokens)


def reasoning_tokens_for(model: str, prompt_text: str) -> int:
    if not is_reasoning_model(model):
        return 0
    return 64 * (1 + stable_hash(prompt_text) % 8)


def cached_tokens_for(input_tokens: int, *, seen_before: bool) -> int:
    if not seen_before or input_tokens < CACHE_MIN_TOKENS:
        return 0
    return min(input_tokens, input_tokens // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS)


def usage_for(model: str, prompt: Prompt, answer: str, *, seen_before: bool) -> Usage:
    input_tokens = input_tokens_for(prompt.message_chars)
    reasoning = reasoning_tokens_for(model, prompt.text)
    return Usage(
        input_tokens=input_tokens,
        cached_tokens=cached_tokens_for(input_tokens, seen_before=seen_before),
        output_tokens=math.ceil(len(answer) / 4) + reasoning,
        reasoning_tokens=reasoning,
    )


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _messages_prompt(messages: list[Any]) -> Prompt:
    texts: list[str] = []
    roles: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        texts.append(_content_text(message.get("content")))
        roles.append(str(message.get("role", "")))
    return Prompt("\n".join(texts), tuple(len(text) for text in texts), tuple(roles))


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400,
            "You must provide a model parameter.",
            param="model",
            code="missing_required_parameter",
        )
    return model


def chat_prompt(body: dict[str, Any]) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400,
            "'messages' must be a non-empty array of message objects.",
            param="messages",
            code="missing_required_parameter" if messages is None else "invalid_type",
        )
    return _messages_prompt(messages)


def responses_prompt(body: dict[str, Any]) -> Prompt:
    given = body.get("input")
    if isinstance(given, str):
        return Prompt(given, (len(given),), ("user",))
    if isinstance(given, list) and given:
        return _messages_prompt(given)
    raise ApiError(
        400,
        "'input' must be a string or a non-empty array of input items.",
        param="input",
        code="missing_required_parameter" if given is None else "invalid_type",
    )


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(item, str) for item in given):
        return given
    raise ApiError(
        400,
        "'input' must be a string or a non-empty array of strings.",
        param="input",
        code="invalid_type",
    )


def check_model_rules(model: str, body: dict[str, Any], prompt: Prompt, list_name: str) -> None:
    """Reject what o1-mini rejects upstream: such a 400 must never be retried."""
    if "o1-mini" not in model:
        return
    for name in ("max_tokens", "temperature", "top_p"):
        if name in body:
            hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
            raise ApiError(
                400,
                f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                param=name,
                code="unsupported_parameter",
            )
    for index, role in enumerate(prompt.roles):
        if role in ("system", "developer"):
            param = f"{list_name}[{index}].role"
            raise ApiError(
                400,
                f"Unsupported value: '{param}' does not support '{role}' with this model.",
                param=param,
                code="unsupported_value",
            )


def responses_body(
    response_id: str, item_hex: str, created_at: int, model: str, answer: str, usage: Usage
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if is_reasoning_model(model):
        output.append({"type": "reasoning", "id": f"rs_{item_hex}", "summary": []})
    output.append(
        {
            "type": "message",
            "id": f"msg_{item_hex}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": answer, "annotations": []}],
        }
    )
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": model,
        "status": "completed",
        "output": output,
        "output_text": answer,
        "usage": {
            "input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens,
        },
    }


def chat_body(
    completion_id: str, created: int, model: str, answer: str, usage: Usage
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        },
    }


def embedding_vector(text: str) -> list[float]:
    """Eight floats of unit length derived from the text alone."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [int.from_bytes(digest[i : i + 4], "big") / 2**31 - 1.0 for i in range(0, 32, 4)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [value / norm for value in raw]


def embeddings_body(model: str, inputs: list[str]) -> dict[str, Any]:
    tokens = sum(max(1, math.ceil(len(text) / 4)) for text in inputs)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding_vector(text)}
            for index, text in enumerate(inputs)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
