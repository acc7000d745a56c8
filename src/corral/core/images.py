"""Images as the server offers them: resolve-or-pull, list, remove, garbage-collect.

The store knows images; only the server knows which sandboxes run on which,
so the decisions that need both (may this image go?) are made here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from corral.config import Settings
from corral.errors import Conflict
from corral.images import reference
from corral.images.pull import ProgressCallback, Puller, RegistryOptions
from corral.images.store import Image, ImageStore

log = logging.getLogger(__name__)


class ImageService:
    def __init__(self, settings: Settings, store: ImageStore, *, in_use: Callable[[], dict[str, list[str]]]) -> None:
        """``in_use()`` maps image ids to the ids of the sandboxes that run on them."""
        self.store = store
        self.puller = Puller(
            store,
            RegistryOptions(
                auth_file=settings.registry_auth_file,
                insecure_registries=frozenset(settings.insecure_registries),
                timeout=settings.pull_timeout,
            ),
        )
        self._in_use = in_use

    def start(self) -> None:
        self.store.ensure()
        self.store.sweep_tmp()

    async def get_or_pull(self, name: str, *, on_progress: ProgressCallback | None = None) -> Image:
        """The local image called ``name``; pulled first if it is not here and can be pulled."""
        image = await asyncio.to_thread(self.store.lookup, name)
        if image is not None:
            return image
        if reference.parse(name).is_local:
            return self.store.resolve(name)  # raises ImageNotFound with a hint
        return await self.pull(name, on_progress=on_progress)

    async def pull(self, name: str, *, on_progress: ProgressCallback | None = None) -> Image:
        return await self.puller.pull(name, on_progress=on_progress)

    def get(self, name: str) -> Image:
        return self.store.resolve(name)

    def list_images(self, *, all_images: bool = False) -> list[Image]:
        return self.store.list_images(all_images=all_images)

    def in_use(self) -> dict[str, list[str]]:
        return self._in_use()

    def remove(self, name: str, *, force: bool = False) -> Image:
        """Remove the name ``name``; the image goes too unless another name or a sandbox holds it.

        An image live sandboxes run on is refused (409) unless ``force``: then only the
        name goes, and the data stays until a gc after those sandboxes are gone.
        """
        image = self.store.resolve(name)
        users = self._in_use().get(image.id, [])
        if users and not force:
            raise Conflict(
                f"image '{name}' is used by {len(users)} sandbox(es): {', '.join(users[:5])}; "
                "kill them first or remove only the name with force",
                details={"image": name, "sandboxes": users},
            )
        with self.store.locked():
            self.store.untag(name)
            if not users and not self.store.get(image.id).names:
                self.store.delete_image(image.id)
        return image

    def gc(self) -> dict[str, int]:
        freed = self.store.gc(in_use=set(self._in_use()))
        log.info("image gc: %s", freed)
        return freed
