"""corral: self-hosted sandboxes for AI agents.

    from corral import Sandbox

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hello").stdout)

The SDK's names are loaded on first use, so that importing a corral subpackage
that needs only the standard library (the in-sandbox agent) does not pull in
httpx. The error tree is stdlib-only and is imported at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from corral.errors import (
    ERRORS_BY_CODE,
    AgentUnavailable,
    AuthenticationError,
    BuildFailed,
    Conflict,
    CorralError,
    DiskFull,
    ExecTimeout,
    FileExists_,
    FileNotFound,
    ImageNotFound,
    InternalError,
    Interrupted,
    InvalidRequest,
    IsADirectory_,
    MethodNotAllowed,
    NotADirectory_,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PermissionDenied,
    PortInUse,
    ProcessNotFound,
    RegistryError,
    RuntimeFailure,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
    SnapshotNotFound,
    SnapshotUnusable,
    TemplateNotFound,
)

if TYPE_CHECKING:
    from corral.sdk import (
        AsyncCommandHandle,
        AsyncCommands,
        AsyncFiles,
        AsyncImages,
        AsyncPools,
        AsyncSandbox,
        AsyncTemplates,
        CommandExitError,
        CommandHandle,
        CommandResult,
        Commands,
        ConnectionConfig,
        EntryInfo,
        Files,
        ImageInfo,
        Images,
        OutputChunk,
        PoolInfo,
        Pools,
        PortInfo,
        ProcessInfo,
        PullProgress,
        Sandbox,
        SandboxInfo,
        SandboxPage,
        ServerUnavailable,
        SnapshotInfo,
        TemplateInfo,
        Templates,
    )

from corral._version import __version__

__all__ = [
    "ERRORS_BY_CODE",
    "AgentUnavailable",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncImages",
    "AsyncPools",
    "AsyncSandbox",
    "AsyncTemplates",
    "AuthenticationError",
    "BuildFailed",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "Conflict",
    "ConnectionConfig",
    "CorralError",
    "DiskFull",
    "EntryInfo",
    "ExecTimeout",
    "FileExists_",
    "FileNotFound",
    "Files",
    "ImageInfo",
    "ImageNotFound",
    "Images",
    "InternalError",
    "Interrupted",
    "InvalidRequest",
    "IsADirectory_",
    "MethodNotAllowed",
    "NotADirectory_",
    "NotFound",
    "NotReady",
    "OutputChunk",
    "PayloadTooLarge",
    "PermissionDenied",
    "PoolInfo",
    "Pools",
    "PortInUse",
    "PortInfo",
    "ProcessInfo",
    "ProcessNotFound",
    "PullProgress",
    "RegistryError",
    "RuntimeFailure",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandboxPage",
    "SandboxPaused",
    "ServerUnavailable",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotUnusable",
    "TemplateInfo",
    "TemplateNotFound",
    "Templates",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Only the SDK's names are missing from globals() until first asked for.
    if name not in __all__:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module("corral.sdk"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
