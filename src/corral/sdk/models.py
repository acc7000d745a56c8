"""The typed objects the SDK returns, one per API object (see docs/api.md).

Each is a plain dataclass built from the server's JSON with ``from_json`` and
turned back into it with ``to_json``; fields a newer server adds are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "CommandResult",
    "EntryInfo",
    "ImageInfo",
    "OutputChunk",
    "ProcessInfo",
    "SandboxInfo",
    "SnapshotInfo",
    "TemplateInfo",
]


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, _JsonModel):
        return value.to_json()
    return value


class _JsonModel:
    """``to_json`` for the dataclasses below: their fields, as the API spells them."""

    def to_json(self) -> dict[str, Any]:
        """This object as the API's JSON object."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class SandboxInfo(_JsonModel):
    """A sandbox as the server sees it."""

    id: str
    image: str
    state: str
    """``starting``, ``running``, ``paused``, ``hibernated``, ``dead`` (stopped on its own; see ``error``)."""
    runtime: str = ""
    vcpus: int = 0
    memory_mb: int = 0
    disk_mb: int | None = None
    """Size of its disk in MiB (None: no limit of its own)."""
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    ends_at: datetime | None = None
    """When the reaper kills it; ``None`` for no timeout."""
    timeout: int = 0
    address: str | None = None
    error: str | None = None
    template: str | None = None
    """The template it was started from, if any."""
    on_timeout: str = "kill"
    """At its timeout: ``kill``, or ``pause`` (memory kept; any call resumes it)."""
    auto_pause: int | None = None
    """Seconds without requests after which it hibernates (None: never)."""
    remaining: float | None = None
    """While paused or hibernated: the seconds of its timeout left."""
    network: dict[str, Any] | None = None
    """Its egress policy (``mode``, ``allow_cidrs``, ``allow_domains``, ``allow_host``, ``allow_lan``, ``previews``)."""
    ports: list[PortInfo] = field(default_factory=list)
    """Host ports published to it."""
    auto_publish: bool = False
    preview_url: str | None = None
    """Its preview URL with ``{port}`` where the port goes (None: the server has no preview proxy)."""
    preview_token: str | None = None
    """Opens its private preview URLs (header ``X-Corral-Preview-Token``)."""

    @property
    def sandbox_id(self) -> str:
        """The E2B name of ``id``."""
        return self.id

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=str(data["id"]),
            image=str(data.get("image", "")),
            state=str(data.get("state", "")),
            runtime=str(data.get("runtime", "")),
            vcpus=int(data.get("vcpus") or 0),
            memory_mb=int(data.get("memory_mb") or 0),
            disk_mb=int(data["disk_mb"]) if data.get("disk_mb") else None,
            metadata=dict(data.get("metadata") or {}),
            envs=dict(data.get("envs") or {}),
            created_at=_time(data.get("created_at")),
            ends_at=_time(data.get("ends_at")),
            timeout=int(data.get("timeout") or 0),
            address=data.get("address"),
            error=data.get("error"),
            template=data.get("template"),
            on_timeout=str(data.get("on_timeout") or "kill"),
            auto_pause=data.get("auto_pause"),
            remaining=data.get("remaining"),
            network=data.get("network"),
            ports=[PortInfo.from_json(p) for p in data.get("ports") or []],
            auto_publish=bool(data.get("auto_publish")),
            preview_url=data.get("preview_url"),
            preview_token=data.get("preview_token"),
        )


@dataclass(frozen=True)
class SandboxPage(_JsonModel):
    """One page of ``Sandbox.list_page``."""

    sandboxes: list[SandboxInfo]
    next_token: str | None = None
    """Pass it as ``next_token`` for the next page; ``None`` on the last."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxPage:
        return cls(sandboxes=[SandboxInfo.from_json(s) for s in data["sandboxes"]], next_token=data.get("next_token"))


@dataclass(frozen=True)
class PortInfo(_JsonModel):
    """A host port published to a port in the sandbox."""

    host_port: int
    port: int
    auto: bool = False
    """Made by ``auto_publish`` for a listener in the sandbox."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortInfo:
        return cls(host_port=int(data["host_port"]), port=int(data["port"]), auto=bool(data.get("auto")))


