"""/v1/sandboxes/{id}/files: read, write, list, stat, mkdir, remove, move, chmod.

Every path is handed to the agent inside the sandbox, whose root is the
sandbox's own filesystem: there is no host path to escape to.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from corral.core.files import parse_mode, to_entry
from corral.errors import FileExists_, FileNotFound
from corral.server.routes.deps import Manager
from corral.server.schemas import PATH_RULES, Chmod, Entry, EntryList, Exists, MakeDir, Move, NoNul, UserName

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])

PathQuery = Annotated[str, NoNul, Query(**PATH_RULES, description="A path inside the sandbox.")]
UserQuery = Annotated[UserName | None, Query()]


@router.get(
    "",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def read_file(sandbox_id: str, path: PathQuery, manager: Manager, user: UserQuery = None) -> StreamingResponse:
    """The file's bytes, streamed."""
    upstream = await (await manager.awake_agent(sandbox_id)).read_file(path, user=user)
    headers = {k: v for k, v in upstream.headers.items() if k.lower() == "content-length"}
    return StreamingResponse(
        upstream.aiter_raw(),
        media_type="application/octet-stream",
        headers=headers,
        background=BackgroundTask(upstream.aclose),
    )


@router.put("", openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}})
async def write_file(
    sandbox_id: str, path: PathQuery, request: Request, manager: Manager, user: UserQuery = None
) -> Entry:
    """Write the body to ``path`` (streamed; parents created; replaced atomically)."""
    agent = await manager.awake_agent(sandbox_id)
    await agent.write_file(path, request.stream(), user=user)
    return Entry(**to_entry(await agent.stat(path, user=user)))


@router.get("/list")
async def list_dir(
    sandbox_id: str,
    path: PathQuery,
    manager: Manager,
    depth: Annotated[int, Query(ge=1, le=32)] = 1,
    user: UserQuery = None,
) -> EntryList:
    found = await (await manager.awake_agent(sandbox_id)).list_dir(path, depth=depth, user=user)
    return EntryList(entries=[Entry(**to_entry(e)) for e in found])


@router.get("/stat")
async def stat(sandbox_id: str, path: PathQuery, manager: Manager, user: UserQuery = None) -> Entry:
    return Entry(**to_entry(await (await manager.awake_agent(sandbox_id)).stat(path, user=user)))


@router.get("/exists")
async def exists(sandbox_id: str, path: PathQuery, manager: Manager, user: UserQuery = None) -> Exists:
    try:
        await (await manager.awake_agent(sandbox_id)).stat(path, user=user)
    except FileNotFound:
        return Exists(exists=False)
    return Exists(exists=True)


@router.post("/mkdir", status_code=201, responses={200: {"model": Entry}})
async def make_dir(sandbox_id: str, body: MakeDir, manager: Manager) -> Response:
    """Create a directory and its parents: 201, or 200 if it was already there."""
    agent = await manager.awake_agent(sandbox_id)
    try:
        entry, status = await agent.make_dir(body.path, user=body.user), 201
    except FileExists_:
        entry, status = await agent.stat(body.path, user=body.user), 200
        if entry.get("type") != "FILE_TYPE_DIRECTORY":
            raise
    return JSONResponse(Entry(**to_entry(entry)).model_dump(mode="json"), status_code=status)


@router.delete("", status_code=204)
async def remove(
    sandbox_id: str,
    path: PathQuery,
    manager: Manager,
    recursive: bool = False,
    user: UserQuery = None,
) -> Response:
    """Remove a file, an empty directory, or with ``recursive`` a whole tree."""
    await (await manager.awake_agent(sandbox_id)).remove(path, recursive=recursive, user=user)
    return Response(status_code=204)


@router.post("/move")
async def move(sandbox_id: str, body: Move, manager: Manager) -> Entry:
    return Entry(
        **to_entry(await (await manager.awake_agent(sandbox_id)).move(body.source, body.destination, user=body.user))
    )


@router.post("/chmod")
async def chmod(sandbox_id: str, body: Chmod, manager: Manager) -> Entry:
    return Entry(**to_entry(await (await manager.awake_agent(sandbox_id)).chmod(body.path, parse_mode(body.mode))))
