"""Density: start sandboxes until K are idle; host memory per idle sandbox, corral's beside raw runsc's.

One kind at a time, each torn down before the next: K sandboxes through the
SDK, then as many raw runsc sandboxes (same flags, same kind of rootfs,
``/bin/sleep infinity`` as init) and, to tell the agent's share from the
server's, as many raw sandboxes whose init is corral's agent. Each kind is
started ``--parallel`` at a time until K run, or until the host refuses: the
first failed start, less host memory available than ``--min-available-mib``,
or ``--ramp-timeout``, whichever comes first, stops the ramp, and the count
reached is reported. Once a kind is idle (its memory stops moving), each
sandbox's host processes are
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
counted once. Beside these, the drop of the host's ``MemAvailable`` over the
ramp, per sandbox (noisy on a shared host), and the CPU an idle sandbox
still uses (its cgroup's CPU time over 5 s). Then every sandbox must still
answer an exec: the exit status is 1 unless each of corral's did (the
floors' misses are printed and kept in the JSON).

    .venv/bin/python bench/density.py [--count 200] [--parallel 4] [--url URL]
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from _common import (
    AgentCaller,
    RawRunsc,
    RawSandbox,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    in_threads,
    print_table,
    ratio,
    run_main,
    verdict,
    write_json,
)

from corral import Sandbox

TARGET = 1.5
"""corral's memory per idle sandbox (PSS), at most this many times a raw sandbox's."""
CGROUPS = Path("/sys/fs/cgroup")
MIB = 1 << 20
KCMP_VM = 1
SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


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


def cpu_seconds(cgroup: str) -> float:
    """CPU time the cgroup has used (cgroup v1 ``cpuacct.usage``, v2 ``cpu.stat``); NaN if it has none."""
    with contextlib.suppress(OSError, ValueError):
        return int((CGROUPS / "cpuacct" / cgroup / "cpuacct.usage").read_text()) / 1e9
    with contextlib.suppress(OSError, ValueError):
        stat = dict(line.split() for line in (CGROUPS / cgroup / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6
    return math.nan


def idle_cpu(cgroups: list[str], seconds: float = 5.0) -> float:
    """The mean share of a core each cgroup uses over ``seconds`` (0.05: 5% of a core)."""
    if not cgroups:
        return math.nan
    before = [cpu_seconds(cg) for cg in cgroups]
    time.sleep(seconds)
    used = [cpu_seconds(cg) - b for cg, b in zip(cgroups, before, strict=True)]
    return sum(used) / len(used) / seconds


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


def mem_available() -> int:
    """The host's ``MemAvailable``, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Limits:
    """When a ramp stops short of its count."""

    seconds: float = 900.0
    min_available: int = 2 << 30


def ramp(start: Callable[[], T], count: int, *, parallel: int, limits: Limits) -> tuple[list[T], str]:
    """Start sandboxes, ``parallel`` at a time, until ``count`` run or the host refuses.

    Answers those that run, and why it stopped: ``"reached"``, the first
    refusal, too little memory left on the host, or the time limit.
    """
    started: list[T] = []
    stopped = ""
    claimed = 0
    lock = threading.Lock()
    deadline = time.monotonic() + limits.seconds

    def worker() -> None:
        nonlocal claimed, stopped
        while True:
            with lock:
                if stopped or claimed >= count:
                    return
                if (available := mem_available()) < limits.min_available:
                    stopped = f"memory: {available // MIB} MiB available, the floor is {limits.min_available // MIB}"
                elif time.monotonic() > deadline:
                    stopped = f"time: {limits.seconds:g} s"
                if stopped:
                    return
                claimed += 1
            try:
                sbx = start()
            except Exception as exc:
                with lock:
                    stopped = stopped or f"refused: {exc}"
                return
            with lock:
                started.append(sbx)

    in_threads(lambda _: worker(), range(parallel))
    return started, stopped or "reached"


def agent_up(sbx: RawSandbox) -> RawSandbox:
    """The raw sandbox, once its agent answers (a client of this thread's own)."""
    with AgentCaller() as agents:
        agents.wait_healthy(sbx.agent_url, timeout=60.0)
    return sbx


