"""Every API route as a :class:`Call`: what to send and how to read the answer.

Shared by the sync and the async SDK, so the two differ only in how they do I/O.
Paths and bodies follow docs/api.md.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from corral.errors import InvalidRequest
from corral.sdk._http import Call, Content
from corral.sdk.models import (
    CommandResult,
    EntryInfo,
    ImageInfo,
    PoolInfo,
    PortInfo,
    ProcessInfo,
    SandboxInfo,
    SandboxPage,
    SnapshotInfo,
    TemplateInfo,
)

CREATE_EXTRA_TIME = 120.0
"""Creating a sandbox may unpack an image first: it gets this long beyond the request timeout."""


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def seconds(value: float | None) -> float | int:
    """A command's timeout for the API: ``None`` is 0 (no limit); whole numbers go as ints."""
    if value is None:
        return 0
    return int(value) if float(value).is_integer() else float(value)


def whole_seconds(value: float | None) -> int:
    """A sandbox's lifetime for the API, in whole seconds (rounded up): ``None`` is 0 (no limit)."""
    return 0 if value is None else math.ceil(value)


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _nothing(response: httpx.Response) -> None:
    return None


def _sandbox(response: httpx.Response) -> SandboxInfo:
    return SandboxInfo.from_json(response.json())


def _sandboxes(response: httpx.Response) -> list[SandboxInfo]:
    return [SandboxInfo.from_json(s) for s in response.json()["sandboxes"]]


def _sandbox_page(response: httpx.Response) -> SandboxPage:
    return SandboxPage.from_json(response.json())


def _entry(response: httpx.Response) -> EntryInfo:
    return EntryInfo.from_json(response.json())


def _entries(response: httpx.Response) -> list[EntryInfo]:
    return [EntryInfo.from_json(e) for e in response.json()["entries"]]


def _processes(response: httpx.Response) -> list[ProcessInfo]:
    return [ProcessInfo.from_json(p) for p in response.json()["processes"]]


def _pid(response: httpx.Response) -> int:
    return int(response.json()["pid"])


def _result(response: httpx.Response) -> CommandResult:
    data = response.json()
    code = data.get("exit_code")
    return CommandResult(
        exit_code=int(code) if code is not None else -1,
        stdout=str(data.get("stdout") or ""),
        stderr=str(data.get("stderr") or ""),
        pid=data.get("pid"),
        truncated=bool(data.get("truncated")),
    )


def _exists(response: httpx.Response) -> bool:
    return bool(response.json()["exists"])


def _created(response: httpx.Response) -> bool:
    return response.status_code == 201


def _text(response: httpx.Response) -> str:
    return response.text


def _bytes(response: httpx.Response) -> bytes:
    return response.content


def _pairs(values: Mapping[str, str] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (values or {}).items()]


# Sandboxes


def create_sandbox(
    image: str | None,
    *,
    vcpus: int | None,
    memory_mb: int | None,
    envs: Mapping[str, str] | None,
    metadata: Mapping[str, str] | None,
    timeout: float | None,
    disk_mb: int | None = None,
    template: str | None = None,
    snapshot: str | None = None,
    on_timeout: str | None = None,
    auto_pause: int | None = None,
    network: Mapping[str, Any] | None = None,
    publish: Sequence[str | int] | None = None,
    auto_publish: bool | None = None,
) -> Call[SandboxInfo]:
    body = _drop_none(
        {
            "network": dict(network) if network is not None else None,
            "publish": [_publish_entry(p) for p in publish] if publish else None,
            "auto_publish": auto_publish,
            "image": image,
            "template": template,
            "snapshot": snapshot,
            "on_timeout": on_timeout,
            "auto_pause": auto_pause,
            "vcpus": vcpus,
            "memory_mb": memory_mb,
            "disk_mb": disk_mb,
            "envs": dict(envs) if envs is not None else None,
            "metadata": dict(metadata) if metadata is not None else None,
            "timeout": whole_seconds(timeout) if timeout is not None else None,
        }
    )
    return Call("POST", "/v1/sandboxes", json=body, extra_time=CREATE_EXTRA_TIME, parse=_sandbox)


def _publish_entry(value: str | int) -> dict[str, int]:
    """``"8080:3000"`` (host port 8080 to port 3000) or ``3000`` (the same number on both)."""
    if isinstance(value, int):
        return {"host_port": value, "port": value}
    host, _, inner = str(value).partition(":")
    try:
        return {"host_port": int(host), "port": int(inner or host)}
    except ValueError:
        raise ValueError(f"publish: {value!r} is not HOST_PORT:PORT such as '8080:3000'") from None


