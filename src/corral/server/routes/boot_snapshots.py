"""/v1/boot-snapshots: the booted sandboxes creates restore instead of booting (see corral.core.boot_snapshots)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response

from corral.errors import NotFound
from corral.images.store import tree_size
from corral.server.routes.deps import Manager
from corral.server.schemas import BootSnapshotInfo, BootSnapshotList

router = APIRouter(prefix="/v1/boot-snapshots", tags=["boot snapshots"])


@router.get("")
async def list_boot_snapshots(manager: Manager) -> BootSnapshotList:
    saved = manager.boot_snapshots
    return BootSnapshotList(
        boot_snapshots=[
            BootSnapshotInfo(
                key=s.key,
                image=s.image,
                image_id=s.shape.image_id,
                vcpus=s.shape.vcpus,
                memory_mb=s.shape.memory_mb,
                size=tree_size(s.path),
                last_used=datetime.fromtimestamp(s.last_used, UTC),
            )
            for s in saved.entries()
        ],
        making=saved.making(),
    )


@router.delete("/{key}", status_code=204)
async def delete_boot_snapshot(key: str, manager: Manager) -> Response:
    """Remove one; the next create of its image and shape boots, and makes it again."""
    if not manager.boot_snapshots.remove(key):
        raise NotFound(f"no boot snapshot '{key}' exists", details={"key": key})
    return Response(status_code=204)
