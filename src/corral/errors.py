"""corral's one error tree, shared by the server and the SDK.

Every error has a stable ``code`` (what the API puts in its JSON envelope) and
an HTTP ``status``. The SDK turns an envelope back into the same class through
:data:`ERRORS_BY_CODE`, a fixed table: it never imports a name sent by a server.

    CorralError
    ├── InvalidRequest (ValueError)            422 invalid_request
    │   ├── PayloadTooLarge                    413 payload_too_large
    │   └── MethodNotAllowed                   405 method_not_allowed
    ├── AuthenticationError (PermissionError)  401 unauthorized
    ├── NotFound (LookupError)                 404 not_found
    │   ├── SandboxNotFound                    404 sandbox_not_found
    │   ├── ImageNotFound                      404 image_not_found
    │   ├── TemplateNotFound                   404 template_not_found
    │   ├── SnapshotNotFound                   404 snapshot_not_found
    │   ├── ProcessNotFound                    404 process_not_found
    │   └── FileNotFound (FileNotFoundError)   404 file_not_found
    ├── Conflict                               409 conflict
    │   ├── SandboxNotRunning                  409 sandbox_not_running
    │   ├── SandboxPaused                      409 sandbox_paused
    │   ├── PortInUse                          409 port_in_use
    │   ├── SnapshotUnusable                   409 snapshot_unusable
    │   ├── Interrupted                        409 interrupted
    │   ├── FileExists_ (FileExistsError)      409 file_exists
    │   ├── IsADirectory_ (IsADirectoryError)  409 is_a_directory
    │   └── NotADirectory_ (NotADirectoryError) 409 not_a_directory
    ├── DiskFull (OSError)                     507 disk_full
    ├── PermissionDenied (PermissionError)     403 permission_denied
    ├── ExecTimeout (TimeoutError)             504 exec_timeout
    ├── AgentUnavailable (ConnectionError)     502 agent_unavailable
    ├── RegistryError (ConnectionError)        502 registry_error
    ├── BuildFailed                            422 build_failed
    ├── NotReady (TimeoutError)                504 not_ready
    ├── RuntimeFailure                         500 runtime_error
    └── InternalError                          500 internal
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ERRORS_BY_CODE",
    "AgentUnavailable",
    "AuthenticationError",
    "BuildFailed",
    "Conflict",
    "CorralError",
    "DiskFull",
    "ExecTimeout",
    "FileExists_",
    "FileNotFound",
    "ImageNotFound",
    "InternalError",
    "Interrupted",
    "InvalidRequest",
    "IsADirectory_",
    "MethodNotAllowed",
    "NotADirectory_",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "PermissionDenied",
    "PortInUse",
    "ProcessNotFound",
    "RegistryError",
    "RuntimeFailure",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandboxPaused",
    "SnapshotNotFound",
    "SnapshotUnusable",
    "TemplateNotFound",
    "error_from_envelope",
]


class CorralError(Exception):
    """The root of every error corral raises on purpose."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def envelope(self) -> dict[str, Any]:
        """The JSON body the API sends for this error."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class InvalidRequest(CorralError, ValueError):
    code = "invalid_request"
    status = 422


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"
    status = 413


class MethodNotAllowed(InvalidRequest):
    code = "method_not_allowed"
    status = 405


class AuthenticationError(CorralError, PermissionError):
    code = "unauthorized"
    status = 401


class NotFound(CorralError, LookupError):
    code = "not_found"
    status = 404


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class ImageNotFound(NotFound):
    code = "image_not_found"


class TemplateNotFound(NotFound):
    code = "template_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class ProcessNotFound(NotFound):
    code = "process_not_found"


class FileNotFound(NotFound, FileNotFoundError):
    code = "file_not_found"


class Conflict(CorralError):
    code = "conflict"
    status = 409


class SandboxNotRunning(Conflict):
    code = "sandbox_not_running"


class SandboxPaused(Conflict):
    """Pausing a sandbox that is paused (or hibernated) already."""

    code = "sandbox_paused"


class PortInUse(Conflict):
    """A host port asked for (to publish a sandbox's port on) is taken."""

    code = "port_in_use"


class SnapshotUnusable(Conflict):
    """A snapshot that exists but cannot be restored: it failed, is still being taken, or its files are damaged."""

    code = "snapshot_unusable"


class Interrupted(Conflict):
    """A call to a sandbox's agent was cut by a checkpoint of the sandbox (a snapshot, fork or hibernate).

    What it was doing may go on in the sandbox (a command does: follow it with
    ``commands.connect(pid)``); the call can be made again.
    """

    code = "interrupted"


class FileExists_(Conflict, FileExistsError):
    code = "file_exists"


class IsADirectory_(Conflict, IsADirectoryError):
    code = "is_a_directory"


class NotADirectory_(Conflict, NotADirectoryError):
    code = "not_a_directory"


class DiskFull(CorralError, OSError):
    """What was to be written does not fit on the sandbox's disk (its ``disk_mb``), or a
    snapshot, fork or hibernation on the server's."""

    code = "disk_full"
    status = 507


class PermissionDenied(CorralError, PermissionError):
    code = "permission_denied"
    status = 403


class ExecTimeout(CorralError, TimeoutError):
    code = "exec_timeout"
    status = 504


class AgentUnavailable(CorralError, ConnectionError):
    code = "agent_unavailable"
    status = 502


class RegistryError(CorralError, ConnectionError):
    """A registry could not be reached, refused us, or answered nonsense."""

    code = "registry_error"
    status = 502


class BuildFailed(CorralError):
    """A template build step failed; ``details`` has the step, its exit code and output."""

    code = "build_failed"
    status = 422


class NotReady(CorralError, TimeoutError):
    """A sandbox's readiness check did not pass in time."""

    code = "not_ready"
    status = 504


class RuntimeFailure(CorralError):
    code = "runtime_error"
    status = 500


class InternalError(CorralError):
    code = "internal"
    status = 500


def _all_subclasses(cls: type[CorralError]) -> list[type[CorralError]]:
    found: list[type[CorralError]] = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


ERRORS_BY_CODE: dict[str, type[CorralError]] = {c.code: c for c in _all_subclasses(CorralError)}
"""Every stable error code and the class it stands for."""


def error_from_envelope(status: int, body: Any) -> CorralError:
    """Rebuild the error a server sent; unknown codes fall back by HTTP status."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return InternalError(f"unexpected response (HTTP {status}): {str(body)[:500]}")
    code = str(error.get("code", ""))
    message = str(error.get("message", "")) or f"HTTP {status}"
    details = error.get("details") if isinstance(error.get("details"), dict) else None
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        cls = next((c for c in ERRORS_BY_CODE.values() if c.status == status), InternalError)
    return cls(message, details=details)