def set_network(sandbox_id: str, policy: Mapping[str, Any]) -> Call[SandboxInfo]:
    return Call("PUT", f"/v1/sandboxes/{_seg(sandbox_id)}/network", json=dict(policy), parse=_sandbox)


def _ports(response: httpx.Response) -> list[PortInfo]:
    return [PortInfo.from_json(p) for p in response.json()]


def list_ports(sandbox_id: str) -> Call[list[PortInfo]]:
    return Call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}/ports", parse=_ports)


def publish_port(sandbox_id: str, port: int, host_port: int | None) -> Call[PortInfo]:
    body = _drop_none({"port": port, "host_port": host_port})
    return Call(
        "POST",
        f"/v1/sandboxes/{_seg(sandbox_id)}/ports",
        json=body,
        parse=lambda r: PortInfo.from_json(r.json()),
    )


def unpublish_port(sandbox_id: str, host_port: int) -> Call[None]:
    return Call("DELETE", f"/v1/sandboxes/{_seg(sandbox_id)}/ports/{int(host_port)}", parse=_nothing)


def _list_params(state: str | None, metadata: Mapping[str, str] | None) -> list[tuple[str, str]]:
    params = [("state", state)] if state else []
    return params + [("metadata", pair) for pair in _pairs(metadata)]


def list_sandboxes(*, state: str | None, metadata: Mapping[str, str] | None) -> Call[list[SandboxInfo]]:
    return Call("GET", "/v1/sandboxes", params=tuple(_list_params(state, metadata)), parse=_sandboxes)


def list_sandbox_page(
    *, state: str | None, metadata: Mapping[str, str] | None, limit: int, next_token: str | None
) -> Call[SandboxPage]:
    params = [*_list_params(state, metadata), ("limit", str(int(limit)))]
    if next_token is not None:
        params.append(("next_token", next_token))
    return Call("GET", "/v1/sandboxes", params=tuple(params), parse=_sandbox_page)


def get_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}", parse=_sandbox)


