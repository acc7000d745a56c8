"""The sync SDK's commands: request shapes, results, streaming callbacks, background handles."""

from __future__ import annotations

import threading

import pytest

from corral import (
    CommandExitError,
    CommandHandle,
    CommandResult,
    CorralError,
    ExecTimeout,
    OutputChunk,
    ProcessInfo,
    ProcessNotFound,
    Sandbox,
    ServerUnavailable,
)
from tests.unit.sdk_fake import FakeCorral, FakeProcess, install


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    return install(monkeypatch)


@pytest.fixture
def sbx(fake: FakeCorral) -> Sandbox:
    return Sandbox.create()


def test_run_shell_line(fake: FakeCorral, sbx: Sandbox) -> None:
    result = sbx.commands.run("echo hi")
    assert result == CommandResult(exit_code=0, stdout="hi\n", stderr="", pid=result.pid)
    assert result.pid is not None
    sent = fake.last()
    assert sent.path == f"/v1/sandboxes/{sbx.id}/exec"
    assert sent.body == {"cmd": "echo hi", "timeout": 60, "background": False, "stream": False}


def test_run_argv_and_every_option(fake: FakeCorral, sbx: Sandbox) -> None:
    result = sbx.commands.exec(
        ["python3", "-c", "print(1)"],
        envs={"A": "1"},
        cwd="/tmp",
        user="root",
        stdin="in",
        tag="t1",
        timeout=None,
    )
    assert result.stdout == "1\n"
    assert fake.last().body == {
        "argv": ["python3", "-c", "print(1)"],
        "cwd": "/tmp",
        "envs": {"A": "1"},
        "user": "root",
        "timeout": 0,
        "stdin": "in",
        "tag": "t1",
        "background": False,
        "stream": False,
    }
    sbx.commands.run("echo x", timeout=1.5)
    assert fake.last().body["timeout"] == 1.5


def test_non_zero_exit_raises_with_the_result(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitError) as info:
        sbx.commands.run("exit 3")
    err = info.value
    assert isinstance(err, CorralError)
    assert (err.exit_code, err.stdout, err.stderr) == (3, "", "boom\n")
    assert err.result.exit_code == 3
    assert err.code == "command_exit" and "exited with code 3: boom" in str(err)


def test_timeout_raises_exec_timeout_with_output(sbx: Sandbox) -> None:
    with pytest.raises(ExecTimeout) as info:
        sbx.commands.run("timeout")
    assert info.value.details["stdout"] == "begun\n"
    assert isinstance(info.value, TimeoutError)


def test_callbacks_fire_as_output_arrives(fake: FakeCorral, sbx: Sandbox) -> None:
    """The second chunk is only printed once the first has reached the callback."""

    def program(proc: FakeProcess) -> None:
        fake.current = proc  # type: ignore[attr-defined]
        proc.emit("stdout", "one\n")

    fake.programs["chatty"] = program
    got: list[str] = []
    errs: list[str] = []

    def on_stdout(data: str) -> None:
        got.append(data)
        if data == "one\n":
            proc: FakeProcess = fake.current  # type: ignore[attr-defined]
            proc.emit("stderr", "two\n")
            proc.emit("stdout", "three\n")
            proc.finish(0)

    result = sbx.commands.run("chatty", on_stdout=on_stdout, on_stderr=errs.append)
    assert got == ["one\n", "three\n"] and errs == ["two\n"]
    assert (result.stdout, result.stderr, result.exit_code) == ("one\nthree\n", "two\n", 0)
    assert result.pid == fake.current.pid  # type: ignore[attr-defined]
    assert fake.last().body["stream"] is True and fake.last().body["background"] is False


def test_streamed_failures(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitError) as info:
        sbx.commands.run("exit 2", on_stderr=lambda _: None)
    assert info.value.stderr == "boom\n"
    with pytest.raises(ExecTimeout) as timeout:
        sbx.commands.run("timeout", on_stdout=lambda _: None)
    assert timeout.value.details["stdout"] == "begun\n"


