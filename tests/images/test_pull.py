"""Pulling images from a real registry through the server, and running code in them."""

from __future__ import annotations

import httpx
import pytest

from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("images")]


def test_pull_then_run_code_in_the_image(image_server: ServerProcess, tiny_image: str) -> None:
    from corral import Sandbox

    r = httpx.post(f"{image_server.url}/v1/images", json={"image": tiny_image}, timeout=120)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["names"] == [tiny_image]
    assert info["source"] == "pull" and len(info["id"]) == 64
    assert info["config"]["env"]["GREETING"] == "hello from the image"
    with Sandbox.create(tiny_image, url=image_server.url) as sbx:
        result = sbx.commands.run("cat /etc/marker; echo $GREETING; id -un")
        assert result.stdout == "tiny image\nhello from the image\nuser\n"
