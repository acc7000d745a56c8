"""Density: host memory per idle sandbox, corral's beside raw runsc sandboxes running ``sleep``.

Starts K sandboxes through the SDK, K raw runsc sandboxes (same flags, same
kind of rootfs, ``/bin/sleep infinity`` as init) and, to tell the agent's
share from the server's, K raw sandboxes whose init is corral's agent. Once
all are idle (their memory stops moving), each sandbox's host processes are
found through its cgroup (``<memory cgroup>/corral/<id>`` for corral's,
``corral-bench/<id>`` for the raw ones; by command line if there is none) and
measured three ways:

- PSS: the sum of ``Pss`` in ``/proc/<pid>/smaps_rollup`` (shared pages split
  between their users, so K sandboxes sharing runsc's code each count 1/K of it);
- RSS: the sum of ``Rss`` (shared pages counted in full, every time);
- cgroup: ``memory.usage_in_bytes`` (``memory.current`` on cgroup v2): every
  page charged to the sandbox, gVisor's own page cache and unmapped memory
  included, but a host file page only where it was first read.

Processes that share one address space (systrap's stub processes do) are
counted once. At the end every sandbox must still answer an exec.

    .venv/bin/python bench/density.py [--count 10] [--url URL]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import time
from pathlib import Path
from typing import Any

from _common import (
    AgentCaller,
    RawRunsc,
    SandboxSet,
    base_parser,
    corral_url,
    print_table,
    ratio,
    run_main,
    verdict,
    write_json,
)

TARGET = 1.5
"""corral's memory per idle sandbox (PSS), at most this many times a raw sandbox's."""
CGROUPS = Path("/sys/fs/cgroup")
MIB = 1 << 20
KCMP_VM = 1
SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)


def cgroup_dir(cgroup: str) -> Path | None:
    for candidate in (CGROUPS / "memory" / cgroup, CGROUPS / cgroup):
        if (candidate / "cgroup.procs").exists():
            return candidate
    return None


def processes(cgroup: str, sandbox_id: str) -> list[int]:
    """The host processes of one sandbox: its cgroup's, else those whose command line names it."""
    found = cgroup_dir(cgroup)
    if found is not None:
        return [int(p) for p in (found / "cgroup.procs").read_text().split()]
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and sandbox_id.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def same_address_space(a: int, b: int) -> bool:
    if SYS_KCMP is None:
        return False
    return int(_libc.syscall(SYS_KCMP, a, b, KCMP_VM, 0, 0)) == 0


