"""Files inside a sandbox: ``sbx.files`` (async); the twin of :mod:`corral.sdk.files`."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import Literal, overload

from corral.errors import InvalidRequest
from corral.sdk import _routes as routes
from corral.sdk._http import AsyncHTTP
from corral.sdk._upload import AsyncWriteData, async_body
from corral.sdk.files import ReadFormat
from corral.sdk.models import EntryInfo

__all__ = ["AsyncFiles"]


class AsyncFiles:
    """``sbx.files``: read, write and manage files in the sandbox.

    Paths are absolute inside the sandbox, or relative to the user's home;
    ``user`` is who does it (default: the image's ``user``).
    """

    def __init__(self, http: AsyncHTTP, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @overload
    async def read(self, path: str, *, format: Literal["text"] = "text", user: str | None = None) -> str: ...
    @overload
    async def read(self, path: str, *, format: Literal["bytes"], user: str | None = None) -> bytes: ...
    @overload
    async def read(self, path: str, *, format: Literal["stream"], user: str | None = None) -> AsyncIterator[bytes]: ...

    async def read(
        self, path: str, *, format: ReadFormat = "text", user: str | None = None
    ) -> str | bytes | AsyncIterator[bytes]:
        """A file's content: text, bytes, or an iterator of byte chunks streamed as they come."""
        if format == "text":
            return await self._http.call(routes.read_text(self._sandbox_id, path, user=user))
        if format == "bytes":
            return await self._http.call(routes.read_bytes(self._sandbox_id, path, user=user))
        if format == "stream":
            response = await self._http.open(routes.read_file(self._sandbox_id, path, user=user))
            return self._http.iter_bytes(response)
        raise InvalidRequest(f"unknown read format {format!r}: text, bytes or stream")

    async def write(self, path: str, data: AsyncWriteData, *, user: str | None = None) -> EntryInfo:
        """Write a file (parents are created); a file object or iterator is streamed."""
        body = async_body(data)
        return await self._http.call(routes.write_file(self._sandbox_id, path, body, user=user))

    async def list(self, path: str, *, depth: int = 1, user: str | None = None) -> builtins.list[EntryInfo]:
        """The entries of a directory, ``depth`` levels down."""
        return await self._http.call(routes.list_dir(self._sandbox_id, path, depth=depth, user=user))

    async def exists(self, path: str, *, user: str | None = None) -> bool:
        return await self._http.call(routes.exists(self._sandbox_id, path, user=user))

    async def stat(self, path: str, *, user: str | None = None) -> EntryInfo:
        """What ``path`` is (a symlink itself, not its target)."""
        return await self._http.call(routes.stat(self._sandbox_id, path, user=user))

    get_info = stat

    async def remove(self, path: str, *, recursive: bool = False, user: str | None = None) -> None:
        """Remove a file, or a directory (a non-empty one only with ``recursive``)."""
        await self._http.call(routes.remove(self._sandbox_id, path, recursive=recursive, user=user))

    async def rename(self, old_path: str, new_path: str, *, user: str | None = None) -> EntryInfo:
        """Move ``old_path`` to ``new_path``; answers the moved entry."""
        return await self._http.call(routes.move(self._sandbox_id, old_path, new_path, user=user))

    async def make_dir(self, path: str, *, user: str | None = None) -> bool:
        """Create a directory and its parents; ``False`` if it was already there."""
        return await self._http.call(routes.make_dir(self._sandbox_id, path, user=user))

    async def chmod(self, path: str, mode: int | str) -> EntryInfo:
        """Change a file's mode: ``0o755`` or ``"755"``."""
        return await self._http.call(routes.chmod(self._sandbox_id, path, mode))
