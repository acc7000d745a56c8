"""An in-memory corral API (docs/api.md) behind ``httpx.MockTransport``, for SDK and CLI tests.

It keeps sandboxes, files and processes in dicts and records every request,
so tests can check both what the SDK sent and what it made of the answers.
Commands are not run: ``programs`` says what each one prints and how it ends,
and a test can drive a live process's output itself (``FakeProcess.emit``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import queue
import re
import stat as stat_mode
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from corral.errors import (
    CorralError,
    FileExists_,
    FileNotFound,
    InvalidRequest,
    IsADirectory_,
    NotADirectory_,
    ProcessNotFound,
    SandboxNotFound,
)
from corral.sdk import _http

URL = "http://corral.test"
WAIT = 5.0  # seconds a fake stream waits for a test to drive it before giving up

Program = Callable[["FakeProcess"], None]


@dataclass
class Recorded:
    method: str
    path: str
    params: list[tuple[str, str]]
    body: Any
    headers: httpx.Headers


class FakeProcess:
    """A process in a fake sandbox; every stream following it gets all its events so far, then live."""

    def __init__(self, pid: int, body: dict[str, Any]) -> None:
        self.pid = pid
        self.body = body
        self.tag: str | None = body.get("tag")
        self.history: list[dict[str, Any]] = []
        self.followers: list[queue.Queue[dict[str, Any]]] = []
        self.stdin: list[str] = []
        self.stdin_closed = False
        self.signals: list[str | int] = []
        self.ended = False
        self.lock = threading.Lock()

    def _put(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.history.append(event)
            for follower in self.followers:
                follower.put(event)

    def emit(self, kind: str, data: str) -> None:
        self._put({"type": kind, "data": data})

    def finish(self, exit_code: int = 0, error: str | None = None) -> None:
        self.ended = True
        self._put({"type": "end", "exit_code": exit_code, "error": error})

    def follow(self) -> queue.Queue[dict[str, Any]]:
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        with self.lock:
            for event in self.history:
                events.put(event)
            self.followers.append(events)
        return events


def default_program(proc: FakeProcess) -> None:
    """``echo X``, ``exit N``, ``timeout``; anything else keeps running until driven."""
    words = proc.body.get("argv") or str(proc.body.get("cmd", "")).split()
    if words[:1] == ["echo"]:
        proc.emit("stdout", " ".join(words[1:]) + "\n")
        proc.finish(0)
    elif words[:1] == ["exit"]:
        proc.emit("stderr", "boom\n")
        proc.finish(int(words[1]))
    elif words[:1] == ["timeout"]:
        proc.emit("stdout", "begun\n")
        proc.finish(-9, "timeout")
    elif words[:1] == ["python3"]:
        proc.emit("stdout", "1\n")
        proc.finish(0)


HUNG_UP: Any = object()


class EventStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """NDJSON lines from a process's queue, as they come (sync or async)."""

    def __init__(self, proc: FakeProcess, first: dict[str, Any] | None) -> None:
        self.proc = proc
        self.events = proc.follow()
        self.first = first

    def _line(self, event: dict[str, Any]) -> bytes:
        return json.dumps(event).encode() + b"\n"

    def __iter__(self) -> Iterator[bytes]:
        if self.first:
            yield self._line(self.first)
        while True:
            try:
                event = self.events.get(timeout=WAIT)
            except queue.Empty:
                return  # the test never ended it: the stream just stops
            if event is HUNG_UP:
                raise httpx.ReadError("the connection was shut down")
            yield self._line(event)
            if event["type"] == "end":
                return

    def close(self) -> None:
        """The client hung up (from another thread): a read blocked on the stream ends."""
        self.events.put(HUNG_UP)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.first:
            yield self._line(self.first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.005)
                continue
            yield self._line(event)
            if event["type"] == "end":
                return


@dataclass
class FakeSandbox:
    info: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/home", "/home/user"})
    modes: dict[str, int] = field(default_factory=dict)
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    logs: str = "agent: started\nruntime: ok\n"


