"""A multipart upload streamed straight to its file, with a size limit.

Starlette's form parsing would spool the whole file to a temporary file before the route
sees it, however large; here each chunk goes to its final place as it arrives, and the
upload stops at the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from jobs.errors import InvalidRequestError, TooLargeError

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
# Past the limit the rest of the body is still read (and dropped), up to this much more:
# a client answered while it is still sending sees a reset connection, not the 413.
DRAIN_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Upload:
    """What arrived: the file's name and size, and the form's other fields."""

    filename: str = ""
    size_bytes: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    found: bool = False


class _Parts:
    """python-multipart callbacks: the file part goes to `out`, other fields to `fields`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.pending: list[bytes] = []
        self.too_large = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._into_file = False
        self._skip = False
        self._value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._value = bytearray()
        self._into_file = self._skip = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options and self._name == FILE_FIELD:
            if self.upload.found:
                raise InvalidRequestError("only one file per upload", param=FILE_FIELD)
            self.upload.found = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
            self._into_file = True
        elif b"filename" in options:
            self._skip = True  # a file under another name: not ours to keep

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._skip or self.too_large:
            return
        if not self._into_file:
            if len(self._value) + end - start > MAX_FIELD_BYTES:
                raise InvalidRequestError(
                    f"form field {self._name!r} is too long", param=self._name
                )
            self._value += data[start:end]
            return
        self.upload.size_bytes += end - start
        if self.upload.size_bytes > self.max_bytes:
            self.too_large = True
            self.pending.clear()
            return
        self.pending.append(data[start:end])

    def _part_end(self) -> None:
        if not self._into_file and not self._skip and self._name:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")


async def receive_file(request: Request, dest: Path, *, max_bytes: int) -> Upload:
    """Stream the request's `file` part to `dest`; raises TooLargeError past `max_bytes`.

    On any error `dest` does not exist afterwards.
    """
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidRequestError(
            "send the file as multipart/form-data with fields 'file' and 'purpose'",
            param=FILE_FIELD,
        )
    parts = _Parts(max_bytes)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
    dest.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = await run_in_threadpool(dest.open, "wb")
    try:
        drained = 0
        async for chunk in request.stream():
            if parts.too_large:
                drained += len(chunk)
                if drained > DRAIN_MAX_BYTES:
                    break
                continue
            parser.write(chunk)
            if parts.pending:
                data = b"".join(parts.pending)
                parts.pending.clear()
                await run_in_threadpool(out.write, data)
        if parts.too_large:
            raise TooLargeError(
                f"the file is over the upload limit of {max_bytes} bytes "
                "(PROMPTQ_MAX_UPLOAD_BYTES)",
                param=FILE_FIELD,
                code="file_too_large",
            )
        parser.finalize()
        if not parts.upload.found:
            raise InvalidRequestError("the form has no file part named 'file'", param=FILE_FIELD)
        await run_in_threadpool(out.close)
    except FormParserError as exc:
        out.close()
        dest.unlink(missing_ok=True)
        raise InvalidRequestError("invalid multipart body", param=FILE_FIELD) from exc
    except BaseException:
        out.close()
        dest.unlink(missing_ok=True)
        raise
    return parts.upload
