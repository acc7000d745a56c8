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

    .venv/bin/python bench/ttfe.py [--runs 20] [--warmup 1] [--url URL]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from _common import (
    AgentCaller,
    RawRunsc,
    SandboxSet,
    base_parser,
    corral_url,
    ms,
    print_table,
    ratio,
    run_main,
    summary,
    verdict,
    write_json,
)

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


def report(result: dict[str, Any]) -> dict[str, Any]:
    """Print the table; answer the headline numbers."""
    c, a, r = result["corral"], result["raw_agent"], result["raw"]
    rows = [
        ["corral: create() + first run('echo hi')", *_cols(c["total"])],
        ["  create()", *_cols(c["create"])],
        ["  first commands.run('echo hi')", *_cols(c["first_exec"])],
        ["raw + corral's agent, no server", *_cols(a["total"])],
        ["  prepare + runsc run -detach", *_cols(a["prepare_run"])],
        ["  until the agent's /health answers", *_cols(a["agent_up"])],
        ["  agent Start bash -c 'echo hi'", *_cols(a["exec"])],
        ["raw floor: prepare + runsc run + runsc exec", *_cols(r["total"])],
        ["  prepare (overlay, netns + veth, spec)", *_cols(r["prepare"])],
        ["  runsc run -detach", *_cols(r["run"])],
        ["  runsc exec echo hi", *_cols(r["exec"])],
    ]
    n = c["total"]["n"]
    print_table(f"time to first exec, {n} sequential runs (ms)", ["", "median", "p99", "min", "max"], rows)
    headline = {
        "corral_median_ms": c["total"]["median"] * 1000,
        "corral_p99_ms": c["total"]["p99"] * 1000,
        "raw_median_ms": r["total"]["median"] * 1000,
        "raw_p99_ms": r["total"]["p99"] * 1000,
        "ratio_median": ratio(c["total"]["median"], r["total"]["median"]),
        "ratio_p99": ratio(c["total"]["p99"], r["total"]["p99"]),
        "ratio_median_vs_runsc_only": ratio(c["total"]["median"], r["runsc"]["median"]),
        "target": TARGET,
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


def _cols(s: dict[str, float]) -> list[str]:
    return [ms(s["median"]), ms(s["p99"]), ms(s["min"]), ms(s["max"])]


def run(url: str | None, api_key: str | None, *, runs: int, warmup: int) -> dict[str, Any]:
    with corral_url(url) as base:
        result = measure(base, api_key, runs, warmup)
    headline = report(result)
    write_json("ttfe", {"runs": runs, "warmup": warmup, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each first (default 1)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs, warmup=args.warmup)
    return 0


if __name__ == "__main__":
    run_main(main)
