"""Images and templates: create from a large image against a tiny one; TTFE from a template against the base.

1. Copy-on-write: ``Sandbox.create(image)`` until the first ``echo`` returns, for
   a large image (corral/base plus a 1 GiB layer: well over 1 GB of rootfs) and
   a tiny one (static busybox), interleaved. Nothing is copied, so the ratio
   should stay near 1 (target <= 1.2x).
2. Templates: a template on corral/base whose start command is a web server
   and whose readiness check fetches from it: ``Sandbox.create(template=...)``
   until the first ``echo`` returns (the server already answering), beside the
   same from the base image with nothing started.

The images are made once in the local store (``corral/bench/large``,
``corral/bench/tiny``) and kept for later runs; ``corral image rm`` removes them.

    .venv/bin/python bench/images.py [--runs 10] [--url URL]
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from _common import (
    IMAGES,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    ms,
    print_table,
    ratio,
    run_main,
    stat_cols,
    summary,
    verdict,
    write_json,
)

from corral import Templates
from corral.images.store import Image, ImageStore

TARGET = 1.2
LARGE, TINY, TEMPLATE = "corral/bench/large", "corral/bench/tiny", "bench-web"
LARGE_BYTES = 1 << 30
TEMPLATE_DOCKERFILE = "FROM corral/base\nRUN mkdir -p /srv && echo hello > /srv/index.html\n"


def ensure_images() -> None:
    """Make the large and the tiny image in the shared store, unless they are there."""
    store = ImageStore(IMAGES.parent)
    if store.lookup(LARGE) is None:
        base = store.resolve("corral/base")
        print(f"  making {LARGE}: corral/base + {LARGE_BYTES >> 20} MiB layer ...")
        work = store.work_dir("bench-large")
        block = bytes(range(256)) * 4096  # 1 MiB, not sparse
        (work / "data").mkdir()
        for i in range(LARGE_BYTES // len(block)):
            (work / "data" / f"{i:04d}.bin").write_bytes(block)
        _add(store, work, parent=base, name=LARGE)
    if store.lookup(TINY) is None:
        print(f"  making {TINY}: static busybox")
        work = store.work_dir("bench-tiny")
        (work / "bin").mkdir()
        shutil.copy2("/bin/busybox", work / "bin" / "busybox")
        for tool in ("sh", "echo", "true"):
            (work / "bin" / tool).symlink_to("busybox")
        (work / "etc").mkdir()
        (work / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (work / "tmp").mkdir(mode=0o1777)
        _add(store, work, parent=None, name=TINY)


def _add(store: ImageStore, tree: Path, *, parent: Image | None, name: str) -> None:
    tree.chmod(0o755)
    store.stack(tree, parent=parent, source="commit", names=(name,))


def ttfe_once(sandboxes: SandboxSet, **create: Any) -> float:
    t0 = time.perf_counter()
    sbx = sandboxes.create(**create)
    out = sbx.commands.run("echo hi").stdout
    elapsed = time.perf_counter() - t0
    if out != "hi\n":
        raise RuntimeError(f"sandbox {sbx.id} answered {out!r}")
    sandboxes.kill(sbx, wait=True)
    return elapsed


def measure(url: str, api_key: str | None, runs: int) -> dict[str, Any]:
    ensure_images()
    with Templates(url=url, api_key=api_key) as templates:
        templates.build(
            TEMPLATE,
            dockerfile=TEMPLATE_DOCKERFILE,
            start_cmd="cd /srv && exec python3 -m http.server 8000",
            ready_cmd="curl -sf http://127.0.0.1:8000/ >/dev/null",
        )
    series: dict[str, list[float]] = {"large": [], "tiny": [], "template": [], "base": []}
    kinds = [
        ("large", {"image": LARGE}),
        ("tiny", {"image": TINY}),
        ("template", {"template": TEMPLATE}),
        ("base", {"image": "corral/base"}),
    ]
    with SandboxSet(url, api_key) as sandboxes:
        for options in (dict(k[1]) for k in kinds):  # warm-up, unmeasured
            ttfe_once(sandboxes, **options)
        for i in range(runs):
            for name, options in kinds if i % 2 == 0 else kinds[::-1]:
                series[name].append(ttfe_once(sandboxes, **options))
            print(f"  run {i + 1}/{runs}: " + ", ".join(f"{k} {ms(v[-1])} ms" for k, v in series.items()))
    return {name: summary(values) for name, values in series.items()} | {"samples": series}


def report(result: dict[str, Any]) -> dict[str, Any]:
    rows = [
        [f"create + first exec, {LARGE} (> 1 GB rootfs)", *stat_cols(result["large"])],
        [f"create + first exec, {TINY}", *stat_cols(result["tiny"])],
        [f"create(template={TEMPLATE}) + first exec, web server ready", *stat_cols(result["template"])],
        ["create(corral/base) + first exec, nothing started", *stat_cols(result["base"])],
    ]
    print_table(f"images, {result['large']['n']} runs each (ms)", ["", "median", "p99", "min", "max"], rows)
    large_vs_tiny = ratio(result["large"]["median"], result["tiny"]["median"])
    template_vs_base = ratio(result["template"]["median"], result["base"]["median"])
    print_table(
        "ratios",
        ["", "ratio", "target", ""],
        [
            [
                "large image / tiny image, median",
                f"{large_vs_tiny:.2f}x",
                f"<= {TARGET}x",
                verdict(large_vs_tiny, TARGET),
            ],
            ["template (start + ready) / base, median", f"{template_vs_base:.2f}x", "", ""],
        ],
    )
    return {
        "large_median_ms": result["large"]["median"] * 1000,
        "tiny_median_ms": result["tiny"]["median"] * 1000,
        "template_median_ms": result["template"]["median"] * 1000,
        "base_median_ms": result["base"]["median"] * 1000,
        "ratio_large_tiny": large_vs_tiny,
        "ratio_template_base": template_vs_base,
        "target": TARGET,
        "met": large_vs_tiny <= TARGET,
    }


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table: here the floors are corral's own smaller cases."""
    return [
        Row("create + first exec, 1.6 GB image, median", h["large_median_ms"], h["tiny_median_ms"],
            floor_is="tiny image", target=f"<= {TARGET}x", met=h["met"]),
        Row("create from a template (web server ready) + first exec, median", h["template_median_ms"],
            h["base_median_ms"], floor_is="corral/base"),
    ]  # fmt: skip


def run(url: str | None, api_key: str | None, *, runs: int) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, runs)
    headline = report(result)
    write_json("images", {"runs": runs, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs of each (default 10)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
