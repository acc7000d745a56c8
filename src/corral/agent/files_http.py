"""envd's plain HTTP file routes: ``GET /files`` (download) and ``POST /files`` (upload).

- ``GET /files?path=&username=`` streams the file (a single ``Range`` is
  honoured); a missing path is ``404``, a directory ``400``.
- ``POST /files?path=&username=`` takes ``multipart/form-data`` as the e2b
  SDK sends it (each ``file`` part goes to ``path``, or to its file name when
  no ``path`` is given) or a raw body (``application/octet-stream``, ``path``
  required), optionally ``Content-Encoding: gzip``. It answers
  ``[{"name", "type": "file", "path"}]``.

Uploads stream into a temporary file next to the target, which is renamed
over it only once complete: a failed upload leaves nothing half-written.
A target that is a symlink is written through, as ``echo > link`` does: the
file it points to is replaced, the link stays. Missing parent directories are
created; what is created belongs to the user, and a file written over keeps
its mode, owner and group.
Errors are ``{"code": <http status>, "message": ...}`` like envd's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import posixpath
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .filesystem import chown, error_code, make_dirs
from .http import Body, Request, Response
from .log import log
from .multipart import MultipartReader, header_params
from .users import User, UserDb, resolve_path, username_from_authorization

READ_CHUNK = 256 * 1024
WRITE_BATCH = 1024 * 1024
PSEUDO_FILE_LIMIT = 4 << 20
"""Most bytes read from a file whose size says 0 (such as /proc/net/tcp)."""
REFUSED_BODY_WAIT = 30.0
"""How long the rest of a refused upload is read (and dropped) so that its client gets the answer.

A time and not a size: an upload that fills the disk is refused with the rest
of it still coming, as much as it is (an HTTP client reads the answer only once
it has sent its body, and a connection closed on unread bytes is reset).
"""
INLINE_READ = 64 * 1024  # smaller files are read without a trip to the thread pool

Read = Callable[[], Awaitable[bytes]]


class FilesError(Exception):
    """An HTTP error answer: ``status`` and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def send_error(response: Response, status: int, message: str) -> None:
    body = json.dumps({"code": status, "message": message}).encode()
    await response.send(status, body, content_type="application/json")


class _Gunzip:
    """Decompresses a gzip request body as it is read."""

    def __init__(self, read: Read) -> None:
        import zlib

        self._read = read
        self._inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header
        self._error = zlib.error
        self._ended = False

    async def read(self) -> bytes:
        while not self._ended:
            chunk = await self._read()
            try:
                if not chunk:
                    self._ended = True
                    return self._inflater.flush()
                data = self._inflater.decompress(chunk)
            except self._error as exc:
                raise FilesError(400, f"error decompressing request body: {exc}") from None
            if data:
                return data
        return b""


def _http_date(seconds: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(seconds))


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) for a single ``bytes=`` range, ``None`` if unusable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            suffix = int(last)
            return (max(0, size - suffix), size) if suffix > 0 else None
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    end = min(end, size)
    return (start, end) if start < end else None


def _open_for_read(path: str) -> tuple[int, os.stat_result]:
    """An open file to read, and its stat; a directory, a named pipe or a socket is refused.

    Opened non-blocking: a named pipe no one writes to would hold the opening
    thread forever, and a terminal with nothing typed would hold its read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if stat.S_ISFIFO(st.st_mode):
            raise FilesError(400, f"path '{path}' is a named pipe (FIFO): only files and devices can be read")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_to_end(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    read = 0
    try:
        while read < limit and (chunk := os.read(fd, min(READ_CHUNK, limit - read))):
            chunks.append(chunk)
            read += len(chunk)
    except BlockingIOError:  # a device with nothing more to give now (a terminal): what it gave
        pass
    return b"".join(chunks)


HTTP_STATUS = {
    "not_found": 404,
    "permission_denied": 403,
    "already_exists": 409,
    "invalid_argument": 400,
    "failed_precondition": 409,
    "resource_exhausted": 507,
}
"""``/files``'s answer to each kind of failed file call (:func:`~.filesystem.error_code`); others are 500."""


