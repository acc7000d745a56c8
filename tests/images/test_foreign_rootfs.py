"""Images without what the agent needs: a musl (Alpine-like) rootfs and a distroless-style one.

Both are made here, pushed to the real registry, pulled through corral and run
under gVisor: the agent brings its own interpreter, loader and libraries.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.registry import Layer, Registry, busybox_layer, write_layout
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("images")]

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from musl"); return 0; }\n'
MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")


def musl_binary(tmp_path: Path, *, static: bool) -> bytes:
    source = tmp_path / "hello.c"
    source.write_text(HELLO_C)
    out = tmp_path / ("hello-static" if static else "hello")
    subprocess.run(["musl-gcc", *(["-static"] if static else []), "-o", str(out), str(source)], check=True)
    return out.read_bytes()


def test_a_musl_rootfs(image_server: ServerProcess, registry: Registry, tmp_path: Path) -> None:
    from corral import Sandbox

    layer = busybox_layer(
        {
            "lib/ld-musl-x86_64.so.1": MUSL_LOADER.resolve().read_bytes(),
            "usr/bin/hello": musl_binary(tmp_path, static=False),
            "etc/alpine-release": "3.20.0\n",
            "etc/os-release": 'ID=alpine\nNAME="Alpine Linux"\n',
        }
    )
    layer.executables |= {"lib/ld-musl-x86_64.so.1", "usr/bin/hello"}
    layout = tmp_path / "musl"
    write_layout(layout, {"linux/amd64": [layer]}, env=["PATH=/usr/bin:/bin"])
    ref = registry.push(layout, "tests/alpine-like")
    with Sandbox.create(ref, url=image_server.url) as sbx:
        r = sbx.commands.run("hello && cat /etc/alpine-release && ls /lib && ls /lib64 2>&1 || true")
        assert r.stdout.startswith("hello from musl\n3.20.0\nld-musl-x86_64.so.1\n"), r.stdout
        assert "libc.so.6" not in r.stdout  # no glibc in this image
        sbx.files.write("/home/user/x.txt", "musl files\n")
        assert sbx.files.read("/home/user/x.txt") == "musl files\n"
        assert sbx.commands.run("echo $0").stdout == "/bin/sh\n"  # no bash here: lines go to sh
    with Sandbox.create(ref, url=image_server.url) as again:  # told by the first sandbox of the image
        assert again.commands.run("echo $0; echo $((6*7))").stdout == "/bin/sh\n42\n"


def test_a_distroless_rootfs_without_a_shell(image_server: ServerProcess, registry: Registry, tmp_path: Path) -> None:
    from corral import Sandbox

    layer = Layer({"hello": musl_binary(tmp_path, static=True), "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\n"},
                  executables={"hello"})  # fmt: skip
    layout = tmp_path / "distroless"
    write_layout(layout, {"linux/amd64": [layer]}, env=["PATH=/"])
    ref = registry.push(layout, "tests/distroless")
    with Sandbox.create(ref, url=image_server.url) as sbx:
        assert sbx.commands.run(["/hello"]).stdout == "hello from musl\n"  # argv: no shell needed
        sbx.files.write("/data/out.txt", "no shell, files still work\n")
        assert sbx.files.read("/data/out.txt") == "no shell, files still work\n"
        assert {e.name for e in sbx.files.list("/")} >= {"data", "etc", "hello"}


def test_an_images_user_given_as_a_uid_is_whom_commands_run_as(
    image_server: ServerProcess, registry: Registry, tmp_path: Path
) -> None:
    from corral import Sandbox

    layout = tmp_path / "nonroot"
    write_layout(layout, {"linux/amd64": [busybox_layer()]}, user="65532")  # as distroless's nonroot: no passwd entry
    ref = registry.push(layout, "tests/uid-user")
    with Sandbox.create(ref, url=image_server.url) as sbx:
        assert sbx.commands.run("id -u; id -g; echo $HOME").stdout == "65532\n0\n/\n"  # was `user`, or root
        sbx.files.write("/tmp/mine.txt", "x")
        assert sbx.commands.run("stat -c %u /tmp/mine.txt").stdout == "65532\n"
        assert sbx.commands.run("id -u", user="root").stdout == "0\n"
