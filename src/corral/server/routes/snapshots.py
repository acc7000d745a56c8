"""/v1/snapshots: list, inspect and delete snapshots (take one with POST /v1/sandboxes/{id}/snapshots)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from corral.server.routes.deps import Manager
from corral.server.schemas import Snapshot, SnapshotList

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.get("")
async def list_snapshots(
    manager: Manager, sandbox_id: Annotated[str | None, Query(description="Only those of this sandbox.")] = None
) -> SnapshotList:
    return SnapshotList(snapshots=[Snapshot.from_row(r) for r in manager.store.list_snapshots(sandbox_id=sandbox_id)])


@router.get("/{snapshot_id}")
async def get_snapshot(snapshot_id: str, manager: Manager) -> Snapshot:
    return Snapshot.from_row(manager.lifecycle.get_snapshot(snapshot_id))


@router.delete("/{snapshot_id}", status_code=204)
async def delete_snapshot(snapshot_id: str, manager: Manager) -> Response:
    """Delete it and its files (sandboxes restored from it are not affected)."""
    manager.lifecycle.delete_snapshot(snapshot_id)
    return Response(status_code=204)