def agent_answers(sbx: RawSandbox) -> bool:
    with AgentCaller() as agents:
        return agents.run(sbx.agent_url, ["/bin/echo", "ok"]) == (0, b"ok\n")


def phase(
    name: str, start: Callable[[], T], answers: Callable[[T], bool], cgroup: Callable[[T], tuple[str, str]],
    stop: Callable[[T], None], *, count: int, parallel: int, limits: Limits, settling: tuple[float, float],
) -> dict[str, Any]:  # fmt: skip
    """Ramp one kind to ``count``, let it settle, measure it, check every one answers, tear it down."""
    before = mem_available()
    t0 = time.monotonic()
    started, stopped = ramp(start, count, parallel=parallel, limits=limits)
    try:
        print(f"  {name}: {len(started)} started in {time.monotonic() - t0:.0f} s ({stopped}); settling ...")
        members = [cgroup(s) for s in started]
        result = settle({name: members}, least=settling[0], most=settling[1])
        drop = before - mem_available()
        cpu = idle_cpu([cg for cg, _ in members])
        outcomes = in_threads(answers, started, workers=8)
    finally:
        for outcome in in_threads(stop, started, workers=8):
            if isinstance(outcome, Exception):
                print(f"  {name}: could not remove one: {outcome!r}", file=sys.stderr)
    return {
        "started": len(started),
        "stopped": stopped,
        "ramp_s": time.monotonic() - t0,
        "memory": result["memory"][name],
        "waited": result["waited"],
        "available_drop": drop,
        "idle_cpu": cpu,
        "answered": sum(ok is True for ok in outcomes),
        "unanswered": [repr(ok) for ok in outcomes if ok is not True][:5],
    }


def measure(
    url: str, api_key: str | None, count: int, *, parallel: int, limits: Limits, settling: tuple[float, float]
) -> dict[str, Any]:
    """corral's sandboxes first; then each floor, as many as corral reached, one kind at a time."""
    options = {"parallel": parallel, "limits": limits, "settling": settling}
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw:

        def corral_stop(sbx: Sandbox) -> None:
            sandboxes.kill(sbx, wait=True)

        def corral_answers(sbx: Sandbox) -> bool:
            return sbx.commands.run("echo ok").stdout == "ok\n"

        def raw_answers(sbx: RawSandbox) -> bool:
            return sbx.exec("echo", "ok") == b"ok\n"

        print(f"  starting up to {count} of each kind, {parallel} at a time, one kind after the other ...")
        result = {
            "corral": phase(
                "corral", sandboxes.create, corral_answers,
                lambda s: (f"corral/{s.id}", s.id), corral_stop, count=count, **options,
            ),
        }  # fmt: skip
        reached = result["corral"]["started"] or count
        result["raw"] = phase(
            "raw", raw.start, raw_answers, lambda s: (f"corral-bench/{s.id}", s.id), raw.destroy,
            count=reached, **options,
        )  # fmt: skip
        result["raw_agent"] = phase(
            "raw_agent", lambda: agent_up(raw.start(agent=True)), agent_answers,
            lambda s: (f"corral-bench/{s.id}", s.id), raw.destroy, count=reached, **options,
        )  # fmt: skip
    return result


