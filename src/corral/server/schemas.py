"""Request and response bodies of the HTTP API (see docs/api.md)."""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.core.clock import as_utc
from corral.errors import InvalidRequest
from corral.store.models import SandboxRow

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _environment(envs: dict[str, str]) -> dict[str, str]:
    for name, value in envs.items():
        if not name or "=" in name or "\x00" in name:
            raise ValueError(f"{name!r} is no environment variable name: it must be non-empty, without '=' or NUL")
        if "\x00" in value:
            raise ValueError(f"the value of {name} holds a NUL byte")
    return envs


Environment = Annotated[dict[str, str], AfterValidator(_environment)]
"""Variables for processes: refused here when no process could be started with them."""

METADATA_KEY = 256
METADATA_VALUE = 4096
METADATA_ENTRIES = 64


def _metadata(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > METADATA_ENTRIES:
        raise ValueError(f"at most {METADATA_ENTRIES} labels, got {len(labels)}")
    for key, value in labels.items():
        if not 1 <= len(key) <= METADATA_KEY:
            raise ValueError(f"a label's key is 1 to {METADATA_KEY} characters, got {len(key)}: {key[:40]!r}")
        if len(value) > METADATA_VALUE:
            raise ValueError(f"label {key[:40]!r} holds {len(value)} characters; at most {METADATA_VALUE}")
    return labels


Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]
"""Labels on a sandbox or snapshot: small, since every list carries them."""


class NetworkPolicy(Strict):
    """Where a sandbox may connect (see docs/network.md). Every entry is checked; a bad one is named in a 422."""

    mode: Literal["none", "allowlist", "public_only"] = Field(
        default="public_only",
        description="none: nothing out, DNS included; allowlist: only the allow-lists; "
        "public_only: the public internet (no host, LAN, link-local/metadata), plus the allow-lists.",
    )
    allow_cidrs: list[str] = Field(default_factory=list, description="IPv4 networks reachable whatever the mode.")
    allow_domains: list[str] = Field(
        default_factory=list, description="Names (pypi.org) or wildcards (*.github.com) to resolve and reach."
    )
    allow_host: list[int] = Field(
        default_factory=list, description="TCP ports of the host reachable at the sandbox's gateway address."
    )
    allow_lan: bool = Field(default=False, description="Private ranges (RFC 1918, CGNAT); never other sandboxes.")
    previews: Literal["private", "public"] = Field(
        default="private", description="private: preview URLs need the access token; public: they do not."
    )


class PublishedPort(Strict):
    host_port: int = Field(ge=1, le=65535, description="Port on the server's address (127.0.0.1 by default).")
    port: int = Field(ge=1, le=65535, description="Port in the sandbox.")
    auto: bool = Field(default=False, description="Mirrored by auto_publish from a listener in the sandbox.")


class PublishPort(Strict):
    host_port: int | None = Field(default=None, ge=1, le=65535, description="Default: the same as port.")
    port: int = Field(ge=1, le=65535)


MAX_COUNT = 2**31 - 1
"""The largest value a count or a number of seconds may take: any store holds it (SQLite's
INTEGER is 64-bit; a larger number is refused here, not failed on at the store)."""


class CreateSandbox(Strict):
    image: str | None = Field(
        default=None, min_length=1, max_length=255, description="Image name; default (or null) corral/base."
    )
    vcpus: int | None = Field(default=None, ge=1, description="vCPUs.")
    memory_mb: int | None = Field(default=None, ge=64, description="Memory limit in MiB.")
    disk_mb: int | None = Field(default=None, ge=16, description="Disk size in MiB (what it writes outside tmpfs).")
    timeout: int | None = Field(default=None, ge=0, description="Seconds until the sandbox is killed; 0 = never.")
    envs: Environment = Field(default_factory=dict, description="Environment of every process.")
    metadata: Metadata = Field(
        default_factory=dict, description="Your labels (at most 64; keys to 256, values to 4096 characters)."
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Start from this template (its image, resources, start command).",
    )
    snapshot: str | None = Field(
        default=None, min_length=1, max_length=64, description="Restore this snapshot: its processes, memory and files."
    )
    on_timeout: Literal["kill", "pause"] = Field(
        default="kill", description="At its timeout: kill it, or pause it (memory kept; any request resumes it)."
    )
    auto_pause: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="Hibernate after this many seconds without any request; woken by the next.",
    )
    network: NetworkPolicy | None = Field(default=None, description="Egress policy; default: the server's.")
    publish: list[PublishPort] = Field(default_factory=list, max_length=64, description="Host ports to publish.")
    auto_publish: bool = Field(
        default=False, description="Publish every port the sandbox listens on, on the same host port, while it does."
    )


