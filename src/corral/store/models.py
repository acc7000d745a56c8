"""Tables of the state store. Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SandboxRow(Base):
    """One sandbox that exists (killed sandboxes are deleted)."""

    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    image: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    template: Mapped[str | None] = mapped_column(String(128), nullable=True)
    runtime: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Size of its disk (the overlay's upper dir) in MiB; None: no limit of its own."""
    envs: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    timeout: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    slot: Mapped[int] = mapped_column(Integer, unique=True)
    address: Mapped[str] = mapped_column(String(64))
    agent_url: Mapped[str] = mapped_column(String(255))
    runtime_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    on_timeout: Mapped[str] = mapped_column(String(16), default="kill")
    """What the reaper does at ``ends_at``: ``kill``, or ``pause`` (hibernate: saved to disk, memory freed)."""
    auto_pause: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Seconds without any request after which the sandbox hibernates; None: never."""
    remaining: Mapped[float | None] = mapped_column(Float, nullable=True)
    """While paused or hibernated: the seconds of its timeout still to run once it is back."""
    pool: Mapped[str | None] = mapped_column(String(300), nullable=True)
    """While it waits in a warm pool (state ``pooled``): that pool's key."""
    network: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Its egress policy (:class:`corral.net.policy.EgressPolicy` as JSON); None: nothing out (older rows)."""
    ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """Host ports published to it (:class:`corral.net.policy.Published` as JSON)."""
    auto_publish: Mapped[bool] = mapped_column(Boolean, default=False)
    """Whether every port it listens on is published on the same host port while it listens."""


class PoolRow(Base):
    """A warm pool: ``size`` sandboxes of one image or template kept started, ready to be claimed."""

    __tablename__ = "pools"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    """``image:<canonical name>`` or ``template:<name>``."""
    size: Mapped[int] = mapped_column(Integer)
    hits: Mapped[int] = mapped_column(Integer, default=0)
    misses: Mapped[int] = mapped_column(Integer, default=0)


class SnapshotRow(Base):
    """A whole-sandbox snapshot on disk: processes and memory, and the disk's changes."""

    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sandbox_id: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[str] = mapped_column(String(64))
    template: Mapped[str | None] = mapped_column(String(128), nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Size of its disk (the overlay's upper dir) in MiB; None: no limit of its own."""
    envs: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    """``creating`` (being written), ``ready``, or ``failed`` (``error`` says why)."""
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TemplateRow(Base):
    """A template: a Dockerfile-subset recipe, its resources and start, and the image its last build made."""

    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    dockerfile: Mapped[str] = mapped_column(Text)
    build_args: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    vcpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_cmd: Mapped[str | None] = mapped_column(Text, nullable=True)
    ready_cmd: Mapped[str | None] = mapped_column(Text, nullable=True)
    ready_timeout: Mapped[float] = mapped_column(Float, default=60.0)
    state: Mapped[str] = mapped_column(String(16))
    """``new`` (never built), ``building``, ``ready`` or ``failed`` (the last build; a ready image stays usable)."""
    image_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    build_log: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
