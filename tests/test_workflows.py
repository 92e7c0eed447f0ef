"""Whole workflows a user runs, end to end on real processes and the built-in simulator:
a template over a tree of files exported as a tree of answers, and usage accounting."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobs.simulator.answers import answer_text as simulated_answer
from jobs.templates import CHARS_PER_TOKEN, input_budget_tokens
from tests.deploy import promptq
from tests.test_pipeline import MODEL, USAGE_COLUMNS, answer_text, read_jsonl
from worker.usage import Price, PriceTable

TEMPLATE = "Review {path} ({name}):\n{text}"
SMALL_FILES = 195
OTHER_MODEL = "gpt-4o-mini"
USAGE_KEYS = (*USAGE_COLUMNS, "cost_usd")


def chunk_chars() -> int:
    """The most characters of a file one request carries, for TEMPLATE and MODEL."""
    overhead = math.ceil(len(TEMPLATE.replace("{text}", "")) / CHARS_PER_TOKEN)
    return (input_budget_tokens(MODEL) - overhead) * CHARS_PER_TOKEN


def small_file(n: int) -> tuple[str, str]:
    """A short file of one of several kinds, at one of several depths; (path, text)."""
    folder = ["src", f"pkg{n % 4}", f"mod{n % 3}", f"deep{n % 2}"][: 2 + n % 3]
    kind = n % 7
    if kind == 0:
        return f"{'/'.join(folder)}/notes{n}.md", f"# Notes {n}\n\nSee {{path}} and {{name}}.\n"
    if kind == 1:
        return f"{'/'.join(folder)}/readme{n}.txt", f"plain text {n}\nwith two lines\n"
    if kind == 2:
        return f"{'/'.join(folder)}/mod{n}.py", f"def f{n}(x):\n    return {{'n': {n}, 'x': x}}\n"
    if kind == 3:
        return f"{'/'.join(folder)}/app{n}.js", f"export const v{n} = () => ({{ n: {n} }});\n"
    if kind == 4:
        return f"{'/'.join(folder)}/data{n}.json", json.dumps({"id": n, "tags": ["a", "b"]})
    if kind == 5:
        return f"{'/'.join(folder)}/conf{n}.yaml", f"name: item{n}\nvalues: [1, 2, 3]\n"
    return f"{'/'.join(folder)}/style{n}.css", f".c{n} {{ color: #{n:06x}; }}\n"


def long_files(limit: int) -> dict[str, str]:
    """Five files too long for one request: lines of prose, code, JSON, a log, and one
    minified line longer than a whole request (it must be cut inside the line)."""
    prose = "".join(
        f"Paragraph {i}: the handbook says what to do, and why.\n" for i in range(limit // 40)
    )
    code = "".join(f"def step_{i}(state):\n    return state + {i}\n\n" for i in range(limit // 18))
    records = "".join(json.dumps({"id": i, "name": f"r{i}"}) + "\n" for i in range(limit // 20))
    log = "".join(f"2024-06-01T00:00:{i % 60:02d}Z event {i}\n" for i in range(limit // 30))
    minified = "var a=" + "[1,2,3]+" * (limit // 5) + "0;"
    return {
        "src/docs/handbook.md": prose[: limit + limit // 3],
        "src/app/core/engine.py": code,
        "src/data/records.json": records,
        "src/notes/events.log.txt": log[: limit + 100],
        "src/web/vendor/bundle.min.js": minified,
    }


def test_a_template_over_a_tree_of_200_files_splits_long_ones_and_exports_a_mirrored_tree(
    tmp_path: Path, simulator: Any
) -> None:
    limit = chunk_chars()
    long = long_files(limit)
    files = dict(small_file(n) for n in range(SMALL_FILES)) | long
    assert len(files) == 200
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    (tmp_path / "prompt.txt").write_text(TEMPLATE)
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
    }
    args = ("run", "-o", "out.jsonl", "--template", "prompt.txt", "--model", MODEL)
    done = promptq(*args, "--files", "src/**/*", env=env, cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr

    db = sqlite3.connect(tmp_path / "data" / "promptq.db")
    (batch_id,) = db.execute("SELECT id FROM batches WHERE status = 'completed'").fetchone()
    sent = [
        (custom_id, json.loads(body)["input"])
        for custom_id, body in db.execute(
            "SELECT custom_id, body FROM requests WHERE batch_id = ? ORDER BY line", (batch_id,)
        )
    ]
    answers = {line["custom_id"]: line for line in read_jsonl(tmp_path / "out.jsonl")}
    assert sorted(answers) == sorted(custom_id for custom_id, _ in sent)
    assert (tmp_path / "out.errors.jsonl").read_text() == ""

    pieces: dict[str, list[str]] = {}  # path -> its text, piece by piece, in request order
    replies: dict[str, list[str]] = {}
    for custom_id, prompt in sent:
        path, _, number = custom_id.partition("#")
        pieces.setdefault(path, [])
        assert number == ("" if path not in long else str(len(pieces[path]) + 1))
        header = f"Review {path} ({Path(path).name}):\n"
        assert prompt.startswith(header), custom_id
        pieces[path].append(prompt.removeprefix(header))
        body = answers[custom_id]["response"]["body"]
        assert answer_text(body) == simulated_answer(prompt), custom_id
        replies.setdefault(path, []).append(answer_text(body))
    assert list(pieces) == sorted(files)  # every file, each once, in path order
    for path, parts in pieces.items():
        assert "".join(parts) == files[path], path
        assert all(len(part) <= limit for part in parts), path
        if path in long:
            assert len(parts) >= math.ceil(len(files[path]) / limit) >= 2, path
            if not path.endswith(".min.js"):  # cut at line ends unless one line is too long
                assert all(part.endswith("\n") for part in parts[:-1]), path
    assert len(pieces["src/app/core/engine.py"]) >= 3

    tree = promptq("results", batch_id, "--format", "dir", "-o", "answers", env=env, cwd=tmp_path)
    assert tree.returncode == 0, tree.stderr
    root = tmp_path / "answers"
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == sorted([*(f"{path}.answer.md" for path in files), "_errors.jsonl"])
    assert (root / "_errors.jsonl").read_text() == ""
    for path, parts in replies.items():
        assert (root / f"{path}.answer.md").read_text() == "\n\n".join(parts), path


def usage_batch(path: Path, url: str, prompts: list[tuple[str, str, dict[str, Any]]]) -> None:
    """A batch file of (model, prompt, extra body fields) for the Responses or Chat API."""
    with path.open("w") as f:
        for n, (model, prompt, extra) in enumerate(prompts):
            if url == "/v1/responses":
                body = {"model": model, "input": prompt, **extra}
            else:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
            line = {"custom_id": f"u{n:03d}", "method": "POST", "url": url, "body": body}
            f.write(json.dumps(line) + "\n")


def stored_sums(db: sqlite3.Connection, by: str) -> dict[str, dict[str, Any]]:
    """Per-request usage summed straight from the database, grouped by a requests column."""
    columns = ", ".join(f"COALESCE(SUM({name}), 0)" for name in USAGE_KEYS)
    rows = db.execute(f"SELECT {by}, COUNT(*), {columns} FROM requests GROUP BY {by}")
    return {
        row[0]: {"requests": row[1], **dict(zip(USAGE_KEYS, row[2:], strict=True))} for row in rows
    }


def same_usage(shown: dict[str, Any], summed: dict[str, Any]) -> None:
    assert {k: shown[k] for k in ("requests", *USAGE_COLUMNS)} == {
        k: summed[k] for k in ("requests", *USAGE_COLUMNS)
    }
    assert shown["cost_usd"] == pytest.approx(summed["cost_usd"], rel=1e-9, abs=1e-12)


def test_usage_by_model_and_by_batch_equals_the_sum_of_the_stored_per_request_usage(
    tmp_path: Path, simulator: Any
) -> None:
    # Long prompts (over 1024 tokens) sent twice come back with cached tokens the second time.
    long_prompts = [f"Long prompt {n}: " + "the same words again. " * 250 for n in range(4)]
    first: list[tuple[str, str, dict[str, Any]]] = []
    for n in range(32):
        first.append((MODEL if n % 2 else OTHER_MODEL, f"Question {n}: why is {n} odd?", {}))
    for n, prompt in enumerate(long_prompts * 2):
        first.append((MODEL if n % 4 < 2 else OTHER_MODEL, prompt, {}))
    first[0] = (MODEL, "refused: o1-mini takes no temperature", {"temperature": 0.2})
    assert len(first) == 40
    usage_batch(tmp_path / "first.jsonl", "/v1/responses", first)
    second = [(MODEL if n % 3 else OTHER_MODEL, f"Chat {n}", {}) for n in range(10)]
    second += [(MODEL, long_prompts[0], {}), (OTHER_MODEL, long_prompts[1], {})]
    usage_batch(tmp_path / "second.jsonl", "/v1/chat/completions", second)
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
    }
    for name in ("first", "second"):
        done = promptq("run", f"{name}.jsonl", "-o", f"{name}.out.jsonl", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    assert len(read_jsonl(tmp_path / "first.out.errors.jsonl")) == 1

    db = sqlite3.connect(tmp_path / "data" / "promptq.db")
    assert db.execute("SELECT COUNT(*) FROM requests WHERE finished_at IS NULL").fetchone() == (0,)
    by_model = stored_sums(db, "model")
    by_batch = stored_sums(db, "batch_id")
    assert sorted(by_model) == sorted([MODEL, OTHER_MODEL])
    assert len(by_batch) == 2
    for summed in by_model.values():  # the simulator reported every kind of token
        assert summed["input_tokens"] and summed["cached_input_tokens"]
        assert summed["output_tokens"]
    assert by_model[MODEL]["reasoning_tokens"] and not by_model[OTHER_MODEL]["reasoning_tokens"]

    for by, stored in (("model", by_model), ("batch", by_batch)):
        shown = promptq("usage", "--by", by, "--json", env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        assert sorted(row[by] for row in rows) == sorted(stored)
        for row in rows:
            same_usage(row, stored[row[by]])
        assert [row["cost_usd"] for row in rows] == sorted(
            (row["cost_usd"] for row in rows), reverse=True
        )

    for batch_id, summed in by_batch.items():
        status = promptq("status", batch_id, "--json", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        batch = json.loads(status.stdout)
        assert batch["request_counts"]["total"] == summed["requests"]
        assert batch["usage"] == {
            "input_tokens": summed["input_tokens"],
            "input_tokens_details": {"cached_tokens": summed["cached_input_tokens"]},
            "output_tokens": summed["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": summed["reasoning_tokens"]},
            "total_tokens": summed["total_tokens"],
        }
        assert batch["cost_usd"] == pytest.approx(summed["cost_usd"], abs=1e-9)

    prices = PriceTable.default()
    assert prices.price_for(MODEL) == Price(1.10, 0.55, 4.40)
    assert prices.price_for(OTHER_MODEL) == Price(0.15, 0.075, 0.60)
    rows = db.execute(
        "SELECT model, input_tokens, cached_input_tokens, output_tokens, cost_usd FROM requests"
        " WHERE status = 'succeeded'"
    ).fetchall()
    assert len(rows) == len(first) + len(second) - 1
    for model, input_tokens, cached, output_tokens, cost_usd in rows:
        price = prices.price_for(model)
        assert price is not None
        expected = (
            (input_tokens - cached) * price.input_per_mtok
            + cached * price.cached_input_per_mtok
            + output_tokens * price.output_per_mtok
        ) / 1_000_000
        assert cost_usd == pytest.approx(expected, rel=1e-9, abs=1e-15), (model, input_tokens)
