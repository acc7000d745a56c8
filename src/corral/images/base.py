"""The offline default image, ``corral/base``, built from Debian packages.

debootstrap (minbase) plus what agents reach for first: bash, coreutils,
python3, git, curl, ca-certificates, procps. A user ``user`` (uid 1000, home
``/home/user``) is the default for processes. Built once, cached in the store;
needs nothing but a Debian mirror.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from corral.errors import RuntimeFailure
from corral.images.store import ImageStore

BASE_IMAGE = "corral/base"
SUITE = "bookworm"
PACKAGES = ["python3", "git", "curl", "ca-certificates", "procps", "less"]
MIRROR = os.environ.get("CORRAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def build_base_image(data_dir: Path, *, force: bool = False, on_line: Callable[[str], None] | None = None) -> Path:
    """Build ``corral/base`` unless it is there; return its rootfs."""
    store = ImageStore(data_dir)
    final = store.image_dir(BASE_IMAGE)
    if (final / ".complete").exists() and not force:
        return final / "rootfs"
    store.root.mkdir(parents=True, exist_ok=True)
    cache = data_dir / "cache" / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-base-", dir=store.root))
    work.chmod(0o755)
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
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        (work / ".complete").write_text(BASE_IMAGE + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final / "rootfs"


def _stream(argv: list[str], on_line: Callable[[str], None] | None) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-19:], line.rstrip()]
        if on_line:
            on_line(line.rstrip())
    if proc.wait() != 0:
        raise RuntimeFailure(f"{argv[0]} failed (exit {proc.returncode})", details={"output": "\n".join(tail)})
