"""Every benchmark against one corral server, and one table of corral against the raw floor.

    .venv/bin/python bench/run_all.py [--quick] [--only ttfe,exec,...] [--url URL]

Each benchmark also writes its own ``bench/results/<name>.json``; the combined
table and every benchmark's headline go to ``bench/results/summary.json``,
the TTFE distributions to ``docs/benchmarks-ttfe.png``, and the table to the
generated section of ``docs/benchmarks.md``. ``--quick`` uses small counts
everywhere, to try the whole suite in a few minutes (its figures are rough).
A benchmark that fails is reported and the others still run; the exit status
is then 1. ``--time-limit`` bounds the whole run: the benchmark under way
unwinds (everything made is removed), the rest are skipped, and the table of
what ran is still written. ``--from-results`` measures nothing and writes the
table, the chart and the doc again from each benchmark's last JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import density
import exec as exec_bench
import files
import lifecycle
import pool
import preview as preview_bench
import report
import throughput
import ttfe
from _common import RESULTS_DIR, ROW_HEADERS, Row, base_parser, corral_url, print_table, run_main, write_json

import images as images_bench

FULL = {
    "ttfe_runs": 30, "burst": [20, 50], "exec_runs": 200, "cli_runs": 30, "throughput_sandboxes": 10,
    "throughput_calls": 30, "file_runs": 30, "big_file_runs": 3, "big_file_mib": 100, "density": 200,
    "pool_runs": 20, "lifecycle_runs": 5, "image_runs": 8, "preview_runs": 200, "time_limit": 4 * 3600,
}  # fmt: skip
QUICK = {
    "ttfe_runs": 3, "burst": [4, 8], "exec_runs": 20, "cli_runs": 3, "throughput_sandboxes": 3,
    "throughput_calls": 5, "file_runs": 5, "big_file_runs": 1, "big_file_mib": 16, "density": 5,
    "pool_runs": 3, "lifecycle_runs": 1, "image_runs": 1, "preview_runs": 20, "time_limit": 1800,
}  # fmt: skip


def benches(a: argparse.Namespace) -> dict[str, tuple[Callable[[str], dict[str, Any]], Callable[..., list[Row]]]]:
    """Each benchmark: how to run it against a server's URL, and its lines of the table."""
    key = a.api_key
    return {
        "ttfe": (lambda u: ttfe.run(u, key, runs=a.ttfe_runs, warmup=1, bursts=a.burst), ttfe.summary_rows),
        "pool": (lambda u: pool.run(u, key, runs=a.pool_runs), pool.summary_rows),
        "exec": (lambda u: exec_bench.run(u, key, runs=a.exec_runs, warmup=min(20, a.exec_runs), cli_runs=a.cli_runs),
                 exec_bench.summary_rows),
        "throughput": (lambda u: throughput.run(u, key, sandboxes=a.throughput_sandboxes, calls=a.throughput_calls),
                       throughput.summary_rows),
        "files": (lambda u: files.run(u, key, small_runs=a.file_runs, big_runs=a.big_file_runs,
                                      big_mib=a.big_file_mib), files.summary_rows),
        "lifecycle": (lambda u: lifecycle.run(u, key, runs=a.lifecycle_runs), lifecycle.summary_rows),
        "density": (lambda u: density.run(u, key, count=a.density), density.summary_rows),
        "images": (lambda u: images_bench.run(u, key, runs=a.image_runs), images_bench.summary_rows),
        "preview": (lambda u: preview_bench.run(u, key, runs=a.preview_runs, mib=16 if a.quick else 64),
                    preview_bench.summary_rows),
    }  # fmt: skip


