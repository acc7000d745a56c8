"""Build contexts: packed by the CLI, unpacked by the server, looked up by ``COPY``.

The archive is a tar (gzip'd by :func:`pack_context`) of the context directory,
member names relative to its root. It comes from a client, so
:func:`extract_context` trusts nothing in it: every name stays under the
destination, nothing is ever written through a symlink, no device nodes, no
owners, no setuid bits, and the whole is bounded in size.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import posixpath
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from corral.errors import InvalidRequest, PayloadTooLarge

__all__ = ["extract_context", "pack_context", "resolve_in_context"]

_MAGIC = re.compile(r"[*?\[]")


def _glob_regex(pattern: str, *, double_star: bool) -> str:
    """A regex for a Go-style glob: ``*``/``?`` stop at ``/``, ``[...]`` (``!`` or ``^`` negates), ``\\`` escapes.

    With ``double_star``, ``**/`` matches any number of directories (zero included) and a final ``**`` anything.
    """
    out, index = [], 0
    while index < len(pattern):
        ch = pattern[index]
        index += 1
        if ch == "*" and double_star and pattern.startswith("*", index):
            index += 1
            if pattern.startswith("/", index):
                index += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and index < len(pattern):
            out.append(re.escape(pattern[index]))
            index += 1
        elif ch == "[" and (end := pattern.find("]", index + 1)) > index:
            body = pattern[index:end]
            index = end + 1
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


class _IgnoreRules:
    """A ``.dockerignore``: Docker's rules, which are not ``.gitignore``'s.

    One pattern a line, relative to the context root (a leading ``/`` is
    dropped, ``./`` and ``a/../`` cleaned); ``#`` at the very start of a line
    makes a comment; ``*``, ``?``, ``[...]`` and ``\\`` as in Go's
    ``filepath.Match``; ``**/`` spans any number of directories. ``!pattern``
    re-includes. A pattern that matches a directory excludes all beneath it,
    and the last matching pattern wins. Unlike ``.gitignore``, ``*.pyc``
    matches at the root only: write ``**/*.pyc`` for every level.
    """

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[re.Pattern[str], bool, str]] = []
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            pattern = line.strip()
            include = pattern.startswith("!")
            pattern = pattern[1:].strip() if include else pattern
            if not pattern:
                continue
            pattern = posixpath.normpath(pattern).lstrip("/")
            self.rules.append((re.compile(_glob_regex(pattern, double_star=True)), include, pattern))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (``a/b/c``, relative) is left out of the context."""
        prefixes = [path] + ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
        result = False
        for regex, include, _ in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not include
        return result

    def may_include_under(self, directory: str) -> bool:
        """Whether a ``!`` pattern could bring back something under an excluded ``directory``."""
        for _, include, pattern in self.rules:
            literal = _MAGIC.split(pattern.replace("\\", ""), maxsplit=1)[0]
            if include and (literal.startswith(directory + "/") or (directory + "/").startswith(literal)):
                return True
        return False


def pack_context(directory: Path, *, dockerfile: Path | None = None) -> bytes:
    """Pack a build context as a deterministic ``.tar.gz``, for the CLI to upload.

    ``.dockerignore`` in ``directory`` (see :class:`_IgnoreRules`) leaves paths
    out; ``<dockerfile>.dockerignore`` beside the given Dockerfile, if present,
    is used instead, as Docker does. The Dockerfile itself is always packed when
    it is inside ``directory``, even if ignored (one outside is not packed: send
    its text on its own). Entries are sorted; modes and mtimes are kept, owners
    are not (COPY makes files root's unless ``--chown``). Symlinks are stored as
    symlinks, never followed; sockets, fifos and devices are skipped.
    """
    root = directory.resolve(strict=True)
    ignore_file = root / ".dockerignore"
    keep: str | None = None
    if dockerfile is not None:
        beside = dockerfile.with_name(dockerfile.name + ".dockerignore")
        ignore_file = beside if beside.is_file() else ignore_file
        absolute = dockerfile.resolve()
        keep = absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else None
    rules = _IgnoreRules(ignore_file.read_text() if ignore_file.is_file() else "")
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative, path, st in _walk(root, "", rules, keep):
            info = tarfile.TarInfo(relative)
            info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as data:
                    tar.addfile(info, data)
    return buffer.getvalue()


def _walk(
    directory: Path, prefix: str, rules: _IgnoreRules, keep: str | None
) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry under ``directory`` that ``rules`` keep, depth first in name order; links not followed."""
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        relative = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        excluded = rules.excluded(relative) and relative != keep
        if not excluded:
            yield relative, Path(entry.path), st
        wanted = not excluded or rules.may_include_under(relative) or (keep or "").startswith(relative + "/")
        if stat.S_ISDIR(st.st_mode) and wanted:
            yield from _walk(Path(entry.path), relative + "/", rules, keep)


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Limited:
    """A reader that fails once more than ``limit`` bytes came through: the bound on the uncompressed tar."""

    def __init__(self, inner: _Reader, limit: int) -> None:
        self._read, self._limit, self._count = inner.read, limit, 0

    def read(self, size: int = -1) -> bytes:
        budget = self._limit - self._count + 1
        data = self._read(budget if size < 0 or size > budget else size)
        self._count += len(data)
        if self._count > self._limit:
            raise PayloadTooLarge(
                f"the build context is larger than {self._limit} bytes uncompressed",
                details={"max_bytes": self._limit},
            )
        return data


class _Prefixed:
    """Put back the bytes read to sniff the compression."""

    def __init__(self, head: bytes, rest: _Reader) -> None:
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(data) :]
            if size < 0:
                data += self._rest.read()
            return data
        return self._rest.read(size)

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("a build context is read once, front to back")


def extract_context(data: bytes | BinaryIO, dest: Path, *, max_bytes: int) -> None:
    """Unpack an uploaded build context (tar or tar.gz, sniffed) into ``dest``, refusing anything unsafe.

    Refused with :class:`InvalidRequest` naming the member: absolute names,
    ``..`` components, a member whose path goes through a symlink or a file
    (so ``a -> /etc`` then ``a/passwd`` fails, whatever ``a`` points at), hard
    links to anything but a regular file extracted before them, device nodes,
    fifos and sparse files. Symlinks themselves may point anywhere: they are
    created, never followed. Owners are not restored (everything belongs to the
    caller), and modes keep their permission bits only (no setuid/setgid).
    More than ``max_bytes`` of uncompressed tar stream (headers included) raises
    :class:`PayloadTooLarge`. On error ``dest`` may hold a partial tree: the
    caller removes it.
    """
    stream: _Reader = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    head = b""
    while len(head) < 2 and (chunk := stream.read(2 - len(head))):
        head += chunk
    prefixed = _Prefixed(head, stream)
    source: _Reader = gzip.GzipFile(fileobj=prefixed, mode="rb") if head == b"\x1f\x8b" else prefixed
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    directories: list[tuple[Path, int, int]] = []
    try:
        with tarfile.open(fileobj=cast(BinaryIO, _Limited(source, max_bytes)), mode="r|") as tar:
            for member in tar:
                _extract(tar, member, root, directories)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidRequest(f"the build context is not a valid tar or tar.gz archive: {exc}") from exc
    # Directory modes and mtimes last, deepest first: writing into a directory changes its mtime.
    for path, mode, mtime in sorted(directories, reverse=True):
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))


def _refuse(member: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"build context member {member!r} {why}", details={"member": member})


def _parts(name: str, member: str) -> list[str]:
    if name.startswith("/"):
        raise _refuse(member, "has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(member, "has a '..' component")
    return parts


def _parent(root: Path, parts: list[str], member: str, *, create: bool = True) -> Path:
    """The member's parent directory, created if missing; never through a symlink or a file."""
    current = root
    for part in parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not create:
                raise _refuse(member, f"needs {current.relative_to(root).as_posix()!r}, which is not there") from None
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(member, f"would be written through the symlink {current.relative_to(root).as_posix()!r}")
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(member, f"needs {current.relative_to(root).as_posix()!r} to be a directory")
    return current


def _clear(path: Path, member: str, *, keep_directory: bool) -> None:
    """Make room for a member: a file or symlink in the way is replaced (never followed), a directory is not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_directory:
            return
        raise _refuse(member, "would replace a directory")
    os.unlink(path)


def _extract(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, directories: list[tuple[Path, int, int]]
) -> None:
    name = member.name
    parts = _parts(name, name)
    if not parts:
        return  # "./": the root itself
    if member.issparse() or not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _refuse(name, "is not a file, directory or link (devices, fifos and sparse files are refused)")
    try:
        target = _parent(root, parts[:-1], name) / parts[-1]
        mode, mtime = stat.S_IMODE(member.mode) & 0o777, int(member.mtime)
        if member.isdir():
            _clear(target, name, keep_directory=True)
            if not target.is_dir():
                os.mkdir(target, 0o700)
            directories.append((target, mode, mtime))
        elif member.issym():
            if not member.linkname:
                raise _refuse(name, "is a symlink to nothing")
            _clear(target, name, keep_directory=False)
            os.symlink(member.linkname, target)
            os.utime(target, (mtime, mtime), follow_symlinks=False)
        elif member.islnk():
            link_parts = _parts(member.linkname, name)
            source = _parent(root, link_parts[:-1], name, create=False) / link_parts[-1] if link_parts else root
            st = os.lstat(source) if os.path.lexists(source) else None
            if st is None or not stat.S_ISREG(st.st_mode) or source == target:
                raise _refuse(name, f"is a hard link to {member.linkname!r}, not to a file extracted before it")
            _clear(target, name, keep_directory=False)
            os.link(source, target, follow_symlinks=False)
        else:
            _clear(target, name, keep_directory=False)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(target, flags, 0o600), "wb") as out:
                content = tar.extractfile(member)
                assert content is not None
                while chunk := content.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fchmod(out.fileno(), mode)
                os.utime(out.fileno(), (mtime, mtime))
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise _refuse(name, f"cannot be created: {exc.strerror}") from exc
        raise


def resolve_in_context(context_dir: Path, source: str) -> list[Path]:
    """The paths a ``COPY`` source names in an extracted context, sorted; never outside it.

    ``source`` is relative to the context root (a leading ``/`` is too, as in
    Docker) and may use ``*``, ``?`` and ``[...]`` in any component. ``..`` is
    refused, and so is any match reached through, or being, a symlink that
    leads out of the context. Returned paths are under ``context_dir.resolve()``;
    a final symlink is returned as itself (it is known to lead inside), so the
    builder may follow it, but symlinks *inside* a copied directory must be
    copied as symlinks, not followed.
    """
    root = context_dir.resolve(strict=True)
    parts = [part for part in source.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest(
            f"COPY source {source!r} leaves the build context ('..' is not allowed)", details={"source": source}
        )
    candidates = [root]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        matches: list[Path] = []
        for directory in candidates:
            if _MAGIC.search(part):
                regex = re.compile(_glob_regex(part, double_star=False))
                names = sorted(name for name in os.listdir(directory) if regex.fullmatch(name))
            else:
                literal = part.replace("\\", "")
                names = [literal] if os.path.lexists(directory / literal) else []
            for name in names:
                path = directory / name
                real = Path(os.path.realpath(path))
                if not real.is_relative_to(root):
                    shown = path.relative_to(root).as_posix()
                    raise InvalidRequest(
                        f"COPY source {source!r}: {shown!r} is a symlink that leads outside the build context",
                        details={"source": source, "path": shown},
                    )
                if last and real.exists():
                    matches.append(path)
                elif real.is_dir():
                    matches.append(real)
        candidates = matches
    if not candidates:
        raise InvalidRequest(f"COPY source {source!r} matches nothing in the build context", details={"source": source})
    return sorted(set(candidates))
