"""Directory watching (``WatchDir``, ``CreateWatcher``, ``GetWatcherEvents``, ``RemoveWatcher``).

envd uses inotify; the agent polls instead, which needs nothing from the
kernel or the libc (no ctypes) and works the same on every filesystem a
sandbox may have. Every 200 ms the directory (and, if recursive, everything
below it) is listed and compared with the previous listing: new names are
``CREATE``, vanished ones ``REMOVE`` (``RENAME`` when the same inode shows up
under a new name, which is then a ``CREATE``), a changed size or mtime of a
file is ``WRITE``, a changed mode ``CHMOD``. Changes that come and go between
two polls are not seen. Event names are relative to the watched directory.

A watcher created by ``CreateWatcher`` polls in the background until removed,
or until nobody has asked for its events for ten minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat

from .connect import Call, Message, Router, RpcError, ServerStream, field
from .filesystem import EntryMaker, os_error
from .log import log
from .process_rpc import call_user
from .users import UserDb, resolve_path

POLL_INTERVAL = 0.2
KEEPALIVE = 30.0
IDLE_EXPIRY = 600.0
MAX_WATCHERS = 128
MAX_QUEUED_EVENTS = 10_000
MAX_ENTRIES = 200_000

CREATE = "EVENT_TYPE_CREATE"
WRITE = "EVENT_TYPE_WRITE"
REMOVE = "EVENT_TYPE_REMOVE"
RENAME = "EVENT_TYPE_RENAME"
CHMOD = "EVENT_TYPE_CHMOD"

# relative name -> (inode, mode, size, mtime_ns)
Snapshot = dict[str, tuple[int, int, int, int]]


def take_snapshot(root: str, recursive: bool) -> Snapshot:
    """Every entry under ``root`` (one level unless ``recursive``), symlinks not followed."""
    snapshot: Snapshot = {}
    pending = [""]
    while pending and len(snapshot) < MAX_ENTRIES:
        relative = pending.pop()
        try:
            with os.scandir(posixpath.join(root, relative) if relative else root) as it:
                entries = list(it)
        except OSError:
            continue  # vanished or unreadable: its entries simply are not there
        for entry in entries:
            name = posixpath.join(relative, entry.name) if relative else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            snapshot[name] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)
            if recursive and stat.S_ISDIR(st.st_mode):
                pending.append(name)
    return snapshot


def changes(old: Snapshot, new: Snapshot) -> list[tuple[str, str]]:
    """The ``(name, event type)`` pairs that turn ``old`` into ``new``."""
    events: list[tuple[str, str]] = []
    created = [name for name in new if name not in old]
    # A rename keeps inode, size and mtime (matching on the inode alone would take
    # a new file that reused a deleted one's inode for a rename).
    moved = {(new[name][0], new[name][2], new[name][3]) for name in created}
    for name in sorted(old.keys() - new.keys()):
        inode, _, size, mtime = old[name]
        events.append((name, RENAME if (inode, size, mtime) in moved else REMOVE))
    events.extend((name, CREATE) for name in sorted(created))
    for name in sorted(old.keys() & new.keys()):
        (inode, mode, size, mtime), (new_inode, new_mode, new_size, new_mtime) = old[name], new[name]
        if inode != new_inode:
            events.append((name, CREATE))  # replaced, e.g. by a rename over it
        elif not stat.S_ISDIR(mode) and (size, mtime) != (new_size, new_mtime):
            events.append((name, WRITE))
        elif mode != new_mode:
            events.append((name, CHMOD))
    return events


class Poller:
    """Lists a directory on demand and reports what changed since the last time."""

    def __init__(self, root: str, recursive: bool, include_entry: bool, entries: EntryMaker) -> None:
        self.root = root
        self._recursive = recursive
        self._include_entry = include_entry
        self._entries = entries
        self._snapshot: Snapshot = {}

    async def _take(self) -> Snapshot:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, take_snapshot, self.root, self._recursive)

    async def start(self) -> None:
        self._snapshot = await self._take()

    async def poll(self) -> list[Message]:
        new = await self._take()
        found = changes(self._snapshot, new)
        self._snapshot = new
        return [self._event(name, kind) for name, kind in found]

    def _event(self, name: str, kind: str) -> Message:
        event: Message = {"name": name, "type": kind}
        if self._include_entry and kind not in (REMOVE, RENAME):
            with contextlib.suppress(OSError):  # it may be gone again already
                event["entry"] = self._entries.entry(posixpath.join(self.root, name))
        return event


class Watcher:
    """A ``CreateWatcher`` watcher: a background poll and the events it queued."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self.events: list[Message] = []
        self.last_read = asyncio.get_running_loop().time()
        self.task: asyncio.Task[None] | None = None

    def take(self) -> list[Message]:
        self.last_read = asyncio.get_running_loop().time()
        events, self.events = self.events, []
        return events


