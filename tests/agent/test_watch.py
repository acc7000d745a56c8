"""Directory watching: the WatchDir stream and the polled watchers, raw and through the e2b SDK."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEvent, FilesystemEventType

from corral.agent.watch import changes, take_snapshot
from tests.agent.conftest import Agent
from tests.agent.helpers import live_stream, unary

FS = "filesystem.Filesystem"
T = TypeVar("T")


def test_changes_between_snapshots(tmp_path: Path) -> None:
    (tmp_path / "kept").write_text("1")
    (tmp_path / "gone").write_text("1")
    (tmp_path / "moved").write_text("1")
    (tmp_path / "dir").mkdir()
    before = take_snapshot(str(tmp_path), recursive=True)
    (tmp_path / "kept").write_text("22")
    (tmp_path / "gone").unlink()
    (tmp_path / "moved").rename(tmp_path / "dir" / "arrived")
    (tmp_path / "new").write_text("")
    os.chmod(tmp_path / "dir", 0o700)
    after = take_snapshot(str(tmp_path), recursive=True)
    assert changes(before, after) == [
        ("gone", "EVENT_TYPE_REMOVE"),
        ("moved", "EVENT_TYPE_RENAME"),
        ("dir/arrived", "EVENT_TYPE_CREATE"),
        ("new", "EVENT_TYPE_CREATE"),
        ("dir", "EVENT_TYPE_CHMOD"),
        ("kept", "EVENT_TYPE_WRITE"),
    ]
    shallow = take_snapshot(str(tmp_path), recursive=False)
    assert "dir/arrived" not in shallow and "dir" in shallow


def test_watch_dir_stream(client: httpx.Client, tmp_path: Path) -> None:
    message = {"path": str(tmp_path), "recursive": True, "includeEntry": True}
    with live_stream(client, f"{FS}/WatchDir", message) as frames:
        assert next(frames) == (0, {"start": {}})
        (tmp_path / "sub").mkdir()
        _, first = next(frames)
        assert first["filesystem"]["name"] == "sub"
        assert first["filesystem"]["type"] == "EVENT_TYPE_CREATE"
        assert first["filesystem"]["entry"]["type"] == "FILE_TYPE_DIRECTORY"
        time.sleep(0.3)
        (tmp_path / "sub" / "file.txt").write_text("x")
        _, second = next(frames)
        assert second["filesystem"]["name"] == "sub/file.txt"


def test_watch_dir_errors(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with live_stream(client, f"{FS}/WatchDir", {"path": str(tmp_path / "missing")}) as frames:
        flags, end = next(frames)
    assert flags == 2 and end["error"]["code"] == "not_found"
    r = unary(client, f"{FS}/CreateWatcher", {"path": str(tmp_path / "file")})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = unary(client, f"{FS}/GetWatcherEvents", {"watcherId": "nope"})
    assert r.status_code == 404


def eventually(poll: Callable[[], list[T]], within: float = 10.0) -> list[T]:
    """What ``poll`` returns once it is not empty (the watcher polls every 0.2 s; a busy host may be slower)."""
    deadline = time.monotonic() + within
    while not (found := poll()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_polled_watcher(client: httpx.Client, tmp_path: Path) -> None:
    created = unary(client, f"{FS}/CreateWatcher", {"path": str(tmp_path)})
    watcher_id = created.json()["watcherId"]
    (tmp_path / "a.txt").write_text("a")
    events = eventually(lambda: unary(client, f"{FS}/GetWatcherEvents", {"watcherId": watcher_id}).json()["events"])
    assert events == [{"name": "a.txt", "type": "EVENT_TYPE_CREATE"}]
    assert unary(client, f"{FS}/GetWatcherEvents", {"watcherId": watcher_id}).json()["events"] == []
    assert unary(client, f"{FS}/RemoveWatcher", {"watcherId": watcher_id}).status_code == 200
    assert unary(client, f"{FS}/GetWatcherEvents", {"watcherId": watcher_id}).status_code == 404


def test_sdk_watch_dir(agent: Agent, tmp_path: Path) -> None:
    sbx = Sandbox.connect("agent-test", debug=True, sandbox_url=agent.url)
    handle = sbx.files.watch_dir(str(tmp_path), recursive=True)
    sbx.files.write(str(tmp_path / "deep" / "x.txt"), "hello")
    wanted = FilesystemEvent(name="deep/x.txt", type=FilesystemEventType.CREATE)
    events: list[FilesystemEvent] = []

    def arrived() -> list[FilesystemEvent]:  # the dir's own event may come in an earlier poll
        events.extend(handle.get_new_events())
        return [e for e in events if e == wanted]

    eventually(arrived)
    handle.stop()
    assert wanted in events


def test_async_sdk_watch_dir(agent: Agent, tmp_path: Path) -> None:
    async def scenario() -> list[FilesystemEvent]:
        sbx = await AsyncSandbox.connect("agent-test", debug=True, sandbox_url=agent.url)
        seen: list[FilesystemEvent] = []
        handle = await sbx.files.watch_dir(str(tmp_path), on_event=seen.append)
        await sbx.files.write(str(tmp_path / "y.txt"), "hello")
        for _ in range(200):  # the watcher polls every 0.2 s; a busy host may be slower
            if seen:
                break
            await asyncio.sleep(0.05)
        await handle.stop()
        return seen

    seen = asyncio.run(scenario())
    if not seen:
        pytest.fail("no event arrived through the async SDK's WatchDir stream")
    assert seen[0] == FilesystemEvent(name="y.txt", type=FilesystemEventType.CREATE)
