"""The local image store: names to images, images to stacks of read-only layers.

Layout under ``<data_dir>/images``::

    layers/<id>/          one read-only directory tree per layer; a pulled image is
                          one layer (its flattened rootfs), a template build adds one
                          per step, a commit one more
    manifests/<id>.json   an image: its layers (bottom first), config, origin, sizes
    names/<quoted name>   the id of the image a name points at
    tmp/                  work in progress; moved into place with one rename when
                          complete, so nothing half-written is ever seen

A sandbox's rootfs is an overlayfs whose lower dirs are its image's layers and
whose upper dir is its own: nothing is copied, whatever the image's size.
Mutations that must not interleave with a garbage collection (add, tag, remove,
gc) hold a lock on ``images/.lock``, shared by every corral process on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from corral.errors import Conflict, ImageNotFound
from corral.images import reference

MAX_LAYERS = 60
"""overlayfs takes its lower dirs as one mount option of at most a page (4 KiB)."""


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the image says about the processes run in it (OCI image config subset)."""

    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(
            env=dict(data.get("env") or {}),
            entrypoint=list(data.get("entrypoint") or []),
            cmd=list(data.get("cmd") or []),
            workdir=str(data.get("workdir") or ""),
            user=str(data.get("user") or ""),
        )


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    """64 hex digits: the registry's manifest digest for pulled images, else a content key."""
    layers: tuple[str, ...]
    """Layer ids, bottom first."""
    config: ImageConfig = field(default_factory=ImageConfig)
    source: str = "pull"
    """How it was made: ``pull``, ``base``, ``build`` (a template step) or ``commit``."""
    created: float = 0.0
    size: int = 0
    """Bytes on disk of the layers this image added (its parent's not counted)."""
    digest: str | None = None
    """``sha256:...`` of the registry manifest, for pulled images."""
    parent: str | None = None
    names: tuple[str, ...] = ()

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("names")
        return json.dumps(data, indent=1)


