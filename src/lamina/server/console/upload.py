"""A file uploaded from a console form, streamed to disk as it arrives.

Starlette's own form parsing would first copy the whole file to a temporary file
(outside the data folder, before the CSRF token is known); :func:`stream_form` parses
``multipart/form-data`` itself: small fields are kept in memory (bounded), the one
file field goes straight to ``dest`` (0600, created here) with its SHA-256 computed
on the way, and ``before_file`` sees the fields that came before the file (the form
puts the CSRF token first) before a byte of it is written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from lamina.errors import TooLargeError, UsageError

#: Bounds on the form's other fields.
MAX_FIELD = 64 * 1024
MAX_FIELDS = 32


class _Parts:
    """The parser's callbacks: where each part's bytes go."""

    def __init__(
        self, dest: Path, file_field: str, limit: int, before_file: Callable[[dict[str, str]], None]
    ) -> None:
        self.dest, self.file_field, self.limit, self.before_file = (
            dest,
            file_field,
            limit,
            before_file,
        )
        self.fields: dict[str, str] = {}
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.name = ""
        self.value = bytearray()
        self.file: IO[bytes] | None = None
        self.sha = hashlib.sha256()
        self.size = 0
        self.got_file = False

    def on_part_begin(self) -> None:
        self.disposition, self.name, self.value = b"", "", bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.header_name).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name, self.header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        if self.name == self.file_field and b"filename" in options:
            if self.got_file:
                raise UsageError(f"the form has more than one {self.file_field!r} file")
            self.before_file(dict(self.fields))
            fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.file, self.got_file = os.fdopen(fd, "wb"), True
        elif len(self.fields) >= MAX_FIELDS:
            raise UsageError(f"the form has more than {MAX_FIELDS} fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.file is not None:
            self.size += len(chunk)
            if self.size > self.limit:
                raise TooLargeError(f"the file is above the {self.limit}-byte limit")
            self.sha.update(chunk)
            self.file.write(chunk)
            return
        self.value += chunk
        if len(self.value) > MAX_FIELD:
            raise UsageError(f"the form field {self.name!r} is above {MAX_FIELD} bytes")

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        elif self.name:
            self.fields[self.name] = self.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def stream_form(
    request: Request,
    dest: Path,
    file_field: str,
    limit: int,
    before_file: Callable[[dict[str, str]], None],
) -> tuple[dict[str, str], str]:
    """The form's other fields and the SHA-256 of its ``file_field`` file, written to
    ``dest``; UsageError when the body is not such a form. The caller removes ``dest``
    whatever happens (it may hold part of a refused file)."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UsageError("send the file as a form upload (multipart/form-data)")
    parts = _Parts(dest, file_field, limit, before_file)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.on_part_begin,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise UsageError(f"the form upload is malformed: {e}") from e
    finally:
        parts.close()
    if not parts.got_file:
        raise UsageError(f"the form has no {file_field!r} file: choose one")
    return parts.fields, parts.sha.hexdigest()
