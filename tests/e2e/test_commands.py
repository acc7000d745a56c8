"""Commands in a real sandbox: modes, users, env, stdin, streaming, timeouts, background."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator

import pytest

from corral import AsyncSandbox, CommandExitError, Sandbox
from corral.errors import ExecTimeout
from tests.serverproc import ServerProcess


def test_shell_and_argv_modes(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("echo $((6*7)) | tr 4 x").stdout == "x2\n"
    assert sandbox.commands.run("echo $0 $BASH_VERSINFO").stdout == "/bin/bash 5\n"  # the image has bash
    r = sandbox.commands.run(["python3", "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME"])
    assert r.stdout == "['a b', '$HOME']\n"


def test_exit_code_and_stderr(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as info:
        sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "out\n"
    assert info.value.stderr == "err\n"


def test_default_user_home_and_root(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("whoami; pwd; echo $HOME").stdout == "user\n/home/user\n/home/user\n"
    assert sandbox.commands.run("id -u", user="root").stdout == "0\n"


def test_cwd_and_envs(sandbox_factory) -> None:
    sbx = sandbox_factory(envs={"SANDBOX_WIDE": "yes"})
    r = sbx.commands.run("pwd; echo $SANDBOX_WIDE $ONE", cwd="/tmp", envs={"ONE": "1"})
    assert r.stdout == "/tmp\nyes 1\n"
    # corral's own variables never leak into user processes
    env = sbx.commands.run("env").stdout
    assert "PYTHONHOME" not in env and "CORRAL_" not in env


def test_stdin(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("tr a-z A-Z", stdin="hello\n")
    assert r.stdout == "HELLO\n"


def test_streamed_output_arrives_in_order(sandbox: Sandbox) -> None:
    chunks: list[str] = []
    errs: list[str] = []
    r = sandbox.commands.run(
        "for i in 1 2 3; do echo $i; sleep 0.2; done; echo bad >&2",
        on_stdout=chunks.append,
        on_stderr=errs.append,
    )
    assert "".join(chunks) == "1\n2\n3\n"
    assert len(chunks) >= 3  # it came in pieces, as printed
    assert "".join(errs) == "bad\n"
    assert r.stdout == "1\n2\n3\n"


def test_timeout_kills_the_process(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(ExecTimeout) as info:
        sandbox.commands.run("echo begun; sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    assert "begun" in info.value.details.get("stdout", "")
    left = sandbox.commands.run("ps -eo args | grep -c '^sleep 30' || true").stdout.strip()
    assert left == "0"


def test_background_process_lifecycle(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat; echo done", background=True)
    assert handle.pid > 0
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    handle.send_stdin("ping\n")
    handle.close_stdin()
    result = handle.wait()
    assert result.stdout == "ping\ndone\n"
    assert result.exit_code == 0


def test_connect_sees_every_output_after_it_returns(sandbox: Sandbox) -> None:
    echo = sandbox.commands.run("cat", background=True)
    try:
        for i in range(15):  # each a race between the reply and the new stream, were connect to return early
            follower = sandbox.commands.connect(echo.pid)
            sandbox.commands.send_stdin(echo.pid, f"line {i}\n")
            deadline = time.monotonic() + 10
            while f"line {i}\n" not in follower.stdout and time.monotonic() < deadline:
                time.sleep(0.01)
            assert follower.stdout == f"line {i}\n"
            follower.disconnect()
    finally:
        echo.kill()


def test_hundreds_of_commands_followed_at_once_leave_the_sandbox_usable(sandbox: Sandbox) -> None:
    # Each followed command holds a connection from the SDK to the server and one from the
    # server to the agent: 210 here, past httpx's default cap (100 per client), which made
    # every other call of the Sandbox wait and fail, and past the server's old cap (200 per
    # sandbox), which made the next call hang.
    handles = [sandbox.commands.run(["cat"], background=True) for _ in range(70)]
    followers = [sandbox.commands.connect(h.pid) for h in handles for _ in range(2)]
    try:
        assert sandbox.commands.run("echo still here").stdout == "still here\n"
        quiet = followers.pop()
        name = f"corral-pid-{quiet.pid}"
        assert [t.name for t in threading.enumerate()].count(name) == 3
        quiet.disconnect()  # its follower stops at once, though the process prints nothing
        assert [t.name for t in threading.enumerate()].count(name) == 2
        for i, handle in enumerate(handles):
            handle.send_stdin(f"{i}\n")
            handle.close_stdin()
        assert [h.wait().stdout for h in handles] == [f"{i}\n" for i in range(70)]
        assert [f.wait().stdout for f in followers] == [f"{i // 2}\n" for i in range(139)]
    finally:
        for handle in handles:
            handle.kill()


def test_stdin_from_bytes_files_and_iterables_of_any_size(sandbox: Sandbox) -> None:
    payload = os.urandom(3 << 20)  # past the server's 1 MiB JSON limit
    digest = hashlib.sha256(payload).hexdigest()
    assert sandbox.commands.run("sha256sum", stdin=payload).stdout.split()[0] == digest
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        member = tarfile.TarInfo("d/hello.txt")
        member.size = 6
        tar.addfile(member, io.BytesIO(b"hello\n"))
    archive.seek(0)
    sandbox.commands.run(["tar", "x", "-C", "/tmp"], stdin=archive)  # a binary file object
    assert sandbox.files.read("/tmp/d/hello.txt") == "hello\n"
    # Small chunks go in batches: one write each would take minutes.
    lines = (f"line {i}\n" for i in range(200_000))
    assert sandbox.commands.run("wc -l", stdin=lines, timeout=30).stdout == "200000\n"
    # A command that stops reading early ends as a pipe's reader does; the rest is dropped.
    assert sandbox.commands.run("head -c 5 | wc -c", stdin=os.urandom(4 << 20)).stdout == "5\n"
    handle = sandbox.commands.run("cat > /tmp/bg.bin", background=True, stdin=payload)
    handle.wait()
    assert sandbox.commands.run("sha256sum /tmp/bg.bin").stdout.split()[0] == digest
    cat = sandbox.commands.run("od -An -c", background=True)
    cat.send_stdin(b"\x00\xff")
    cat.close_stdin()
    assert cat.wait().stdout.split() == ["\\0", "377"]

    async def from_async_iterable() -> str:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 100_000

        same = await AsyncSandbox.connect(sandbox.id)
        try:
            return (await same.commands.run("wc -c", stdin=chunks())).stdout
        finally:
            await same.close()

    assert asyncio.run(from_async_iterable()) == "1000000\n"


def test_background_kill(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 300", background=True)
    handle.kill()
    with pytest.raises(CommandExitError):
        handle.wait()
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]


def test_unicode_and_binary_output(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("printf 'h\\303\\251llo \\342\\234\\223\\n'")
    assert r.stdout == "héllo ✓\n"
    r = sandbox.commands.run("head -c 100000 /dev/zero | tr '\\0' x")
    assert r.stdout == "x" * 100000


def test_commands_as_the_user_start_from_the_agent_in_gvisor(sandbox: Sandbox) -> None:
    r = sandbox.commands.run(
        "id -un; id -Gn; pwd; echo $HOME $X $PPID; echo $(ls /proc/self/fd);"
        " grep -E '^(Uid|CapEff|CapPrm)' /proc/self/status",
        cwd="/tmp",
        envs={"X": "1"},
    )
    name, groups, cwd, env, fds, *status = r.stdout.splitlines()
    assert (name, cwd, env) == ("user", "/tmp", "/home/user 1 1")  # the agent's own child: no helper between
    assert "user" in groups.split()
    assert fds.split() == ["0", "1", "2", "3"]  # 3: ls's own directory; nothing of the agent's
    fields = dict(line.split(":", 1) for line in status)
    assert fields["Uid"].split() == ["1000"] * 4
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    uids = sandbox.commands.run("grep -h ^Uid /proc/1/task/*/status", user="root").stdout.splitlines()
    assert len(uids) >= 2 and all(line.split()[1:] == ["0"] * 4 for line in uids)  # every agent thread is root again
    with pytest.raises(CommandExitError) as info:
        sandbox.commands.run("kill -TERM $$")
    assert info.value.exit_code == 128 + 15  # SIGTERM, as for a command started by the agent itself


def test_killing_every_user_process_keeps_commands_working(sandbox: Sandbox) -> None:
    sleeper = sandbox.commands.run("sleep 300", background=True)
    sandbox.commands.run("kill -9 -1")  # all of the user's processes but itself
    with pytest.raises(CommandExitError) as info:
        sleeper.wait()
    assert info.value.exit_code == 128 + 9
    assert sandbox.commands.run("id -un").stdout == "user\n"


def test_output_past_the_limit_is_dropped_and_said_while_streams_get_all(own_server: ServerProcess) -> None:
    own_server.stop()
    own_server.env["CORRAL_EXEC_OUTPUT_LIMIT_MB"] = "1"
    own_server.start()
    sbx = Sandbox.create(url=own_server.url)
    loud = "head -c 3000000 /dev/zero | tr '\\0' a; echo done >&2"
    r = sbx.commands.run(loud)
    assert r.exit_code == 0 and r.truncated  # it ran to its end
    assert r.stdout == "a" * (1 << 20) and r.stderr == "done\n"
    streamed: list[str] = []
    r = sbx.commands.run(loud, on_stdout=streamed.append)
    assert len("".join(streamed)) == 3_000_000 and not r.truncated
    r = sbx.commands.run("echo short")
    assert r.stdout == "short\n" and not r.truncated
    sbx.kill()
