"""/v1/sandboxes: create, list, get, kill, timeout, logs."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import PlainTextResponse

from corral.core.pools import Pools
from corral.core.sandboxes import CreateRequest, SandboxManager
from corral.core.templates import TemplateService
from corral.errors import InvalidRequest
from corral.net.policy import Published
from corral.server.routes.deps import Manager
from corral.server.schemas import (
    Commit,
    CreateSandbox,
    Fork,
    ImageInfo,
    NetworkPolicy,
    PublishedPort,
    PublishPort,
    Sandbox,
    SandboxList,
    SetTimeout,
    Snapshot,
    TakeSnapshot,
)
from corral.store.models import SandboxRow

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


def _out(manager: SandboxManager, row: SandboxRow) -> Sandbox:
    previews = manager.previews
    return Sandbox.from_row(
        row,
        preview_url=previews.url_template(row.id) if previews.enabled else None,
        preview_token=previews.token(row.id),
    )


STATES = {"starting", "running", "paused", "hibernated", "dead"}
KNOWN_STATES = STATES | {"pooled"}
"""What a list shows (sandboxes waiting in a warm pool are not anyone's yet)."""
MAX_PAGE = 1000


@router.post("", status_code=201)
async def create_sandbox(
    request: Request, manager: Manager, body: Annotated[CreateSandbox | None, Body()] = None
) -> Sandbox:
    """Create a sandbox and answer once its agent is up (from a template: once it is ready).

    Every field has a default: no body at all makes a sandbox of the default image.
    """
    body = body or CreateSandbox()
    fields = body.model_dump(exclude_unset=True)
    fields["network"] = body.network.model_dump(exclude_unset=True) if body.network is not None else None
    snapshot = fields.pop("snapshot", None)
    create = CreateRequest(**fields)
    if sum(x is not None for x in (create.image, create.template, snapshot)) > 1:
        raise InvalidRequest("give at most one of image, template and snapshot")
    if snapshot is not None:
        return _out(manager, await manager.lifecycle.restore(snapshot, create))
    pools: Pools = request.app.state.pools
    claimed = await pools.claim(create)
    if claimed is not None:
        return _out(manager, claimed)
    if create.template is not None:
        templates: TemplateService = request.app.state.templates
        return _out(manager, await templates.spawn(create))
    return _out(manager, await manager.create(create))


@router.get("")
async def list_sandboxes(
    manager: Manager,
    state: Annotated[list[str] | None, Query(description="Only these states (repeatable).")] = None,
    metadata: Annotated[list[str] | None, Query(description="key=value; repeatable, all must match.")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="At most this many (default: all).")] = None,
    next_token: Annotated[str | None, Query(description="The `next_token` of the page before.")] = None,
) -> SandboxList:
    """Every sandbox that exists, oldest first; in pages of ``limit`` if asked."""
    unknown = set(state or []) - KNOWN_STATES
    if unknown:
        raise InvalidRequest(f"unknown state(s) {sorted(unknown)}; use {sorted(KNOWN_STATES)}")
    wanted: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"metadata filter {item!r} is not key=value")
        wanted[key] = value
    rows = manager.list_sandboxes(
        states=set(state) if state else STATES,
        metadata=wanted,
        after=_after(next_token) if next_token is not None else None,
        limit=limit + 1 if limit is not None else None,  # one more tells whether there is a next page
    )
    more = limit is not None and len(rows) > limit
    rows = rows[:limit]
    return SandboxList(sandboxes=[_out(manager, r) for r in rows], next_token=_token(rows[-1]) if more else None)


def _token(row: SandboxRow) -> str:
    """Where the next page starts: after this row (which may be gone by then)."""
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(token: str) -> tuple[datetime, str]:
    try:
        at, sandbox_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return datetime.fromisoformat(at), str(sandbox_id)
    except (ValueError, TypeError):
        raise InvalidRequest(
            "next_token is not one this server gave: pass the next_token of the page before, as it was",
            details={"next_token": token[:100]},
        ) from None


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox_id: str, manager: Manager) -> Sandbox:
    return _out(manager, manager.get(sandbox_id))


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, manager: Manager) -> Response:
    """Kill the sandbox and delete everything it had."""
    await manager.kill(sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: str, body: SetTimeout, manager: Manager) -> Sandbox:
    """Kill the sandbox ``timeout`` seconds from now (0: never)."""
    return _out(manager, manager.set_timeout(sandbox_id, body.timeout))


