"""Time to first exec: ``Sandbox.create()`` until the first ``commands.run("echo hi")`` returns.

Beside it, the raw floor measured in the same run, interleaved with it: the
same sandbox made by hand (overlayfs over the same image rootfs, its own
network namespace and veth link, the same runsc flags), started with
``runsc run -detach`` around ``/bin/sleep infinity``, then ``runsc exec echo hi``.
Between the two, to show where the time goes, the same raw sandbox with
corral's agent as its init (no server): ``runsc run`` until the agent's
``/health`` answers, then ``process.Process/Start`` of ``bash -c 'echo hi'``
straight to the agent, which is what the server does for a shell command.
Each corral sandbox is killed and its teardown awaited (untimed) before the
next run, as each raw sandbox is destroyed (untimed), so runs never overlap.

Then bursts: N creates at once through the async SDK, each timed from the
burst's start until its own first ``echo hi`` returns; beside them, N raw
sandboxes made, run and exec-ed at once by hand (one thread each).

    .venv/bin/python bench/ttfe.py [--runs 30] [--warmup 1] [--burst 20 --burst 50] [--url URL]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
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
    ratio,
    run_main,
    stat_cols,
    summary,
    verdict,
    write_json,
)

from corral import AsyncSandbox

TARGET = 1.3
"""corral's time to first exec, at most this many times the raw floor's."""


def corral_once(sandboxes: SandboxSet) -> dict[str, float]:
    t0 = time.perf_counter()
    sbx = sandboxes.create()
    t1 = time.perf_counter()
    try:
        result = sbx.commands.run("echo hi")
    except Exception:
        print(f"first exec in {sbx.id} failed; its console:\n{sbx.logs(tail=40)}", file=sys.stderr)
        raise
    t2 = time.perf_counter()
    if result.stdout != "hi\n":
        raise RuntimeError(f"corral sandbox {sbx.id} answered {result.stdout!r}")
    sandboxes.kill(sbx, wait=True)
    return {"create": t1 - t0, "first_exec": t2 - t1, "total": t2 - t0}


def raw_once(raw: RawRunsc) -> dict[str, float]:
    sbx = raw.new()
    try:
        t0 = time.perf_counter()
        sbx.prepare()
        t1 = time.perf_counter()
        sbx.run()
        t2 = time.perf_counter()
        out = sbx.exec("echo", "hi")
        t3 = time.perf_counter()
    finally:
        raw.destroy(sbx)
    if out != b"hi\n":
        raise RuntimeError(f"raw sandbox {sbx.id} answered {out!r}")
    return {"prepare": t1 - t0, "run": t2 - t1, "exec": t3 - t2, "total": t3 - t0, "runsc": t3 - t1}


def raw_agent_once(raw: RawRunsc, agents: AgentCaller) -> dict[str, float]:
    sbx = raw.new(agent=True)
    try:
        t0 = time.perf_counter()
        sbx.prepare()
        sbx.run()
        t1 = time.perf_counter()
        agents.wait_healthy(sbx.agent_url)
        t2 = time.perf_counter()
        code, out = agents.run(sbx.agent_url, ["/bin/bash", "-c", "echo hi"])
        t3 = time.perf_counter()
    finally:
        raw.destroy(sbx)
    if (code, out) != (0, b"hi\n"):
        raise RuntimeError(f"agent in raw sandbox {sbx.id} answered {code}, {out!r}")
    return {"prepare_run": t1 - t0, "agent_up": t2 - t1, "exec": t3 - t2, "total": t3 - t0}


async def corral_burst(sandboxes: SandboxSet, n: int) -> tuple[list[float], list[str]]:
    """``n`` creates at once; each one's time from the start until its first ``echo`` returns, and the failures."""
    made: list[AsyncSandbox] = []

    async def one(t0: float) -> float:
        sbx = await sandboxes.acreate()
        made.append(sbx)
        result = await sbx.commands.run("echo hi")
        if result.stdout != "hi\n":
            raise RuntimeError(f"corral sandbox {sbx.id} answered {result.stdout!r}")
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        outcomes = await asyncio.gather(*(one(t0) for _ in range(n)), return_exceptions=True)
    finally:
        await sandboxes.akill(made)
    return _split(outcomes)