def test_stream_that_breaks_off_is_server_unavailable(
    fake: FakeCorral, sbx: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.unit.sdk_fake.WAIT", 0.05)
    fake.programs["hang"] = lambda proc: proc.emit("stdout", "partial")
    with pytest.raises(ServerUnavailable) as info:
        sbx.commands.run("hang", on_stdout=lambda _: None)
    assert info.value.details["stdout"] == "partial"


def test_background_handle_follows_output(fake: FakeCorral, sbx: Sandbox) -> None:
    seen: list[str] = []
    arrived = threading.Event()

    def on_stdout(data: str) -> None:
        seen.append(data)
        arrived.set()

    handle = sbx.commands.run("server", background=True, tag="srv", on_stdout=on_stdout)
    assert isinstance(handle, CommandHandle)
    start = next(r for r in fake.requests if r.path.endswith("/exec"))
    assert start.body["background"] is True and start.body["stream"] is True  # one stream, no gap
    proc = fake.process(sbx.id, str(handle.pid))
    assert handle.exit_code is None and "running" in repr(handle)

    proc.emit("stdout", "listening\n")
    assert arrived.wait(5)
    assert handle.stdout == "listening\n" and seen == ["listening\n"]
    assert not any(r.path.endswith("/stream") for r in fake.requests)  # no second stream needed

    handle.send_stdin("ping\n")
    handle.close_stdin()
    handle.signal("SIGUSR1")
    assert proc.stdin == ["ping\n"] and proc.stdin_closed and proc.signals == ["SIGUSR1"]

    proc.emit("stderr", "bye\n")
    proc.finish(0)
    result = handle.wait()
    assert result == CommandResult(0, "listening\n", "bye\n", handle.pid)
    assert list(handle) == [OutputChunk("stdout", "listening\n"), OutputChunk("stderr", "bye\n")]
    assert handle.exit_code == 0


def test_background_iteration_yields_chunks_live(fake: FakeCorral, sbx: Sandbox) -> None:
    handle = sbx.commands.run("server", background=True)
    proc = fake.process(sbx.id, str(handle.pid))
    chunks = iter(handle)
    proc.emit("stdout", "a")
    assert next(chunks) == OutputChunk("stdout", "a")
    proc.emit("stderr", "b")
    assert next(chunks) == OutputChunk("stderr", "b")
    proc.finish(0)
    assert list(chunks) == []


def test_background_kill_and_non_zero_wait(fake: FakeCorral, sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep", background=True)
    assert handle.kill() is True
    with pytest.raises(CommandExitError) as info:
        handle.wait()
    assert info.value.exit_code == -9
    assert handle.kill() is False  # already gone


def test_background_exit_code_error(fake: FakeCorral, sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep", background=True)
    fake.process(sbx.id, str(handle.pid)).finish(5)
    with pytest.raises(CommandExitError) as info:
        handle.wait()
    assert info.value.exit_code == 5


def test_list_connect_kill_and_stdin_by_pid_or_tag(fake: FakeCorral, sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep", background=True, tag="web")
    procs = sbx.commands.list()
    assert procs == [ProcessInfo(pid=handle.pid, tag="web", cmd="sleep", args=[], cwd=None)]

    other = sbx.commands.connect("web")
    assert other.pid == handle.pid
    sbx.commands.send_stdin("web", "x")
    sbx.commands.close_stdin(handle.pid)
    proc = fake.process(sbx.id, "web")
    assert proc.stdin == ["x"] and proc.stdin_closed
    assert sbx.commands.kill("web") is True
    assert fake.last().body == {"signal": "SIGKILL"}
    assert fake.last().path.endswith("/processes/web/signal")
    assert other.wait is not None
    with pytest.raises(CommandExitError):
        other.wait()
    assert sbx.commands.kill(99999) is False
    with pytest.raises(ProcessNotFound):
        sbx.commands.connect("nope")


def test_disconnect_stops_following(fake: FakeCorral, sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep", background=True)
    handle.disconnect()
    proc = fake.process(sbx.id, str(handle.pid))
    proc.emit("stdout", "late")  # wakes the follower, which then stops
    with pytest.raises(ServerUnavailable):
        handle.wait()
    assert not proc.ended
