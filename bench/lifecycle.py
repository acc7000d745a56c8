"""Restore, fork and hibernation through the SDK.

- restore: ``Sandbox.create(snapshot=...)`` until the first ``echo`` returns, beside
  the raw floor: a raw sandbox with corral's agent as init, frozen and
  ``runsc checkpoint``-ed as corral does it, then restored by hand into a fresh
  namespace and disk (the upper dir copied, the overlay mounted, the veth made)
  with ``runsc restore -detach`` and answered by a ``runsc exec echo``;
- fork: ``sbx.fork(10)`` in one call, until all ten answer an ``echo`` (sent to all at once), beside
  ten restores of the raw checkpoint by hand at once, until each answered;
- hibernation: host memory (PSS of the sandbox's processes) before and after
  ``sbx.hibernate()``, and the time an ``echo`` takes to wake it.

    .venv/bin/python bench/lifecycle.py [--runs 5] [--url URL]
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from _common import (
    AgentCaller,
    RawRunsc,
    RawSandbox,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    in_threads,
    ms,
    print_table,
    raise_any,
    ratio,
    run_main,
    runsc,
    sh,
    stat_cols,
    summary,
    verdict,
    write_json,
)

from corral import Sandbox
from corral.runtimes.oci import STATE_ROOT

FORK_TARGET_S = 1.5
FORK_N = 10
RESTORE_TARGET_RATIO = 1.2


def sandbox_pss_kib(sandbox_id: str) -> int:
    """PSS of every host process whose command line names the sandbox (sentry, gofer)."""
    total = 0
    found = subprocess.run(["pgrep", "-f", sandbox_id], capture_output=True, text=True).stdout.split()
    for pid in found:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def restore_into(sbx: RawSandbox, snapshot: Path) -> tuple[float, float]:
    """Restore a raw checkpoint by hand into a new sandbox and have it echo.

    Answers the time to prepare (disk copy, overlay, netns) and to ``runsc restore`` + ``runsc exec echo``.
    """
    t0 = time.perf_counter()
    sbx.dir.mkdir(parents=True)
    sh(["cp", "-a", "--reflink=auto", str(snapshot / "upper"), str(sbx.dir / "upper")])
    sbx.prepare()
    t1 = time.perf_counter()
    sbx.restore(snapshot)
    if (out := sbx.exec("echo", "hi")) != b"hi\n":
        raise RuntimeError(f"restored raw sandbox {sbx.id} answered {out!r}")
    return t1 - t0, time.perf_counter() - t1


def raw_restore(raw: RawRunsc, snapshot: Path) -> dict[str, float]:
    """The floor of a restore: one by hand, then removed (untimed)."""
    sbx = raw.new(agent=True)
    try:
        prepare, restore_exec = restore_into(sbx, snapshot)
    finally:
        raw.destroy(sbx)
    return {"prepare": prepare, "restore_exec": restore_exec, "total": prepare + restore_exec}


def raw_fork(raw: RawRunsc, snapshot: Path, n: int) -> float:
    """The floor of ``fork(n)``: ``n`` restores by hand at once, until each has echoed."""
    boxes = [raw.new(agent=True) for _ in range(n)]
    t0 = time.perf_counter()
    try:
        outcomes = in_threads(lambda sbx: restore_into(sbx, snapshot), boxes)
        elapsed = time.perf_counter() - t0
    finally:
        raw.destroy_many(boxes)
    raise_any(outcomes)
    return elapsed


def measure(url: str, api_key: str | None, runs: int) -> dict[str, Any]:
    restore: list[float] = []
    floor: list[dict[str, float]] = []
    fork: list[float] = []
    fork_floor: list[float] = []
    hibernate: list[float] = []
    wake: list[float] = []
    memory: list[tuple[int, int]] = []
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw:
        source = sandboxes.create()
        source.commands.run("sleep 1000", background=True)
        snap = source.snapshot()
        raw_source = raw.start(agent=True)
        with AgentCaller() as agent:
            agent.wait_healthy(raw_source.agent_url)  # checkpointed once booted, as corral's source is
        raw_snapshot = raw.work / "snapshot"
        t0 = time.perf_counter()
        raw_source.checkpoint(raw_snapshot)
        raw_checkpoint = time.perf_counter() - t0
        try:
            for i in range(runs):
                if i % 2:  # each goes first in half the runs
                    floor.append(raw_restore(raw, raw_snapshot))
                t0 = time.perf_counter()
                sbx = sandboxes.create(snapshot=snap.id)
                sbx.commands.run("echo hi")
                restore.append(time.perf_counter() - t0)
                sandboxes.kill(sbx, wait=True)
                if not i % 2:
                    floor.append(raw_restore(raw, raw_snapshot))

                t0 = time.perf_counter()
                children = source.fork(FORK_N, timeout=300)
                raise_any(in_threads(lambda child: child.commands.run("echo hi"), children))  # at once, as the floor
                fork.append(time.perf_counter() - t0)
                for child in children:
                    sandboxes.live[child.id] = child
                    sandboxes.kill(child, wait=False)
                for child in children:  # ten teardowns must not overlap the next measures
                    sandboxes.wait_torn_down(child.id)
                fork_floor.append(raw_fork(raw, raw_snapshot, FORK_N))

                sleeper = sandboxes.create()
                sleeper.commands.run("python3 -c 'x = bytearray(64 << 20); import time; time.sleep(1000)'",
                                     background=True)  # fmt: skip
                time.sleep(1.0)
                before = sandbox_pss_kib(sleeper.id)
                t0 = time.perf_counter()
                sleeper.hibernate()
                hibernate.append(time.perf_counter() - t0)
                wait_record_deleted(sleeper.id)  # a wake comes after idleness, not within the second after
                after = sandbox_pss_kib(sleeper.id)
                t0 = time.perf_counter()
                sleeper.commands.run("echo hi")
                wake.append(time.perf_counter() - t0)
                memory.append((before, after))
                sandboxes.kill(sleeper, wait=True)
                print(f"  run {i + 1}/{runs}: restore {ms(restore[-1])} ms (raw {ms(floor[-1]['total'])} ms), "
                      f"fork 10 {ms(fork[-1])} ms (raw {ms(fork_floor[-1])} ms), "
                      f"wake {ms(wake[-1])} ms, memory {before >> 10} -> {after >> 10} MiB")  # fmt: skip
        finally:
            Sandbox.delete_snapshot(snap.id, url=url, api_key=api_key)
    return {
        "restore": summary(restore),
        "raw_restore": {key: summary([f[key] for f in floor]) for key in ("prepare", "restore_exec", "total")},
        "raw_checkpoint_s": raw_checkpoint,
        "fork10": summary(fork),
        "raw_fork10": summary(fork_floor),
        "hibernate": summary(hibernate),
        "wake": summary(wake),
        "memory_kib": memory,
        "samples": {
            "restore": restore,
            "raw_restore": floor,
            "fork10": fork,
            "raw_fork10": fork_floor,
            "hibernate": hibernate,
            "wake": wake,
        },
    }


def wait_record_deleted(sandbox_id: str, timeout: float = 15.0) -> None:
    """Until runsc no longer knows the hibernated sandbox: the server deletes its record in the background."""
    deadline = time.monotonic() + timeout
    while runsc(STATE_ROOT / "runsc", "state", sandbox_id, check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"runsc still knows hibernated sandbox {sandbox_id} after {timeout:g} s")
        time.sleep(0.05)


def report(result: dict[str, Any]) -> dict[str, Any]:
    r, f, w = result["restore"], result["fork10"], result["wake"]
    floor = result["raw_restore"]
    before = max(b for b, _ in result["memory_kib"]) >> 10
    after = max(a for _, a in result["memory_kib"]) >> 10

    restore_ratio = ratio(r["median"], floor["total"]["median"])
    runsc_only_ratio = ratio(r["median"], floor["restore_exec"]["median"])
    print_table(
        f"lifecycle, {r['n']} runs (ms)",
        ["", "median", "p99", "min", "max", "target"],
        [
            ["create(snapshot=...) + first echo", *stat_cols(r), f"<= {RESTORE_TARGET_RATIO:g}x floor"],
            ["raw floor: prepare + runsc restore + runsc exec", *stat_cols(floor["total"]), ""],
            ["  prepare (copy upper, overlay, netns + veth, spec)", *stat_cols(floor["prepare"]), ""],
            ["  runsc restore -detach + runsc exec echo", *stat_cols(floor["restore_exec"]), ""],
            ["fork(10) + an echo in each", *stat_cols(f), f"<= {FORK_TARGET_S * 1000:g}"],
            ["raw floor: 10 runsc restore + exec at once", *stat_cols(result["raw_fork10"]), ""],
            ["hibernate (sbx.hibernate())", *stat_cols(result["hibernate"]), ""],
            ["wake a hibernated sandbox by an echo", *stat_cols(w), ""],
        ],
    )
    print(f"restore, corral / raw floor: {restore_ratio:.2f}x (target <= {RESTORE_TARGET_RATIO:g}x: "
          f"{verdict(restore_ratio, RESTORE_TARGET_RATIO)}); "
          f"against runsc restore + exec alone: {runsc_only_ratio:.2f}x")  # fmt: skip
    print(f"fork into 10, total: {ms(f['median'])} ms (target <= {FORK_TARGET_S * 1000:g} ms: "
          f"{verdict(f['median'], FORK_TARGET_S)})")  # fmt: skip
    print(f"raw runsc checkpoint (pause, checkpoint, copy upper, resume): {ms(result['raw_checkpoint_s'])} ms")
    print(f"host memory of a sandbox holding 64 MiB: {before} MiB running, {after} MiB hibernated")
    return {
        "runs": r["n"],
        "restore_median_ms": r["median"] * 1000,
        "restore_p99_ms": r["p99"] * 1000,
        "raw_restore_median_ms": floor["total"]["median"] * 1000,
        "raw_restore_p99_ms": floor["total"]["p99"] * 1000,
        "raw_runsc_restore_exec_median_ms": floor["restore_exec"]["median"] * 1000,
        "restore_ratio_median": restore_ratio,
        "restore_ratio_vs_runsc_only": runsc_only_ratio,
        "restore_met": restore_ratio <= RESTORE_TARGET_RATIO,
        "fork10_median_ms": f["median"] * 1000,
        "fork10_p99_ms": f["p99"] * 1000,
        "raw_fork10_median_ms": result["raw_fork10"]["median"] * 1000,
        "raw_fork10_p99_ms": result["raw_fork10"]["p99"] * 1000,
        "hibernate_median_ms": result["hibernate"]["median"] * 1000,
        "wake_median_ms": w["median"] * 1000,
        "running_mib": before,
        "hibernated_mib": after,
        "fork_met": f["median"] <= FORK_TARGET_S,
    }


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table."""
    ratio_target = f"<= {RESTORE_TARGET_RATIO:g}x"
    return [
        Row(f"restore a snapshot + first echo (n={h['runs']}), median", h["restore_median_ms"],
            h["raw_restore_median_ms"], target=ratio_target, met=h["restore_met"]),
        Row("restore a snapshot + first echo, p99", h["restore_p99_ms"], h["raw_restore_p99_ms"]),
        Row("fork into 10 + an echo in each, median", h["fork10_median_ms"], h["raw_fork10_median_ms"],
            target=f"<= {FORK_TARGET_S:g} s", met=h["fork_met"]),
        Row("fork into 10 + an echo in each, p99", h["fork10_p99_ms"], h["raw_fork10_p99_ms"]),
        *([Row("hibernate a sandbox, median", h["hibernate_median_ms"])] if "hibernate_median_ms" in h else []),
        Row("wake a hibernated sandbox by an echo, median", h["wake_median_ms"]),
    ]  # fmt: skip


def run(url: str | None, api_key: str | None, *, runs: int) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, runs)
    headline = report(result)
    write_json("lifecycle", {"runs": runs, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
