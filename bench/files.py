"""Files: a write then a read of the same bytes through the SDK, beside the same through ``runsc exec``.

For each size (1 KiB and 100 MiB by default): ``sbx.files.write(path, data)``
then ``sbx.files.read(path, format="bytes")``, checked byte for byte; the floor
moves the same bytes into and out of a raw runsc sandbox with
``runsc exec sh -c 'cat > path'`` (the data on its stdin) and ``runsc exec cat
path`` (to its stdout). Both land in the sandbox's ``/tmp`` (the overlay's
upper dir on the host, in both). The two alternate, each going first in half
the runs.

    .venv/bin/python bench/files.py [--small-runs 30] [--big-runs 3] [--big-mib 100] [--url URL]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from _common import (
    RawRunsc,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    print_table,
    run_main,
    stat_cols,
    summary,
    write_json,
)

PATH = "/tmp/bench-file"
MIB = 1 << 20


def round_trip(write: Callable[[bytes], object], read: Callable[[], bytes], data: bytes) -> dict[str, float]:
    t0 = time.perf_counter()
    write(data)
    t1 = time.perf_counter()
    back = read()
    t2 = time.perf_counter()
    if back != data:
        raise RuntimeError(f"read back {len(back)} bytes that differ from the {len(data)} written")
    return {"write": t1 - t0, "read": t2 - t1, "total": t2 - t0}


def measure(url: str, api_key: str | None, sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``sizes``: a label for each size, and its bytes and runs."""
    result: dict[str, Any] = {}
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw:
        sbx = sandboxes.create()
        floor = raw.start()
        sides: dict[str, tuple[Callable[[bytes], object], Callable[[], bytes]]] = {
            "corral": (lambda d: sbx.files.write(PATH, d), lambda: sbx.files.read(PATH, format="bytes")),
            "raw": (lambda d: floor.exec("/bin/sh", "-c", f"cat > {PATH}", input=d), lambda: floor.exec("cat", PATH)),
        }
        for label, (size, runs) in sizes.items():
            data = os.urandom(size)
            samples: dict[str, list[dict[str, float]]] = {"corral": [], "raw": []}
            for i in range(runs + 1):  # the first of each is a warm-up
                for name, (write, read) in sides.items() if i % 2 else reversed(sides.items()):
                    times = round_trip(write, read, data)
                    if i:
                        samples[name].append(times)
            result[label] = {
                "bytes": size,
                **{
                    name: {key: summary([t[key] for t in s]) for key in ("write", "read", "total")}
                    for name, s in samples.items()
                },
            }
            print(f"  {label}: {runs} runs")
    return result


def report(result: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for label, r in result.items():
        for name, who in (("corral", "SDK files.write + files.read"), ("raw", "raw floor: runsc exec cat")):
            rows.append([f"{label}, {who}", *stat_cols(r[name]["total"])])
            rows.append(["  write", *stat_cols(r[name]["write"])])
            rows.append(["  read", *stat_cols(r[name]["read"])])
    print_table("file write + read (ms)", ["", "median", "p99", "min", "max"], rows)
    return {
        label: {
            "bytes": r["bytes"],
            "runs": r["corral"]["total"]["n"],
            **{
                f"{name}_{stat}_ms": r[name]["total"][stat] * 1000
                for name in ("corral", "raw")
                for stat in ("median", "p99")
            },
        }
        for label, r in result.items()
    }


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table."""
    return [
        Row(f"file write + read, {label} (n={r['runs']}), {stat}", r[f"corral_{stat}_ms"], r[f"raw_{stat}_ms"])
        for label, r in h.items()
        for stat in ("median", "p99")
    ]


def size_plan(small_runs: int, big_runs: int, big_mib: int) -> dict[str, tuple[int, int]]:
    return {"1 KiB": (1024, small_runs), f"{big_mib} MiB": (big_mib * MIB, big_runs)}


def run(url: str | None, api_key: str | None, *, small_runs: int, big_runs: int, big_mib: int) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, size_plan(small_runs, big_runs, big_mib))
    headline = report(result)
    write_json("files", {"headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--small-runs", type=int, default=30, help="measured 1 KiB round trips (default 30)")
    parser.add_argument("--big-runs", type=int, default=3, help="measured big round trips (default 3)")
    parser.add_argument("--big-mib", type=int, default=100, help="the big file's size in MiB (default 100)")
    args = parser.parse_args()
    run(args.url, args.api_key, small_runs=args.small_runs, big_runs=args.big_runs, big_mib=args.big_mib)
    return 0


if __name__ == "__main__":
    run_main(main)
