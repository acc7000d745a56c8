"""Images on a corral server: ``Images`` (sync) and ``AsyncImages``.

from corral import Images
with Images() as images:                       # CORRAL_URL / CORRAL_API_KEY or arguments
    images.pull("python:3.12", on_progress=print)
    for image in images.list():
        print(image.names, image.size)
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from typing import Any

from corral.errors import InternalError, error_from_envelope
from corral.sdk import _routes as routes
from corral.sdk._base import AsyncClient, SyncClient
from corral.sdk.models import ImageInfo, PullProgress

__all__ = ["AsyncImages", "Images", "PullProgressHandler"]

PullProgressHandler = Callable[[PullProgress], None]


class _PullReader:
    """Reads a pull's NDJSON events: progress to the handler, then the image (or the error)."""

    def __init__(self, on_progress: PullProgressHandler | None) -> None:
        self.on_progress = on_progress
        self.image: ImageInfo | None = None

    def feed(self, line: str) -> None:
        if not line.strip():
            return
        event: dict[str, Any] = json.loads(line)
        kind = event.get("type")
        if kind == "progress" and self.on_progress is not None:
            self.on_progress(PullProgress(str(event["phase"]), int(event.get("done", 0)), int(event.get("total", 0))))
        elif kind == "image":
            self.image = ImageInfo.from_json(event["image"])
        elif kind == "error":
            raise error_from_envelope(500, event)

    def result(self) -> ImageInfo:
        if self.image is None:
            raise InternalError("the pull's stream ended without an image")
        return self.image


class Images(SyncClient):
    """The image store of one server. ``close()`` (or leaving the ``with``) frees the connection."""

    def pull(self, name: str, *, on_progress: PullProgressHandler | None = None) -> ImageInfo:
        """Pull ``name`` (``python:3.12``, ``host:5000/x:tag``, ``x@sha256:...``) into the server's store."""
        if on_progress is None:
            image: ImageInfo = self._http.call(routes.pull_image(name, stream=False))
            return image
        reader = _PullReader(on_progress)
        with self._http.stream(routes.pull_image(name, stream=True)) as response:
            for line in response.iter_lines():
                reader.feed(line)
        return reader.result()

    def list(self, *, all_images: bool = False) -> builtins.list[ImageInfo]:
        """Named images (with ``all_images``, also unnamed ones: build cache)."""
        return self._http.call(routes.list_images(all_images=all_images))

    def get(self, name: str) -> ImageInfo:
        return self._http.call(routes.get_image(name))

    def remove(self, name: str, *, force: bool = False) -> None:
        """Remove a name (and the image, unless something else holds it); ``force`` even if sandboxes use it."""
        self._http.call(routes.remove_image(name, force=force))

    def gc(self) -> dict[str, Any]:
        """Delete unused unnamed images and layers; returns what was freed."""
        return self._http.call(routes.gc_images())


class AsyncImages(AsyncClient):
    """The async twin of :class:`Images`."""

    async def pull(self, name: str, *, on_progress: PullProgressHandler | None = None) -> ImageInfo:
        if on_progress is None:
            image: ImageInfo = await self._http.call(routes.pull_image(name, stream=False))
            return image
        reader = _PullReader(on_progress)
        async with self._http.stream(routes.pull_image(name, stream=True)) as response:
            async for line in response.aiter_lines():
                reader.feed(line)
        return reader.result()

    async def list(self, *, all_images: bool = False) -> builtins.list[ImageInfo]:
        return await self._http.call(routes.list_images(all_images=all_images))

    async def get(self, name: str) -> ImageInfo:
        return await self._http.call(routes.get_image(name))

    async def remove(self, name: str, *, force: bool = False) -> None:
        await self._http.call(routes.remove_image(name, force=force))

    async def gc(self) -> dict[str, Any]:
        return await self._http.call(routes.gc_images())
