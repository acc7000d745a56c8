"""The few ``/etc`` files corral writes into each sandbox's rootfs (hostname, hosts, resolv.conf)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from corral.errors import RuntimeFailure


def write_own_files(rootfs: Path, files: dict[str, str]) -> None:
    """Write ``/etc/<name>`` files into a sandbox's rootfs without following the image's symlinks.

    An image is untrusted: its ``/etc`` or ``/etc/hosts`` may be a symlink to a
    host path (``/etc/shadow``), which a plain write would follow on the host.
    So ``/etc`` is opened without following links (a link is replaced by a real
    directory) and each file is unlinked and created anew, never followed.
    """
    etc = rootfs / "etc"
    try:
        fd = os.open(etc, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        etc.mkdir(mode=0o755)
        fd = os.open(etc, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        etc.unlink()  # a symlink, or a file, where /etc should be
        etc.mkdir(mode=0o755)
        fd = os.open(etc, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name, text in files.items():
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise RuntimeFailure(f"the image's /etc/{name} is a directory; corral must write that file") from None
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
            with os.fdopen(out, "w") as f:
                f.write(text)
    finally:
        os.close(fd)