class Sandbox(BaseModel):
    id: str
    image: str
    template: str | None = None
    runtime: str
    state: Literal["starting", "running", "paused", "hibernated", "pooled", "dead"]
    on_timeout: Literal["kill", "pause"] = "kill"
    auto_pause: int | None = None
    remaining: float | None = Field(default=None, description="While paused or hibernated: timeout seconds left.")
    vcpus: int
    memory_mb: int
    disk_mb: int | None = Field(default=None, description="Disk size in MiB; null: no limit of its own.")
    metadata: dict[str, str]
    envs: dict[str, str]
    created_at: datetime
    ends_at: datetime | None
    timeout: int
    address: str
    error: str | None
    network: NetworkPolicy | None = Field(default=None, description="Its egress policy (None: nothing out).")
    ports: list[PublishedPort] = Field(default_factory=list)
    auto_publish: bool = False
    preview_url: str | None = Field(
        default=None, description="Preview URL with '{port}' where the port goes; None without a preview proxy."
    )
    preview_token: str | None = Field(default=None, description="Access token for its private preview URLs.")

    @classmethod
    def from_row(
        cls,
        row: SandboxRow,
        *,
        preview_url: str | None = None,
        preview_token: str | None = None,
    ) -> Sandbox:
        return cls(
            network=NetworkPolicy(**row.network) if row.network is not None else None,
            ports=[PublishedPort(**p) for p in row.ports or []],
            auto_publish=bool(row.auto_publish),
            preview_url=preview_url,
            preview_token=preview_token,
            id=row.id,
            image=row.image,
            template=row.template,
            on_timeout=row.on_timeout,
            auto_pause=row.auto_pause,
            remaining=row.remaining,
            runtime=row.runtime,
            state=row.state,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            disk_mb=row.disk_mb,
            metadata=row.meta,
            envs=row.envs,
            created_at=as_utc(row.created_at),
            ends_at=as_utc(row.ends_at) if row.ends_at else None,
            timeout=row.timeout,
            address=row.address,
            error=row.error,
        )


class SandboxList(BaseModel):
    sandboxes: list[Sandbox]
    next_token: str | None = Field(
        default=None, description="With `limit`: give it as `next_token` for the next page; null on the last."
    )


class SetTimeout(Strict):
    timeout: int = Field(ge=0, description="Seconds from now; 0 = never.")


class Exec(Strict):
    cmd: str | None = Field(default=None, description="A shell command line (bash -c, or sh -c).")
    argv: list[str] | None = Field(default=None, description="A program and its arguments, no shell.")
    cwd: str | None = None
    envs: Environment = Field(default_factory=dict)
    user: UserName | None = Field(
        default=None, description="A name or uid; default: the image's user, else 'user' if the image has it."
    )
    timeout: float | None = Field(default=None, ge=0, description="Seconds; 0 = none; default 60.")
    stdin: str | None = Field(
        default=None, description="Text written to stdin, which is then closed (unless stdin_open)."
    )
    stdin_open: bool = Field(
        default=False,
        description="Keep stdin open for /processes/{pid}/stdin writes until /stdin/close "
        "(with stream or background; a background process's is always open).",
    )
    background: bool = False
    stream: bool = False
    tag: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _stdin_open_needs_the_pid_first(self) -> Exec:
        if self.stdin_open and not (self.stream or self.background):
            raise ValueError(
                "stdin_open needs stream: true or background: true, whose answer gives the pid to write to first"
            )
        return self

    @field_validator("cmd", mode="before")
    @classmethod
    def _cmd_is_a_line(cls, value: object) -> object:
        if isinstance(value, list):
            raise ValueError("cmd is a shell command line (a string): give a program and its arguments as argv")
        return value


