"""Files inside a sandbox: ``sbx.files`` (sync)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Literal, overload

from corral.errors import InvalidRequest
from corral.sdk import _routes as routes
from corral.sdk._http import SyncHTTP
from corral.sdk._upload import WriteData, sync_body
from corral.sdk.models import EntryInfo

__all__ = ["Files", "ReadFormat"]

ReadFormat = Literal["text", "bytes", "stream"]


class Files:
    """``sbx.files``: read, write and manage files in the sandbox.

    Paths are absolute inside the sandbox, or relative to the user's home;
    ``user`` is who does it (default: the image's ``user``).
    """

    def __init__(self, http: SyncHTTP, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @overload
    def read(self, path: str, *, format: Literal["text"] = "text", user: str | None = None) -> str: ...
    @overload
    def read(self, path: str, *, format: Literal["bytes"], user: str | None = None) -> bytes: ...
    @overload
    def read(self, path: str, *, format: Literal["stream"], user: str | None = None) -> Iterator[bytes]: ...

    def read(self, path: str, *, format: ReadFormat = "text", user: str | None = None) -> str | bytes | Iterator[bytes]:
        """A file's content: text, bytes, or an iterator of byte chunks streamed as they come."""
        if format == "text":
            return self._http.call(routes.read_text(self._sandbox_id, path, user=user))
        if format == "bytes":
            return self._http.call(routes.read_bytes(self._sandbox_id, path, user=user))
        if format == "stream":
            response = self._http.open(routes.read_file(self._sandbox_id, path, user=user))
            return self._http.iter_bytes(response)
        raise InvalidRequest(f"unknown read format {format!r}: text, bytes or stream")

    def write(self, path: str, data: WriteData, *, user: str | None = None) -> EntryInfo:
        """Write a file (parents are created); a file object or iterator is streamed."""
        body = sync_body(data)
        return self._http.call(routes.write_file(self._sandbox_id, path, body, user=user))

    def list(self, path: str, *, depth: int = 1, user: str | None = None) -> builtins.list[EntryInfo]:
        """The entries of a directory, ``depth`` levels down."""
        return self._http.call(routes.list_dir(self._sandbox_id, path, depth=depth, user=user))

    def exists(self, path: str, *, user: str | None = None) -> bool:
        return self._http.call(routes.exists(self._sandbox_id, path, user=user))

    def stat(self, path: str, *, user: str | None = None) -> EntryInfo:
        """What ``path`` is (a symlink itself, not its target)."""
        return self._http.call(routes.stat(self._sandbox_id, path, user=user))

    get_info = stat

    def remove(self, path: str, *, recursive: bool = False, user: str | None = None) -> None:
        """Remove a file, or a directory (a non-empty one only with ``recursive``)."""
        self._http.call(routes.remove(self._sandbox_id, path, recursive=recursive, user=user))

    def rename(self, old_path: str, new_path: str, *, user: str | None = None) -> EntryInfo:
        """Move ``old_path`` to ``new_path``; answers the moved entry."""
        return self._http.call(routes.move(self._sandbox_id, old_path, new_path, user=user))

    def make_dir(self, path: str, *, user: str | None = None) -> bool:
        """Create a directory and its parents; ``False`` if it was already there."""
        return self._http.call(routes.make_dir(self._sandbox_id, path, user=user))

    def chmod(self, path: str, mode: int | str) -> EntryInfo:
        """Change a file's mode: ``0o755`` or ``"755"``."""
        return self._http.call(routes.chmod(self._sandbox_id, path, mode))