def report(result: dict[str, Any], count: int) -> dict[str, Any]:
    labels = {
        "corral": "corral (SDK; agent as init)",
        "raw_agent": "raw runsc + corral's agent",
        "raw": "raw floor: runsc, sleep infinity",
    }
    per: dict[str, dict[str, float]] = {}
    for name, r in result.items():
        members = r["memory"] or [{"pss": math.nan, "rss": math.nan, "cgroup": math.nan, "address_spaces": math.nan}]
        per[name] = {key: sum(m[key] for m in members) / len(members) for key in ("pss", "rss", "cgroup")}
        per[name]["address_spaces"] = sum(m["address_spaces"] for m in members) / len(members)
        per[name]["available_drop"] = r["available_drop"] / max(r["started"], 1)
        per[name]["idle_cpu"] = r["idle_cpu"]
    keys = ("pss", "rss", "cgroup", "available_drop")
    rows = [
        [
            label,
            f"{result[name]['started']} ({result[name]['stopped'].split(':')[0]})",
            *(f"{per[name][k] / MIB:.1f}" for k in keys),
            f"{per[name]['address_spaces']:.1f}",
            f"{per[name]['idle_cpu'] * 100:.1f}",
            f"{result[name]['answered']}/{result[name]['started']}",
        ]
        for name, label in labels.items()
    ]
    floor = [f"{ratio(per['corral'][k], per['raw'][k]):.2f}x" for k in (*keys, "address_spaces", "idle_cpu")]
    rows.append(["corral / raw floor", "", *floor, ""])
    print_table(
        f"memory per idle sandbox, up to {count} of each (MiB)",
        ["", "started", "PSS", "RSS", "cgroup", "host MemAvailable drop", "address spaces", "idle CPU %", "exec ok"],
        rows,
    )
    pss_ratio = ratio(per["corral"]["pss"], per["raw"]["pss"])
    for name, r in result.items():
        for failure in r["unanswered"]:
            print(f"  {name}: no answer: {failure}")
    print_table(
        "corral / raw floor, PSS",
        ["", "ratio", "target", ""],
        [["PSS per sandbox", f"{pss_ratio:.2f}x", f"<= {TARGET}x", verdict(pss_ratio, TARGET)]],
    )
    sizes = {f"{name}_{key}_mib": p[key] / MIB for name, p in per.items() for key in keys}
    return {
        **sizes,
        **{f"{name}_idle_cpu_percent": p["idle_cpu"] * 100 for name, p in per.items()},
        "count": count,
        "started": {name: r["started"] for name, r in result.items()},
        "stopped": {name: r["stopped"] for name, r in result.items()},
        "ratio_pss": pss_ratio,
        "ratio_rss": ratio(per["corral"]["rss"], per["raw"]["rss"]),
        "ratio_cgroup": ratio(per["corral"]["cgroup"], per["raw"]["cgroup"]),
        "target": TARGET,
        "met": pss_ratio <= TARGET,
        "all_answered": result["corral"]["answered"] == result["corral"]["started"],
    }


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table."""
    reach = f"{h['started']['corral']} of {h['count']} idle"
    if h["started"]["corral"] < h["count"]:
        reach += f", stopped: {h['stopped']['corral'].split(':')[0]}"
    if not h["all_answered"]:
        reach += ", NOT all answered"
    return [
        Row(f"memory per idle sandbox, PSS ({reach})", h["corral_pss_mib"], h["raw_pss_mib"], "MiB",
            target=f"<= {TARGET}x", met=h["met"]),
        Row("CPU per idle sandbox", h["corral_idle_cpu_percent"], h["raw_idle_cpu_percent"], "% of a core"),
    ]  # fmt: skip


def run(
    url: str | None,
    api_key: str | None,
    *,
    count: int,
    parallel: int = 4,
    limits: Limits = Limits(),
    least: float = 3.0,
    most: float = 30.0,
) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("density.py reads other processes' memory maps and cgroups: run it as root")
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, count, parallel=parallel, limits=limits, settling=(least, most))
    headline = report(result, count)
    write_json("density", {"count": count, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="sandboxes of each kind to reach (default 200)")
    parser.add_argument("--parallel", type=int, default=4, help="starts at a time (default 4)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait at least before measuring")
    parser.add_argument("--ramp-timeout", type=float, default=900.0, help="seconds each ramp may take (default 900)")
    parser.add_argument(
        "--min-available-mib", type=int, default=2048, help="stop a ramp below this much host memory (default 2048)"
    )
    args = parser.parse_args()
    limits = Limits(seconds=args.ramp_timeout, min_available=args.min_available_mib * MIB)
    headline = run(args.url, args.api_key, count=args.count, parallel=args.parallel, limits=limits, least=args.settle)
    return 0 if headline["all_answered"] else 1


if __name__ == "__main__":
    run_main(main)