class ExecResult(BaseModel):
    pid: int
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool = Field(
        default=False,
        description="Output past the server's limit (CORRAL_EXEC_OUTPUT_LIMIT_MB per stream) was dropped; "
        "stream the command to see all of it.",
    )


class Started(BaseModel):
    pid: int


class ProcessInfo(BaseModel):
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    cwd: str | None


class ProcessList(BaseModel):
    processes: list[ProcessInfo]


class StdinData(Strict):
    data: str | None = Field(default=None, description="Text, written as UTF-8.")
    data_base64: str | None = Field(default=None, description="Bytes, base64-encoded.")

    def payload(self) -> bytes:
        """The bytes to write: from exactly one of the two fields."""
        if (self.data is None) == (self.data_base64 is None):
            raise InvalidRequest("give exactly one of 'data' (text) or 'data_base64' (bytes)")
        if self.data is not None:
            return self.data.encode()
        try:
            return base64.b64decode(self.data_base64 or "", validate=True)
        except ValueError as exc:  # binascii.Error, or a character outside ASCII
            raise InvalidRequest(f"data_base64 is not base64: {exc}") from None


class SignalBody(Strict):
    signal: str | int = "SIGTERM"


def _user(name: str) -> str:
    if ":" in name or "\x00" in name:
        raise ValueError(f"{name!r} is not a user: give a name or a uid (a group cannot be given here)")
    return name


UserName = Annotated[str, AfterValidator(_user), Field(max_length=64)]
"""Whom a command or file call acts as: a name or uid in the sandbox's ``/etc/passwd`` (or a bare uid)."""

PATH_RULES: dict[str, Any] = {"min_length": 1, "max_length": 4096}


def _no_nul(path: str) -> str:
    if "\x00" in path:
        raise ValueError("a path cannot hold a NUL byte")
    return path


NoNul = AfterValidator(_no_nul)
"""Paths: no file name can hold a NUL byte, so one is refused here, before it reaches the sandbox."""
SandboxPath = Annotated[str, NoNul, Field(**PATH_RULES, description="A path inside the sandbox.")]


