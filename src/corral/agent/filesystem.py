"""envd's ``filesystem.Filesystem`` service (Stat, ListDir, MakeDir, Remove, Move) and
corral's ``corral.Agent/Chmod``.

Paths are resolved for the calling user (``~`` and relative paths start at
their home). Operations run as the agent (root in a sandbox), like envd;
directories created on a user's behalf are chowned to them. Blocking work
runs in the default thread pool so the event loop keeps serving.

Extension: ``RemoveRequest`` may carry ``"recursive": false``, which refuses
to remove a non-empty directory (``failed_precondition``); envd ignores the
field and always removes recursively, which stays the default.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import stat
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .connect import Call, Message, Router, RpcError, field
from .process_rpc import call_user
from .users import User, UserDb, resolve_path

T = TypeVar("T")

FILE = "FILE_TYPE_FILE"
DIRECTORY = "FILE_TYPE_DIRECTORY"
SYMLINK = "FILE_TYPE_SYMLINK"
UNSPECIFIED = "FILE_TYPE_UNSPECIFIED"

# Go's os.FileMode.String() type letters, in Go's order.
_MODE_LETTERS = (
    (stat.S_ISDIR, "d"),
    (stat.S_ISLNK, "L"),
    (stat.S_ISBLK, "D"),
    (stat.S_ISCHR, "D"),
    (stat.S_ISFIFO, "p"),
    (stat.S_ISSOCK, "S"),
)


def go_permissions(mode: int) -> str:
    """``st_mode`` as Go's ``FileMode.String()`` spells it (envd's ``permissions``)."""
    letters = "".join(letter for test, letter in _MODE_LETTERS if test(mode))
    if mode & stat.S_ISUID:
        letters += "u"
    if mode & stat.S_ISGID:
        letters += "g"
    if stat.S_ISCHR(mode):
        letters += "c"
    if mode & stat.S_ISVTX:
        letters += "t"
    rwx = "".join(char if mode & (1 << (8 - i)) else "-" for i, char in enumerate("rwxrwxrwx"))
    return (letters or "-") + rwx


def rfc3339(ns: int) -> str:
    """A protobuf JSON ``Timestamp`` for ``ns`` nanoseconds since the epoch."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{nanos:09d}Z" if nanos else f"{text}Z"


def _type_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return DIRECTORY
    if stat.S_ISREG(mode):
        return FILE
    return UNSPECIFIED


class EntryMaker:
    """Builds ``EntryInfo`` messages, naming owners from the image's user database."""

    def __init__(self, users: UserDb) -> None:
        self._users = users

    def entry(self, path: str, st: os.stat_result | None = None) -> Message:
        """The ``EntryInfo`` of ``path`` itself (a symlink is described, not followed)."""
        if st is None:
            st = os.lstat(path)
        mode = st.st_mode
        entry: Message = {
            "name": posixpath.basename(path) or "/",
            "type": _type_of(mode),
            "path": path,
            "size": str(st.st_size),  # int64: a string in protobuf JSON
            "mode": stat.S_IMODE(mode) & 0o777,
            "permissions": go_permissions(mode),
            "owner": self._users.user_name(st.st_uid),
            "group": self._users.group_name(st.st_gid),
            "modifiedTime": rfc3339(st.st_mtime_ns),
        }
        if stat.S_ISLNK(mode):
            # As newer envd: the target's type and mode, plus isSymlink.
            target = os.path.realpath(path)
            entry["symlinkTarget"] = target
            entry["isSymlink"] = True
            try:
                target_st = os.stat(path)
            except OSError:
                entry["type"] = SYMLINK  # dangling: still listed
            else:
                entry["type"] = _type_of(target_st.st_mode)
                entry["mode"] = stat.S_IMODE(target_st.st_mode) & 0o777
        return entry


BAD_PATH = frozenset({errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO, errno.ENODEV, errno.EINVAL})
"""Errors of a path that are the caller's to fix: a symlink loop, a name too long, a socket or a missing device,
a path the call cannot take (``EINVAL``)."""


def error_code(exc: OSError) -> str:
    """What a failed file call's error is, as a Connect code: ``/files`` answers its HTTP status for it."""
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return "permission_denied"  # what the kernel refuses even root
    if isinstance(exc, FileExistsError):
        return "already_exists"
    if isinstance(exc, NotADirectoryError | IsADirectoryError) or exc.errno in BAD_PATH:
        return "invalid_argument"
    if exc.errno == errno.ENOTEMPTY:
        return "failed_precondition"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "resource_exhausted"
    return "internal"


def os_error(exc: OSError, path: str) -> RpcError:
    """The Connect error for a failed filesystem call."""
    code = error_code(exc)
    detail = f"{exc.strerror or exc}: {path}"
    message = {
        "not_found": f"file not found: {detail}",
        "failed_precondition": f"directory not empty: {path}",
        "resource_exhausted": f"no space left on device: {path}",
    }.get(code, detail)
    return RpcError(code, message)


def make_dirs(path: str, user: User) -> None:
    """``mkdir -p path``, chowning each directory created to ``user`` (when root)."""
    missing: list[str] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        parent = posixpath.dirname(current)
        if parent == current:
            break
        current = parent
    if not os.path.isdir(current):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue
        chown(directory, user)