def kill_sandbox(sandbox_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/sandboxes/{_seg(sandbox_id)}", parse=_nothing)


def set_timeout(sandbox_id: str, timeout: float | None) -> Call[SandboxInfo]:
    path = f"/v1/sandboxes/{_seg(sandbox_id)}/timeout"
    return Call("POST", path, json={"timeout": whole_seconds(timeout)}, parse=_sandbox)


def lifecycle(sandbox_id: str, action: str) -> Call[SandboxInfo]:
    """``pause``, ``resume`` or ``hibernate``: the answer may wait for a wake-up."""
    return Call("POST", f"/v1/sandboxes/{_seg(sandbox_id)}/{action}", extra_time=CREATE_EXTRA_TIME, parse=_sandbox)


def _snapshot(response: httpx.Response) -> SnapshotInfo:
    return SnapshotInfo.from_json(response.json())


def _snapshots(response: httpx.Response) -> list[SnapshotInfo]:
    return [SnapshotInfo.from_json(s) for s in response.json()["snapshots"]]


def take_snapshot(sandbox_id: str, metadata: Mapping[str, str] | None) -> Call[SnapshotInfo]:
    path = f"/v1/sandboxes/{_seg(sandbox_id)}/snapshots"
    return Call("POST", path, json={"metadata": dict(metadata or {})}, extra_time=600, parse=_snapshot)


def list_snapshots(sandbox_id: str | None) -> Call[list[SnapshotInfo]]:
    params = (("sandbox_id", sandbox_id),) if sandbox_id else ()
    return Call("GET", "/v1/snapshots", params=params, parse=_snapshots)


def get_snapshot(snapshot_id: str) -> Call[SnapshotInfo]:
    return Call("GET", f"/v1/snapshots/{_seg(snapshot_id)}", parse=_snapshot)


def delete_snapshot(snapshot_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/snapshots/{_seg(snapshot_id)}", parse=_nothing)


def fork(
    sandbox_id: str, count: int, *, metadata: Mapping[str, str] | None, timeout: float | None
) -> Call[list[SandboxInfo]]:
    body = _drop_none(
        {
            "count": count,
            "metadata": dict(metadata or {}),
            "timeout": whole_seconds(timeout) if timeout is not None else None,
        }
    )
    return Call("POST", f"/v1/sandboxes/{_seg(sandbox_id)}/fork", json=body, extra_time=600, parse=_sandboxes)


def commit(sandbox_id: str, name: str) -> Call[ImageInfo]:
    return Call("POST", f"/v1/sandboxes/{_seg(sandbox_id)}/commit", json={"name": name}, extra_time=600, parse=_image)


def logs(sandbox_id: str, *, tail: int | None) -> Call[str]:
    params = (("tail", str(tail)),) if tail is not None else ()
    return Call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}/logs", params=params, parse=_text)


# Commands


def exec_body(
    cmd: str | Sequence[str],
    *,
    timeout: float | None,
    envs: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
    stdin: str | None,
    tag: str | None,
    stdin_open: bool = False,
) -> dict[str, Any]:
    """The exec body both modes share: ``cmd`` (a shell line) or ``argv`` (a list)."""
    body: dict[str, Any] = {"cmd": cmd} if isinstance(cmd, str) else {"argv": [str(a) for a in cmd]}
    body.update(
        _drop_none(
            {
                "cwd": cwd,
                "envs": dict(envs) if envs is not None else None,
                "user": user,
                "timeout": seconds(timeout),
                "stdin": stdin,
                "stdin_open": stdin_open or None,
                "tag": tag,
            }
        )
    )
    return body


def _exec_path(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{_seg(sandbox_id)}/exec"


def exec_plain(sandbox_id: str, body: dict[str, Any]) -> Call[CommandResult]:
    """Run and wait: the answer comes when the command ends, so no read limit but its own."""
    timeout = body.get("timeout") or None
    json = {**body, "background": False, "stream": False}
    return Call("POST", _exec_path(sandbox_id), json=json, extra_time=timeout, parse=_result)


def exec_stream(sandbox_id: str, body: dict[str, Any]) -> Call[httpx.Response]:
    json = {**body, "background": False, "stream": True}
    return Call("POST", _exec_path(sandbox_id), json=json, extra_time=None)


def exec_background(sandbox_id: str, body: dict[str, Any]) -> Call[httpx.Response]:
    """Start in the background and follow it on the same stream, so no output is missed."""
    json = {**body, "background": True, "stream": True}
    return Call("POST", _exec_path(sandbox_id), json=json, extra_time=None)


def _process_path(sandbox_id: str, pid: int | str) -> str:
    return f"/v1/sandboxes/{_seg(sandbox_id)}/processes/{_seg(pid)}"


def list_processes(sandbox_id: str) -> Call[list[ProcessInfo]]:
    return Call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}/processes", parse=_processes)


def process_stream(sandbox_id: str, pid: int | str) -> Call[httpx.Response]:
    return Call("GET", f"{_process_path(sandbox_id, pid)}/stream", extra_time=None)


def send_stdin(sandbox_id: str, pid: int | str, data: str | bytes) -> Call[None]:
    path = f"{_process_path(sandbox_id, pid)}/stdin"
    body = {"data": data} if isinstance(data, str) else {"data_base64": base64.b64encode(data).decode()}
    return Call("POST", path, json=body, parse=_nothing)


def close_stdin(sandbox_id: str, pid: int | str) -> Call[None]:
    return Call("POST", f"{_process_path(sandbox_id, pid)}/stdin/close", parse=_nothing)


def signal(sandbox_id: str, pid: int | str, signal: str | int) -> Call[None]:
    path = f"{_process_path(sandbox_id, pid)}/signal"
    return Call("POST", path, json={"signal": signal}, parse=_nothing)


# Files


def _files_path(sandbox_id: str, suffix: str = "") -> str:
    return f"/v1/sandboxes/{_seg(sandbox_id)}/files{suffix}"


def _query(path: str, user: str | None, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("path", path), *more) + ((("user", user),) if user else ())


def read_file(sandbox_id: str, path: str, *, user: str | None) -> Call[httpx.Response]:
    return Call("GET", _files_path(sandbox_id), params=_query(path, user))


def read_text(sandbox_id: str, path: str, *, user: str | None) -> Call[str]:
    return Call("GET", _files_path(sandbox_id), params=_query(path, user), parse=_text)


def read_bytes(sandbox_id: str, path: str, *, user: str | None) -> Call[bytes]:
    return Call("GET", _files_path(sandbox_id), params=_query(path, user), parse=_bytes)


def write_file(sandbox_id: str, path: str, content: Content, *, user: str | None) -> Call[EntryInfo]:
    params = _query(path, user)
    return Call("PUT", _files_path(sandbox_id), params=params, content=content, parse=_entry)


def list_dir(sandbox_id: str, path: str, *, depth: int, user: str | None) -> Call[list[EntryInfo]]:
    params = _query(path, user, ("depth", str(depth)))
    return Call("GET", _files_path(sandbox_id, "/list"), params=params, parse=_entries)


def stat(sandbox_id: str, path: str, *, user: str | None) -> Call[EntryInfo]:
    return Call("GET", _files_path(sandbox_id, "/stat"), params=_query(path, user), parse=_entry)


def exists(sandbox_id: str, path: str, *, user: str | None) -> Call[bool]:
    return Call("GET", _files_path(sandbox_id, "/exists"), params=_query(path, user), parse=_exists)


def make_dir(sandbox_id: str, path: str, *, user: str | None) -> Call[bool]:
    body = _drop_none({"path": path, "user": user})
    return Call("POST", _files_path(sandbox_id, "/mkdir"), json=body, parse=_created)


def remove(sandbox_id: str, path: str, *, recursive: bool, user: str | None) -> Call[None]:
    params = _query(path, user, ("recursive", "true" if recursive else "false"))
    return Call("DELETE", _files_path(sandbox_id), params=params, parse=_nothing)


def move(sandbox_id: str, source: str, destination: str, *, user: str | None) -> Call[EntryInfo]:
    body = _drop_none({"source": source, "destination": destination, "user": user})
    return Call("POST", _files_path(sandbox_id, "/move"), json=body, parse=_entry)


def chmod(sandbox_id: str, path: str, mode: int | str) -> Call[EntryInfo]:
    body = {"path": path, "mode": octal_mode(mode)}
    return Call("POST", _files_path(sandbox_id, "/chmod"), json=body, parse=_entry)


def octal_mode(mode: int | str) -> str:
    """A mode as the octal string the API takes: ``0o755`` and ``"755"`` both give ``"755"``."""
    if isinstance(mode, int):
        if not 0 <= mode <= 0o7777:
            raise InvalidRequest(f"mode out of range: {mode:o}")
        return format(mode, "o")
    text = mode.removeprefix("0o")
    if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o7777:
        raise InvalidRequest(f"not an octal mode: {mode!r}")
    return text


# Images


def _image(response: httpx.Response) -> ImageInfo:
    return ImageInfo.from_json(response.json())


def _images(response: httpx.Response) -> list[ImageInfo]:
    return [ImageInfo.from_json(i) for i in response.json()["images"]]


def _json_body(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


PULL_TIME = 1800.0
"""A pull may take this long beyond the request timeout (big images, slow registries)."""


def pull_image(name: str, *, stream: bool) -> Call[Any]:
    body = {"image": name, "stream": stream}
    return Call("POST", "/v1/images", json=body, extra_time=None if stream else PULL_TIME, parse=_image)


def list_images(*, all_images: bool) -> Call[list[ImageInfo]]:
    params = (("all", "true"),) if all_images else ()
    return Call("GET", "/v1/images", params=params, parse=_images)


def get_image(name: str) -> Call[ImageInfo]:
    return Call("GET", f"/v1/images/{quote(name, safe='/:@')}", parse=_image)


def remove_image(name: str, *, force: bool) -> Call[None]:
    params = (("force", "true"),) if force else ()
    return Call("DELETE", f"/v1/images/{quote(name, safe='/:@')}", params=params, parse=_nothing)


def gc_images() -> Call[dict[str, Any]]:
    return Call("POST", "/v1/images/gc", parse=_json_body)


# Templates


def _template(response: httpx.Response) -> TemplateInfo:
    return TemplateInfo.from_json(response.json())


def _templates(response: httpx.Response) -> list[TemplateInfo]:
    return [TemplateInfo.from_json(t) for t in response.json()["templates"]]


def put_template(name: str, body: dict[str, Any]) -> Call[TemplateInfo]:
    return Call("PUT", f"/v1/templates/{_seg(name)}", json=_drop_none(body), parse=_template)


def build_template(name: str, context: bytes) -> Call[httpx.Response]:
    return Call("POST", f"/v1/templates/{_seg(name)}/builds", content=context, extra_time=None)


def list_templates() -> Call[list[TemplateInfo]]:
    return Call("GET", "/v1/templates", parse=_templates)


def get_template(name: str) -> Call[TemplateInfo]:
    return Call("GET", f"/v1/templates/{_seg(name)}", parse=_template)


def delete_template(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/templates/{_seg(name)}", parse=_nothing)


# Warm pools


def _pool_path(key: str) -> str:
    return f"/v1/pools/{quote(key, safe='/:@')}"


def _pool(response: httpx.Response) -> PoolInfo:
    return PoolInfo.from_json(response.json())


def _pools(response: httpx.Response) -> list[PoolInfo]:
    return [PoolInfo.from_json(p) for p in response.json()["pools"]]


def list_pools() -> Call[list[PoolInfo]]:
    return Call("GET", "/v1/pools", parse=_pools)


def set_pool(key: str, size: int) -> Call[PoolInfo]:
    return Call("PUT", _pool_path(key), json={"size": size}, parse=_pool)


def delete_pool(key: str) -> Call[None]:
    return Call("DELETE", _pool_path(key), parse=_nothing)
