"""The host's cgroups: quick moves between them, and a running sandbox's limits (v1, hybrid, or v2)."""

from __future__ import annotations

import logging
from pathlib import Path

from corral import hostcmd
from corral.errors import RuntimeFailure

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "corral"
"""Every sandbox's cgroups are ``/corral/<sandbox id>`` (:func:`sandbox_cgroup`) in each hierarchy."""
MOUNTS = Path("/proc/mounts")
FAVOR_DYNMODS = "favordynmods"


async def favor_moves(own_mount: Path, *, mounts: Path = MOUNTS) -> None:
    """Make moving a process into another cgroup quick: ``favordynmods`` on the host's cgroup2 hierarchy.

    Every ``runsc run`` and ``runsc restore`` moves itself into the new
    sandbox's cgroups and back again. By default the kernel makes the first
    move of each batch wait for an RCU grace period (8-12 ms on a 2-core
    host, so about 20 ms of every create); with ``favordynmods`` a move takes
    0.2 ms, and forks and exits on the host cost a little more. The flag
    belongs to the one cgroup2 hierarchy and covers cgroup v1 moves too: an
    existing cgroup2 mount is remounted with it (and the options it has),
    else one is mounted at ``own_mount``. Kernels before 6.0 do not have it:
    nothing changes, and the server says so. On 6.18 a remount without it
    did not turn it off; a reboot does.
    """
    cgroup2 = [(target, options) for _, target, kind, options in _mount_table(mounts) if kind == "cgroup2"]
    if any(FAVOR_DYNMODS in options.split(",") for _, options in cgroup2):
        return
    if cgroup2:
        # Its options are the hierarchy's (nsdelegate, memory_recursiveprot...): a remount without one drops it.
        target, options = cgroup2[0]
        argv = ["mount", "-o", f"remount,{options},{FAVOR_DYNMODS}", target]
    else:
        own_mount.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "cgroup2", "-o", FAVOR_DYNMODS, "cgroup2", str(own_mount)]
    done = await hostcmd.run(argv, check=False)
    if done.returncode:
        log.info("cgroups: %s is not available (%s): each sandbox start waits for the kernel to move runsc "
                 "between cgroups", FAVOR_DYNMODS, done.stderr.strip() or f"exit {done.returncode}")  # fmt: skip
    else:
        log.info("cgroups: turned on %s at %s: moving a process between cgroups no longer waits",
                 FAVOR_DYNMODS, argv[-1])  # fmt: skip


def _mount_table(mounts: Path) -> list[tuple[str, str, str, str]]:
    """``/proc/mounts`` as rows of (source, target, type, options)."""
    try:
        rows = [line.split() for line in mounts.read_text().splitlines()]
    except OSError:
        return []
    return [(row[0], row[1], row[2], row[3]) for row in rows if len(row) >= 4]


def raise_memory_limit(cgroup: str, limit_bytes: int, *, root: Path = CGROUP_ROOT) -> None:
    """Set the memory limit of ``cgroup`` (a path like ``/corral/<id>``) to ``limit_bytes``.

    Only ever raises a limit: on cgroup v1 the memory+swap limit must stay at
    or above the memory limit, so it is written first.
    """
    relative = cgroup.strip("/")
    v1 = root / "memory" / relative
    if v1.is_dir():
        files = [v1 / "memory.memsw.limit_in_bytes", v1 / "memory.limit_in_bytes"]
    elif (root / relative / "memory.max").exists():
        files = [root / relative / "memory.max"]
    else:
        raise RuntimeFailure(f"no memory cgroup found for {cgroup}")
    for path in files:
        if path.exists():
            try:
                path.write_text(str(limit_bytes))
            except OSError as exc:
                raise RuntimeFailure(f"cannot set {path}: {exc}") from exc


def _figure(paths: tuple[Path, ...], key: str) -> int | None:
    """The number on the ``key <number>`` line of the first of ``paths`` that can be read."""
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    return None


def oom_kills(cgroup: str, *, root: Path = CGROUP_ROOT) -> int:
    """How many processes of ``cgroup`` the kernel's OOM killer ended (0 if unknown)."""
    relative = cgroup.strip("/")
    files = (root / "memory" / relative / "memory.oom_control", root / relative / "memory.events")
    return _figure(files, "oom_kill") or 0


def memory_stat(cgroup: str, key: str, *, root: Path = CGROUP_ROOT) -> int | None:
    """One figure of ``cgroup``'s ``memory.stat`` (v1 or v2), in bytes; ``None`` if unknown."""
    relative = cgroup.strip("/")
    return _figure((root / "memory" / relative / "memory.stat", root / relative / "memory.stat"), key)


def sandbox_cgroup(sandbox_id: str) -> str:
    """The cgroup path a sandbox's OCI spec names (``cgroupsPath``); runsc makes it in every hierarchy."""
    return f"/{PARENT}/{sandbox_id}"


def remove(cgroup: str, *, root: Path = CGROUP_ROOT) -> list[Path]:
    """Remove ``cgroup`` from every hierarchy (v1 controllers, hybrid, v2); answers the ones still in use.

    runsc removes a sandbox's cgroups when it deletes the sandbox. It does not
    know of a sandbox whose start a crash cut short before it saved its state,
    and that sandbox's cgroups (empty once its processes are killed) would stay
    behind. A cgroup with processes in it is left alone (the kernel refuses).
    """
    relative = cgroup.strip("/")
    places = [root / relative, *(hierarchy / relative for hierarchy in root.iterdir() if hierarchy.is_dir())]
    busy = []
    for place in places:
        try:
            place.rmdir()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            log.warning("cgroups: cannot remove %s: %s", place, exc)
            busy.append(place)
    return busy
