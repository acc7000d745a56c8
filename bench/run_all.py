"""Every benchmark against one corral server, and one table of corral against the raw floor.

    .venv/bin/python bench/run_all.py [--ttfe-runs 20] [--exec-runs 200] [--count 10] [--url URL]

Each benchmark also writes its own ``bench/results/<name>.json``; the
combined table goes to ``bench/results/summary.json``.
"""

from __future__ import annotations

import time

import density
import exec as exec_bench
import preview as preview_bench
import ttfe
from _common import base_parser, corral_url, print_table, run_main, write_json

import images as images_bench


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--ttfe-runs", type=int, default=20, help="time-to-first-exec runs (default 20)")
    parser.add_argument("--exec-runs", type=int, default=200, help="exec latency rounds (default 200)")
    parser.add_argument("--count", type=int, default=10, help="sandboxes of each kind for density (default 10)")
    parser.add_argument("--image-runs", type=int, default=8, help="image and template create runs (default 8)")
    args = parser.parse_args()

    started = time.monotonic()
    with corral_url(args.url) as url:
        print(f"== time to first exec ({args.ttfe_runs} runs)")
        first = ttfe.run(url, args.api_key, runs=args.ttfe_runs, warmup=1)
        print(f"\n== exec latency ({args.exec_runs} rounds)")
        lat = exec_bench.run(url, args.api_key, runs=args.exec_runs, warmup=20)
        print(f"\n== density ({args.count} sandboxes of each kind)")
        mem = density.run(url, args.api_key, count=args.count)
        print(f"\n== images and templates ({args.image_runs} runs)")
        img = images_bench.run(url, args.api_key, runs=args.image_runs)
        print("\n== preview proxy")
        pre = preview_bench.run(url, args.api_key, runs=200, mib=64)

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        [
            "time to first exec, median",
            f"{first['corral_median_ms']:.0f} ms",
            f"{first['raw_median_ms']:.0f} ms",
            f"{first['ratio_median']:.2f}x",
            f"<= {ttfe.TARGET}x",
            met(first["ratio_median"] <= ttfe.TARGET),
        ],
        [
            "time to first exec, p99",
            f"{first['corral_p99_ms']:.0f} ms",
            f"{first['raw_p99_ms']:.0f} ms",
            f"{first['ratio_p99']:.2f}x",
            f"<= {ttfe.TARGET}x",
            met(first["ratio_p99"] <= ttfe.TARGET),
        ],
        [
            'commands.run("true"), p50',
            f"{lat['sdk_p50_ms']:.1f} ms",
            f"{lat['raw_p50_ms']:.1f} ms",
            f"{lat['ratio_p50']:.2f}x",
            f"<= {lat['target_p50_ms']:g} ms",
            met(lat["met"]),
        ],
        [
            'commands.run("true"), p99',
            f"{lat['sdk_p99_ms']:.1f} ms",
            f"{lat['raw_p99_ms']:.1f} ms",
            f"{lat['sdk_p99_ms'] / lat['raw_p99_ms']:.2f}x",
            "",
            "",
        ],
        [
            "memory per idle sandbox (PSS)",
            f"{mem['corral_pss_mib']:.1f} MiB",
            f"{mem['raw_pss_mib']:.1f} MiB",
            f"{mem['ratio_pss']:.2f}x",
            f"<= {density.TARGET}x",
            met(mem["met"]),
        ],
        [
            "create + first exec, 1.6 GB image vs tiny, median",
            f"{img['large_median_ms']:.0f} ms",
            f"{img['tiny_median_ms']:.0f} ms (tiny image)",
            f"{img['ratio_large_tiny']:.2f}x",
            f"<= {images_bench.TARGET}x",
            met(img["met"]),
        ],
        [
            "create from a template (web server ready) + first exec, median",
            f"{img['template_median_ms']:.0f} ms",
            f"{img['base_median_ms']:.0f} ms (corral/base)",
            f"{img['ratio_template_base']:.2f}x",
            "",
            "",
        ],
        [
            "preview proxy throughput (vs a direct connection)",
            f"{pre['proxy_mib_s']:.0f} MiB/s",
            f"{pre['direct_mib_s']:.0f} MiB/s (direct)",
            f"{pre['throughput_ratio']:.2f}x",
            f">= {preview_bench.TARGET_THROUGHPUT}x",
            met(pre["throughput_ratio"] >= preview_bench.TARGET_THROUGHPUT),
        ],
        [
            "preview proxy added p50 latency (kept-alive)",
            f"{pre['added_p50_kept_ms']:+.2f} ms",
            "",
            "",
            f"<= {preview_bench.TARGET_ADDED_P50 * 1000:g} ms",
            met(pre["added_p50_kept_ms"] <= preview_bench.TARGET_ADDED_P50 * 1000),
        ],
    ]
    headers = ["", "corral", "raw runsc", "ratio", "target", ""]
    print_table(f"corral against the raw runsc floor ({time.monotonic() - started:.0f} s)", headers, rows)
    keys = ["measure", "corral", "raw", "ratio", "target", "verdict"]
    table = [dict(zip(keys, row, strict=True)) for row in rows]
    write_json("summary", {"table": table, "ttfe": first, "exec": lat, "density": mem, "images": img, "preview": pre})
    return 0 if mem["all_answered"] else 1


if __name__ == "__main__":
    run_main(main)
