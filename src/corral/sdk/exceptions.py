"""The SDK's own errors, beside the server's tree in :mod:`corral.errors`.

Neither is ever sent by a server, so neither is in ``ERRORS_BY_CODE``::

    CorralError
    ├── CommandExitError                      a command exited non-zero
    └── ServerUnavailable (ConnectionError)   the server could not be reached
"""

from __future__ import annotations

from corral.errors import CorralError
from corral.sdk.models import CommandResult

__all__ = ["CommandExitError", "ServerUnavailable"]


class CommandExitError(CorralError):
    """A command finished with a non-zero exit code; ``result`` has its output."""

    code = "command_exit"

    def __init__(self, result: CommandResult) -> None:
        message = f"command exited with code {result.exit_code}"
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr else []
        if tail:
            message += f": {tail[0][:200]}"
        super().__init__(message, details=result.to_json())
        self.result = result

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr


class ServerUnavailable(CorralError, ConnectionError):
    """The corral server could not be reached, or broke off while answering."""

    code = "server_unavailable"
    status = 503