@router.post("/{sandbox_id}/commit", status_code=201)
async def commit_sandbox(sandbox_id: str, body: Commit, manager: Manager) -> ImageInfo:
    """Save the sandbox's filesystem as a new image (it is frozen for the copy, then goes on)."""
    image = await manager.commit(sandbox_id, body.name)
    return ImageInfo.from_image(image, manager.images.in_use().get(image.id))


@router.post("/{sandbox_id}/pause")
async def pause_sandbox(sandbox_id: str, manager: Manager) -> Sandbox:
    """Freeze it, memory kept (409 if it is paused already). Any later request for it resumes it."""
    return _out(manager, await manager.lifecycle.pause(sandbox_id))


@router.post("/{sandbox_id}/resume")
async def resume_sandbox(sandbox_id: str, manager: Manager) -> Sandbox:
    """Thaw a paused sandbox or wake a hibernated one (a running one is left as it is)."""
    return _out(manager, await manager.lifecycle.resume(sandbox_id))


@router.post("/{sandbox_id}/hibernate")
async def hibernate_sandbox(sandbox_id: str, manager: Manager) -> Sandbox:
    """Save it to disk and free its memory; any later request for it wakes it."""
    return _out(manager, await manager.lifecycle.hibernate(sandbox_id))


@router.post("/{sandbox_id}/snapshots", status_code=201)
async def snapshot_sandbox(
    sandbox_id: str, manager: Manager, body: Annotated[TakeSnapshot | None, Body()] = None
) -> Snapshot:
    """Save its processes, memory and files (it is frozen for that, then goes on). The body is optional."""
    body = body or TakeSnapshot()
    return Snapshot.from_row(await manager.lifecycle.snapshot(sandbox_id, metadata=body.metadata))


@router.post("/{sandbox_id}/fork", status_code=201)
async def fork_sandbox(sandbox_id: str, manager: Manager, body: Annotated[Fork | None, Body()] = None) -> SandboxList:
    """``count`` independent copies of it, each with its own id and address; it goes on unchanged (no body: one)."""
    body = body or Fork()
    request = CreateRequest(metadata=body.metadata, timeout=body.timeout)
    return SandboxList(
        sandboxes=[_out(manager, r) for r in await manager.lifecycle.fork(sandbox_id, body.count, request)]
    )


@router.put("/{sandbox_id}/network")
async def set_network(sandbox_id: str, body: NetworkPolicy, manager: Manager) -> Sandbox:
    """Replace its egress policy; it holds from the next packet on (connections it no longer allows stop)."""
    return _out(manager, await manager.set_network(sandbox_id, body.model_dump(exclude_unset=True)))


@router.get("/{sandbox_id}/ports")
async def list_ports(sandbox_id: str, manager: Manager) -> list[PublishedPort]:
    """Host ports published to it (auto-published ones included)."""
    manager.get(sandbox_id)
    return [PublishedPort(**p.to_json()) for p in manager.ports.listed(sandbox_id)]


@router.post("/{sandbox_id}/ports", status_code=201)
async def publish_port(sandbox_id: str, body: PublishPort, manager: Manager) -> PublishedPort:
    """Forward a host port (on the server's address) to a port in the sandbox; 409 port_in_use if it is taken."""
    wanted = Published(host_port=body.host_port or body.port, port=body.port)
    return PublishedPort(**(await manager.ports.publish(sandbox_id, wanted)).to_json())


@router.delete("/{sandbox_id}/ports/{host_port}", status_code=204)
async def unpublish_port(sandbox_id: str, host_port: int, manager: Manager) -> Response:
    await manager.ports.unpublish(sandbox_id, host_port)
    return Response(status_code=204)


@router.get("/{sandbox_id}/logs", response_class=PlainTextResponse)
async def sandbox_logs(
    sandbox_id: str, manager: Manager, tail: Annotated[int | None, Query(ge=0)] = None
) -> PlainTextResponse:
    """The sandbox's console: its agent's log and the runtime's messages."""
    return PlainTextResponse(await manager.logs(sandbox_id, tail=tail))
