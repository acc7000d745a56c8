"""The seam between corral's orchestrator and whatever actually runs sandboxes.

A runtime turns a :class:`SandboxSpec` into a running machine whose agent
answers on :attr:`RuntimeHandle.agent_url`, and later reports on it and tears
it down. Everything a runtime needs to find a sandbox again after the server
restarts is in :attr:`RuntimeHandle.info`, which the store persists.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.activity import Activity
from corral.errors import RuntimeFailure

AGENT_PORT = 49983
"""The agent's port inside every sandbox (envd's, so E2B tooling finds it)."""


class RuntimeState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATED = "hibernated"  # saved to disk, no process left; :meth:`Runtime.wake` brings it back
    STOPPED = "stopped"  # the runtime knows it, but nothing runs any more
    MISSING = "missing"  # the runtime has no record of it at all


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The point-to-point link between the host and one sandbox."""

    slot: int
    host_address: str
    sandbox_address: str
    prefix_len: int = 30


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    image_layers: tuple[Path, ...]
    """The image's read-only layer dirs, top first (the overlay's lower dirs)."""
    network: NetworkSpec
    vcpus: int = 1
    memory_mb: int = 512
    disk_mb: int | None = None
    """Size of its own disk in MiB (the upper dir on a file system of that size); None: no limit."""
    pids_limit: int = 1024
    envs: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RuntimeHandle:
    sandbox_id: str
    agent_url: str
    info: dict[str, Any] = field(default_factory=dict)


class Runtime(abc.ABC):
    """Creates, inspects and destroys sandboxes. Use as ``async with`` or call :meth:`aclose`."""

    name: str

    @functools.cached_property
    def activity(self) -> Activity:
        """Whether sandboxes are being made (the manager says so): what this runtime makes ahead waits for quiet."""
        return Activity()

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> RuntimeHandle:
        """Build and start a sandbox; return once its init (the agent) was started.

        On failure nothing of it is left behind.
        """

    @abc.abstractmethod
    async def state(self, handle: RuntimeHandle) -> RuntimeState:
        """What the runtime sees of the sandbox right now."""

    async def host_pid(self, handle: RuntimeHandle) -> int | None:
        """The host process whose exit ends the sandbox, while it runs or is paused (None: none, or not known)."""
        return None

    async def stop_cause(self, handle: RuntimeHandle) -> str | None:
        """Why a sandbox that stopped on its own stopped, if the host knows (None: it does not say)."""
        return None

    @abc.abstractmethod
    async def stop(self, handle: RuntimeHandle) -> None:
        """Kill everything running in the sandbox, now. Quick; :meth:`destroy` still owed."""

    @abc.abstractmethod
    async def destroy(self, handle: RuntimeHandle) -> None:
        """Stop the sandbox and remove everything it had. Idempotent."""

    @abc.abstractmethod
    async def leftovers(self, known: set[str]) -> list[RuntimeHandle]:
        """Sandboxes this runtime still has pieces of that are not in ``known``."""

    @abc.abstractmethod
    async def export_changes(self, handle: RuntimeHandle, dest: Path) -> None:
        """Copy what the sandbox wrote over its image to ``dest``, as one more image layer.

        The copy is an overlayfs upper dir (deletions are whiteouts), so it stacks on
        the sandbox's image layers. A running sandbox is frozen for the copy, so
        the layer is consistent, and thawed after it.
        """

    # -- lifecycle: optional, a runtime without it says so ----------------------

    async def pause(self, handle: RuntimeHandle) -> None:
        """Freeze every process of the sandbox (memory kept)."""
        raise RuntimeFailure(f"the {self.name} runtime cannot pause sandboxes")

    async def resume(self, handle: RuntimeHandle) -> None:
        """Thaw a paused sandbox."""
        raise RuntimeFailure(f"the {self.name} runtime cannot pause sandboxes")

    async def checkpoint(self, handle: RuntimeHandle, dest: Path, *, hibernated: bool = False) -> None:
        """Save the whole sandbox into ``dest``: processes and memory, and its disk's changes.

        The sandbox is frozen for it (so the two agree) and afterwards is as it
        was: running, or paused. A ``hibernated`` one is saved already: its saved
        state is copied, and it stays hibernated.
        """
        raise RuntimeFailure(f"the {self.name} runtime cannot snapshot sandboxes")

    async def restore(
        self, spec: SandboxSpec, snapshot: Path, *, ready: asyncio.Future[None] | None = None
    ) -> RuntimeHandle:
        """A new sandbox (``spec``: its id, network, limits) from a :meth:`checkpoint`: same processes, same files.

        With ``ready``, the checkpoint is still being written: what needs none of it
        (the sandbox's disk, its link) is made meanwhile, the rest once ``ready`` is
        done (its error is the restore's).
        """
        raise RuntimeFailure(f"the {self.name} runtime cannot restore sandboxes")

    async def checkpoint_identity(self) -> str | None:
        """What a checkpoint of this runtime depends on (its binary, platform, agent), or None if it makes none.

        A checkpoint is restored only by a runtime of the same identity.
        """
        return None

    async def hibernate(self, handle: RuntimeHandle) -> None:
        """Save the sandbox's processes and memory to disk and stop it: it holds no memory after."""
        raise RuntimeFailure(f"the {self.name} runtime cannot hibernate sandboxes")

    async def wake(self, handle: RuntimeHandle) -> None:
        """Bring a hibernated sandbox back, under the same id and address."""
        raise RuntimeFailure(f"the {self.name} runtime cannot hibernate sandboxes")

    # -- links made ahead: optional ------------------------------------------------

    async def prepare_link(self, network: NetworkSpec) -> bool:
        """Make ``network``'s link ahead, for a sandbox yet to come; False if this runtime makes no links.

        A create (or restore) later given ``network`` takes the link as it is.
        """
        return False

    async def remove_prepared_links(self, subnet: str) -> None:  # noqa: B027 - optional hook
        """Remove every link made ahead for an address of ``subnet`` (at start: what an earlier run left)."""

    @abc.abstractmethod
    async def logs(self, handle: RuntimeHandle, *, tail: int | None = None) -> str:
        """The sandbox's console: its agent's output and the runtime's own messages."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the runtime holds in this process (not the sandboxes: they outlive us)."""

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