def parse() -> argparse.Namespace:
    quick = "--quick" in sys.argv[1:]
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts everywhere: the whole suite in minutes")
    parser.add_argument("--only", help="these benchmarks alone, comma-separated (default: all)")
    parser.add_argument("--ttfe-runs", type=int, help="sequential time-to-first-exec runs (30; quick 3)")
    parser.add_argument(
        "--burst", type=int, action="append", help="a burst of this many creates (20 and 50; quick 4, 8)"
    )
    parser.add_argument("--exec-runs", type=int, help="exec latency rounds through the SDK (200; quick 20)")
    parser.add_argument("--cli-runs", type=int, help="exec rounds through the CLI (30; quick 3)")
    parser.add_argument("--throughput-sandboxes", type=int, help="sandboxes for exec throughput (10; quick 3)")
    parser.add_argument("--throughput-calls", type=int, help="execs in each for throughput (30; quick 5)")
    parser.add_argument("--file-runs", type=int, help="1 KiB write + read round trips (30; quick 5)")
    parser.add_argument("--big-file-runs", type=int, help="big file round trips (3; quick 1)")
    parser.add_argument("--big-file-mib", type=int, help="the big file's size in MiB (100; quick 16)")
    parser.add_argument("--density", type=int, help="idle sandboxes to reach for density (200; quick 5)")
    parser.add_argument("--pool-runs", type=int, help="warm pool runs (20; quick 3)")
    parser.add_argument("--lifecycle-runs", type=int, help="restore, fork and hibernation runs (5; quick 1)")
    parser.add_argument("--image-runs", type=int, help="image and template create runs (8; quick 1)")
    parser.add_argument("--preview-runs", type=int, help="preview proxy requests of each kind (200; quick 20)")
    parser.add_argument("--time-limit", type=int, help="seconds the whole run may take (4 h; quick 30 min)")
    parser.add_argument(
        "--from-results", action="store_true", help="measure nothing: the table again from bench/results/<name>.json"
    )
    args = parser.parse_args()
    for name, value in (QUICK if quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


class TimeUp(KeyboardInterrupt):
    """The run's ``--time-limit`` passed: the benchmark under way unwinds as on Ctrl-C; the table is still written."""


def _time_up(signum: int, frame: object) -> None:
    raise TimeUp


def measure(
    chosen: dict[str, Any], args: argparse.Namespace, headlines: dict[str, Any], failed: dict[str, str]
) -> None:
    """Run the chosen benchmarks against one server, one after the other, until the time limit."""
    signal.signal(signal.SIGALRM, _time_up)
    signal.alarm(args.time_limit)
    try:
        with corral_url(args.url) as url:
            for name, (run, _) in chosen.items():
                print(f"\n== {name}")
                try:
                    headlines[name] = run(url)
                except TimeUp:
                    failed[name] = (
                        f"stopped at the time limit ({args.time_limit} s); the benchmarks after it did not run"
                    )
                    break
                except Exception as exc:
                    traceback.print_exc()
                    failed[name] = f"{type(exc).__name__}: {exc}"
    except TimeUp:  # while the server stopped: its sandboxes were killed all the same
        pass
    finally:
        signal.alarm(0)


def from_results(chosen: dict[str, Any], headlines: dict[str, Any], failed: dict[str, str]) -> str:
    """Each benchmark's headline from its last ``bench/results/<name>.json``; answers the earliest date."""
    dates = []
    for name in chosen:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            failed[name] = f"no {path.name}"
            continue
        record = json.loads(path.read_text())
        headlines[name] = record["headline"]
        dates.append(record["at"][:10])
    return min(dates, default="")


def main() -> int:
    args = parse()
    chosen = benches(args)
    if args.only:
        chosen = {name: chosen[name] for name in args.only.split(",")}
    started, load = time.monotonic(), [os.getloadavg()[0]]
    headlines: dict[str, Any] = {}
    failed: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if args.from_results:
        extra = {"measured": from_results(chosen, headlines, failed), "from_results": True}
    else:
        measure(chosen, args, headlines, failed)
        extra = {"seconds": time.monotonic() - started, "load": [*load, os.getloadavg()[0]]}
    rows = [row for name, (_, lines) in chosen.items() if name in headlines for row in lines(headlines[name])]
    print_table("corral against the raw runsc floor", ROW_HEADERS, [r.cells() for r in rows])
    for name, error in failed.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    keys = ["measure", "corral", "raw", "ratio", "target", "verdict"]
    table = [{**dict(zip(keys, row.cells(), strict=True)), "values": row.record()} for row in rows]
    summary = {"quick": args.quick, **extra, "table": table, "failed": failed, **headlines}
    path = write_json("summary", summary)
    if not args.only:
        report.publish(report.load(path))
    return 1 if failed or not headlines.get("density", {}).get("all_answered", True) else 0


if __name__ == "__main__":
    run_main(main)
