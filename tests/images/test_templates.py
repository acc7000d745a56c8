"""Templates built for real: steps run in gVisor sandboxes, layers stack, rebuilds hit the cache."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.images.context import pack_context
from tests.leftovers import kill_sandbox_process
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


def wait_for_boot_snapshots(server: ServerProcess, timeout: float = 120.0) -> None:
    """Until the server makes no boot snapshot."""

    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/v1/boot-snapshots").json()["making"]:
        assert time.monotonic() < deadline, "boot snapshots still being made"
        time.sleep(0.2)


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


def test_user_with_a_group_holds_for_run_steps_and_the_sandboxes(
    image_server: ServerProcess, tiny_image: str, tmp_path: Path
) -> None:
    from corral import Sandbox

    name = f"g{uuid.uuid4().hex[:10]}"
    events = build(image_server, name, f"FROM {tiny_image}\nUSER 1000:0\nRUN id\n", tmp_path)
    assert events[-1]["type"] == "template", events[-3:]
    assert "uid=1000(user) gid=0(root)" in "".join(e["data"] for e in events if e["type"] == "log")
    with Sandbox.create(template=name, url=image_server.url) as sbx:  # type: ignore[call-arg]
        assert sbx.commands.run("id -u; id -g; id -G").stdout == "1000\n0\n0\n"


def test_a_failing_step_fails_the_build_with_its_output_and_exit_code(
    image_server: ServerProcess, tiny_image: str
) -> None:
    from corral import BuildFailed, Conflict, Sandbox, Templates

    name = f"f{uuid.uuid4().hex[:10]}"
    dockerfile = f"FROM {tiny_image}\nRUN echo about to fail; echo oops >&2; exit 3\n"
    lines: list[str] = []
    with Templates(url=image_server.url) as templates:
        with pytest.raises(BuildFailed) as info:
            templates.build(name, dockerfile=dockerfile, on_log=lines.append)
        assert info.value.details["exit_code"] == 3
        assert "about to fail" in info.value.details["output"] and "oops" in info.value.details["output"]
        assert "about to fail" in lines
        failed = templates.get(name)
        assert failed.state == "failed" and failed.image_id is None and "exit code 3" in (failed.error or "")
        assert "about to fail" in (failed.build_log or "")
        with pytest.raises(Conflict, match="build it first"):
            Sandbox.create(template=name, url=image_server.url)
        templates.delete(name)
    # No build sandbox is left behind.
    left = httpx.get(f"{image_server.url}/v1/sandboxes", params={"metadata": f"corral.build={name}"}).json()
    assert left["sandboxes"] == []


def test_the_sdk_sends_a_large_build_context_whole(
    image_server: ServerProcess, tiny_image: str, tmp_path: Path
) -> None:
    """A context larger than a piece goes in pieces with its length (see corral.sdk._http)."""
    import os

    from corral import Sandbox, Templates
    from corral.sdk import _http

    blob = os.urandom(_http.SEND_PIECE * 3)  # random: the packed context stays over a piece
    (tmp_path / "blob.bin").write_bytes(blob)
    name = f"c{uuid.uuid4().hex[:10]}"
    with Templates(url=image_server.url) as templates:
        templates.build(name, dockerfile=f"FROM {tiny_image}\nCOPY blob.bin /srv/blob.bin\n", context=tmp_path)
        with Sandbox.create(template=name, url=image_server.url) as sbx:
            assert sbx.files.read("/srv/blob.bin", format="bytes") == blob
        templates.delete(name)


def test_a_bad_recipe_is_refused_with_its_line(image_server: ServerProcess, tiny_image: str) -> None:
    r = httpx.put(
        f"{image_server.url}/v1/templates/bad",
        json={"dockerfile": f"FROM {tiny_image}\nRUN true\nEXPOSE 80\n"},
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["details"]["line"] == 3 and "EXPOSE" in error["message"]
    r = httpx.put(f"{image_server.url}/v1/templates/Bad Name", json={"dockerfile": f"FROM {tiny_image}\n"})
    assert r.status_code == 422 and "template name" in r.json()["error"]["message"]


def test_a_readiness_check_that_never_passes_gives_not_ready_and_no_sandbox(
    image_server: ServerProcess, tiny_image: str
) -> None:
    from corral import NotReady, Sandbox, Templates

    name = f"n{uuid.uuid4().hex[:10]}"
    with Templates(url=image_server.url) as templates:
        templates.build(name, dockerfile=f"FROM {tiny_image}\n", ready_cmd="echo not yet; exit 1", ready_timeout=1.5)
    with pytest.raises(NotReady) as info:
        Sandbox.create(template=name, url=image_server.url, metadata={"case": name})
    assert "not yet" in info.value.details["output"]
    assert Sandbox.list(metadata={"case": name}, url=image_server.url) == []
    # Its boot snapshot cannot be made either (the check fails there too), and is not tried at every create.
    for _ in range(2):
        wait_for_boot_snapshots(image_server)
        with pytest.raises(NotReady):
            Sandbox.create(template=name, url=image_server.url, metadata={"case": name})
    wait_for_boot_snapshots(image_server)
    failed = f"could not make a boot snapshot of corral/templates/{name}"
    assert image_server.log_path.read_text().count(failed) == 1


def test_commit_makes_an_image_of_a_sandbox(image_server: ServerProcess, tiny_image: str) -> None:
    from corral import Sandbox

    name = f"corral/commits/c{uuid.uuid4().hex[:8]}:v1"
    with Sandbox.create(tiny_image, url=image_server.url) as sbx:
        sbx.files.write("/home/user/notes.txt", "kept\n")
        sbx.commands.run("rm /etc/marker && mkdir -p /opt/tool && echo 1 > /opt/tool/v", user="root")
        image = sbx.commit(name)
        assert image.source == "commit" and image.names == [name] and image.layers == 2
        assert sbx.commands.run("cat /home/user/notes.txt").stdout == "kept\n"  # it goes on after the copy
    with Sandbox.create(name, url=image_server.url) as copy:
        r = copy.commands.run(
            "cat /home/user/notes.txt /opt/tool/v; test -e /etc/marker || echo gone; tail -1 /etc/hosts"
        )
        # /etc/hosts is the new sandbox's own (its address), not the committed sandbox's
        assert r.stdout == f"kept\n1\ngone\n{copy.get_info().address}\tcorral\n"


def test_commit_recovers_the_files_of_a_dead_sandbox(image_server: ServerProcess, tiny_image: str) -> None:
    """A sandbox whose process died (a host reboot, the OOM killer) keeps its disk: a commit saves it."""
    from corral import Sandbox

    name = f"corral/commits/r{uuid.uuid4().hex[:8]}:v1"
    with Sandbox.create(tiny_image, url=image_server.url) as sbx:
        sbx.files.write("/home/user/work.txt", "precious\n")
        kill_sandbox_process(sbx.id)
        deadline = time.monotonic() + 15
        while sbx.get_info().state != "dead":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sbx.commit(name)
    with Sandbox.create(name, url=image_server.url) as copy:
        assert copy.files.read("/home/user/work.txt") == "precious\n"


def test_later_spawns_restore_the_template_with_its_service_running(
    image_server: ServerProcess, tiny_image: str, tmp_path: Path
) -> None:
    """The first spawn starts the service; its boot snapshot is taken with it ready, and later spawns restore that."""

    from corral import Sandbox

    # Each start records when it ran (the sandbox's clock is the host's), in seconds.
    run = "#!/bin/sh\ndate +%s >> /tmp/starts\necho serving > /tmp/served\nexec sleep 1000\n"
    (tmp_path / "run.sh").write_text(run)
    name = f"s{uuid.uuid4().hex[:10]}"
    dockerfile = f"FROM {tiny_image}\nCOPY --chmod=755 run.sh /usr/local/bin/run.sh\n"
    events = build(image_server, name, dockerfile, tmp_path, start_cmd="/usr/local/bin/run.sh",
                   ready_cmd="test -f /tmp/served")  # fmt: skip
    assert events[-1]["type"] == "template", events[-3:]

    def made_from_boot_snapshot(sbx: Sandbox) -> bool:
        line = next(line for line in image_server.log_path.read_text().splitlines() if f"{sbx.id} running" in line)
        return "from its boot snapshot" in line

    before = int(time.time())
    with Sandbox.create(template=name, url=image_server.url) as first:  # type: ignore[call-arg]
        assert not made_from_boot_snapshot(first)  # none yet: it booted and started the service itself
        [started] = first.commands.run("cat /tmp/starts").stdout.split()
        assert int(started) >= before
    wait_for_boot_snapshots(image_server)
    time.sleep(1.1)  # a start from now on would record a later second than the saved one did
    before = int(time.time())
    with Sandbox.create(template=name, url=image_server.url, envs={"WHO": "second"}) as second:  # type: ignore[call-arg]
        assert made_from_boot_snapshot(second)
        # Its service came back running with it: started once, before this create (in the sandbox that
        # was saved), never here.
        starts = second.commands.run("cat /tmp/starts").stdout.split()
        assert len(starts) == 1 and int(starts[0]) < before, (starts, before)
        assert second.commands.run("cat /tmp/served; echo $WHO").stdout == "serving\nsecond\n"
        assert "start" in {p.tag for p in second.commands.list()}
