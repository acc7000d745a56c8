"""/v1/images: pull (with progress), list, inspect, remove, garbage-collect."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from corral.images.pull import Progress
from corral.images.store import Image
from corral.server.routes.deps import Manager
from corral.server.schemas import GcResult, ImageInfo, ImageList, PullImage
from corral.server.streaming import NDJSON, events_while, ndjson

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.post("", responses={200: {"content": {NDJSON: {}}, "model": ImageInfo}})
async def pull_image(body: PullImage, manager: Manager) -> Response:
    """Pull an image into the local store (a no-op but for the name when its digest is here already)."""
    images = manager.images
    if not body.stream:
        image = await images.pull(body.image)
        return Response(_info(manager, image).model_dump_json(), media_type="application/json")

    async def work(emit: Any) -> Image:
        def report(progress: Progress) -> None:
            emit({"type": "progress", **asdict(progress)})

        return await images.pull(body.image, on_progress=report)

    def done(image: Image) -> dict[str, Any]:
        return {"type": "image", "image": _info(manager, image).model_dump(mode="json")}

    return StreamingResponse(ndjson(events_while(work, done)), media_type=NDJSON)


@router.get("")
async def list_images(
    manager: Manager, all: Annotated[bool, Query(description="Include unnamed images (build cache).")] = False
) -> ImageList:
    """Images in the local store."""
    used = manager.images.in_use()
    return ImageList(
        images=[ImageInfo.from_image(i, used.get(i.id)) for i in manager.images.list_images(all_images=all)]
    )


@router.post("/gc")
async def gc_images(manager: Manager) -> GcResult:
    """Delete unnamed images no sandbox uses (build cache too), their layers, and stale work."""
    return GcResult(**manager.images.gc())


@router.get("/{name:path}")
async def get_image(name: str, manager: Manager) -> ImageInfo:
    return _info(manager, manager.images.get(name))


@router.delete("/{name:path}", status_code=204)
async def remove_image(
    name: str,
    manager: Manager,
    force: Annotated[bool, Query(description="Remove the name even if sandboxes run on the image.")] = False,
) -> Response:
    """Remove a name; the image's data goes with it when nothing else holds it."""
    manager.images.remove(name, force=force)
    return Response(status_code=204)


def _info(manager: Manager, image: Image) -> ImageInfo:
    return ImageInfo.from_image(image, manager.images.in_use().get(image.id))
