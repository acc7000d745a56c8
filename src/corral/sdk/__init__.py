"""corral's Python SDK: sync (:class:`Sandbox`) and async (:class:`AsyncSandbox`) twins.

The public names are re-exported from the top-level ``corral`` package.
"""

from __future__ import annotations

from corral.sdk.commands import CommandHandle, Commands
from corral.sdk.commands_async import AsyncCommandHandle, AsyncCommands
from corral.sdk.config import DEFAULT_REQUEST_TIMEOUT, DEFAULT_URL, ConnectionConfig
from corral.sdk.exceptions import CommandExitError, ServerUnavailable
from corral.sdk.files import Files, ReadFormat
from corral.sdk.files_async import AsyncFiles
from corral.sdk.images import AsyncImages, Images
from corral.sdk.models import (
    CommandResult,
    EntryInfo,
    ImageInfo,
    OutputChunk,
    PoolInfo,
    PortInfo,
    ProcessInfo,
    PullProgress,
    SandboxInfo,
    SandboxPage,
    SnapshotInfo,
    TemplateInfo,
)
from corral.sdk.pools import AsyncPools, Pools
from corral.sdk.sandbox import Sandbox
from corral.sdk.sandbox_async import AsyncSandbox
from corral.sdk.templates import AsyncTemplates, Templates

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_URL",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncImages",
    "AsyncPools",
    "AsyncSandbox",
    "AsyncTemplates",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConnectionConfig",
    "EntryInfo",
    "Files",
    "ImageInfo",
    "Images",
    "OutputChunk",
    "PoolInfo",
    "Pools",
    "PortInfo",
    "ProcessInfo",
    "PullProgress",
    "ReadFormat",
    "Sandbox",
    "SandboxInfo",
    "SandboxPage",
    "ServerUnavailable",
    "SnapshotInfo",
    "TemplateInfo",
    "Templates",
]
