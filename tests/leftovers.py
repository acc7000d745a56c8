"""What a corral server left on the host: processes, mounts, network namespaces and cgroups.

Other servers (other test workers, other runs) share the host, so everything
here is attributed to one server by its data dir, or to sandboxes by id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SANDBOX_ID = re.compile(r"\bsb[a-z0-9]{12}\b")


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (this test process's own aside)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        if text in line:
            found.append(f"{entry.name}: {line[:300]}")
    return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``."""
    prefix = str(path)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def netns_of(sandbox_ids: set[str]) -> list[str]:
    """The network namespaces of those sandboxes that still exist."""
    return [name for sid in sorted(sandbox_ids) if (NETNS_DIR / (name := f"corral-{sid}")).exists()]


def cgroups_of(sandbox_ids: set[str]) -> list[str]:
    """The cgroups of those sandboxes (``corral/<id>``) still in any hierarchy (v1, hybrid or v2)."""
    places = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]
    return [str(c) for sid in sorted(sandbox_ids) for p in places if (c := p / "corral" / sid).is_dir()]


def sandbox_ids_in(text: str) -> set[str]:
    """Every sandbox id a server log mentions."""
    return set(SANDBOX_ID.findall(text))


def leftovers(data_dir: Path, sandbox_ids: set[str]) -> dict[str, list[str]]:
    """Anything of those sandboxes (or under ``data_dir``'s sandboxes and snapshots) still on the host.

    Empty lists everywhere mean nothing is left.
    """
    processes = sorted({p for sid in sandbox_ids for p in processes_naming(sid)})
    processes += [p for p in processes_naming(str(data_dir / "snapshots")) if p not in processes]
    dirs = [str(data_dir / "sandboxes" / sid) for sid in sorted(sandbox_ids)]
    return {
        "processes": processes,
        "mounts": [m for sid in sorted(sandbox_ids) for m in mounts_under(data_dir / "sandboxes" / sid)],
        "netns": netns_of(sandbox_ids),
        "cgroups": cgroups_of(sandbox_ids),
        "dirs": [d for d in dirs if Path(d).exists()],
    }


def assert_nothing_left(data_dir: Path, sandbox_ids: set[str]) -> None:
    found = leftovers(data_dir, sandbox_ids)
    assert found == {"processes": [], "mounts": [], "netns": [], "cgroups": [], "dirs": []}, found


def kill_sandbox_process(sandbox_id: str) -> None:
    """SIGKILL the sandbox's process on the host, as the host's OOM killer would."""
    state = subprocess.run(
        ["/usr/local/lib/corral/bin/runsc", "--root", "/run/corral/runsc", "state", sandbox_id],
        capture_output=True,
        text=True,
        check=True,
    )
    os.kill(int(json.loads(state.stdout)["pid"]), signal.SIGKILL)
