"""Templates built for real: steps run in gVisor sandboxes, layers stack, rebuilds hit the cache."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.images.context import pack_context
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("images")]


def build(
    server: ServerProcess, name: str, dockerfile: str, context: Path | None = None, **options: Any
) -> list[dict[str, Any]]:
    r = httpx.put(f"{server.url}/v1/templates/{name}", json={"dockerfile": dockerfile, **options}, timeout=30)
    assert r.status_code == 200, r.text
    body = pack_context(context) if context else b""
    with httpx.stream(
        "POST", f"{server.url}/v1/templates/{name}/builds", content=body,
        headers={"Content-Type": "application/gzip"}, timeout=300,
    ) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_template_build_spawn_and_cache(image_server: ServerProcess, tiny_image: str, tmp_path: Path) -> None:
    from corral import Sandbox

    token = uuid.uuid4().hex
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hello from the context\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho serving > /tmp/served; exec sleep 1000\n")
    dockerfile = f"""
        FROM {tiny_image}
        ARG TOKEN={token}
        ENV MODE=production
        RUN mkdir -p /srv && echo "$TOKEN $MODE" > /srv/built && echo step-output
        COPY app/ /srv/app/
        COPY --chmod=755 run.sh /usr/local/bin/run.sh
        WORKDIR /srv/work
        RUN echo in $(pwd) > where && rm /etc/marker
        USER user
    """
    name = f"t{token[:10]}"
    events = build(image_server, name, dockerfile, tmp_path, start_cmd="/usr/local/bin/run.sh",
                   ready_cmd="test -f /tmp/served")  # fmt: skip
    assert events[-1]["type"] == "template", events[-3:]
    template = events[-1]["template"]
    assert template["state"] == "ready" and template["image"] == f"corral/templates/{name}"
    logs = [e["data"] for e in events if e["type"] == "log"]
    assert "step-output" in logs
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 7 and not any(s["cached"] for s in steps)

    with Sandbox.create(template=name, url=image_server.url) as sbx:  # type: ignore[call-arg]
        r = sbx.commands.run("cat /srv/built /srv/app/hello.txt /tmp/served where; echo $MODE; id -un; pwd")
        assert r.stdout == (
            f"{token} production\nhello from the context\nserving\nin /srv/work\nproduction\nuser\n/srv/work\n"
        )
        assert sbx.commands.run("test -e /etc/marker || echo deleted").stdout == "deleted\n"
        assert sbx.info().template == name  # type: ignore[attr-defined]

    again = build(image_server, name, dockerfile, tmp_path, start_cmd="/usr/local/bin/run.sh",
                  ready_cmd="test -f /tmp/served")  # fmt: skip
    assert all(s["cached"] for s in again if s["type"] == "step")
    assert again[-1]["template"]["image_id"] == template["image_id"]

    (tmp_path / "app" / "hello.txt").write_text("changed\n")
    changed = build(image_server, name, dockerfile, tmp_path)
    cached = [s["cached"] for s in changed if s["type"] == "step"]
    assert cached == [True, True, False, False, False, False, False], cached  # a change invalidates what follows
