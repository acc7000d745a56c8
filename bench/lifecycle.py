"""Restore, fork and hibernation through the SDK.

- restore: ``Sandbox.create(snapshot=...)`` until the first ``echo`` returns (no raw
  ``runsc restore`` floor beside it yet);
- fork: ``sbx.fork(10)`` in one call, until all ten answer an ``echo``;
- hibernation: host memory (PSS of the sandbox's processes) before and after
  ``sbx.hibernate()``, and the time an ``echo`` takes to wake it.

    .venv/bin/python bench/lifecycle.py [--runs 5] [--url URL]
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from _common import SandboxSet, base_parser, corral_url, ms, print_table, run_main, summary, write_json

from corral import Sandbox

FORK_TARGET_S = 1.5


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


def measure(url: str, api_key: str | None, runs: int) -> dict[str, Any]:
    restore: list[float] = []
    fork: list[float] = []
    wake: list[float] = []
    memory: list[tuple[int, int]] = []
    with SandboxSet(url, api_key) as sandboxes:
        source = sandboxes.create()
        source.commands.run("sleep 1000", background=True)
        snap = source.snapshot()
        try:
            for i in range(runs):
                t0 = time.perf_counter()
                sbx = sandboxes.create(snapshot=snap.id)
                sbx.commands.run("echo hi")
                restore.append(time.perf_counter() - t0)
                sandboxes.kill(sbx, wait=True)

                t0 = time.perf_counter()
                children = source.fork(10, timeout=300)
                for child in children:
                    child.commands.run("echo hi")
                fork.append(time.perf_counter() - t0)
                for child in children:
                    sandboxes.live[child.id] = child
                    sandboxes.kill(child, wait=False)

                sleeper = sandboxes.create()
                sleeper.commands.run("python3 -c 'x = bytearray(64 << 20); import time; time.sleep(1000)'",
                                     background=True)  # fmt: skip
                time.sleep(1.0)
                before = sandbox_pss_kib(sleeper.id)
                sleeper.hibernate()
                after = sandbox_pss_kib(sleeper.id)
                t0 = time.perf_counter()
                sleeper.commands.run("echo hi")
                wake.append(time.perf_counter() - t0)
                memory.append((before, after))
                sandboxes.kill(sleeper, wait=True)
                print(f"  run {i + 1}/{runs}: restore {ms(restore[-1])} ms, fork 10 {ms(fork[-1])} ms, "
                      f"wake {ms(wake[-1])} ms, memory {before >> 10} -> {after >> 10} MiB")  # fmt: skip
        finally:
            Sandbox.delete_snapshot(snap.id, url=url, api_key=api_key)
    return {
        "restore": summary(restore),
        "fork10": summary(fork),
        "wake": summary(wake),
        "memory_kib": memory,
        "samples": {"restore": restore, "fork10": fork, "wake": wake},
    }


def report(result: dict[str, Any]) -> dict[str, Any]:
    r, f, w = result["restore"], result["fork10"], result["wake"]
    before = max(b for b, _ in result["memory_kib"]) >> 10
    after = max(a for _, a in result["memory_kib"]) >> 10
    print_table(
        f"lifecycle, {r['n']} runs (ms)",
        ["", "median", "p99", "min", "max", "target"],
        [
            ["create(snapshot=...) + first echo", ms(r["median"]), ms(r["p99"]), ms(r["min"]), ms(r["max"]), ""],
            ["fork(10) + an echo in each", ms(f["median"]), ms(f["p99"]), ms(f["min"]), ms(f["max"]),
             f"<= {FORK_TARGET_S * 1000:g}"],
            ["wake a hibernated sandbox by an echo", ms(w["median"]), ms(w["p99"]), ms(w["min"]), ms(w["max"]), ""],
        ],
    )  # fmt: skip
    print(f"host memory of a sandbox holding 64 MiB: {before} MiB running, {after} MiB hibernated")
    return {
        "restore_median_ms": r["median"] * 1000,
        "fork10_median_ms": f["median"] * 1000,
        "wake_median_ms": w["median"] * 1000,
        "running_mib": before,
        "hibernated_mib": after,
        "fork_met": f["median"] <= FORK_TARGET_S,
    }


def run(url: str | None, api_key: str | None, *, runs: int) -> dict[str, Any]:
    with corral_url(url) as base:
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
