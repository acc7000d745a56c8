"""Exec throughput: ``commands.run("true")`` per second across N sandboxes at once, beside ``runsc exec``.

N sandboxes through the async SDK, one loop each running ``commands.run("true")``
back to back, all loops at once; the figure is every exec over the wall time.
The floor: N raw runsc sandboxes (``/bin/sleep infinity`` as init), one thread
each running ``runsc exec /bin/true`` back to back. Each side first runs two
unmeasured execs per sandbox (the first brings the programs into the sandbox's cache).

    .venv/bin/python bench/throughput.py [--sandboxes 10] [--calls 30] [--url URL]
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import (
    RawRunsc,
    RawSandbox,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    in_threads,
    print_table,
    raise_any,
    run_main,
    stat_cols,
    summary,
    write_json,
)

from corral import AsyncSandbox

WARMUP = 2


async def corral_rate(sandboxes: SandboxSet, n: int, calls: int) -> tuple[float, list[float]]:
    """Wall seconds for ``n * calls`` execs, and each one's latency."""
    boxes: list[AsyncSandbox] = []
    latencies: list[float] = []

    async def loop(sbx: AsyncSandbox, times: int, record: bool) -> None:
        for _ in range(times):
            t0 = time.perf_counter()
            await sbx.commands.run("true")
            if record:
                latencies.append(time.perf_counter() - t0)

    try:
        boxes.extend(await asyncio.gather(*(sandboxes.acreate() for _ in range(n))))
        await asyncio.gather(*(loop(s, WARMUP, False) for s in boxes))
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(s, calls, True) for s in boxes))
        return time.perf_counter() - t0, latencies
    finally:
        await sandboxes.akill(boxes)


def raw_rate(raw: RawRunsc, n: int, calls: int) -> tuple[float, list[float]]:
    boxes = [raw.new() for _ in range(n)]
    latencies: list[float] = []

    def loop(sbx: RawSandbox, times: int, record: bool) -> None:
        for _ in range(times):
            t0 = time.perf_counter()
            sbx.exec("/bin/true")
            if record:
                latencies.append(time.perf_counter() - t0)

    def boot(sbx: RawSandbox) -> None:
        sbx.prepare()
        sbx.run()
        loop(sbx, WARMUP, False)

    try:
        raise_any(in_threads(boot, boxes))
        t0 = time.perf_counter()
        raise_any(in_threads(lambda s: loop(s, calls, True), boxes))
        return time.perf_counter() - t0, latencies
    finally:
        raw.destroy_many(boxes)


def measure(url: str, api_key: str | None, n: int, calls: int) -> dict[str, Any]:
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw:
        corral_wall, corral_lat = asyncio.run(corral_rate(sandboxes, n, calls))
        raw_wall, raw_lat = raw_rate(raw, n, calls)
    total = n * calls
    return {
        "corral_per_s": total / corral_wall,
        "raw_per_s": total / raw_wall,
        "corral_latency": summary(corral_lat),
        "raw_latency": summary(raw_lat),
        "samples": {"corral": corral_lat, "raw": raw_lat},
    }


def report(result: dict[str, Any], n: int, calls: int) -> dict[str, Any]:
    print_table(
        f"exec throughput, {n} sandboxes x {calls} execs at once",
        ["", "exec/s", "latency median ms", "p99", "min", "max"],
        [
            ['SDK commands.run("true")', f"{result['corral_per_s']:.1f}", *stat_cols(result["corral_latency"])],
            ["raw floor: runsc exec /bin/true", f"{result['raw_per_s']:.1f}", *stat_cols(result["raw_latency"])],
        ],
    )
    return {
        "sandboxes": n,
        "calls": calls,
        "corral_per_s": result["corral_per_s"],
        "raw_per_s": result["raw_per_s"],
        "corral_latency_median_ms": result["corral_latency"]["median"] * 1000,
        "raw_latency_median_ms": result["raw_latency"]["median"] * 1000,
    }


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table."""
    return [Row(f"exec throughput across {h['sandboxes']} sandboxes", h["corral_per_s"], h["raw_per_s"], "exec/s")]


def run(url: str | None, api_key: str | None, *, sandboxes: int, calls: int) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, sandboxes, calls)
    headline = report(result, sandboxes, calls)
    write_json("throughput", {"headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=10, help="sandboxes of each kind (default 10)")
    parser.add_argument("--calls", type=int, default=30, help="measured execs in each (default 30)")
    args = parser.parse_args()
    run(args.url, args.api_key, sandboxes=args.sandboxes, calls=args.calls)
    return 0


if __name__ == "__main__":
    run_main(main)
