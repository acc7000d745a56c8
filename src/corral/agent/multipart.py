"""A streaming ``multipart/form-data`` reader: parts are read in chunks, never whole."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from .http import BadRequest

Read = Callable[[], Awaitable[bytes]]

MAX_PART_HEAD = 16 * 1024
_PARAM = re.compile(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def header_params(value: str) -> dict[str, str]:
    """The ``key=value`` parameters of a header such as ``Content-Disposition``."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        key, raw = match[1].lower(), match[2].strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    extended = params.get("filename*")
    if extended:  # RFC 5987: charset'language'percent-encoded
        charset, _, rest = extended.partition("'")
        from urllib.parse import unquote  # here: rare, and it costs the agent's start an import

        params["filename"] = unquote(rest.partition("'")[2], encoding=charset or "utf-8")
    return params


class Part:
    """One part: its headers, and :meth:`read` for its body."""

    def __init__(self, reader: MultipartReader, headers: dict[str, str]) -> None:
        self._reader = reader
        self.headers = headers
        disposition = header_params(headers.get("content-disposition", ""))
        self.name = disposition.get("name")
        self.filename = disposition.get("filename")

    async def read(self) -> bytes:
        """The next chunk of the body, ``b""`` at its end."""
        return await self._reader.read_part()


class MultipartReader:
    """Splits a body read through ``read`` at ``boundary``."""

    def __init__(self, read: Read, boundary: str) -> None:
        self._read = read
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")  # the first boundary then looks like the others
        self._in_part = False
        self._done = False

    async def _fill(self) -> None:
        chunk = await self._read()
        if not chunk:
            raise BadRequest("multipart body ended early")
        self._buffer += chunk

    def _scan(self) -> tuple[int, bool]:
        """The first delimiter candidate in the buffer: ``(index, confirmed)``, ``(-1, False)`` if none.

        A candidate is a real delimiter only when followed by ``--`` or by optional
        whitespace and CRLF (RFC 2046); until enough bytes are there it is unconfirmed.
        """
        buffer = self._buffer
        start = 0
        while (index := buffer.find(self._delimiter, start)) >= 0:
            after = index + len(self._delimiter)
            while after < len(buffer) and buffer[after] in b" \t":
                after += 1
            tail = bytes(buffer[after : after + 2])
            if len(tail) < 2:
                return index, False
            if tail == b"\r\n" or (tail == b"--" and after == index + len(self._delimiter)):
                return index, True
            start = index + 1
        return -1, False

    async def next_part(self) -> Part | None:
        """The next part (skipping what is left of the current one), ``None`` at the end."""
        while self._in_part:
            await self.read_part()
        if self._done:
            return None
        keep = len(self._delimiter) - 1
        while True:
            index, confirmed = self._scan()
            if confirmed:
                break
            if index < 0:
                del self._buffer[: max(0, len(self._buffer) - keep)]  # preamble
            elif index > 0:
                del self._buffer[:index]
            await self._fill()
        del self._buffer[: index + len(self._delimiter)]
        if self._buffer.startswith(b"--"):
            self._done = True
            return None
        while (line_end := self._buffer.find(b"\r\n")) < 0 or (
            head_end := self._buffer.find(b"\r\n\r\n", line_end)
        ) < 0:
            if len(self._buffer) > MAX_PART_HEAD:
                raise BadRequest("multipart part header too large")
            await self._fill()
        head = bytes(self._buffer[line_end + 2 : head_end]).decode("utf-8", "replace")
        del self._buffer[: head_end + 4]
        headers: dict[str, str] = {}
        for line in head.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self._in_part = True
        return Part(self, headers)

    async def read_part(self) -> bytes:
        if not self._in_part:
            return b""
        keep = len(self._delimiter) - 1
        while True:
            index, confirmed = self._scan()
            if index == 0 and confirmed:
                self._in_part = False
                return b""
            # Data: everything before a candidate delimiter, or before a possible partial one.
            safe = index if index >= 0 else len(self._buffer) - keep
            if safe > 0:
                data = bytes(self._buffer[:safe])
                del self._buffer[:safe]
                return data
            if index == 0 and not confirmed and len(self._buffer) > len(self._delimiter) + 256:
                # a lookalike followed by lots of whitespace: not a delimiter after all
                data = bytes(self._buffer[:1])
                del self._buffer[:1]
                return data
            await self._fill()