def chown(path: str, user: User) -> None:
    """Give ``path`` to ``user`` if the agent may (it is root in a sandbox)."""
    if os.geteuid() == 0:
        os.lchown(path, user.uid, user.gid)


class FilesystemService:
    """Handlers for ``/filesystem.Filesystem/*`` and ``/corral.Agent/Chmod``."""

    def __init__(self, users: UserDb) -> None:
        self._users = users
        self.entries = EntryMaker(users)

    def register(self, router: Router) -> None:
        prefix = "/filesystem.Filesystem/"
        router.unary(prefix + "Stat", self.stat)
        router.unary(prefix + "ListDir", self.list_dir)
        router.unary(prefix + "MakeDir", self.make_dir)
        router.unary(prefix + "Remove", self.remove)
        router.unary(prefix + "Move", self.move)
        router.unary("/corral.Agent/Chmod", self.chmod)

    def _path(self, call: Call, message: Message, name: str = "path") -> tuple[str, User]:
        user = call_user(self._users, call)
        value = field(message, name)
        if value is not None and not isinstance(value, str):
            raise RpcError("invalid_argument", f"{name} must be a string")
        try:
            return resolve_path(value or "", user), user
        except ValueError as exc:
            raise RpcError("invalid_argument", str(exc)) from None

    @staticmethod
    async def _run(function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def stat(self, call: Call, message: Message) -> Message:
        path, _ = self._path(call, message)
        try:
            return {"entry": self.entries.entry(path)}
        except OSError as exc:
            raise os_error(exc, path) from None

    async def list_dir(self, call: Call, message: Message) -> Message:
        path, _ = self._path(call, message)
        try:
            depth = int(field(message, "depth") or 1)
        except (TypeError, ValueError):
            raise RpcError("invalid_argument", "depth must be a number") from None
        return {"entries": await self._run(self._list, path, max(depth, 1))}

    def _list(self, path: str, depth: int) -> list[Message]:
        try:
            if not os.path.isdir(path):
                os.stat(path)  # raises not-found for a missing path
                raise RpcError("invalid_argument", f"path is not a directory: {path}")
        except OSError as exc:
            raise os_error(exc, path) from None
        entries: list[Message] = []

        def walk(directory: str, level: int) -> None:
            try:
                with os.scandir(directory) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if level == 1:
                    raise os_error(exc, directory) from None
                return  # an unreadable subdirectory is skipped
            for child in children:
                child_path = posixpath.join(directory, child.name)
                try:
                    st = child.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished meanwhile
                entries.append(self.entries.entry(child_path, st))
                if level < depth and stat.S_ISDIR(st.st_mode):
                    walk(child_path, level + 1)

        walk(path, 1)
        return entries

    async def make_dir(self, call: Call, message: Message) -> Message:
        path, user = self._path(call, message)
        if os.path.lexists(path):
            if os.path.isdir(path):
                raise RpcError("already_exists", f"directory already exists: {path}")
            raise RpcError("invalid_argument", f"path already exists but it is not a directory: {path}")
        try:
            make_dirs(path, user)
            return {"entry": self.entries.entry(path)}
        except OSError as exc:
            raise os_error(exc, path) from None

    async def remove(self, call: Call, message: Message) -> Message:
        path, _ = self._path(call, message)
        recursive = field(message, "recursive")
        await self._run(self._remove, path, recursive is not False)
        return {}

    @staticmethod
    def _remove(path: str, recursive: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return  # like envd (os.RemoveAll): removing nothing succeeds
        except OSError as exc:
            raise os_error(exc, path) from None
        try:
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
            elif recursive:
                import shutil  # here: it brings zlib and fnmatch, which the agent's start does without

                shutil.rmtree(path)
            else:
                os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(exc, path) from None

    async def move(self, call: Call, message: Message) -> Message:
        source, user = self._path(call, message, "source")
        destination, _ = self._path(call, message, "destination")
        return {"entry": await self._run(self._move, source, destination, user)}

    def _move(self, source: str, destination: str, user: User) -> Message:
        try:
            os.lstat(source)
        except OSError as exc:
            raise os_error(exc, source) from None
        if destination.startswith(source.rstrip("/") + "/"):  # before any parent of it is made
            raise RpcError("invalid_argument", f"cannot move '{source}' into itself ('{destination}')")
        try:
            make_dirs(posixpath.dirname(destination), user)
            try:
                os.rename(source, destination)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                import shutil

                shutil.move(source, destination)
            return self.entries.entry(destination)
        except OSError as exc:
            raise os_error(exc, destination) from None

    async def chmod(self, call: Call, message: Message) -> Message:
        path, _ = self._path(call, message)
        value = field(message, "mode")
        try:
            mode = int(value, 8) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise RpcError("invalid_argument", "mode must be a number (or an octal string)") from None
        try:
            os.chmod(path, mode & 0o7777)
            return {"entry": self.entries.entry(path)}
        except OSError as exc:
            raise os_error(exc, path) from None
