"""What ``run_all`` publishes: the TTFE chart and the generated section of ``docs/benchmarks.md``.

.venv/bin/python bench/report.py    # the section and chart again, from bench/results/summary.json
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, RESULTS_DIR

DOCS = BENCH_DIR.parent / "docs"
DOC = DOCS / "benchmarks.md"
CHART = DOCS / "benchmarks-ttfe.png"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def ttfe_chart(series: Mapping[str, Sequence[float]], path: Path = CHART) -> Path:
    """Box plots of time-to-first-exec samples (seconds), one row per series, on a log scale in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = {label: [v * 1000 for v in values] for label, values in series.items() if values}
    labels = list(kept)[::-1]  # the first series on top
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2), dpi=110)
    boxes = ax.boxplot(
        [kept[label] for label in labels], orientation="horizontal", tick_labels=labels, widths=0.6, patch_artist=True
    )
    for y, (label, box) in enumerate(zip(labels, boxes["boxes"], strict=True), start=1):
        color = "tab:blue" if "corral" in label else "tab:gray"
        box.set(facecolor=color, alpha=0.3)
        ax.scatter(kept[label], [y] * len(kept[label]), s=6, alpha=0.5, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("time to first exec (ms, log scale)")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_title("corral against the raw runsc floor: create until the first echo returns")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def chart_series(summary: Mapping[str, Any]) -> dict[str, list[float]]:
    """The TTFE samples in ``summary.json``, labelled for the chart."""
    series: dict[str, list[float]] = {}
    for kind, samples in summary["ttfe"]["samples"].items():
        series[f"{kind}, corral"] = samples["corral"]
        series[f"{kind}, raw runsc"] = samples["raw"]
    pool = summary.get("pool", {}).get("samples", {})
    if pool:
        series["warm pool, corral"] = pool["pooled"]
        series["warm pool floor: runsc exec, running"] = pool["runsc_exec"]
    return series


def section(summary: Mapping[str, Any]) -> str:
    """The generated part of ``docs/benchmarks.md``: when, where, the table and the chart."""
    host = summary["host"]
    lines = [
        BEGIN,
        "<!-- Written by bench/run_all.py from bench/results/summary.json: edit the code, not this. -->",
        "",
        f"{_when(summary)} on {host['cpus']} cores, kernel {host['kernel']}, {host['runsc']}, "
        f"corral {host['corral']}, Python {host['python']}.{_load(summary)}"
        + (" Quick mode: small counts, rough figures." if summary.get("quick") else ""),
        "",
        "| measure | corral | raw floor | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["table"]:
        cells = [row["measure"], row["corral"], row["raw"], row["ratio"], row["target"], row["verdict"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for name, error in summary.get("failed", {}).items():
        lines += ["", f"**{name} failed** in this run: `{error}`"]
    lines += ["", f"![time to first exec, distributions]({CHART.name})", "", END]
    return "\n".join(lines)


def _when(summary: Mapping[str, Any]) -> str:
    """When and how the figures were made."""
    command = "bench/run_all.py" + (" --quick" if summary.get("quick") else "")
    took = f" in {summary['seconds']:.0f} s" if summary.get("seconds") else ""
    return f"{summary.get('measured') or summary['at'][:10]}, `{command}`{took}"


def _load(summary: Mapping[str, Any]) -> str:
    if len(load := summary.get("load", [])) != 2:
        return ""
    return f" The host's load average: {load[0]:.1f} at the start, {load[1]:.1f} at the end (other work shares it)."


def write_doc(summary: Mapping[str, Any], path: Path = DOC) -> None:
    """Replace what stands between the markers in ``path`` (or append the section)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = section(summary)
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def load(path: Path = RESULTS_DIR / "summary.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def publish(summary: Mapping[str, Any]) -> None:
    """The chart (when the TTFE benchmark ran) and the doc's generated section."""
    if "ttfe" in summary:
        ttfe_chart(chart_series(summary))
    write_doc(summary)
    print(f"wrote {CHART.relative_to(BENCH_DIR.parent)} and the figures in {DOC.relative_to(BENCH_DIR.parent)}")


if __name__ == "__main__":
    publish(load())
