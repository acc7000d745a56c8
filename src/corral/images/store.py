"""The local image store: image names to unpacked, read-only rootfs dirs.

Layout: ``<data_dir>/images/<name with / as ->/rootfs``, complete once the
``.complete`` marker beside it exists (builds write elsewhere and rename, so a
half-built image is never seen). Pulling from registries comes later; today
the store holds the images corral builds itself (``corral/base``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ImageNotFound, InvalidRequest

_NAME = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,128})?$")


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    rootfs: Path


def normalize(name: str) -> str:
    """``corral/base:latest`` and ``corral/base`` are the same image."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidRequest(f"'{name}' is not a valid image name", details={"image": name})
    return name.removesuffix(":latest")


class ImageStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "images"

    def image_dir(self, name: str) -> Path:
        return self.root / normalize(name).replace("/", "-").replace(":", "_")

    def resolve(self, name: str) -> Image:
        directory = self.image_dir(name)
        if not (directory / ".complete").exists():
            raise ImageNotFound(
                f"image '{name}' is not in the local store"
                + (" (build it with `corral image build-base`)" if normalize(name) == "corral/base" else ""),
                details={"image": name},
            )
        return Image(name=normalize(name), rootfs=directory / "rootfs")

    def list(self) -> list[Image]:
        if not self.root.is_dir():
            return []
        found = []
        for marker in sorted(self.root.glob("*/.complete")):
            found.append(Image(name=marker.read_text().strip(), rootfs=marker.parent / "rootfs"))
        return found
