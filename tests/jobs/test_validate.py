"""The catalogue of bad input lines: each refused with its line and what is wrong."""

from __future__ import annotations

import json

import pytest

from jobs import validate
from jobs.errors import InputError


def line(custom_id: str = "a", **over: object) -> bytes:
    obj: dict[str, object] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "o1-mini-2024-09-12", "input": "hi"},
    }
    obj.update(over)
    return (json.dumps(obj) + "\n").encode()


def faults_of(lines: list[bytes]) -> list[tuple[int, str]]:
    with pytest.raises(InputError) as info:
        validate.check(lines, name="in.jsonl")
    return [(f.line, f.code) for f in info.value.faults]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b'{"custom_id": "b", "method": \n', "invalid_json"),
        (b"[1, 2]\n", "invalid_request"),
        (line("")[:-1] + b"\n", "missing_custom_id"),
        (json.dumps({"method": "POST"}).encode() + b"\n", "missing_custom_id"),
        (line("b", method="GET"), "invalid_method"),
        (line("b", url="/v1/completions"), "invalid_url"),
        (line("b", body="text"), "invalid_body"),
        (line("b", body={"input": "no model"}), "missing_model"),
        (b'{"custom_id": "b\xff"}\n', "invalid_encoding"),
    ],
)
def test_a_bad_line_is_named_with_its_number_and_fault(bad: bytes, code: str) -> None:
    assert faults_of([line("a"), bad, line("c")]) == [(2, code)]


def test_a_duplicate_custom_id_names_both_lines() -> None:
    with pytest.raises(InputError) as info:
        validate.check([line("a"), line("b"), line("a")], name="in.jsonl")
    (fault,) = info.value.faults
    assert (fault.line, fault.code) == (3, "duplicate_custom_id")
    assert "first on line 1" in fault.message
    assert str(info.value).startswith("in.jsonl: line 3:")


def test_an_empty_file_is_refused() -> None:
    assert faults_of([]) == [(0, "empty_file")]
    assert faults_of([b"\n", b"  \n"]) == [(0, "empty_file")]


def test_blank_lines_and_a_leading_bom_are_skipped() -> None:
    scan = validate.check([b"\xef\xbb\xbf" + line("a"), b"\n", line("b")], name="in.jsonl")
    assert scan.requests == 2
    assert scan.endpoint == "/v1/responses"


def test_lines_must_share_the_batch_endpoint() -> None:
    other = line("b", url="/v1/chat/completions")
    assert faults_of([line("a"), other]) == [(2, "mismatched_url")]


def test_a_line_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "MAX_LINE_BYTES", 150)
    big = line("b", body={"model": "m", "input": "x" * 200})
    assert faults_of([line("a"), big]) == [(2, "line_too_long")]


def test_every_fault_is_reported_up_to_a_limit_then_counted() -> None:
    lines = [b"nope\n"] * (validate.MAX_FAULTS_SHOWN + 5)
    with pytest.raises(InputError) as info:
        validate.check(lines, name="in.jsonl")
    assert len(info.value.faults) == validate.MAX_FAULTS_SHOWN
    assert info.value.more == 5
    assert "and 5 more faulty line(s)" in str(info.value)


def test_a_bad_last_line_of_a_long_file_is_found() -> None:
    lines = [line(f"r{i}") for i in range(100_000)] + [b'{"broken"\n']
    assert faults_of(lines) == [(100_001, "invalid_json")]


def test_requests_yields_the_parsed_lines_in_order() -> None:
    got = list(validate.requests([line("a"), b"\n", line("b")], "/v1/responses"))
    assert [(r.line, r.custom_id, r.model) for r in got] == [
        (1, "a", "o1-mini-2024-09-12"),
        (3, "b", "o1-mini-2024-09-12"),
    ]