def smaps_rollup(pid: int) -> dict[str, int]:
    """``Rss`` and ``Pss`` of one process, in bytes (zeros if it is gone)."""
    values = {"Rss": 0, "Pss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) * 1024
    return values


def memory_of(cgroup: str, sandbox_id: str) -> dict[str, float]:
    """One sandbox's PSS, RSS (its processes', one per address space) and cgroup usage, in bytes."""
    spaces: list[int] = []
    for pid in processes(cgroup, sandbox_id):
        if not any(same_address_space(pid, other) for other in spaces):
            spaces.append(pid)
    rollups = [smaps_rollup(pid) for pid in spaces]
    usage = 0
    found = cgroup_dir(cgroup)
    if found is not None:
        for name in ("memory.usage_in_bytes", "memory.current"):
            if (found / name).exists():
                usage = int((found / name).read_text())
                break
    return {
        "pss": sum(r["Pss"] for r in rollups),
        "rss": sum(r["Rss"] for r in rollups),
        "cgroup": usage,
        "address_spaces": len(spaces),
    }


def measure_all(groups: dict[str, list[tuple[str, str]]]) -> dict[str, list[dict[str, float]]]:
    return {name: [memory_of(cg, sid) for cg, sid in members] for name, members in groups.items()}


def settle(groups: dict[str, list[tuple[str, str]]], *, least: float, most: float) -> dict[str, Any]:
    """Measure until the total PSS moves less than 2% between two looks a second apart."""
    time.sleep(least)
    start, last_total = time.monotonic(), -1.0
    while True:
        seen = measure_all(groups)
        total = sum(m["pss"] for members in seen.values() for m in members)
        if abs(total - last_total) < 0.02 * total or time.monotonic() - start > most:
            return {"memory": seen, "waited": least + time.monotonic() - start}
        last_total = total
        time.sleep(1.0)


def measure(url: str, api_key: str | None, count: int, least: float, most: float) -> dict[str, Any]:
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw, AgentCaller() as agents:
        print(f"  starting {count} corral sandboxes, {count} raw + agent, {count} raw ...")
        corral = [sandboxes.create() for _ in range(count)]
        with_agent = [raw.start(agent=True) for _ in range(count)]
        for sbx in with_agent:
            agents.wait_healthy(sbx.agent_url)
        floor = [raw.start() for _ in range(count)]
        groups = {
            "corral": [(f"corral/{s.id}", s.id) for s in corral],
            "raw_agent": [(f"corral-bench/{s.id}", s.id) for s in with_agent],
            "raw": [(f"corral-bench/{s.id}", s.id) for s in floor],
        }
        print("  waiting for them to settle ...")
        result = settle(groups, least=least, most=most)
        answered = {
            "corral": sum(s.commands.run("echo ok").stdout == "ok\n" for s in corral),
            "raw_agent": sum(agents.run(s.agent_url, ["/bin/echo", "ok"]) == (0, b"ok\n") for s in with_agent),
            "raw": sum(s.exec("echo", "ok") == b"ok\n" for s in floor),
        }
    return {**result, "answered": answered}


def report(result: dict[str, Any], count: int) -> dict[str, Any]:
    labels = {
        "corral": "corral (SDK; agent as init)",
        "raw_agent": "raw runsc + corral's agent",
        "raw": "raw floor: runsc, sleep infinity",
    }
    per: dict[str, dict[str, float]] = {}
    for name, members in result["memory"].items():
        per[name] = {key: sum(m[key] for m in members) / len(members) for key in ("pss", "rss", "cgroup")}
        per[name]["address_spaces"] = sum(m["address_spaces"] for m in members) / len(members)
    rows = [
        [
            label,
            f"{per[name]['pss'] / MIB:.1f}",
            f"{per[name]['rss'] / MIB:.1f}",
            f"{per[name]['cgroup'] / MIB:.1f}",
            f"{per[name]['address_spaces']:.1f}",
            f"{result['answered'][name]}/{count}",
        ]
        for name, label in labels.items()
    ]
    rows.append(
        [
            "corral / raw floor",
            *(f"{ratio(per['corral'][k], per['raw'][k]):.2f}x" for k in ("pss", "rss", "cgroup")),
            "",
            "",
        ]
    )
    print_table(
        f"memory per idle sandbox, {count} of each, after {result['waited']:.0f} s (MiB)",
        ["", "PSS", "RSS", "cgroup", "address spaces", "exec ok"],
        rows,
    )
    pss_ratio = ratio(per["corral"]["pss"], per["raw"]["pss"])
    print_table(
        "corral / raw floor, PSS",
        ["", "ratio", "target", ""],
        [["PSS per sandbox", f"{pss_ratio:.2f}x", f"<= {TARGET}x", verdict(pss_ratio, TARGET)]],
    )
    sizes = {f"{name}_{key}_mib": p[key] / MIB for name, p in per.items() for key in ("pss", "rss", "cgroup")}
    return {
        **sizes,
        "ratio_pss": pss_ratio,
        "ratio_rss": ratio(per["corral"]["rss"], per["raw"]["rss"]),
        "ratio_cgroup": ratio(per["corral"]["cgroup"], per["raw"]["cgroup"]),
        "target": TARGET,
        "met": pss_ratio <= TARGET,
        "all_answered": all(n == count for n in result["answered"].values()),
    }


def run(url: str | None, api_key: str | None, *, count: int, least: float = 3.0, most: float = 30.0) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("density.py reads other processes' memory maps and cgroups: run it as root")
    with corral_url(url) as base:
        result = measure(base, api_key, count, least, most)
    headline = report(result, count)
    write_json("density", {"count": count, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="sandboxes of each kind (default 10)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait at least before measuring")
    args = parser.parse_args()
    headline = run(args.url, args.api_key, count=args.count, least=args.settle)
    return 0 if headline["all_answered"] else 1


if __name__ == "__main__":
    run_main(main)
