"""The catalogue of bad input files, shared by the CLI and the HTTP API tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from jobs.validate import MAX_LINE_BYTES

MODEL = "o1-mini-2024-09-12"
LONG_FILE_LINES = 100_000


def line(custom_id: object = "a", **over: object) -> bytes:
    obj: dict[str, object] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": MODEL, "input": f"prompt {custom_id}"},
    }
    obj.update(over)
    return json.dumps(obj).encode() + b"\n"


def good(*custom_ids: str) -> bytes:
    return b"".join(line(c) for c in custom_ids)


@dataclass(frozen=True)
class Bad:
    """A bad file: its bytes, the line the refusal must name (0: the whole file), and what
    the message must say."""

    name: str
    content: Callable[[], bytes]
    line: int
    says: str


CATALOGUE = [
    Bad("broken-json", lambda: good("a") + b'{"custom_id": "b", "method": \n', 2, "invalid JSON"),
    Bad("not-an-object", lambda: good("a") + b"[1, 2]\n", 2, "expected a JSON object"),
    Bad("a-string-line", lambda: good("a") + b'"text"\n', 2, "expected a JSON object"),
    Bad(
        "missing-custom-id",
        lambda: good("a") + json.dumps({"method": "POST", "url": "/v1/responses"}).encode() + b"\n",
        2,
        "'custom_id' must be a non-empty string",
    ),
    Bad("empty-custom-id", lambda: good("a") + line(""), 2, "'custom_id' must be a non-empty"),
    Bad("numeric-custom-id", lambda: good("a") + line(7), 2, "'custom_id' must be a non-empty"),
    Bad(
        "duplicate-custom-id",
        lambda: good("a", "b", "a"),
        3,
        "duplicate custom_id 'a' (first on line 1)",
    ),
    Bad(
        "wrong-method", lambda: good("a") + line("b", method="GET"), 2, "'method' must be \"POST\""
    ),
    Bad(
        "unknown-url",
        lambda: good("a") + line("b", url="/v1/completions"),
        2,
        "'url' '/v1/completions' is not one of",
    ),
    Bad(
        "urls-that-differ",
        lambda: good("a") + line("b", url="/v1/chat/completions"),
        2,
        "differs from the batch endpoint",
    ),
    Bad("body-not-an-object", lambda: good("a") + line("b", body="hi"), 2, "'body' must be a JSON"),
    Bad(
        "missing-model",
        lambda: good("a") + line("b", body={"input": "no model"}),
        2,
        "'body.model' must be a non-empty string",
    ),
    Bad("empty-file", lambda: b"", 0, "the file holds no requests"),
    Bad("only-blank-lines", lambda: b"\n   \n\t\n", 0, "the file holds no requests"),
    Bad(
        "non-utf8-bytes",
        lambda: good("a") + b'{"custom_id": "caf\xe9"}\n',
        2,
        "not valid UTF-8 at byte 18",
    ),
    Bad(
        "utf16-file",
        lambda: "\ufeff".encode("utf-16-le") + good("a").decode().encode("utf-16-le"),
        1,
        "not valid UTF-8",
    ),
    # only a BOM at the very start of the file is an editor's; anywhere else it is garbage
    Bad("bom-on-a-later-line", lambda: good("a") + b"\xef\xbb\xbf" + line("b"), 2, "invalid JSON"),
    Bad(
        "line-over-the-size-limit",
        lambda: good("a") + line("b", body={"model": MODEL, "input": "x" * MAX_LINE_BYTES}),
        2,
        f"over {MAX_LINE_BYTES}",
    ),
    Bad(
        "last-line-of-a-100000-line-file",
        lambda: b"".join(line(f"r{i}") for i in range(LONG_FILE_LINES)) + b'{"broken"\n',
        LONG_FILE_LINES + 1,
        "invalid JSON",
    ),
]
