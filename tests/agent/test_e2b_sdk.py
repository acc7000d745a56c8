"""The official e2b SDK against the agent: its debug mode with ``sandbox_url`` pointing at us."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox
from e2b.exceptions import InvalidArgumentException, NotFoundException
from e2b.sandbox.commands.command_handle import CommandExitException, PtySize
from e2b.sandbox.filesystem.filesystem import FileType

from tests.agent.conftest import Agent


@pytest.fixture(scope="module")
def sbx(agent: Agent) -> Iterator[Sandbox]:
    # Debug mode skips the E2B API; sandbox_url sends every envd call to the agent.
    yield Sandbox.connect("agent-test", debug=True, sandbox_url=agent.url)


def test_run(sbx: Sandbox, tmp_path: Path) -> None:
    result = sbx.commands.run("echo hello; echo oops >&2", cwd=str(tmp_path))
    assert result.stdout == "hello\n"
    assert result.stderr == "oops\n"
    assert result.exit_code == 0
    assert result.error is None


def test_run_envs_and_callbacks(sbx: Sandbox) -> None:
    seen: list[str] = []
    result = sbx.commands.run('echo "$A-$B"', envs={"A": "x", "B": "y"}, on_stdout=seen.append)
    assert result.stdout == "x-y\n"
    assert "".join(seen) == "x-y\n"


def test_non_zero_exit_raises(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as info:
        sbx.commands.run("echo partial; exit 42")
    assert info.value.exit_code == 42
    assert info.value.stdout == "partial\n"
    assert info.value.error == "exit status 42"


def test_background_and_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 60", background=True)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.error == "signal: killed"
    assert handle.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(handle.pid) is False


def test_stdin(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat; echo end", background=True, stdin=True)
    handle.send_stdin("line one\n")
    sbx.commands.send_stdin(handle.pid, b"line two\n")
    handle.close_stdin()
    assert handle.wait().stdout == "line one\nline two\nend\n"


def test_stream_input(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(handle.pid, [b"a", "b", b"c\n"])
    handle.close_stdin()
    assert handle.wait().stdout == "abc\n"


def test_connect_to_a_running_command(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 0.5; echo late", background=True)
    handle.disconnect()
    again = sbx.commands.connect(handle.pid)
    assert again.wait().stdout == "late\n"


def test_timeout(sbx: Sandbox) -> None:
    began = time.monotonic()
    with pytest.raises(Exception) as info:
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - began < 10
    assert "timeout" in type(info.value).__name__.lower() or "deadline" in str(info.value).lower()


def test_pty(sbx: Sandbox) -> None:
    output = bytearray()
    handle = sbx.pty.create(PtySize(rows=24, cols=80), envs={"PS1": "$ "})
    sbx.pty.resize(handle.pid, PtySize(rows=40, cols=132))
    sbx.pty.send_stdin(handle.pid, b"stty size; exit\n")
    handle.wait(on_pty=output.extend)
    assert b"40 132" in output


def test_files(sbx: Sandbox, tmp_path: Path) -> None:
    base = tmp_path / "files"
    info = sbx.files.write(str(base / "a" / "hello.txt"), "hello world")
    assert info.path == str(base / "a" / "hello.txt") and info.type == FileType.FILE
    assert sbx.files.read(str(base / "a" / "hello.txt")) == "hello world"
    assert sbx.files.read(str(base / "a" / "hello.txt"), format="bytes") == bytearray(b"hello world")
    streamed = b"".join(sbx.files.read(str(base / "a" / "hello.txt"), format="stream"))
    assert streamed == b"hello world"

    assert sbx.files.exists(str(base / "a" / "hello.txt")) is True
    assert sbx.files.exists(str(base / "nope")) is False

    assert sbx.files.make_dir(str(base / "d" / "e")) is True
    assert sbx.files.make_dir(str(base / "d" / "e")) is False

    entries = sbx.files.list(str(base))
    assert [(e.name, e.type) for e in entries] == [("a", FileType.DIR), ("d", FileType.DIR)]
    deep = sbx.files.list(str(base), depth=3)
    hello = next(e for e in deep if e.name == "hello.txt")
    assert hello.size == 11 and hello.permissions == "-rw-r--r--"

    renamed = sbx.files.rename(str(base / "a" / "hello.txt"), str(base / "moved.txt"))
    assert renamed.path == str(base / "moved.txt") and renamed.size == 11
    assert (base / "moved.txt").read_text() == "hello world"

    info = sbx.files.get_info(str(base / "moved.txt"))
    assert info.name == "moved.txt" and info.owner == "root"

    sbx.files.remove(str(base / "d"))
    assert not (base / "d").exists()

    with pytest.raises(NotFoundException):
        sbx.files.read(str(base / "missing.txt"))
    with pytest.raises(InvalidArgumentException):
        sbx.files.read(str(base))


def test_write_many_and_streams(sbx: Sandbox, tmp_path: Path) -> None:
    written = sbx.files.write_files(
        [
            {"path": str(tmp_path / "one"), "data": b"1"},
            {"path": str(tmp_path / "two"), "data": "2"},
        ]
    )
    assert [w.name for w in written] == ["one", "two"]
    assert (tmp_path / "one").read_bytes() == b"1" and (tmp_path / "two").read_text() == "2"
    chunks = [bytes([i]) * 100_000 for i in range(10)]
    sbx.files.write(str(tmp_path / "streamed"), iter(chunks))
    assert (tmp_path / "streamed").read_bytes() == b"".join(chunks)
    sbx.files.write(str(tmp_path / "zipped"), b"z" * 50_000, gzip=True)
    assert (tmp_path / "zipped").read_bytes() == b"z" * 50_000