class WatchService:
    """Handlers for the watch RPCs of ``/filesystem.Filesystem/*``."""

    def __init__(self, users: UserDb, entries: EntryMaker) -> None:
        self._users = users
        self._entries = entries
        self._watchers: dict[str, Watcher] = {}

    def register(self, router: Router) -> None:
        prefix = "/filesystem.Filesystem/"
        router.server_streaming(prefix + "WatchDir", self.watch_dir)
        router.unary(prefix + "CreateWatcher", self.create_watcher)
        router.unary(prefix + "GetWatcherEvents", self.get_watcher_events)
        router.unary(prefix + "RemoveWatcher", self.remove_watcher)

    def _poller(self, call: Call, message: Message) -> Poller:
        user = call_user(self._users, call)
        value = field(message, "path")
        try:
            path = resolve_path(value if isinstance(value, str) else "", user)
            if not os.path.isdir(path):
                os.stat(path)  # not found, or else:
                raise RpcError("invalid_argument", f"path {path} is not a directory")
        except ValueError as exc:
            raise RpcError("invalid_argument", str(exc)) from None
        except OSError as exc:
            raise os_error(exc, str(value)) from None
        recursive = bool(field(message, "recursive", False))
        include_entry = bool(field(message, "include_entry", False))
        return Poller(path, recursive, include_entry, self._entries)

    async def watch_dir(self, call: Call, message: Message, stream: ServerStream) -> None:
        poller = self._poller(call, message)
        await poller.start()
        loop = asyncio.get_running_loop()
        timeout = call.timeout
        deadline = None if timeout is None else loop.time() + timeout
        await stream.send({"start": {}})
        quiet_since = loop.time()
        while not call.request.disconnected:
            await asyncio.sleep(POLL_INTERVAL)
            if deadline is not None and loop.time() >= deadline:
                raise RpcError("deadline_exceeded", "the call's deadline passed")
            events = await poller.poll()
            for event in events:
                await stream.send({"filesystem": event})
            if events:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= KEEPALIVE:
                await stream.send({"keepalive": {}})
                quiet_since = loop.time()

    async def create_watcher(self, call: Call, message: Message) -> Message:
        if len(self._watchers) >= MAX_WATCHERS:
            raise RpcError("resource_exhausted", f"at most {MAX_WATCHERS} watchers at a time")
        poller = self._poller(call, message)
        await poller.start()
        watcher_id = "w" + os.urandom(8).hex()
        watcher = Watcher(poller)
        watcher.task = asyncio.create_task(self._run(watcher_id, watcher))
        self._watchers[watcher_id] = watcher
        return {"watcherId": watcher_id}

    async def _run(self, watcher_id: str, watcher: Watcher) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if loop.time() - watcher.last_read > IDLE_EXPIRY:
                log("watcher expired unread", watcher=watcher_id, path=watcher.poller.root)
                self._watchers.pop(watcher_id, None)
                return
            events = await watcher.poller.poll()
            watcher.events.extend(events)
            del watcher.events[:-MAX_QUEUED_EVENTS]

    def _watcher(self, message: Message) -> tuple[str, Watcher]:
        watcher_id = field(message, "watcher_id")
        watcher = self._watchers.get(watcher_id) if isinstance(watcher_id, str) else None
        if watcher is None:
            raise RpcError("not_found", f"watcher with id {watcher_id} not found")
        return watcher_id, watcher

    async def get_watcher_events(self, call: Call, message: Message) -> Message:
        _, watcher = self._watcher(message)
        return {"events": watcher.take()}

    async def remove_watcher(self, call: Call, message: Message) -> Message:
        watcher_id, watcher = self._watcher(message)
        del self._watchers[watcher_id]
        if watcher.task is not None:
            watcher.task.cancel()
        return {}