def _norm(path: str) -> str:
    if not path.startswith("/"):
        path = "/home/user/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class FakeCorral:
    """The fake server: ``handle`` is the MockTransport handler."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.requests: list[Recorded] = []
        self.programs: dict[str, Program] = {}
        self._ids = itertools.count(1)
        self._pids = itertools.count(100)
        self.lock = threading.Lock()
        table: list[tuple[str, str, Callable[..., httpx.Response]]] = [
            ("POST", r"/v1/sandboxes", self.create),
            ("GET", r"/v1/sandboxes", self.list_sandboxes),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)", self.get),
            ("DELETE", r"/v1/sandboxes/(?P<sid>[^/]+)", self.delete),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/timeout", self.set_timeout),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/logs", self.logs),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/exec", self.exec),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/processes", self.processes),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/processes/(?P<pid>[^/]+)/stream", self.stream),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/processes/(?P<pid>[^/]+)/stdin", self.stdin),
            (
                "POST",
                r"/v1/sandboxes/(?P<sid>[^/]+)/processes/(?P<pid>[^/]+)/stdin/close",
                self.stdin_close,
            ),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/processes/(?P<pid>[^/]+)/signal", self.signal),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/files", self.read),
            ("PUT", r"/v1/sandboxes/(?P<sid>[^/]+)/files", self.write),
            ("DELETE", r"/v1/sandboxes/(?P<sid>[^/]+)/files", self.remove),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/files/list", self.list_dir),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/files/stat", self.stat),
            ("GET", r"/v1/sandboxes/(?P<sid>[^/]+)/files/exists", self.exists),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/files/mkdir", self.mkdir),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/files/move", self.move),
            ("POST", r"/v1/sandboxes/(?P<sid>[^/]+)/files/chmod", self.chmod),
        ]
        self.routes = [(method, re.compile(path + "$"), handler) for method, path, handler in table]

    # plumbing

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        content = request.content
        body: Any = None
        if request.headers.get("content-type") == "application/json":
            body = json.loads(content)
        elif content:
            body = content
        self.requests.append(
            Recorded(
                request.method,
                request.url.path,
                list(request.url.params.multi_items()),
                body,
                request.headers,
            )
        )
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(401, "unauthorized", "missing or wrong X-API-Key")
        for method, pattern, handler in self.routes:
            match = pattern.match(request.url.path)
            if match and method == request.method:
                try:
                    return handler(request, body, **match.groupdict())
                except CorralError as exc:
                    return httpx.Response(exc.status, json=exc.envelope())
        return _error(404, "not_found", f"no route {request.method} {request.url.path}")

    def last(self, method: str | None = None) -> Recorded:
        return next(r for r in reversed(self.requests) if method is None or r.method == method)

    def sandbox(self, sid: str) -> FakeSandbox:
        if sid not in self.sandboxes:
            raise SandboxNotFound(f"no sandbox {sid!r} exists", details={"sandbox_id": sid})
        return self.sandboxes[sid]

    def process(self, sid: str, pid: str) -> FakeProcess:
        for proc in self.sandbox(sid).processes.values():
            if str(proc.pid) == pid or proc.tag == pid:
                return proc
        raise ProcessNotFound(f"no process {pid!r}", details={"pid": pid})

    def add_sandbox(self, **info: Any) -> str:
        sid = info.pop("id", None) or f"sbx-{next(self._ids):04d}"
        self.sandboxes[sid] = FakeSandbox(
            {
                "id": sid,
                "image": "corral/base",
                "runtime": "runsc",
                "state": "running",
                "vcpus": 1,
                "memory_mb": 512,
                "metadata": {},
                "envs": {},
                "created_at": "2026-11-23T20:00:00Z",
                "ends_at": "2026-11-23T20:05:00Z",
                "timeout": 300,
                "address": "10.88.0.6",
                "error": None,
                **info,
            }
        )
        return sid

    # sandboxes

    def create(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        info = {k: v for k, v in body.items() if v is not None}
        if info.get("image") == "no-such/image":
            return _error(404, "image_not_found", "no image 'no-such/image'")
        return httpx.Response(201, json=self.sandboxes[self.add_sandbox(**info)].info)

    def list_sandboxes(self, request: httpx.Request, body: Any) -> httpx.Response:
        state = request.url.params.get("state")
        wanted = [pair.split("=", 1) for pair in request.url.params.get_list("metadata")]
        found = [
            s.info
            for s in self.sandboxes.values()
            if (state is None or s.info["state"] == state) and all(s.info["metadata"].get(k) == v for k, v in wanted)
        ]
        return httpx.Response(200, json={"sandboxes": found})

    def get(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        return httpx.Response(200, json=self.sandbox(sid).info)

    def delete(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        self.sandbox(sid)
        del self.sandboxes[sid]
        return httpx.Response(204)

    def set_timeout(self, request: httpx.Request, body: dict[str, Any], sid: str) -> httpx.Response:
        info = self.sandbox(sid).info
        info["timeout"] = body["timeout"]
        info["ends_at"] = None if body["timeout"] == 0 else "2026-11-23T21:00:00Z"
        return httpx.Response(200, json=info)

    def logs(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        text = self.sandbox(sid).logs
        tail = request.url.params.get("tail")
        if tail:
            text = "".join(text.splitlines(keepends=True)[-int(tail) :])
        return httpx.Response(200, text=text)

    # commands

    def exec(self, request: httpx.Request, body: dict[str, Any], sid: str) -> httpx.Response:
        box = self.sandbox(sid)
        if ("cmd" in body) == ("argv" in body):
            raise InvalidRequest("give exactly one of cmd and argv")
        proc = FakeProcess(next(self._pids), body)
        box.processes[proc.pid] = proc
        key = body.get("cmd") or " ".join(body["argv"])
        self.programs.get(key, default_program)(proc)
        if body.get("background") and not body.get("stream"):
            return httpx.Response(201, json={"pid": proc.pid})
        if body.get("stream"):
            return _ndjson(EventStream(proc, {"type": "start", "pid": proc.pid}))
        events = proc.history
        out = "".join(e["data"] for e in events if e["type"] == "stdout")
        err = "".join(e["data"] for e in events if e["type"] == "stderr")
        end = next((e for e in events if e["type"] == "end"), None)
        if end is None:
            raise InvalidRequest("fake: a plain run must end at once; drive it with stream or background")
        if end["error"] == "timeout":
            return _error(504, "exec_timeout", "timed out", {"stdout": out, "stderr": err})
        return httpx.Response(200, json={"pid": proc.pid, "exit_code": end["exit_code"], "stdout": out, "stderr": err})

    def processes(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        found = [
            {"pid": p.pid, "tag": p.tag, "cmd": p.body.get("cmd", ""), "args": [], "cwd": None}
            for p in self.sandbox(sid).processes.values()
            if not p.ended
        ]
        return httpx.Response(200, json={"processes": found})

    def stream(self, request: httpx.Request, body: Any, sid: str, pid: str) -> httpx.Response:
        proc = self.process(sid, pid)
        return _ndjson(EventStream(proc, {"type": "start", "pid": proc.pid}))

    def stdin(self, request: httpx.Request, body: dict[str, Any], sid: str, pid: str) -> httpx.Response:
        data = body["data"] if "data" in body else base64.b64decode(body["data_base64"]).decode()
        self.process(sid, pid).stdin.append(data)
        return httpx.Response(204)

    def stdin_close(self, request: httpx.Request, body: Any, sid: str, pid: str) -> httpx.Response:
        self.process(sid, pid).stdin_closed = True
        return httpx.Response(204)

    def signal(self, request: httpx.Request, body: dict[str, Any], sid: str, pid: str) -> httpx.Response:
        proc = self.process(sid, pid)
        if proc.ended:
            raise ProcessNotFound(f"no process {pid!r}")
        proc.signals.append(body["signal"])
        if body["signal"] in ("SIGKILL", "SIGTERM", 9, 15):
            proc.finish(-9 if body["signal"] in ("SIGKILL", 9) else -15)
        return httpx.Response(204)

    # files

    def _entry(self, box: FakeSandbox, path: str) -> dict[str, Any]:
        if path in box.dirs:
            kind, size, mode = "dir", 4096, box.modes.get(path, 0o755) | stat_mode.S_IFDIR
        elif path in box.files:
            kind, size, mode = "file", len(box.files[path]), box.modes.get(path, 0o644) | stat_mode.S_IFREG
        else:
            raise FileNotFound(f"no such file: {path}", details={"path": path})
        return {
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "type": kind,
            "size": size,
            "mode": stat_mode.S_IMODE(mode),
            "permissions": stat_mode.filemode(mode),
            "owner": "user",
            "group": "user",
            "modified_at": "2026-11-23T20:00:00Z",
            "symlink_target": None,
        }

    def _path(self, request: httpx.Request) -> str:
        return _norm(request.url.params["path"])

    def read(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), self._path(request)
        if path in box.dirs:
            raise IsADirectory_(f"is a directory: {path}")
        if path not in box.files:
            raise FileNotFound(f"no such file: {path}", details={"path": path})
        data = box.files[path]
        chunks = [data[i : i + 4] for i in range(0, len(data), 4)]
        return httpx.Response(200, stream=_Chunks(chunks), headers={"content-type": "application/octet-stream"})

    def write(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), self._path(request)
        if path in box.dirs:
            raise IsADirectory_(f"is a directory: {path}")
        parent = _parent(path)
        while parent not in box.dirs:
            box.dirs.add(parent)
            parent = _parent(parent)
        box.files[path] = request.content
        return httpx.Response(200, json=self._entry(box, path))

    def remove(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), self._path(request)
        recursive = request.url.params.get("recursive") == "true"
        if path in box.files:
            del box.files[path]
        elif path in box.dirs:
            inside = [p for p in [*box.files, *box.dirs] if p.startswith(path + "/")]
            if inside and not recursive:
                raise InvalidRequest(f"directory not empty: {path}")
            for p in inside:
                box.files.pop(p, None)
                box.dirs.discard(p)
            box.dirs.discard(path)
        else:
            raise FileNotFound(f"no such file: {path}")
        return httpx.Response(204)

    def list_dir(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), self._path(request)
        depth = int(request.url.params.get("depth", "1"))
        if path in box.files:
            raise NotADirectory_(f"not a directory: {path}")
        if path not in box.dirs:
            raise FileNotFound(f"no such file: {path}")
        prefix = path.rstrip("/") + "/"
        found = sorted(
            p
            for p in [*box.files, *box.dirs]
            if p.startswith(prefix) and p != path and p[len(prefix) :].count("/") < depth
        )
        return httpx.Response(200, json={"entries": [self._entry(box, p) for p in found]})

    def stat(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        box = self.sandbox(sid)
        return httpx.Response(200, json=self._entry(box, self._path(request)))

    def exists(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), self._path(request)
        return httpx.Response(200, json={"exists": path in box.files or path in box.dirs})

    def mkdir(self, request: httpx.Request, body: dict[str, Any], sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), _norm(body["path"])
        if path in box.files:
            raise FileExists_(f"a file is there: {path}")
        created = path not in box.dirs
        while path not in box.dirs:
            box.dirs.add(path)
            path = _parent(path)
        return httpx.Response(201 if created else 200, json=self._entry(box, _norm(body["path"])))

    def move(self, request: httpx.Request, body: dict[str, Any], sid: str) -> httpx.Response:
        box = self.sandbox(sid)
        source, destination = _norm(body["source"]), _norm(body["destination"])
        if source not in box.files:
            raise FileNotFound(f"no such file: {source}")
        box.files[destination] = box.files.pop(source)
        return httpx.Response(200, json=self._entry(box, destination))

    def chmod(self, request: httpx.Request, body: dict[str, Any], sid: str) -> httpx.Response:
        box, path = self.sandbox(sid), _norm(body["path"])
        mode = body["mode"]
        if not isinstance(mode, str):
            raise InvalidRequest("the fake wants the octal string the SDK sends")
        self._entry(box, path)
        box.modes[path] = int(mode, 8)
        return httpx.Response(200, json=self._entry(box, path))


class _Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def _ndjson(stream: EventStream) -> httpx.Response:
    return httpx.Response(200, stream=stream, headers={"content-type": "application/x-ndjson"})


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return httpx.Response(status, json={"error": error})


def install(monkeypatch: pytest.MonkeyPatch, server: FakeCorral | None = None) -> FakeCorral:
    """Put ``server`` behind every SDK client, sync and async, for one test."""
    server = server or FakeCorral()
    transport = server.transport()
    monkeypatch.setattr(_http, "sync_transport", transport)
    monkeypatch.setattr(_http, "async_transport", transport)
    monkeypatch.setenv("CORRAL_URL", URL)
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    return server


__all__ = ["URL", "EventStream", "FakeCorral", "FakeProcess", "install"]
