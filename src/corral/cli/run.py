"""``corral exec`` and ``corral cp``: run commands in a sandbox and move files in and out."""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import typer

from corral.cli._common import JsonOption, cli_errors, connection, fail, parse_pairs, print_json
from corral.errors import ExecTimeout
from corral.sdk import CommandExitError, CommandResult, Sandbox

TIMEOUT_EXIT = 124
"""What ``corral exec`` exits with when the command ran past its timeout (as timeout(1) does)."""


def _exit_status(code: int) -> int:
    """A remote exit code as a local exit status: a signal death ``-N`` becomes ``128 + N``."""
    if 0 <= code <= 255:
        return code
    return 128 - code if -64 <= code < 0 else 1


def _writer(stream: IO[str]) -> Callable[[str], None]:
    def write(data: str) -> None:
        stream.write(data)
        stream.flush()

    return write


def exec_(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(help="The sandbox's id.")],
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND...",
            help="One argument is a shell line (bash -c, else sh -c); several are an argv, run without a shell.",
        ),
    ],
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
    user: Annotated[str | None, typer.Option(help="Run as this user (default: user).")] = None,
    env: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Environment (repeat).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before it is killed; 0: no limit.")] = 60,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Feed it this command's standard input, as it comes (any bytes, any size).")
    ] = False,
    json: JsonOption = False,
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code.

    With --json the output is collected and printed as {exit_code, stdout, stderr}.
    Past --timeout the command is killed and corral exits with 124.
    """
    conn = connection(ctx)
    envs = parse_pairs(env, "--env")
    cmd: str | list[str] = command[0] if len(command) == 1 else command
    feed = sys.stdin.buffer if stdin else None
    out, err = (None, None) if json else (sys.stdout, sys.stderr)
    with cli_errors(), conn.sandbox(sandbox_id) as sbx:
        try:
            result = sbx.commands.run(
                cmd,
                on_stdout=_writer(out) if out else None,
                on_stderr=_writer(err) if err else None,
                timeout=timeout,
                envs=envs or None,
                cwd=cwd,
                user=user,
                stdin=feed,
            )
        except CommandExitError as exc:
            result = exc.result
        except ExecTimeout as exc:
            if json:
                details = exc.details
                stdout, stderr = str(details.get("stdout", "")), str(details.get("stderr", ""))
                print_json(CommandResult(TIMEOUT_EXIT, stdout, stderr).to_json() | {"error": "timeout"})
            fail(exc.code, exc.message, TIMEOUT_EXIT)
    if json:
        print_json({"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr})
    raise typer.Exit(_exit_status(result.exit_code))


@dataclass(frozen=True)
class Location:
    """One side of ``corral cp``: ``ID:/path`` in a sandbox, a local path, or ``-``."""

    path: str
    sandbox_id: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Location:
        head, sep, tail = spec.partition(":")
        if sep and head and "/" not in head and not head.startswith("."):
            return cls(tail, head)
        return cls(spec)

    @property
    def is_stdio(self) -> bool:
        return self.sandbox_id is None and self.path == "-"


def _remote_target(path: str, source: str) -> str:
    """Where an upload lands: into the directory ``path`` names when it ends in ``/``."""
    if path and not path.endswith("/"):
        return path
    if source == "-":
        fail("invalid_request", "give the sandbox path a file name when copying from stdin")
    return posixpath.join(path, os.path.basename(source))


def _local_target(path: str, source: str) -> str:
    if os.path.isdir(path):
        return os.path.join(path, posixpath.basename(source.rstrip("/")))
    return path


def _upload(sbx: Sandbox, source: str, target: str, user: str | None) -> dict[str, object]:
    if source == "-":
        return sbx.files.write(target, sys.stdin.buffer, user=user).to_json()
    with open(source, "rb") as f:
        return sbx.files.write(target, f, user=user).to_json()


def _download(sbx: Sandbox, source: str, target: str, user: str | None) -> None:
    chunks = sbx.files.read(source, format="stream", user=user)
    if target == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return
    try:
        with open(target, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
    except BaseException:
        Path(target).unlink(missing_ok=True)
        raise


TREE_DEPTH = 32
"""The deepest listing the API gives: a directory copied out of a sandbox goes this many levels down."""


def _upload_tree(sbx: Sandbox, source: str, target: str, user: str | None) -> list[dict[str, object]]:
    """A local directory into the sandbox, file by file (modes kept; symlinks and special files left out)."""
    copied: list[dict[str, object]] = []
    sbx.files.make_dir(target, user=user)
    for top, dirs, files in os.walk(source):
        below = os.path.relpath(top, source)
        remote = target if below == os.curdir else posixpath.join(target, *below.split(os.sep))
        for name in sorted(dirs):
            if os.path.islink(os.path.join(top, name)):
                dirs.remove(name)  # not followed out of the tree
            else:
                sbx.files.make_dir(posixpath.join(remote, name), user=user)
        for name in sorted(files):
            local = os.path.join(top, name)
            if os.path.islink(local) or not os.path.isfile(local):
                continue
            entry = _upload(sbx, local, posixpath.join(remote, name), user)
            mode = stat.S_IMODE(os.stat(local).st_mode)
            if mode & 0o777 != entry.get("mode"):
                entry = sbx.files.chmod(str(entry["path"]), mode).to_json()
            copied.append(entry)
    return copied


def _download_tree(sbx: Sandbox, source: str, target: str, user: str | None) -> list[dict[str, object]]:
    """A sandbox directory to a local one, file by file (modes kept; symlinks left out)."""
    copied: list[dict[str, object]] = []
    os.makedirs(target, exist_ok=True)
    prefix = source.rstrip("/") + "/"
    for entry in sbx.files.list(source, depth=TREE_DEPTH, user=user):
        parts = entry.path.removeprefix(prefix).split("/")
        if not entry.path.startswith(prefix) or any(part in ("", ".", "..") for part in parts):
            # Names come from the sandbox: none may lead out of the local target.
            fail("invalid_request", f"the sandbox listed '{entry.path}' under '{source}': not copied")
        local = os.path.join(target, *parts)
        if entry.type == "dir":
            os.makedirs(local, exist_ok=True)
        elif entry.type == "file":
            os.makedirs(os.path.dirname(local), exist_ok=True)
            _download(sbx, entry.path, local, user)
            os.chmod(local, entry.mode & 0o7777)
            copied.append(entry.to_json())
    return copied


def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="ID:/path in a sandbox, a local path, or - for stdin.")],
    destination: Annotated[str, typer.Argument(help="ID:/path in a sandbox, a local path, or - for stdout.")],
    user: Annotated[str | None, typer.Option(help="Read or write as this sandbox user.")] = None,
    json: JsonOption = False,
) -> None:
    """Copy a file or a directory into a sandbox or out of one, streamed.

    A directory is copied with all it holds (file modes kept; symlinks left
    out), into DESTINATION/ when that ends in / or is a local directory, else
    as DESTINATION. With --json: the entry copied, or a list of the files.

    corral cp ./data.csv sbx-123:/home/user/   corral cp sbx-123:/tmp/out.log -
    corral cp ./project sbx-123:/home/user/    corral cp sbx-123:/home/user/out ./
    """
    src, dst = Location.parse(source), Location.parse(destination)
    if (src.sandbox_id is None) == (dst.sandbox_id is None):
        fail("invalid_request", "exactly one side must be in a sandbox (ID:/path)")
    conn = connection(ctx)
    if dst.sandbox_id is not None:
        target = _remote_target(dst.path, src.path.rstrip("/") or src.path)
        with cli_errors(), conn.sandbox(dst.sandbox_id) as sbx:
            if os.path.isdir(src.path):
                copied: object = _upload_tree(sbx, src.path, target, user)
            else:
                copied = _upload(sbx, src.path, target, user)
        if json:
            print_json(copied)
        return
    assert src.sandbox_id is not None
    target = dst.path if dst.is_stdio else _local_target(dst.path, src.path)
    with cli_errors(), conn.sandbox(src.sandbox_id) as sbx:
        found = sbx.files.stat(src.path, user=user) if target != "-" else None
        if found is not None and found.type == "dir":
            tree = _download_tree(sbx, src.path, target, user)
            if json:
                print_json(tree)
            return
        _download(sbx, src.path, target, user)
    if json and found is not None:
        print_json(found.to_json())