def content_id(*parts: str) -> str:
    """A stable 64-hex id from text (a build step's cache key, a layer's origin)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def random_id() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def canonical(name: str) -> str:
    """The one spelling of an image name the store keys on (``python`` -> ``docker.io/library/python:latest``)."""
    return str(reference.parse(name))


def tree_size(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class ImageStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "images"
        self.layers_dir = self.root / "layers"
        self.manifests_dir = self.root / "manifests"
        self.names_dir = self.root / "names"
        self.tmp_dir = self.root / "tmp"
        self._thread_lock = threading.RLock()

    def ensure(self) -> None:
        for d in (self.layers_dir, self.manifests_dir, self.names_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.layers_dir.chmod(0o755)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access for a mutation, across threads and processes."""
        self.ensure()
        with self._thread_lock, open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- reading ---------------------------------------------------------------

    def get(self, image_id: str) -> Image:
        try:
            data = json.loads((self.manifests_dir / f"{image_id}.json").read_text())
        except (FileNotFoundError, ValueError):
            raise ImageNotFound(f"no image with id {image_id[:12]}", details={"image_id": image_id}) from None
        data["config"] = ImageConfig.from_dict(data.get("config") or {})
        data["layers"] = tuple(data["layers"])
        return Image(**data, names=tuple(self._names_of(image_id)))

    def has(self, image_id: str) -> bool:
        return (self.manifests_dir / f"{image_id}.json").exists()

    def lookup(self, name: str) -> Image | None:
        """The image ``name`` points at, or None (bad names raise InvalidRequest)."""
        try:
            image_id = (self.names_dir / quote(canonical(name), safe="")).read_text().strip()
        except FileNotFoundError:
            return None
        return self.get(image_id) if self.has(image_id) else None

    def resolve(self, name: str) -> Image:
        image = self.lookup(name)
        if image is None:
            hint = " (build it with `corral image build-base`)" if canonical(name).startswith("corral/base") else ""
            raise ImageNotFound(f"image '{name}' is not in the local store{hint}", details={"image": name})
        return image

    def list_images(self, *, all_images: bool = False) -> list[Image]:
        """Named images (with ``all_images``, also unnamed ones such as build cache)."""
        if not self.manifests_dir.is_dir():
            return []
        names = self._all_names()
        found = []
        for path in sorted(self.manifests_dir.glob("*.json")):
            image_id = path.stem
            if names.get(image_id) or all_images:
                with contextlib.suppress(ImageNotFound):
                    found.append(self.get(image_id))
        return sorted(found, key=lambda i: (i.names[:1] or ("~",), i.created))

    def layer_paths(self, image: Image) -> list[Path]:
        """The image's layer dirs, top first: overlayfs's ``lowerdir`` order."""
        return [self.layers_dir / layer for layer in reversed(image.layers)]

    def _all_names(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        if self.names_dir.is_dir():
            for entry in sorted(self.names_dir.iterdir()):
                with contextlib.suppress(OSError):
                    names.setdefault(entry.read_text().strip(), []).append(unquote(entry.name))
        return names

    def _names_of(self, image_id: str) -> list[str]:
        return self._all_names().get(image_id, [])

    # -- writing ---------------------------------------------------------------

    def work_dir(self, prefix: str) -> Path:
        """A fresh directory in ``tmp/`` for something being made."""
        self.ensure()
        path = self.tmp_dir / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def add_layer(self, layer_id: str, tree: Path) -> int:
        """Move a finished tree into place as layer ``layer_id``; return its size in bytes.

        Call under :meth:`locked`. If the layer exists already (the same content made twice
        at once), the new copy is discarded.
        """
        target = self.layers_dir / layer_id
        if target.exists():
            shutil.rmtree(tree, ignore_errors=True)
            return tree_size(target)
        size = tree_size(tree)
        tree.rename(target)
        return size

    def add_image(self, image: Image, *, names: tuple[str, ...] = ()) -> Image:
        """Record ``image`` (its layers must be in place) and point ``names`` at it. Call under :meth:`locked`."""
        if len(image.layers) > MAX_LAYERS:
            raise Conflict(
                f"an image may have at most {MAX_LAYERS} layers; this one would have {len(image.layers)}",
                details={"layers": len(image.layers)},
            )
        missing = [layer for layer in image.layers if not (self.layers_dir / layer).is_dir()]
        if missing:
            raise ImageNotFound(f"layers of image {image.id[:12]} are missing: {missing}")
        if not self.has(image.id):
            _write_atomic(self.manifests_dir / f"{image.id}.json", image.to_json())
        for name in names:
            self.tag(image.id, name)
        return self.get(image.id)

    def stack(
        self,
        tree: Path,
        *,
        parent: Image | None,
        config: ImageConfig | None = None,
        source: str,
        layer_id: str | None = None,
        image_id: str | None = None,
        names: tuple[str, ...] = (),
        digest: str | None = None,
    ) -> Image:
        """Move ``tree`` into place as a new top layer over ``parent`` and record the image that makes.

        ``config`` defaults to the parent's; ids default to random ones (content ids make builds cache).
        """
        layer_id = layer_id or random_id()
        with self.locked():
            size = self.add_layer(layer_id, tree)
            return self.add_image(
                Image(
                    id=image_id or random_id(),
                    layers=(*(parent.layers if parent else ()), layer_id),
                    config=config if config is not None else (parent.config if parent else ImageConfig()),
                    source=source,
                    created=time.time(),
                    size=size,
                    digest=digest,
                    parent=parent.id if parent else None,
                ),
                names=names,
            )

    def tag(self, image_id: str, name: str) -> None:
        _write_atomic(self.names_dir / quote(canonical(name), safe=""), image_id + "\n")

    def untag(self, name: str) -> str | None:
        """Remove a name; return the id it pointed at (None if it did not exist)."""
        path = self.names_dir / quote(canonical(name), safe="")
        try:
            image_id = path.read_text().strip()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return image_id

    def delete_image(self, image_id: str) -> None:
        """Delete an image and those of its layers no other image has. Call under :meth:`locked`."""
        image = self.get(image_id)
        (self.manifests_dir / f"{image_id}.json").unlink(missing_ok=True)
        shared: set[str] = set()
        for path in self.manifests_dir.glob("*.json"):
            with contextlib.suppress(ImageNotFound):
                shared.update(self.get(path.stem).layers)
        for layer in image.layers:
            if layer not in shared:
                shutil.rmtree(self.layers_dir / layer, ignore_errors=True)

    def gc(self, *, in_use: set[str]) -> dict[str, int]:
        """Delete unnamed images no sandbox uses (build cache included), unreferenced layers and stale work.

        ``in_use``: ids of images that live sandboxes run on. Returns counts and bytes freed.
        """
        freed = {"images": 0, "layers": 0, "bytes": 0}
        with self.locked():
            names = self._all_names()
            keep_images = {i for i in names if self.has(i)} | in_use
            keep_layers: set[str] = set()
            for path in list(self.manifests_dir.glob("*.json")):
                image_id = path.stem
                if image_id in keep_images:
                    with contextlib.suppress(ImageNotFound):
                        image = self.get(image_id)
                        keep_layers.update(image.layers)
                        continue
                path.unlink(missing_ok=True)
                freed["images"] += 1
            for layer in list(self.layers_dir.iterdir()):
                if layer.name not in keep_layers:
                    freed["bytes"] += tree_size(layer)
                    shutil.rmtree(layer, ignore_errors=True)
                    freed["layers"] += 1
            self._sweep_tmp()
        return freed

    def sweep_tmp(self) -> None:
        """Remove work left by crashed pulls and builds: those whose process is gone."""
        with self.locked():
            self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        for entry in self.tmp_dir.iterdir():
            pid = entry.name.rsplit("-", 2)[-2] if entry.name.count("-") >= 2 else ""
            if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                shutil.rmtree(entry, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
