"""The async SDK against the same fake: the twin of the sync tests' main paths."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import httpx
import pytest

from corral import (
    AsyncCommandHandle,
    AsyncSandbox,
    AuthenticationError,
    CommandExitError,
    CommandResult,
    EntryInfo,
    ExecTimeout,
    FileNotFound,
    OutputChunk,
    SandboxNotFound,
    ServerUnavailable,
)
from corral.sdk import _http
from tests.unit.sdk_fake import FakeCorral, FakeProcess, install

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    return install(monkeypatch)


async def _until(condition: object, seconds: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not callable(condition) or not condition():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def test_lifecycle(fake: FakeCorral) -> None:
    sbx = await AsyncSandbox.create("img", metadata={"team": "red"}, timeout=30)
    assert fake.last().body == {"image": "img", "metadata": {"team": "red"}, "timeout": 30}
    assert [s.id for s in await AsyncSandbox.list(metadata={"team": "red"})] == [sbx.id]
    same = await AsyncSandbox.connect(sbx.id)
    assert (await same.get_info()).id == sbx.id and await same.is_running()
    assert (await sbx.set_timeout(0)).ends_at is None
    assert await sbx.logs(tail=1) == "runtime: ok\n"
    assert await sbx.kill() is True
    assert await sbx.kill() is False
    assert not await sbx.is_running()
    await sbx.close()
    await same.close()
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect(sbx.id)


async def test_async_with_kills(fake: FakeCorral) -> None:
    async with await AsyncSandbox.create() as sbx:
        assert sbx.id in fake.sandboxes
    assert sbx.id not in fake.sandboxes


async def test_auth_and_server_down(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeCorral(api_key="right"))
    with pytest.raises(AuthenticationError):
        await AsyncSandbox.list()
    assert await AsyncSandbox.list(api_key="right") == []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    monkeypatch.setattr(_http, "async_transport", httpx.MockTransport(refuse))
    with pytest.raises(ServerUnavailable):
        await AsyncSandbox.list()


async def test_run_plain_argv_and_errors(fake: FakeCorral) -> None:
    sbx = await AsyncSandbox.create()
    result = await sbx.commands.run("echo hi")
    assert result.stdout == "hi\n"
    assert fake.last().body == {"cmd": "echo hi", "timeout": 60, "background": False, "stream": False}
    assert (await sbx.commands.exec(["python3", "-c", "print(1)"], cwd="/tmp")).stdout == "1\n"
    assert fake.last().body["argv"] == ["python3", "-c", "print(1)"]
    with pytest.raises(CommandExitError) as info:
        await sbx.commands.run("exit 4")
    assert info.value.exit_code == 4
    with pytest.raises(ExecTimeout):
        await sbx.commands.run("timeout")


async def test_callbacks_fire_as_output_arrives_and_may_be_coroutines(fake: FakeCorral) -> None:
    sbx = await AsyncSandbox.create()
    procs: list[FakeProcess] = []

    def chatty(proc: FakeProcess) -> None:
        procs.append(proc)
        proc.emit("stdout", "one\n")

    fake.programs["chatty"] = chatty
    got: list[str] = []
    errs: list[str] = []

    async def on_stdout(data: str) -> None:
        got.append(data)
        if data == "one\n":
            procs[0].emit("stderr", "two\n")
            procs[0].emit("stdout", "three\n")
            procs[0].finish(0)

    result = await sbx.commands.run("chatty", on_stdout=on_stdout, on_stderr=errs.append)
    assert got == ["one\n", "three\n"] and errs == ["two\n"]
    assert result == CommandResult(0, "one\nthree\n", "two\n", procs[0].pid)
    with pytest.raises(CommandExitError):
        await sbx.commands.run("exit 1", on_stdout=got.append)


async def test_background_handle(fake: FakeCorral) -> None:
    sbx = await AsyncSandbox.create()
    seen: list[str] = []
    handle = await sbx.commands.run("server", background=True, tag="srv", on_stdout=seen.append)
    assert isinstance(handle, AsyncCommandHandle)
    proc = fake.process(sbx.id, str(handle.pid))
    chunks: list[OutputChunk] = []

    async def collect() -> None:
        async for chunk in handle:
            chunks.append(chunk)

    collector = asyncio.create_task(collect())
    proc.emit("stdout", "up\n")
    await _until(lambda: handle.stdout == "up\n")
    assert seen == ["up\n"] and handle.exit_code is None
    await handle.send_stdin("x")
    await handle.close_stdin()
    await handle.signal(10)
    assert proc.stdin == ["x"] and proc.stdin_closed and proc.signals == [10]
    proc.emit("stderr", "bye\n")
    proc.finish(0)
    assert await handle.wait() == CommandResult(0, "up\n", "bye\n", handle.pid)
    await asyncio.wait_for(collector, 5)
    assert chunks == [OutputChunk("stdout", "up\n"), OutputChunk("stderr", "bye\n")]


async def test_background_kill_list_connect_disconnect(fake: FakeCorral) -> None:
    sbx = await AsyncSandbox.create()
    handle = await sbx.commands.run("sleep", background=True, tag="web")
    assert [p.pid for p in await sbx.commands.list()] == [handle.pid]
    other = await sbx.commands.connect("web")
    await other.disconnect()
    with pytest.raises(ServerUnavailable):
        await other.wait()
    await sbx.commands.send_stdin("web", "y")
    await sbx.commands.close_stdin("web")
    assert await handle.kill() is True
    with pytest.raises(CommandExitError):
        await handle.wait()
    assert await sbx.commands.kill("web") is False


async def test_files(fake: FakeCorral) -> None:
    sbx = await AsyncSandbox.create()
    entry = await sbx.files.write("/home/user/a.txt", "héllo")
    assert isinstance(entry, EntryInfo) and entry.size == len("héllo".encode())
    assert await sbx.files.read("a.txt") == "héllo"
    assert await sbx.files.read("a.txt", format="bytes") == "héllo".encode()
    stream = await sbx.files.read("a.txt", format="stream")
    assert b"".join([chunk async for chunk in stream]) == "héllo".encode()

    async def pieces() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    await sbx.files.write("/tmp/gen.bin", pieces())
    await sbx.files.write("/tmp/file.bin", io.BytesIO(b"x" * 3000))
    await sbx.files.write("/tmp/list.bin", [b"1", b"2"])
    assert fake.sandboxes[sbx.id].files["/tmp/gen.bin"] == b"abcd"
    assert fake.sandboxes[sbx.id].files["/tmp/file.bin"] == b"x" * 3000
    assert fake.sandboxes[sbx.id].files["/tmp/list.bin"] == b"12"
    assert [e.name for e in await sbx.files.list("/tmp")] == ["file.bin", "gen.bin", "list.bin"]
    assert await sbx.files.exists("/tmp/gen.bin")
    assert (await sbx.files.stat("/tmp/gen.bin")).size == 4
    assert (await sbx.files.get_info("/tmp")).is_dir
    assert (await sbx.files.rename("/tmp/gen.bin", "/tmp/g.bin")).path == "/tmp/g.bin"
    assert await sbx.files.make_dir("/tmp/d") is True
    assert await sbx.files.make_dir("/tmp/d") is False
    assert (await sbx.files.chmod("/tmp/g.bin", 0o600)).permissions == "-rw-------"
    await sbx.files.remove("/tmp", recursive=True)
    assert not await sbx.files.exists("/tmp/g.bin")
    with pytest.raises(FileNotFound):
        await sbx.files.read("/nope")
    with pytest.raises(FileNotFound):
        await sbx.files.read("/nope", format="stream")
