"""Token usage as the upstream reports it, and what it costs.

Prices differ by provider and change, so the table is data: OpenAI list prices
as defaults, overridden per model by a JSON file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_MTOK = 1_000_000
_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call or a sum of calls; `output_tokens` already include reasoning."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


def _count(value: object) -> int | None:
    # Providers send null for details they do not track; bool is an int to Python, not a count.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(int(value), 0)


def _detail(usage: Mapping[str, object], section: str, key: str) -> int:
    details = usage.get(section)
    return (_count(details.get(key)) or 0) if isinstance(details, Mapping) else 0


def parse_usage(body: Mapping[str, object]) -> Usage | None:
    """Usage of a Responses, Chat Completions or Embeddings body; None if it reports none."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:  # Responses API
        input_tokens = _count(usage.get("input_tokens")) or 0
        output_tokens = _count(usage.get("output_tokens")) or 0
        cached = _detail(usage, "input_tokens_details", "cached_tokens")
        reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
    else:  # Chat Completions, and Embeddings which only have prompt and total
        input_tokens = _count(usage.get("prompt_tokens")) or 0
        output_tokens = _count(usage.get("completion_tokens")) or 0
        cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    total = _count(usage.get("total_tokens"))
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=min(cached, input_tokens),
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        total_tokens=total if total is not None else input_tokens + output_tokens,
    )


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    cached_input_per_mtok: float
    output_per_mtok: float


# OpenAI list prices (USD per 1M tokens). Dated snapshots fall back to their alias,
# so a snapshot priced unlike its alias must be listed itself (gpt-4o-2024-05-13).
_DEFAULT_PRICES: dict[str, Price] = {
    "o1-mini": Price(1.10, 0.55, 4.40),
    "o1-mini-2024-09-12": Price(1.10, 0.55, 4.40),
    "o3-mini": Price(1.10, 0.55, 4.40),
    "o1": Price(15.00, 7.50, 60.00),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": Price(5.00, 5.00, 15.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "text-embedding-3-small": Price(0.02, 0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.13, 0.0),
}

_FILE_KEYS = {"input", "cached_input", "output"}


def _rate(path: Path, model: str, entry: Mapping[str, object], key: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: model {model!r}: {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{path}: model {model!r}: {key!r} must be >= 0, got {value!r}")
    return float(value)


def _price_from_entry(path: Path, model: str, entry: object) -> Price:
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"{path}: model {model!r}: expected an object like "
            f'{{"input": 1.1, "cached_input": 0.55, "output": 4.4}}, got {entry!r}'
        )
    unknown = sorted(set(entry) - _FILE_KEYS)
    if unknown:
        expected = sorted(_FILE_KEYS)
        raise ValueError(f"{path}: model {model!r}: unknown key(s) {unknown}, expected {expected}")
    missing = sorted({"input", "output"} - set(entry))
    if missing:
        raise ValueError(f"{path}: model {model!r}: missing {missing} (USD per 1M tokens)")
    input_price = _rate(path, model, entry, "input")
    # A provider without a cache discount bills cached tokens as plain input.
    cached = _rate(path, model, entry, "cached_input") if "cached_input" in entry else input_price
    return Price(input_price, cached, _rate(path, model, entry, "output"))


class PriceTable:
    """Prices per model; unknown models cost 0.0, and `known` lets callers flag them."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    @classmethod
    def default(cls) -> PriceTable:
        return cls(_DEFAULT_PRICES)

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        """The defaults, overridden by `{"model": {"input", "cached_input", "output"}}` (USD/1M)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object mapping model names to prices")
        prices = dict(_DEFAULT_PRICES)
        for model, entry in data.items():
            prices[model] = _price_from_entry(path, model, entry)
        return cls(prices)

    def price_for(self, model: str) -> Price | None:
        """The exact model's price, else its undated alias's (`o1-mini-2024-09-12` -> `o1-mini`)."""
        price = self._prices.get(model)
        if price is None:
            price = self._prices.get(_DATE_SUFFIX.sub("", model))
        return price

    def known(self, model: str) -> bool:
        return self.price_for(model) is not None

    def cost_usd(self, model: str, usage: Usage) -> float:
        price = self.price_for(model)
        if price is None:
            return 0.0
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        uncached = usage.input_tokens - cached
        return (
            uncached * price.input_per_mtok
            + cached * price.cached_input_per_mtok
            + usage.output_tokens * price.output_per_mtok
        ) / _MTOK
