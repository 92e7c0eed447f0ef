"""Prompt templates over files and records become valid batch lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import templates, validate
from jobs.errors import InputError


def parsed(lines: list[bytes]) -> list[dict]:
    validate.check(lines, name="generated")  # every generated line is a valid batch line
    return [json.loads(line) for line in lines]


def test_each_file_becomes_a_request_named_by_its_relative_path(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("print('a')\n")
    (tmp_path / "src" / "pkg" / "b.py").write_text("def f(): return {'x': 1}\n")
    template = templates.Template('Review {path} ({name}):\n{text}\nAnswer as {"ok": bool}', "t")
    files = templates.expand_globs(["src/**/*.py"], tmp_path)
    lines = parsed(
        templates.file_lines(
            template, files, cwd=tmp_path, model="o1-mini", endpoint="/v1/responses"
        )
    )
    assert [line["custom_id"] for line in lines] == ["src/a.py", "src/pkg/b.py"]
    assert lines[1]["body"] == {
        "model": "o1-mini",
        "input": "Review src/pkg/b.py (b.py):\ndef f(): return {'x': 1}\n\n"
        'Answer as {"ok": bool}',
    }


def test_a_long_file_is_split_into_ordered_chunks_at_line_ends(tmp_path: Path) -> None:
    text = "".join(f"line {i:05d}\n" for i in range(3000))  # 33,000 chars
    (tmp_path / "big.txt").write_text(text)
    template = templates.Template("{text}", "t")
    pieces = templates.chunks(text, 2000)  # 8,000 chars each
    assert "".join(pieces) == text
    assert all(p.endswith("\n") for p in pieces)
    assert len(pieces) == 5
    lines = parsed(
        templates.file_lines(
            template,
            [Path("big.txt")],
            cwd=tmp_path,
            model="o1-mini",
            endpoint="/v1/chat/completions",
        )
    )
    assert len(lines) == 1  # o1-mini's budget holds it whole
    assert lines[0]["body"]["messages"][0]["content"] == text


def test_chunks_are_named_path_hash_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(templates.CONTEXT_INPUT_TOKENS, "tiny", 10)
    (tmp_path / "f.txt").write_text("a" * 30 + "\n" + "b" * 30 + "\n")
    lines = parsed(
        templates.file_lines(
            templates.Template("{text}", "t"),
            [Path("f.txt")],
            cwd=tmp_path,
            model="tiny",
            endpoint="/v1/responses",
        )
    )
    assert [line["custom_id"] for line in lines] == ["f.txt#1", "f.txt#2"]


def test_binary_and_unreadable_files_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x00\x00")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(InputError) as info:
        templates.file_lines(
            templates.Template("{text}", "t"),
            [Path("ok.txt"), Path("img.png"), Path("latin1.txt")],
            cwd=tmp_path,
            model="m",
            endpoint="/v1/responses",
        )
    message = str(info.value)
    assert "img.png: binary file" in message
    assert "latin1.txt: not UTF-8" in message
    assert "ok.txt" not in message


def test_a_glob_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="matches no file"):
        templates.expand_globs(["*.md"], tmp_path)


def test_an_unknown_file_placeholder_is_an_error() -> None:
    with pytest.raises(InputError, match="unknown placeholder"):
        templates.file_lines(
            templates.Template("{txt}", "t.txt"),
            [],
            cwd=Path("."),
            model="m",
            endpoint="/v1/responses",
        )


def test_records_from_csv_fill_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "tickets.csv"
    path.write_text("id,title,body\nT-1,Login fails,500 on +\nT-2,Typo,about page\n")
    template = templates.Template("Priority of '{title}': {body}", "t")
    lines = parsed(templates.record_lines(template, path, model="m", endpoint="/v1/responses"))
    assert [(x["custom_id"], x["body"]["input"]) for x in lines] == [
        ("T-1", "Priority of 'Login fails': 500 on +"),
        ("T-2", "Priority of 'Typo': about page"),
    ]


def test_records_missing_a_field_are_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"title": "a"}\n{"other": 1}\nnot json\n')
    with pytest.raises(InputError) as info:
        templates.record_lines(
            templates.Template("{title}", "t"), path, model="m", endpoint="/v1/responses"
        )
    assert [(f.line, f.code) for f in info.value.faults] == [
        (2, "missing_field"),
        (3, "invalid_record"),
    ]
