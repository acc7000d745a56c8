"""/v1/sandboxes: create, list, get, kill, timeout, logs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from corral.core.sandboxes import CreateRequest
from corral.core.templates import TemplateService
from corral.errors import InvalidRequest
from corral.server.routes.deps import Manager
from corral.server.schemas import Commit, CreateSandbox, ImageInfo, Sandbox, SandboxList, SetTimeout

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

STATES = {"starting", "running", "dead"}


@router.post("", status_code=201)
async def create_sandbox(body: CreateSandbox, request: Request, manager: Manager) -> Sandbox:
    """Create a sandbox and answer once its agent is up (from a template: once it is ready)."""
    create = CreateRequest(**body.model_dump())
    if create.template is not None:
        if create.image is not None:
            raise InvalidRequest("give an image or a template, not both")
        templates: TemplateService = request.app.state.templates
        return Sandbox.from_row(await templates.spawn(create))
    return Sandbox.from_row(await manager.create(create))


@router.get("")
async def list_sandboxes(
    manager: Manager,
    state: Annotated[list[str] | None, Query(description="Only these states (repeatable).")] = None,
    metadata: Annotated[list[str] | None, Query(description="key=value; repeatable, all must match.")] = None,
) -> SandboxList:
    """Every sandbox that exists, oldest first."""
    unknown = set(state or []) - STATES
    if unknown:
        raise InvalidRequest(f"unknown state(s) {sorted(unknown)}; use {sorted(STATES)}")
    wanted: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"metadata filter {item!r} is not key=value")
        wanted[key] = value
    rows = manager.list_sandboxes(states=set(state) if state else None, metadata=wanted)
    return SandboxList(sandboxes=[Sandbox.from_row(r) for r in rows])


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox_id: str, manager: Manager) -> Sandbox:
    return Sandbox.from_row(manager.get(sandbox_id))


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, manager: Manager) -> Response:
    """Kill the sandbox and delete everything it had."""
    await manager.kill(sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: str, body: SetTimeout, manager: Manager) -> Sandbox:
    """Kill the sandbox ``timeout`` seconds from now (0: never)."""
    return Sandbox.from_row(manager.set_timeout(sandbox_id, body.timeout))


@router.post("/{sandbox_id}/commit", status_code=201)
async def commit_sandbox(sandbox_id: str, body: Commit, manager: Manager) -> ImageInfo:
    """Save the sandbox's filesystem as a new image (it is frozen for the copy, then goes on)."""
    image = await manager.commit(sandbox_id, body.name)
    return ImageInfo.from_image(image, manager.images.in_use().get(image.id))


@router.get("/{sandbox_id}/logs", response_class=PlainTextResponse)
async def sandbox_logs(
    sandbox_id: str, manager: Manager, tail: Annotated[int | None, Query(ge=0)] = None
) -> PlainTextResponse:
    """The sandbox's console: its agent's log and the runtime's messages."""
    return PlainTextResponse(await manager.logs(sandbox_id, tail=tail))
