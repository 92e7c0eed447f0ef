import json
from pathlib import Path

import pytest

from worker.usage import Price, PriceTable, Usage, parse_usage


def test_responses_usage_is_read_with_its_details() -> None:
    body = {
        "object": "response",
        "usage": {
            "input_tokens": 1200,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 640},
            "total_tokens": 2100,
        },
    }
    assert parse_usage(body) == Usage(1200, 1024, 900, 640, 2100)


def test_chat_completions_usage_is_read_with_its_details() -> None:
    body = {
        "object": "chat.completion",
        "usage": {
            "prompt_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens": 300,
            "completion_tokens_details": {"reasoning_tokens": 256},
            "total_tokens": 350,
        },
    }
    assert parse_usage(body) == Usage(50, 0, 300, 256, 350)


def test_embeddings_usage_has_input_and_total_only() -> None:
    body = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert parse_usage(body) == Usage(input_tokens=8, total_tokens=8)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 10, "output_tokens": 4},
        {"input_tokens": 10, "output_tokens": 4, "input_tokens_details": None},
        {
            "input_tokens": 10,
            "output_tokens": 4,
            "output_tokens_details": {"reasoning_tokens": None},
        },
        {"input_tokens": 10, "output_tokens": 4, "total_tokens": None},
        {"prompt_tokens": 10, "completion_tokens": 4, "completion_tokens_details": None},
    ],
)
def test_missing_or_null_details_count_as_zero_and_the_total_is_computed(usage: dict) -> None:
    assert parse_usage({"usage": usage}) == Usage(input_tokens=10, output_tokens=4, total_tokens=14)


@pytest.mark.parametrize("body", [{}, {"usage": None}, {"id": "x", "output": []}])
def test_a_body_without_usage_has_none(body: dict) -> None:
    assert parse_usage(body) is None


def test_usages_add_up_field_by_field() -> None:
    total = Usage(1, 2, 3, 4, 5) + Usage(10, 20, 30, 40, 50)
    assert total == Usage(11, 22, 33, 44, 55)
    assert sum([Usage(1), Usage(2)], Usage()) == Usage(3)


def test_o1_mini_has_openai_list_prices_by_default() -> None:
    table = PriceTable.default()
    assert table.price_for("o1-mini") == Price(1.10, 0.55, 4.40)
    assert table.price_for("o1-mini-2024-09-12") == Price(1.10, 0.55, 4.40)


def test_a_dated_snapshot_falls_back_to_its_alias() -> None:
    table = PriceTable({"o1-mini": Price(1.0, 0.5, 4.0)})
    assert table.price_for("o1-mini-2025-01-31") == Price(1.0, 0.5, 4.0)
    assert table.price_for("o1-mini-preview") is None


def test_an_exact_snapshot_price_wins_over_its_alias() -> None:
    table = PriceTable.default()
    assert table.price_for("gpt-4o-2024-05-13") != table.price_for("gpt-4o")


def test_cost_bills_uncached_cached_and_output_tokens_at_their_prices() -> None:
    usage = Usage(
        input_tokens=1000, cached_input_tokens=200, output_tokens=500, reasoning_tokens=300
    )
    cost = PriceTable.default().cost_usd("o1-mini-2024-09-12", usage)
    # Reasoning tokens are part of output_tokens and are not billed twice.
    assert cost == pytest.approx((800 * 1.10 + 200 * 0.55 + 500 * 4.40) / 1_000_000)


def test_an_unknown_model_costs_nothing_and_is_not_known() -> None:
    table = PriceTable.default()
    assert table.cost_usd("mystery-model", Usage(1000, 0, 1000)) == 0.0
    assert not table.known("mystery-model")
    assert table.known("o1-mini")


def test_a_price_file_overrides_and_extends_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "o1-mini": {"input": 3, "cached_input": 1.5, "output": 12},
                "house-model": {"input": 0.5, "output": 1},
            }
        )
    )
    table = PriceTable.from_file(path)
    assert table.price_for("o1-mini-2024-09-12") == Price(1.10, 0.55, 4.40)  # exact default stays
    assert table.price_for("o1-mini") == Price(3.0, 1.5, 12.0)
    # Without a cached price, cached tokens are billed as plain input.
    assert table.price_for("house-model") == Price(0.5, 0.5, 1.0)
    assert table.known("gpt-4o-mini")


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"input": "cheap", "output": 1}, "'input' must be a number"),
        ({"input": -1, "output": 1}, "'input' must be >= 0"),
        ({"input": 1, "output": True}, "'output' must be a number"),
        ({"input": 1}, "missing ['output']"),
        ({"input": 1, "output": 1, "cached": 0.5}, "unknown key(s) ['cached']"),
        ([1, 2, 3], "expected an object"),
    ],
)
def test_a_bad_price_entry_is_refused_naming_the_file_and_model(
    tmp_path: Path, entry: object, complaint: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"good": {"input": 1, "output": 1}, "bad-model": entry}))
    with pytest.raises(ValueError) as caught:
        PriceTable.from_file(path)
    assert str(path) in str(caught.value)
    assert "'bad-model'" in str(caught.value)
    assert complaint in str(caught.value)


@pytest.mark.parametrize("text", ["{not json", "[]"])
def test_a_price_file_that_is_not_a_json_object_is_refused_naming_the_file(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="prices.json"):
        PriceTable.from_file(path)
