"""A registry with test images, and a server with an image store of its own (pulls and gc stay here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry import Registry, busybox_layer, write_layout
from tests.serverproc import ServerProcess, worker_index


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def tiny_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``<registry>/tests/tiny:1``: busybox and a marker file."""
    layout = tmp_path_factory.mktemp("layout") / "tiny"
    write_layout(
        layout,
        {"linux/amd64": [busybox_layer({"etc/marker": "tiny image\n"})]},
        env=["PATH=/bin", "GREETING=hello from the image"],
    )
    return registry.push(layout, "tests/tiny", tag="1")


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("images-server"), subnet_index=50 + worker_index(), shared_images=False
    )
    with proc.running():
        yield proc


def store_root(server: ServerProcess) -> Path:
    return server.data_dir / "images"