def raw_burst(raw: RawRunsc, n: int) -> tuple[list[float], list[str]]:
    """The floor of :func:`corral_burst`: ``n`` raw sandboxes prepared, run and exec-ed at once."""
    boxes = [raw.new() for _ in range(n)]

    def one(sbx: RawSandbox) -> float:
        sbx.prepare()
        sbx.run()
        if (out := sbx.exec("echo", "hi")) != b"hi\n":
            raise RuntimeError(f"raw sandbox {sbx.id} answered {out!r}")
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        outcomes = in_threads(one, boxes)
    finally:
        raw.destroy_many(boxes)
    return _split(outcomes)


def _split(outcomes: Sequence[float | BaseException]) -> tuple[list[float], list[str]]:
    times = [o for o in outcomes if isinstance(o, float)]
    return times, [repr(o) for o in outcomes if isinstance(o, BaseException)]


def measure_bursts(url: str, api_key: str | None, sizes: Sequence[int]) -> dict[str, Any]:
    bursts: dict[str, Any] = {}
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw:
        for n in sizes:
            corral, corral_failed = asyncio.run(corral_burst(sandboxes, n))
            floor, raw_failed = raw_burst(raw, n)
            bursts[str(n)] = {
                "corral": summary(corral),
                "raw": summary(floor),
                "failed": {"corral": corral_failed, "raw": raw_failed},
                "samples": {"corral": corral, "raw": floor},
            }
            print(f"  burst of {n}: corral median {ms(bursts[str(n)]['corral']['median'])} ms "
                  f"({len(corral_failed)} failed), raw median {ms(bursts[str(n)]['raw']['median'])} ms "
                  f"({len(raw_failed)} failed)")  # fmt: skip
            for failure in corral_failed[:3] + raw_failed[:3]:
                print(f"    {failure}", file=sys.stderr)
    return bursts


def measure(url: str, api_key: str | None, runs: int, warmup: int) -> dict[str, Any]:
    series: dict[str, dict[str, list[float]]] = {"corral": {}, "raw_agent": {}, "raw": {}}
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw, AgentCaller() as agents:
        kinds: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("corral", lambda: corral_once(sandboxes)),
            ("raw_agent", lambda: raw_agent_once(raw, agents)),
            ("raw", lambda: raw_once(raw)),
        ]
        for i in range(warmup + runs):
            # Alternate the order, so none always runs on a host another one just warmed.
            for name, once in kinds if i % 2 == 0 else kinds[::-1]:
                times = once()
                if i >= warmup:
                    for key, value in times.items():
                        series[name].setdefault(key, []).append(value)
            if i >= warmup:
                last = {name: ms(s["total"][-1]) for name, s in series.items()}
                print(f"  run {i - warmup + 1}/{runs}: " + ", ".join(f"{k} {v} ms" for k, v in last.items()))
    return {
        **{name: {k: summary(v) for k, v in s.items()} for name, s in series.items()},
        "samples": series,
    }