def _os_error(exc: OSError, path: str, doing: str) -> FilesError:
    """The answer for ``doing`` (``opening``, ``writing``) ``path`` that failed with ``exc``."""
    status = HTTP_STATUS.get(error_code(exc), 500)
    if status == 404:
        return FilesError(404, f"path '{path}' does not exist")
    if status == 507:
        return FilesError(507, f"not enough disk space available to write '{path}'")
    if isinstance(exc, IsADirectoryError):
        return FilesError(400, f"path '{path}' is a directory")
    return FilesError(status, f"error {doing} file '{path}': {exc.strerror if status < 500 else exc}")


async def _drained(body: Body) -> bool:
    """Whether the rest of ``body`` was read (and dropped) within :data:`REFUSED_BODY_WAIT`."""
    try:
        async with asyncio.timeout(REFUSED_BODY_WAIT):
            return await body.discard(limit=None)
    except TimeoutError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FilesHandler:
    """Serves ``/files``."""

    def __init__(self, users: UserDb) -> None:
        self._users = users

    def _user(self, request: Request) -> User:
        name = request.param("username") or username_from_authorization(request.headers.get("authorization"))
        try:
            return self._users.resolve(name)
        except LookupError as exc:
            raise FilesError(401, str(exc)) from None

    @staticmethod
    def _resolve(path: str, user: User) -> str:
        try:
            return resolve_path(path, user)
        except ValueError as exc:
            raise FilesError(400, str(exc)) from None

    async def handle(self, request: Request, response: Response) -> None:
        try:
            if request.method in ("GET", "HEAD"):
                await self._download(request, response)
            elif request.method == "POST":
                await self._upload(request, response)
            else:
                raise FilesError(405, f"method {request.method} not allowed")
        except (FilesError, OSError) as exc:
            if response.started or isinstance(exc, ConnectionError):
                raise
            error = exc if isinstance(exc, FilesError) else FilesError(500, str(exc))
            # What the client still sends is read first: closing on unread bytes resets the
            # connection, and the client would lose this answer with it.
            if not request.body.done and not await _drained(request.body):
                response.keep_alive = False
            await send_error(response, error.status, error.message)

    # --- download -----------------------------------------------------------

    async def _download(self, request: Request, response: Response) -> None:
        user = self._user(request)
        path = self._resolve(request.param("path") or "", user)
        loop = asyncio.get_running_loop()
        try:
            fd, st = await loop.run_in_executor(None, _open_for_read, path)
        except OSError as exc:
            raise _os_error(exc, path, "opening") from None
        try:
            await self._send_file(request, response, fd, st)
        except OSError as exc:
            if response.started or isinstance(exc, ConnectionError):
                raise
            raise _os_error(exc, path, "reading") from None
        finally:
            os.close(fd)

    async def _send_file(self, request: Request, response: Response, fd: int, st: os.stat_result) -> None:
        size = st.st_size
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Last-Modified": _http_date(st.st_mtime),
        }
        range_header = request.headers.get("range")
        if size <= INLINE_READ and not range_header:
            # Small files are read whole before the answer starts, so the length sent is the
            # length read: a file rewritten meanwhile is sent as it was at the read, and a
            # /proc or /sys file, which says it is empty, with what it holds.
            data = _read_to_end(fd, PSEUDO_FILE_LIMIT)
            await response.start(200, headers, length=len(data))
            if request.method != "HEAD":
                await response.write(data)
            await response.end()
            return
        start, end, status = 0, size, 200
        if range_header:
            byte_range = _parse_range(range_header, size)
            if byte_range is None:
                headers["Content-Range"] = f"bytes */{size}"
                await response.send(416, headers=headers)
                return
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await response.start(status, headers, length=end - start)
        if request.method == "HEAD":
            await response.end()
            return
        loop = asyncio.get_running_loop()
        position = start
        while position < end:
            count = min(READ_CHUNK, end - position)
            if end - start <= INLINE_READ:
                chunk = os.pread(fd, count, position)
            else:
                chunk = await loop.run_in_executor(None, os.pread, fd, count, position)
            if not chunk:  # the file shrank: the only honest answer is to cut the body
                response.keep_alive = False
                return
            await response.write(chunk)
            position += len(chunk)
        await response.end()

    # --- upload -------------------------------------------------------------

    async def _upload(self, request: Request, response: Response) -> None:
        user = self._user(request)
        path_param = request.param("path")
        read: Read = request.body.read
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            read = _Gunzip(read).read
        elif encoding not in ("", "identity"):
            raise FilesError(400, f"unsupported content encoding: {encoding}")
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        written: list[dict[str, Any]] = []
        if media_type == "application/octet-stream":
            if not path_param:
                raise FilesError(400, "path query parameter is required for raw body upload")
            target = self._resolve(path_param, user)
            written.append(await self._store(target, read, user))
        elif media_type.startswith("multipart/"):
            boundary = header_params(content_type).get("boundary")
            if not boundary:
                raise FilesError(400, "multipart body without a boundary")
            reader = MultipartReader(read, boundary)
            while (part := await reader.next_part()) is not None:
                if part.name != "file":
                    continue
                name = path_param or part.filename
                if not name:
                    raise FilesError(400, "a file part needs a file name or a path parameter")
                target = self._resolve(name, user)
                if any(entry["path"] == target for entry in written):
                    raise FilesError(
                        400,
                        f"you cannot upload multiple files to the same path '{target}' in one upload request",
                    )
                written.append(await self._store(target, part.read, user))
        else:
            raise FilesError(
                400,
                f"unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream",
            )
        body = json.dumps(written).encode()
        await response.send(200, body, content_type="application/json")

    async def _store(self, target: str, read: Read, user: User) -> dict[str, Any]:
        """Stream ``read`` into ``target`` (through its symlinks) by a temporary file and a rename."""
        loop = asyncio.get_running_loop()
        path = target
        try:
            path = await loop.run_in_executor(None, os.path.realpath, target)
            fd, temp = await loop.run_in_executor(None, self._create_temp, path, user)
        except FilesError:
            raise
        except NotADirectoryError as exc:
            raise FilesError(400, f"a parent of '{target}' is not a directory: {exc}") from None
        except OSError as exc:
            raise _os_error(exc, target, "writing") from None
        size = 0
        try:
            batch = bytearray()
            while chunk := await read():
                batch += chunk
                size += len(chunk)
                if len(batch) >= WRITE_BATCH:
                    await loop.run_in_executor(None, _write_all, fd, bytes(batch))
                    batch.clear()
            if batch:
                await loop.run_in_executor(None, _write_all, fd, bytes(batch))
            os.close(fd)
            fd = -1
            await loop.run_in_executor(None, os.rename, temp, path)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, OSError):
                raise _os_error(exc, target, "writing") from None
            raise
        log("file written", path=target, size=size, user=user.name)
        return {"name": posixpath.basename(target), "type": "file", "path": target}

    @staticmethod
    def _create_temp(target: str, user: User) -> tuple[int, str]:
        try:
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise FilesError(400, f"path is a directory: {target}")
        if st is not None and not stat.S_ISREG(st.st_mode):  # a write replaces the file: never /dev/null
            kind = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a named pipe",
                    stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(st.st_mode), "not a regular file")  # fmt: skip
            raise FilesError(400, f"path '{target}' is {kind}: only regular files can be written")
        directory = posixpath.dirname(target)
        make_dirs(directory, user)
        temp = posixpath.join(directory, f".{posixpath.basename(target)}.{os.urandom(6).hex()}.upload")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            if st is None:
                chown(temp, user)
            else:  # an overwritten file keeps its mode and owners; as the kernel does, a write
                # by anyone but root drops setuid and setgid
                mode = stat.S_IMODE(st.st_mode) & (~0 if user.uid == 0 else ~(stat.S_ISUID | stat.S_ISGID))
                if os.geteuid() == 0:
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(temp)
            raise
        return fd, temp
