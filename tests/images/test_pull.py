"""Pulling images from a real registry through the server, and running code in them."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.registry import Registry, busybox_layer, write_layout
from tests.serverproc import ServerProcess, free_port

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


def pull(server: ServerProcess, image: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/images", json={"image": image}, timeout=120)


def test_pull_by_digest_is_the_same_image(image_server: ServerProcess, tiny_image: str) -> None:
    first = pull(image_server, tiny_image).json()
    repo = tiny_image.rsplit(":", 1)[0]
    pinned = f"{repo}@sha256:{first['id']}"
    again = pull(image_server, pinned).json()
    assert again["id"] == first["id"]
    assert set(again["names"]) >= {tiny_image, pinned}
    listed = httpx.get(f"{image_server.url}/v1/images").json()["images"]
    assert sum(1 for i in listed if i["id"] == first["id"]) == 1


def test_a_multi_platform_index_gives_this_hosts_image(
    image_server: ServerProcess, registry: Registry, tmp_path: Path
) -> None:
    from corral import Sandbox

    layout = tmp_path / "multi"
    digests = write_layout(
        layout,
        {
            "linux/arm64": [busybox_layer({"etc/arch": "arm64\n"})],
            "linux/amd64": [busybox_layer({"etc/arch": "amd64\n"})],
        },
    )
    ref = registry.push(layout, "tests/multi")
    info = pull(image_server, ref).json()
    assert f"sha256:{info['id']}" == digests["linux/amd64"]
    with Sandbox.create(ref, url=image_server.url) as sbx:
        assert sbx.files.read("/etc/arch") == "amd64\n"


def test_an_unknown_tag_is_named_with_the_registrys_message(image_server: ServerProcess, registry: Registry) -> None:
    r = pull(image_server, f"{registry.host}/tests/tiny:no-such-tag")
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "image_not_found"
    assert "tests/tiny:no-such-tag" in error["message"]
    assert "manifest unknown" in error["details"]["registry_message"]
    assert list((image_server.data_dir / "images" / "tmp").iterdir()) == []


def test_an_unreachable_registry_is_a_clear_error_and_leaves_nothing(image_server: ServerProcess) -> None:
    port = free_port()  # nothing listens there
    r = pull(image_server, f"127.0.0.1:{port}/x/y:1")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "registry_error" and f"127.0.0.1:{port}" in error["message"]
    assert "connection refused" in error["message"].lower()
    assert '\\"' not in error["message"] and 'Get "http://' in error["message"]  # skopeo's quoting undone
    assert list((image_server.data_dir / "images" / "tmp").iterdir()) == []


def test_concurrent_pulls_of_one_image_download_it_once(
    image_server: ServerProcess, registry: Registry, tmp_path: Path
) -> None:
    layout = tmp_path / "once"
    write_layout(layout, {"linux/amd64": [busybox_layer({"etc/once": os.urandom(2_000_000)})]})
    ref = registry.push(layout, "tests/once")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: pull(image_server, ref), range(4)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["id"] for a in answers}) == 1
    repo = ref.rsplit(":", 1)[0]
    assert image_server.log_path.read_text().count(f"pulled {repo}@") == 1


def test_remove_and_gc(image_server: ServerProcess, registry: Registry, tmp_path: Path) -> None:
    from corral import Conflict, Images, Sandbox

    layout = tmp_path / "gc"
    write_layout(layout, {"linux/amd64": [busybox_layer({"etc/gc": "gc\n"})]})
    ref = registry.push(layout, "tests/gc")
    with Images(url=image_server.url) as images:
        info = images.pull(ref)
        layer_dir = image_server.data_dir / "images" / "layers" / info.id
        assert layer_dir.is_dir()
        with Sandbox.create(ref, url=image_server.url) as sbx:
            assert images.get(ref).used_by == [sbx.id]
            with pytest.raises(Conflict, match="used by 1 sandbox"):
                images.remove(ref)
            images.remove(ref, force=True)  # the name goes; the sandbox keeps its files
            images.gc()  # may free other tests' build cache, never what a sandbox runs on
            assert layer_dir.is_dir()
            assert sbx.files.read("/etc/gc") == "gc\n"
        assert images.gc()["layers"] >= 1
        assert not layer_dir.exists()
        assert ref not in [n for i in images.list(all_images=True) for n in i.names]