@dataclass(frozen=True)
class PoolInfo(_JsonModel):
    """A warm pool: sandboxes of one image or template kept started, handed out by ``Sandbox.create``."""

    key: str
    """``image:<canonical name>`` or ``template:<name>``."""
    size: int
    """Sandboxes it keeps started (0: it is emptied)."""
    ready: int = 0
    """Sandboxes waiting in it now."""
    hits: int = 0
    """Creates it served."""
    misses: int = 0
    """Creates that found it empty."""
    error: str | None = None
    """Why its last try to start a sandbox failed (``None`` once one starts)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolInfo:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class EntryInfo(_JsonModel):
    """A file, directory or symlink inside a sandbox."""

    name: str
    path: str
    type: str
    """``file``, ``dir`` or ``symlink``."""
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_at: datetime | None = None
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EntryInfo:
        return cls(
            name=str(data.get("name", "")),
            path=str(data["path"]),
            type=str(data.get("type", "file")),
            size=int(data.get("size") or 0),
            mode=int(data.get("mode") or 0),
            permissions=str(data.get("permissions", "")),
            owner=str(data.get("owner", "")),
            group=str(data.get("group", "")),
            modified_at=_time(data.get("modified_at")),
            symlink_target=data.get("symlink_target"),
        )


@dataclass(frozen=True)
class ProcessInfo(_JsonModel):
    """A background process running in a sandbox."""

    pid: int
    tag: str | None = None
    cmd: str = ""
    args: list[str] = field(default_factory=list)
    cwd: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(data["pid"]),
            tag=data.get("tag"),
            cmd=str(data.get("cmd", "")),
            args=[str(a) for a in data.get("args") or []],
            cwd=data.get("cwd"),
        )


@dataclass(frozen=True)
class CommandResult(_JsonModel):
    """How a finished command ended, and all it printed."""

    exit_code: int
    stdout: str
    stderr: str
    pid: int | None = None
    truncated: bool = False
    """The server dropped output past its limit (``CORRAL_EXEC_OUTPUT_LIMIT_MB`` per stream); ``on_stdout`` and
    ``on_stderr`` stream it all."""


@dataclass(frozen=True)
class OutputChunk:
    """One piece of a running command's output, as it arrived."""

    stream: Literal["stdout", "stderr"]
    data: str


@dataclass(frozen=True)
class ImageInfo(_JsonModel):
    """An image in the server's local store."""

    id: str
    names: list[str] = field(default_factory=list)
    source: str = ""
    """``pull``, ``base``, ``build`` (a template) or ``commit``."""
    digest: str | None = None
    size: int = 0
    layers: int = 0
    parent: str | None = None
    created_at: datetime | None = None
    config: dict[str, Any] = field(default_factory=dict)
    used_by: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        return cls(
            id=str(data["id"]),
            names=list(data.get("names") or []),
            source=str(data.get("source") or ""),
            digest=data.get("digest"),
            size=int(data.get("size") or 0),
            layers=int(data.get("layers") or 0),
            parent=data.get("parent"),
            created_at=_time(data.get("created_at")),
            config=dict(data.get("config") or {}),
            used_by=list(data.get("used_by") or []),
        )


@dataclass(frozen=True)
class PullProgress:
    """One progress event of a pull: ``done`` of ``total`` bytes in ``phase``."""

    phase: str
    """``resolving``, ``downloading``, ``unpacking`` or ``done``."""
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class TemplateInfo(_JsonModel):
    """A template: its recipe, defaults, and the state of its last build."""

    name: str
    image: str = ""
    """The image its builds are named as (``corral/templates/<name>``)."""
    state: str = ""
    """``new``, ``building``, ``ready`` or ``failed`` (a failed rebuild keeps the last good image)."""
    image_id: str | None = None
    dockerfile: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    vcpus: int | None = None
    memory_mb: int | None = None
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float = 60.0
    error: str | None = None
    created_at: datetime | None = None
    built_at: datetime | None = None
    build_log: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TemplateInfo:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["created_at"] = _time(data.get("created_at"))
        values["built_at"] = _time(data.get("built_at"))
        return cls(**values)


@dataclass(frozen=True)
class SnapshotInfo(_JsonModel):
    """A whole-sandbox snapshot: restore it with ``Sandbox.create(snapshot=id)``."""

    id: str
    sandbox_id: str = ""
    image: str = ""
    template: str | None = None
    vcpus: int = 0
    memory_mb: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    state: str = ""
    """``creating``, ``ready`` or ``failed``."""
    size: int = 0
    error: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotInfo:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["created_at"] = _time(data.get("created_at"))
        return cls(**values)
