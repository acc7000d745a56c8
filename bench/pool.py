"""Time to first exec from a warm pool: ``Sandbox.create()`` claiming a started sandbox, then ``echo hi``.

Beside it, the floor for a sandbox that is already running: ``runsc exec echo hi``
into a raw gVisor sandbox. Between runs the pool refills (untimed).

    .venv/bin/python bench/pool.py [--runs 20] [--url URL]
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from _common import (
    RawRunsc,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    ms,
    print_table,
    run_main,
    stat_cols,
    summary,
    verdict,
    write_json,
)

TARGET_MS = 25.0
KEY = "image:corral/base"


def wait_ready(url: str, headers: dict[str, str], n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pools = httpx.get(f"{url}/v1/pools", headers=headers).json()["pools"]
        if any(p["key"] == KEY and p["ready"] >= n for p in pools):
            return
        time.sleep(0.05)
    raise RuntimeError("the warm pool did not fill within 120 s")


def measure(url: str, api_key: str | None, runs: int) -> dict[str, Any]:
    headers = {"X-API-Key": api_key} if api_key else {}
    httpx.put(f"{url}/v1/pools/{KEY}", json={"size": 1}, headers=headers).raise_for_status()
    ours: list[float] = []
    floor: list[float] = []
    try:
        with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw:
            raw_sbx = raw.start()
            for i in range(runs + 1):
                wait_ready(url, headers, 1)
                t0 = time.perf_counter()
                sbx = sandboxes.create()
                out = sbx.commands.run("echo hi").stdout
                elapsed = time.perf_counter() - t0
                if out != "hi\n":
                    raise RuntimeError(f"sandbox {sbx.id} answered {out!r}")
                t1 = time.perf_counter()
                raw_sbx.exec("echo", "hi")
                raw_elapsed = time.perf_counter() - t1
                sandboxes.kill(sbx, wait=True)
                if i:  # the first is a warm-up
                    ours.append(elapsed)
                    floor.append(raw_elapsed)
                    print(f"  run {i}/{runs}: pooled create + echo {ms(elapsed)} ms, runsc exec {ms(raw_elapsed)} ms")
    finally:
        httpx.delete(f"{url}/v1/pools/{KEY}", headers=headers)
    return {"pooled": summary(ours), "runsc_exec": summary(floor), "samples": {"pooled": ours, "runsc_exec": floor}}


def report(result: dict[str, Any]) -> dict[str, Any]:
    p, r = result["pooled"], result["runsc_exec"]
    print_table(
        f"time to first exec from a warm pool, {p['n']} runs (ms)",
        ["", "median", "p99", "min", "max", "target", ""],
        [
            ["create() from the pool + run('echo hi')", *stat_cols(p), f"<= {TARGET_MS:g}",
             verdict(p["median"] * 1000, TARGET_MS)],
            ["runsc exec echo hi (running sandbox)", *stat_cols(r), "", ""],
        ],
    )  # fmt: skip
    return {"runs": p["n"], "pooled_median_ms": p["median"] * 1000, "pooled_p99_ms": p["p99"] * 1000,
            "runsc_exec_median_ms": r["median"] * 1000, "runsc_exec_p99_ms": r["p99"] * 1000,
            "target_ms": TARGET_MS, "met": p["median"] * 1000 <= TARGET_MS,
            "samples": result["samples"]}  # fmt: skip


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table: the floor is ``runsc exec`` into a running raw sandbox."""
    floor = "runsc exec, running"
    return [
        Row(f"time to first exec from a warm pool (n={h['runs']}), median", h["pooled_median_ms"],
            h["runsc_exec_median_ms"], floor_is=floor, target=f"<= {TARGET_MS:g} ms", met=h["met"]),
        Row("time to first exec from a warm pool, p99", h["pooled_p99_ms"], h["runsc_exec_p99_ms"], floor_is=floor),
    ]  # fmt: skip


def run(url: str | None, api_key: str | None, *, runs: int) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, runs)
    headline = report(result)
    write_json("pool", {"runs": runs, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs (default 20)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
