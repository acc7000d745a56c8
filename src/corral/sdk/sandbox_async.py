"""A sandbox, from the client's side: ``AsyncSandbox``, the twin of :mod:`corral.sdk.sandbox`."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from corral.errors import SandboxNotFound
from corral.sdk import _routes as routes
from corral.sdk._base import SandboxBase
from corral.sdk._http import AsyncHTTP, Call
from corral.sdk.commands_async import AsyncCommands
from corral.sdk.config import DEFAULT_REQUEST_TIMEOUT, ConnectionConfig
from corral.sdk.files_async import AsyncFiles
from corral.sdk.models import ImageInfo, PortInfo, SandboxInfo, SandboxPage, SnapshotInfo

__all__ = ["AsyncSandbox"]

T = TypeVar("T")


class AsyncSandbox(SandboxBase[AsyncCommands, AsyncFiles]):
    """One sandbox on a corral server.

    Make one with :meth:`create` or :meth:`connect`;
    ``async with await AsyncSandbox.create() as sbx:`` kills it on the way out.
    ``close()`` (or leaving the ``with``) frees the HTTP connections; ``kill()``
    ends the sandbox itself.
    """

    def __init__(self, info: SandboxInfo, http: AsyncHTTP) -> None:
        super().__init__(info, http.config, AsyncCommands(http, info.id), AsyncFiles(http, info.id))
        self._http = http

    @classmethod
    async def create(
        cls,
        image: str | None = None,
        *,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        template: str | None = None,
        snapshot: str | None = None,
        on_timeout: str | None = None,
        auto_pause: int | None = None,
        network: Mapping[str, Any] | None = None,
        publish: Sequence[str | int] | None = None,
        auto_publish: bool | None = None,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> AsyncSandbox:
        """Start a new sandbox; ``timeout`` is its lifetime in seconds (0: none).

        With ``template``, it starts from that template's image and resources, runs its
        start command, and is handed out once the template's readiness check passes.
        With ``snapshot``, it is that snapshot restored: the same processes, memory and files.
        ``disk_mb`` sizes its disk (everything it writes outside tmpfs; default: the server's).
        ``on_timeout="pause"`` pauses it at its timeout instead of killing it;
        ``auto_pause`` hibernates it after that many seconds without requests.
        ``network`` is its egress policy (docs/network.md), e.g. ``{"mode": "allowlist",
        "allow_domains": ["pypi.org"]}``; ``publish`` forwards host ports to it (``"8080:3000"``
        or ``3000``), and ``auto_publish`` mirrors every port it listens on.
        """
        call = routes.create_sandbox(
            image, vcpus=vcpus, memory_mb=memory_mb, disk_mb=disk_mb, envs=envs, metadata=metadata, timeout=timeout,
            template=template, snapshot=snapshot, on_timeout=on_timeout, auto_pause=auto_pause,
            network=network, publish=publish, auto_publish=auto_publish,
        )  # fmt: skip
        return await cls._open(call, url, api_key, request_timeout)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        resume: bool = True,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> AsyncSandbox:
        """Attach to an existing sandbox, resuming it if it is paused or hibernated (unless ``resume=False``).

        Raises ``SandboxNotFound`` if there is none.
        """
        sbx = await cls._open(routes.get_sandbox(sandbox_id), url, api_key, request_timeout)
        if resume and sbx._info.state in ("paused", "hibernated"):
            await sbx.resume()
        return sbx

    @classmethod
    async def _open(
        cls,
        call: Call[SandboxInfo],
        url: str | None,
        api_key: str | None,
        request_timeout: float | None,
    ) -> AsyncSandbox:
        http = AsyncHTTP(ConnectionConfig(url, api_key=api_key, request_timeout=request_timeout))
        try:
            return cls(await http.call(call), http)
        except BaseException:
            await http.close()
            raise

    @staticmethod
    async def list(
        *,
        state: str | None = None,
        metadata: Mapping[str, str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> builtins.list[SandboxInfo]:
        """The server's sandboxes, filtered by state and by metadata (all pairs must match)."""
        return await _once(routes.list_sandboxes(state=state, metadata=metadata), url, api_key, request_timeout)

    @staticmethod
    async def list_page(
        *,
        limit: int = 100,
        next_token: str | None = None,
        state: str | None = None,
        metadata: Mapping[str, str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> SandboxPage:
        """Up to ``limit`` (1-1000) of what :meth:`list` returns, oldest first.

        Give the page's ``next_token`` back for the next page (``None`` on the last).
        """
        call = routes.list_sandbox_page(state=state, metadata=metadata, limit=limit, next_token=next_token)
        return await _once(call, url, api_key, request_timeout)

    async def info(self) -> SandboxInfo:
        """The sandbox as the server sees it now."""
        self._info = await self._http.call(routes.get_sandbox(self.id))
        return self._info

    get_info = info

    async def is_running(self) -> bool:
        try:
            return (await self.info()).state == "running"
        except SandboxNotFound:
            return False

    async def set_timeout(self, timeout: float | None) -> SandboxInfo:
        """Kill it ``timeout`` seconds from now (``None`` or 0: never)."""
        self._info = await self._http.call(routes.set_timeout(self.id, timeout))
        return self._info

    async def logs(self, *, tail: int | None = None) -> str:
        """Its console: its agent's and the runtime's log (the last ``tail`` lines)."""
        return await self._http.call(routes.logs(self.id, tail=tail))

    async def pause(self) -> SandboxInfo:
        """Freeze it, memory kept; ``connect``, ``resume`` or any call on it resumes it."""
        self._info = await self._http.call(routes.lifecycle(self.id, "pause"))
        return self._info

    async def resume(self) -> SandboxInfo:
        """Thaw it if paused, wake it if hibernated."""
        self._info = await self._http.call(routes.lifecycle(self.id, "resume"))
        return self._info

    async def hibernate(self) -> SandboxInfo:
        """Save it to disk and free its memory; any later call on it wakes it."""
        self._info = await self._http.call(routes.lifecycle(self.id, "hibernate"))
        return self._info

    async def snapshot(self, *, metadata: Mapping[str, str] | None = None) -> SnapshotInfo:
        """Save its processes, memory and files; ``Sandbox.create(snapshot=...)`` restores them."""
        return await self._http.call(routes.take_snapshot(self.id, metadata))

    async def fork(
        self, count: int = 1, *, metadata: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> builtins.list[AsyncSandbox]:
        """``count`` independent copies of it, running from its current state; it is left as it was (even paused)."""
        infos = await self._http.call(routes.fork(self.id, count, metadata=metadata, timeout=timeout))
        return [type(self)(info, AsyncHTTP(self._http.config)) for info in infos]

    @staticmethod
    async def list_snapshots(
        sandbox_id: str | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> builtins.list[SnapshotInfo]:
        """The server's snapshots (of one sandbox, with ``sandbox_id``)."""
        return await _once(routes.list_snapshots(sandbox_id), url, api_key, request_timeout)

    @staticmethod
    async def get_snapshot(
        snapshot_id: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> SnapshotInfo:
        """One snapshot: its state (``creating``, ``ready``, ``failed``), size and source."""
        return await _once(routes.get_snapshot(snapshot_id), url, api_key, request_timeout)

    @staticmethod
    async def delete_snapshot(
        snapshot_id: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        await _once(routes.delete_snapshot(snapshot_id), url, api_key, request_timeout)

    async def set_network(self, **policy: Any) -> SandboxInfo:
        """Replace its egress policy (``mode=``, ``allow_cidrs=``, ``allow_domains=``, ``allow_host=``,
        ``allow_lan=``, ``previews=``); it holds from the next packet on."""
        self._info = await self._http.call(routes.set_network(self.id, policy))
        return self._info

    async def publish(self, port: int, *, host_port: int | None = None) -> PortInfo:
        """Forward ``host_port`` (default: the same number) on the server's address to ``port`` in it."""
        return await self._http.call(routes.publish_port(self.id, port, host_port))

    async def unpublish(self, host_port: int) -> None:
        await self._http.call(routes.unpublish_port(self.id, host_port))

    async def list_ports(self) -> builtins.list[PortInfo]:
        """Host ports published to it (auto-published ones included)."""
        return await self._http.call(routes.list_ports(self.id))

    async def commit(self, name: str) -> ImageInfo:
        """Save its filesystem as a new image called ``name`` (it is frozen for the copy, then goes on)."""
        return await self._http.call(routes.commit(self.id, name))

    async def kill(self) -> bool:
        """Kill it; ``False`` if it was already gone."""
        try:
            await self._http.call(routes.kill_sandbox(self.id))
        except SandboxNotFound:
            return False
        return True

    async def close(self) -> None:
        """Free the HTTP connections (the sandbox keeps running)."""
        await self._http.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()


async def _once(call: Call[T], url: str | None, api_key: str | None, request_timeout: float | None) -> T:
    """One call on a connection of its own: the class-level calls, which need no sandbox."""
    http = AsyncHTTP(ConnectionConfig(url, api_key=api_key, request_timeout=request_timeout))
    try:
        return await http.call(call)
    finally:
        await http.close()
