"""Registry credentials come from the server's configuration and never reach a sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry import Registry, busybox_layer, write_layout
from tests.serverproc import ServerProcess, worker_index

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("images")]

USER, PASSWORD = "robot", "s3cret-pa55word"


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("private-registry"), users={USER: PASSWORD}).start()
    try:
        yield reg
    finally:
        reg.stop()


def server_with(tmp: Path, env: dict[str, str]) -> ServerProcess:
    return ServerProcess(tmp, subnet_index=52 + worker_index(), shared_images=False, env=env)


def test_pulls_use_the_configured_credentials_and_sandboxes_never_see_them(
    private_registry: Registry, tmp_path: Path
) -> None:
    from corral import Sandbox

    layout = tmp_path / "private"
    write_layout(layout, {"linux/amd64": [busybox_layer({"etc/secret-image": "private\n"})]})
    ref = private_registry.push(layout, "team/private", tag="1")

    without = server_with(tmp_path / "no-creds", {}).start()
    try:
        r = httpx.post(f"{without.url}/v1/images", json={"image": ref}, timeout=60)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "registry_error" and "refused access" in r.json()["error"]["message"]
    finally:
        without.finish()

    auth_file = private_registry.auth_file(tmp_path / "auth.json")
    server = server_with(tmp_path / "creds", {"CORRAL_REGISTRY_AUTH_FILE": str(auth_file)}).start()
    try:
        with Sandbox.create(ref, url=server.url) as sbx:
            assert sbx.files.read("/etc/secret-image") == "private\n"
            env = sbx.commands.run("env; cat /proc/1/environ | tr '\\0' '\\n'", user="root").stdout
            everywhere = "/bin /etc /home /root /tmp /var /.corral"  # the whole rootfs but /proc, /sys, /dev
            found = sbx.commands.run(f"grep -rl {PASSWORD} {everywhere} 2>/dev/null || true", user="root").stdout
            assert PASSWORD not in env and USER not in env
            assert found == ""
    finally:
        server.finish()
