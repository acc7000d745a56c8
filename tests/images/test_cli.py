"""``corral image`` and ``corral template`` run as programs against a real server and registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("images")]

CORRAL = str(Path(sys.executable).with_name("corral"))


def corral(server: ServerProcess, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run(
        [CORRAL, "--url", server.url, *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


def test_image_pull_list_inspect_rm(image_server: ServerProcess, tiny_image: str) -> None:
    pulled = corral(image_server, "image", "pull", tiny_image)
    assert pulled.returncode == 0, pulled.stderr
    assert f"pulled {tiny_image}" in pulled.stderr
    listed = json.loads(corral(image_server, "image", "list", "--json").stdout)
    assert tiny_image in [n for i in listed for n in i["names"]]
    table = corral(image_server, "image", "list").stdout
    assert tiny_image in table
    inspected = json.loads(corral(image_server, "image", "inspect", tiny_image).stdout)
    assert inspected["config"]["env"]["GREETING"] == "hello from the image"
    missing = corral(image_server, "image", "inspect", "corral/none")
    assert missing.returncode == 1 and missing.stderr.startswith("error: image_not_found:")


def test_template_build_from_a_directory(image_server: ServerProcess, tiny_image: str, tmp_path: Path) -> None:
    name = f"cli{uuid.uuid4().hex[:8]}"
    (tmp_path / "corral.Dockerfile").write_text(
        f"FROM {tiny_image}\nARG WHO\nCOPY greeting /etc/\nRUN echo built for $WHO\n"
    )
    (tmp_path / "greeting").write_text("hi\n")
    built = corral(image_server, "template", "build", "-t", name, "--build-arg", "WHO=cli", ".", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "built for cli" in built.stderr and f"template {name} is ready" in built.stderr
    listed = corral(image_server, "template", "list").stdout
    assert name in listed and "ready" in listed
    shown = json.loads(corral(image_server, "template", "get", name, "--json").stdout)
    assert shown["state"] == "ready" and "built for cli" in shown["build_log"]
    created = corral(image_server, "sandbox", "create", "--template", name)
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    try:
        out = corral(image_server, "exec", sandbox_id, "--", "cat", "/etc/greeting")
        assert out.stdout == "hi\n"
    finally:
        corral(image_server, "sandbox", "kill", sandbox_id)
    (tmp_path / "corral.Dockerfile").write_text(f"FROM {tiny_image}\nRUN exit 7\n")
    failed = corral(image_server, "template", "build", "-t", name, str(tmp_path))
    assert failed.returncode == 1 and "error: build_failed:" in failed.stderr and "exit code 7" in failed.stderr
    assert corral(image_server, "template", "rm", name).returncode == 0
