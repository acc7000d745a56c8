"""What the sync and the async sandbox share: the parts that do no I/O."""

from __future__ import annotations

from typing import Generic, TypeVar

from corral.sdk.config import ConnectionConfig
from corral.sdk.models import SandboxInfo

CommandsT = TypeVar("CommandsT")
FilesT = TypeVar("FilesT")


class SandboxBase(Generic[CommandsT, FilesT]):
    """A sandbox's identity, connection and sub-APIs; the twins add the calls."""

    def __init__(self, info: SandboxInfo, config: ConnectionConfig, commands: CommandsT, files: FilesT) -> None:
        self._info = info
        self._config = config
        self._commands = commands
        self._files = files

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def sandbox_id(self) -> str:
        """The E2B name of ``id``."""
        return self._info.id

    @property
    def config(self) -> ConnectionConfig:
        """The server it lives on, and how to talk to it."""
        return self._config

    @property
    def commands(self) -> CommandsT:
        """Run commands in it: ``run``, background handles, processes."""
        return self._commands

    @property
    def files(self) -> FilesT:
        """Read, write and manage its files."""
        return self._files

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self._info.state}>"