def report(result: dict[str, Any], bursts: dict[str, Any]) -> dict[str, Any]:
    """Print the tables; answer the headline numbers."""
    c, a, r = result["corral"], result["raw_agent"], result["raw"]
    rows = [
        ["corral: create() + first run('echo hi')", *stat_cols(c["total"])],
        ["  create()", *stat_cols(c["create"])],
        ["  first commands.run('echo hi')", *stat_cols(c["first_exec"])],
        ["raw + corral's agent, no server", *stat_cols(a["total"])],
        ["  prepare + runsc run -detach", *stat_cols(a["prepare_run"])],
        ["  until the agent's /health answers", *stat_cols(a["agent_up"])],
        ["  agent Start bash -c 'echo hi'", *stat_cols(a["exec"])],
        ["raw floor: prepare + runsc run + runsc exec", *stat_cols(r["total"])],
        ["  prepare (overlay, netns + veth, spec)", *stat_cols(r["prepare"])],
        ["  runsc run -detach", *stat_cols(r["run"])],
        ["  runsc exec echo hi", *stat_cols(r["exec"])],
    ]
    for n, b in bursts.items():
        rows.append([f"burst of {n}, corral ({len(b['failed']['corral'])} failed)", *stat_cols(b["corral"])])
        rows.append([f"burst of {n}, raw floor ({len(b['failed']['raw'])} failed)", *stat_cols(b["raw"])])
    n = c["total"]["n"]
    print_table(f"time to first exec, {n} sequential runs and bursts (ms)", ["", "median", "p99", "min", "max"], rows)
    headline = {
        "corral_median_ms": c["total"]["median"] * 1000,
        "corral_p99_ms": c["total"]["p99"] * 1000,
        "raw_median_ms": r["total"]["median"] * 1000,
        "raw_p99_ms": r["total"]["p99"] * 1000,
        "ratio_median": ratio(c["total"]["median"], r["total"]["median"]),
        "ratio_p99": ratio(c["total"]["p99"], r["total"]["p99"]),
        "ratio_median_vs_runsc_only": ratio(c["total"]["median"], r["runsc"]["median"]),
        "target": TARGET,
        "bursts": {
            n: {
                "corral_median_ms": b["corral"]["median"] * 1000,
                "corral_p99_ms": b["corral"]["p99"] * 1000,
                "raw_median_ms": b["raw"]["median"] * 1000,
                "raw_p99_ms": b["raw"]["p99"] * 1000,
                "failed": {k: len(v) for k, v in b["failed"].items()},
            }
            for n, b in bursts.items()
        },
        "samples": {
            "sequential": {"corral": result["samples"]["corral"]["total"], "raw": result["samples"]["raw"]["total"]},
            **{f"burst {n}": b["samples"] for n, b in bursts.items()},
        },
    }
    headline["met"] = headline["ratio_median"] <= TARGET
    print_table(
        "corral / raw floor",
        ["", "ratio", "target", ""],
        [
            ["median", f"{headline['ratio_median']:.2f}x", f"<= {TARGET}x", verdict(headline["ratio_median"], TARGET)],
            ["p99", f"{headline['ratio_p99']:.2f}x", f"<= {TARGET}x", verdict(headline["ratio_p99"], TARGET)],
            ["median, floor without prepare", f"{headline['ratio_median_vs_runsc_only']:.2f}x", "", ""],
        ],
    )
    return headline


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table."""
    target = f"<= {TARGET}x"
    rows = [
        Row(f"time to first exec, sequential (n={h['runs']}), median", h["corral_median_ms"], h["raw_median_ms"],
            target=target, met=h["ratio_median"] <= TARGET),
        Row("time to first exec, sequential, p99", h["corral_p99_ms"], h["raw_p99_ms"],
            target=target, met=h["ratio_p99"] <= TARGET),
    ]  # fmt: skip
    for n, b in h["bursts"].items():
        failed = sum(b["failed"].values())
        note = f", {b['failed']['corral']}+{b['failed']['raw']} failed" if failed else ""
        for stat in ("median", "p99"):
            rows.append(Row(f"time to first exec, burst of {n}{note}, {stat}",
                            b[f"corral_{stat}_ms"], b[f"raw_{stat}_ms"]))  # fmt: skip
    return rows


def run(url: str | None, api_key: str | None, *, runs: int, warmup: int, bursts: Sequence[int] = ()) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, runs, warmup)
        burst_results = measure_bursts(base, api_key, bursts)
    headline = {"runs": runs, **report(result, burst_results)}
    write_json("ttfe", {"runs": runs, "warmup": warmup, "headline": headline, **result, "bursts": burst_results})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="measured sequential runs of each (default 30)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each first (default 1)")
    parser.add_argument("--burst", type=int, action="append", help="a burst of this many at once (repeat)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs, warmup=args.warmup, bursts=args.burst or [])
    return 0


if __name__ == "__main__":
    run_main(main)
