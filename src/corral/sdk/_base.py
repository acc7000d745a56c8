"""What the sync and the async sandbox share: the parts that do no I/O."""

from __future__ import annotations

from types import TracebackType
from typing import Generic, Self, TypeVar

from corral.sdk._http import AsyncHTTP, SyncHTTP
from corral.sdk.config import DEFAULT_REQUEST_TIMEOUT, ConnectionConfig
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
    def last_info(self) -> SandboxInfo:
        """The sandbox as the server last described it (its create, connect, fork or ``info()``), with no request."""
        return self._info

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

    @property
    def preview_token(self) -> str | None:
        """Opens its private preview URLs: header ``X-Corral-Preview-Token``, or ``?corral_preview_token=``."""
        return self._info.preview_token

    def get_host(self, port: int) -> str:
        """``{port}-{id}.{preview domain}:{proxy port}``: where the preview proxy serves ``port`` of this sandbox."""
        return self.get_preview_url(port).removeprefix("http://").rstrip("/")

    def get_preview_url(self, port: int, *, with_token: bool = False) -> str:
        """The URL of ``port`` through the preview proxy; ``with_token`` adds the token, for a browser link."""
        if self._info.preview_url is None:
            raise RuntimeError("this server has no preview proxy (CORRAL_PREVIEW_PORT=0)")
        url = self._info.preview_url.replace("{port}", str(int(port))) + "/"
        return f"{url}?corral_preview_token={self._info.preview_token}" if with_token else url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self._info.state}>"


class SyncClient:
    """A client of one server's non-sandbox resources (images, templates); close it or use ``with``."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._http = SyncHTTP(ConnectionConfig(url, api_key=api_key, request_timeout=request_timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """The async twin of :class:`SyncClient`."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._http = AsyncHTTP(ConnectionConfig(url, api_key=api_key, request_timeout=request_timeout))

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
