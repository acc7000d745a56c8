"""The offline base images, built from Debian packages with no registry but Debian's.

- ``corral/base`` (the default image): debootstrap (minbase) plus what agents
  reach for first: bash, coreutils, python3 with pip and venv, git, curl,
  ca-certificates, procps, less and the C toolchain (build-essential). A user
  ``user`` (uid 1000, home ``/home/user``) is the default for processes.
- ``corral/node``: ``corral/base`` plus Debian's nodejs and npm, built as one
  more layer on top of it (apt in a chroot over an overlay of the base).

Built once and cached in the image store; ``force`` rebuilds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from corral.errors import InvalidRequest, RuntimeFailure
from corral.images.store import Image, ImageConfig, ImageStore

BASE_IMAGE = "corral/base"
NODE_IMAGE = "corral/node"
SUITE = "bookworm"
PACKAGES = [
    "python3", "python3-pip", "python3-venv", "git", "curl", "ca-certificates",
    "procps", "less", "build-essential",
]  # fmt: skip
NODE_PACKAGES = ["nodejs", "npm"]
MIRROR = os.environ.get("CORRAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_CONFIG = ImageConfig(env={"PATH": PATH, "LANG": "C.UTF-8"}, cmd=["/bin/bash"])

OnLine = Callable[[str], None]


def build_base_image(
    data_dir: Path, *, name: str = BASE_IMAGE, force: bool = False, on_line: OnLine | None = None
) -> Image:
    """Build ``corral/base`` or ``corral/node`` unless it is there; return it."""
    if name not in (BASE_IMAGE, NODE_IMAGE):
        raise InvalidRequest(f"there is no base image '{name}' (there are {BASE_IMAGE} and {NODE_IMAGE})")
    store = ImageStore(data_dir)
    existing = store.lookup(name)
    if existing is not None and not force:
        return existing
    store.ensure()
    shutil.rmtree(store.root / "corral-base", ignore_errors=True)  # the store's layout before layers
    if name == NODE_IMAGE:
        base = build_base_image(data_dir, on_line=on_line)
        return _build_node(store, base, on_line)
    return _build_base(store, data_dir, on_line)


def _build_base(store: ImageStore, data_dir: Path, on_line: OnLine | None) -> Image:
    cache = data_dir / "cache" / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    work = store.work_dir("build-base")
    try:
        rootfs = work / "rootfs"
        _stream(
            [
                "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                f"--cache-dir={cache}", SUITE, str(rootfs), MIRROR,
            ],
            on_line,
        )  # fmt: skip
        _stream(["chroot", str(rootfs), "useradd", "--create-home", "--uid", "1000",
                 "--shell", "/bin/bash", "user"], on_line)  # fmt: skip
        (rootfs / "etc" / "resolv.conf").write_text("")
        _drop_apt_leftovers(rootfs)
        rootfs.chmod(0o755)
        return store.stack(rootfs, parent=None, config=BASE_CONFIG, source="base", names=(BASE_IMAGE,))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_node(store: ImageStore, base: Image, on_line: OnLine | None) -> Image:
    work = store.work_dir("build-node")
    try:
        upper, scratch, merged = work / "upper", work / "work", work / "merged"
        for d in (upper, scratch, merged):
            d.mkdir()
        lower = ":".join(str(p) for p in store.layer_paths(base))
        overlay = ["-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={scratch}"]
        with (
            _mounted(overlay, merged),
            _mounted(["--bind", "/proc"], merged / "proc"),
            _mounted(["--bind", "/dev"], merged / "dev"),
        ):
            shutil.copyfile("/etc/resolv.conf", merged / "etc" / "resolv.conf")
            apt = ["chroot", str(merged), "apt-get", "-q"]
            env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": PATH}
            _stream([*apt, "update"], on_line, env=env)
            _stream([*apt, "install", "-y", "--no-install-recommends", *NODE_PACKAGES], on_line, env=env)
            (merged / "etc" / "resolv.conf").write_text("")
            _drop_apt_leftovers(merged)
        upper.chmod(0o755)
        return store.stack(upper, parent=base, config=BASE_CONFIG, source="base", names=(NODE_IMAGE,))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _drop_apt_leftovers(rootfs: Path) -> None:
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / leftover).glob("*"):
            if item.is_file():
                item.unlink()


@contextlib.contextmanager
def _mounted(options: list[str], target: Path) -> Iterator[None]:
    subprocess.run(["mount", *options, str(target)], check=True, capture_output=True)
    try:
        yield
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _stream(argv: list[str], on_line: OnLine | None, *, env: dict[str, str] | None = None) -> None:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-19:], line.rstrip()]
        if on_line:
            on_line(line.rstrip())
    if proc.wait() != 0:
        raise RuntimeFailure(f"{argv[0]} failed (exit {proc.returncode})", details={"output": "\n".join(tail)})