class Entry(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink"]
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: datetime | None
    symlink_target: str | None


class EntryList(BaseModel):
    entries: list[Entry]


class Exists(BaseModel):
    exists: bool


class MakeDir(Strict):
    path: SandboxPath
    user: UserName | None = None


class Move(Strict):
    source: SandboxPath
    destination: SandboxPath
    user: UserName | None = None


class Chmod(Strict):
    path: SandboxPath
    mode: str | int


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    version: str


class ImageConfigModel(BaseModel):
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    user: str


class ImageInfo(BaseModel):
    id: str = Field(description="64 hex digits; for pulled images, the registry manifest's digest.")
    names: list[str]
    source: Literal["pull", "base", "build", "commit"]
    digest: str | None
    size: int = Field(description="Bytes on disk this image added over its parent.")
    layers: int
    parent: str | None
    created_at: datetime
    config: ImageConfigModel
    used_by: list[str] = Field(description="Ids of the sandboxes running on this image.")

    @classmethod
    def from_image(cls, image: Any, used_by: list[str] | None = None) -> ImageInfo:
        return cls(
            id=image.id,
            names=list(image.names),
            source=image.source,
            digest=image.digest,
            size=image.size,
            layers=len(image.layers),
            parent=image.parent,
            created_at=datetime.fromtimestamp(image.created, tz=UTC),
            config=ImageConfigModel(**asdict(image.config)),
            used_by=used_by or [],
        )


class ImageList(BaseModel):
    images: list[ImageInfo]


class PullImage(Strict):
    image: str = Field(
        max_length=512, description="Any reference: python:3.12, ghcr.io/o/r:tag, name@sha256:..., host:5000/x:tag."
    )
    stream: bool = Field(default=False, description="Answer with NDJSON progress events, then the image.")


class GcResult(BaseModel):
    images: int
    layers: int
    bytes: int


class Commit(Strict):
    name: str = Field(max_length=255, description="Name of the new image, e.g. corral/my-env:v1.")


class TemplateBody(Strict):
    dockerfile: str = Field(
        max_length=256 * 1024, description="The recipe: FROM, RUN, COPY/ADD, ENV, WORKDIR, USER, ARG."
    )
    build_args: dict[str, str] = Field(default_factory=dict, description="Values for ARG, as --build-arg.")
    vcpus: int | None = Field(
        default=None, ge=1, le=MAX_COUNT, description="Default vCPUs of its sandboxes (and its builds)."
    )
    memory_mb: int | None = Field(
        default=None, ge=64, le=MAX_COUNT, description="Default memory of its sandboxes, in MiB."
    )
    start_cmd: str | None = Field(default=None, description="Started in the background in every new sandbox.")
    ready_cmd: str | None = Field(default=None, description="A sandbox is handed out once this exits 0.")
    ready_timeout: float = Field(default=60.0, gt=0, description="Seconds the readiness check may take.")


class Template(BaseModel):
    name: str
    image: str
    state: Literal["new", "building", "ready", "failed"]
    image_id: str | None
    dockerfile: str
    build_args: dict[str, str]
    vcpus: int | None
    memory_mb: int | None
    start_cmd: str | None
    ready_cmd: str | None
    ready_timeout: float
    error: str | None
    created_at: datetime
    built_at: datetime | None
    build_log: str | None = Field(default=None, description="The last build's log (on GET of one template).")

    @classmethod
    def from_row(cls, row: Any, *, with_log: bool = False) -> Template:
        from corral.core.templates import image_name

        return cls(
            name=row.name,
            image=image_name(row.name),
            state=row.state,
            image_id=row.image_id,
            dockerfile=row.dockerfile,
            build_args=row.build_args,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            start_cmd=row.start_cmd,
            ready_cmd=row.ready_cmd,
            ready_timeout=row.ready_timeout,
            error=row.error,
            created_at=as_utc(row.created_at),
            built_at=as_utc(row.built_at) if row.built_at else None,
            build_log=row.build_log if with_log else None,
        )


class TemplateList(BaseModel):
    templates: list[Template]


class Snapshot(BaseModel):
    id: str
    sandbox_id: str = Field(description="The sandbox it was taken of (which may be gone since).")
    image: str
    template: str | None
    vcpus: int
    memory_mb: int
    disk_mb: int | None = Field(default=None, description="Disk size in MiB; null: no limit of its own.")
    metadata: dict[str, str]
    state: Literal["creating", "ready", "failed"]
    size: int = Field(description="Bytes on disk: memory image and disk changes.")
    error: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Snapshot:
        return cls(
            id=row.id,
            sandbox_id=row.sandbox_id,
            image=row.image,
            template=row.template,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            disk_mb=row.disk_mb,
            metadata=row.meta,
            state=row.state,
            size=row.size,
            error=row.error,
            created_at=as_utc(row.created_at),
        )


class SnapshotList(BaseModel):
    snapshots: list[Snapshot]


class TakeSnapshot(Strict):
    metadata: Metadata = Field(default_factory=dict, description="Your labels for the snapshot.")


class Fork(Strict):
    count: int = Field(default=1, ge=1, le=20, description="How many copies.")
    metadata: Metadata = Field(default_factory=dict, description="Labels for the copies (on top of the parent's).")
    timeout: int | None = Field(
        default=None, ge=0, description="Lifetime of each copy in seconds; default: the server's."
    )


class PoolSize(Strict):
    size: int = Field(ge=0, le=64, description="Sandboxes to keep started (0 empties the pool).")


class Pool(BaseModel):
    key: str = Field(description="image:<canonical name> or template:<name>.")
    size: int
    ready: int = Field(description="Sandboxes waiting in it now.")
    hits: int = Field(description="Creates served from it.")
    misses: int = Field(description="Creates that found it empty.")
    error: str | None = Field(
        default=None, description="Why its last try to start a sandbox failed (none once one starts)."
    )


class PoolList(BaseModel):
    pools: list[Pool]


class BootSnapshotInfo(BaseModel):
    key: str = Field(description="What it was made for, hashed: image, shape and runtime.")
    image: str
    image_id: str
    vcpus: int
    memory_mb: int
    size: int = Field(description="Bytes on disk.")
    last_used: datetime = Field(description="When a create last restored it (or when it was made).")


class BootSnapshotList(BaseModel):
    boot_snapshots: list[BootSnapshotInfo] = Field(description="Most recently used first.")
    making: int = Field(description="Being made now, or waiting their turn.")
