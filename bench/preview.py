"""Preview proxy: throughput and latency through it, beside a direct connection to the sandbox's address.

One sandbox runs a small HTTP/1.1 server (stdlib) on port 8000. The same
requests go straight to ``http://<sandbox address>:8000`` (the floor: what
the host's network path to the sandbox gives) and through the preview proxy
(``http://8000-<id>.localhost:<proxy port>``, with the access token), in
turn, in one run:

- latency of ``GET /small`` on a kept-alive connection, and on a new
  connection each time (where the proxy looks the sandbox up and checks the
  token);
- throughput of ``GET /big`` (``--mib`` MiB).

    .venv/bin/python bench/preview.py [--runs 200] [--mib 64] [--url URL]
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from _common import (
    Row,
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

TARGET_THROUGHPUT = 0.7
"""Proxy throughput at least this share of the direct one."""
TARGET_ADDED_P50 = 0.001
"""Added p50 latency (kept-alive connection), at most this many seconds."""

APP = """
import http.server, socketserver, sys
BIG = b"x" * (1 << 20)
class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        n = int(sys.argv[1]) if self.path == "/big" else 0
        self.send_response(200)
        self.send_header("Content-Length", str(n << 20 if n else 2))
        self.end_headers()
        if not n:
            self.wfile.write(b"ok")
        for _ in range(n):
            self.wfile.write(BIG)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("0.0.0.0", 8000), App).serve_forever()
"""


def measure(url: str, api_key: str | None, runs: int, mib: int) -> dict[str, Any]:
    with SandboxSet(url, api_key) as sandboxes:
        sbx = sandboxes.create()
        sbx.files.write("/tmp/bench_app.py", APP)
        sbx.commands.run(f"exec python3 /tmp/bench_app.py {mib}", background=True)
        direct = f"http://{sbx.info().address}:8000"
        host = sbx.get_host(8000)
        via = f"http://127.0.0.1:{host.rsplit(':', 1)[1]}"
        headers = {"Host": host, "X-Corral-Preview-Token": sbx.preview_token or ""}
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{direct}/small", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        samples: dict[str, list[float]] = {k: [] for k in ("direct_kept", "proxy_kept", "direct_new", "proxy_new")}
        with httpx.Client(trust_env=False) as d, httpx.Client(trust_env=False, headers=headers) as p:
            for i in range(runs + 20):
                for key, call in (
                    ("direct_kept", lambda: d.get(f"{direct}/small")),
                    ("proxy_kept", lambda: p.get(f"{via}/small")),
                    ("direct_new", lambda: httpx.get(f"{direct}/small", trust_env=False)),
                    ("proxy_new", lambda: httpx.get(f"{via}/small", headers=headers, trust_env=False)),
                ):
                    t0 = time.perf_counter()
                    r = call()
                    elapsed = time.perf_counter() - t0
                    if r.status_code != 200:
                        raise RuntimeError(f"{key}: HTTP {r.status_code}: {r.text[:200]}")
                    if i >= 20:
                        samples[key].append(elapsed)
            speed: dict[str, list[float]] = {"direct": [], "proxy": []}
            for _ in range(5):
                for key, client, base in (("direct", d, direct), ("proxy", p, via)):
                    t0 = time.perf_counter()
                    size = 0
                    with client.stream("GET", f"{base}/big", timeout=120) as r:
                        for chunk in r.iter_raw(1 << 20):
                            size += len(chunk)
                    speed[key].append(size / (1 << 20) / (time.perf_counter() - t0))
    return {"latency": {k: summary(v) for k, v in samples.items()}, "mib_per_s": speed, "samples": samples}


def report(result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latency"]
    rows = [[k, ms(v["median"]), ms(v["p99"]), ms(v["min"])] for k, v in lat.items()]
    print_table(f"GET /small, {lat['direct_kept']['n']} each (ms)", ["", "p50", "p99", "min"], rows)
    direct = sorted(result["mib_per_s"]["direct"])[2]
    proxied = sorted(result["mib_per_s"]["proxy"])[2]
    added_kept = lat["proxy_kept"]["median"] - lat["direct_kept"]["median"]
    added_new = lat["proxy_new"]["median"] - lat["direct_new"]["median"]
    share = ratio(proxied, direct)
    print_table(
        "preview proxy against a direct connection",
        ["", "proxy", "direct", "ratio / added", "target", ""],
        [
            ["throughput, MiB/s (median of 5)", f"{proxied:.0f}", f"{direct:.0f}", f"{share:.2f}x",
             f">= {TARGET_THROUGHPUT}x", "met" if share >= TARGET_THROUGHPUT else "NOT met"],
            ["p50 latency, kept-alive", ms(lat["proxy_kept"]["median"]), ms(lat["direct_kept"]["median"]),
             f"+{ms(added_kept)}", f"<= +{ms(TARGET_ADDED_P50)}", verdict(added_kept, TARGET_ADDED_P50)],
            ["p50 latency, new connection", ms(lat["proxy_new"]["median"]), ms(lat["direct_new"]["median"]),
             f"+{ms(added_new)}", "", ""],
        ],
    )  # fmt: skip
    return {
        "proxy_mib_s": proxied,
        "direct_mib_s": direct,
        "throughput_ratio": share,
        "proxy_p50_kept_ms": lat["proxy_kept"]["median"] * 1000,
        "direct_p50_kept_ms": lat["direct_kept"]["median"] * 1000,
        "added_p50_kept_ms": added_kept * 1000,
        "added_p50_new_ms": added_new * 1000,
        "met": share >= TARGET_THROUGHPUT and added_kept <= TARGET_ADDED_P50,
    }


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table: the floor is a direct connection to the sandbox's address."""
    return [
        Row("preview proxy throughput", h["proxy_mib_s"], h["direct_mib_s"], "MiB/s", floor_is="direct",
            target=f">= {TARGET_THROUGHPUT}x", met=h["throughput_ratio"] >= TARGET_THROUGHPUT),
        Row("preview proxy GET p50, kept-alive", h["proxy_p50_kept_ms"], h["direct_p50_kept_ms"], floor_is="direct",
            target=f"<= +{TARGET_ADDED_P50 * 1000:g} ms", met=h["added_p50_kept_ms"] <= TARGET_ADDED_P50 * 1000),
    ]  # fmt: skip


def run(url: str | None, api_key: str | None, *, runs: int, mib: int) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, runs, mib)
    headline = report(result)
    write_json("preview", {"runs": runs, "mib": mib, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="latency requests of each kind (default 200)")
    parser.add_argument("--mib", type=int, default=64, help="size of the throughput download (default 64)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs, mib=args.mib)
    return 0


if __name__ == "__main__":
    run_main(main)
