"""Adjusting a running sandbox's host cgroup (v1, hybrid, or v2)."""

from __future__ import annotations

from pathlib import Path

from corral.errors import RuntimeFailure

CGROUP_ROOT = Path("/sys/fs/cgroup")


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
