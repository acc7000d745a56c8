"""Soak: the crash drill of tests/proof/test_crash.py, with 100 SIGKILLs (not run in CI).

A real ``corral serve`` is killed with SIGKILL at seeded pseudo-random moments
while creates, kills, execs and file writes run against it, and started again
each time; then everything it acknowledged is checked (each sandbox listed
and answering, each write read back byte for byte, each kill gone) and the
host is searched for runsc processes, runsc state, network namespaces and
mounts of sandboxes it has no row for. Prints a summary; exits 1 on any
problem.

    .venv/bin/python bench/soak.py --kills 100 --seed 7
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.proof is shared

from _common import CORRAL_SUBNET, base_parser, print_table, run_main
from tests.proof.crashdrill import Drill, audit
from tests.serverproc import ServerProcess, kill_all


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs to deliver (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments and the load")
    parser.add_argument("--sandboxes", type=int, default=8, help="sandboxes kept alive at once (default 8)")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds before the drill stops early")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="corral-soak-") as tmp:
        server = ServerProcess(Path(tmp) / "data", env={"CORRAL_SANDBOX_SUBNET": CORRAL_SUBNET}).start()
        started = time.monotonic()
        try:
            drill = Drill(server, seed=args.seed, max_sandboxes=args.sandboxes)
            kills = drill.run(args.kills, deadline=args.deadline)
            problems = audit(server, drill.ledger)
        finally:
            kill_all(server.url)
            server.stop()
        ledger = drill.ledger
        print_table(
            f"soak: {kills} SIGKILLs in {time.monotonic() - started:.0f} s (seed {args.seed})",
            ["what", "count"],
            [
                ["kills delivered", kills],
                ["sandboxes acknowledged (alive at the end)", len(ledger.created)],
                ["kills acknowledged", len(ledger.killed)],
                ["execs answered right", ledger.execs],
                ["file writes acknowledged (alive at the end)", len(ledger.files)],
                ["requests refused or cut by a crash", ledger.refused],
                ["problems", len(problems)],
            ],
        )
        for problem in problems:
            print(f"PROBLEM: {problem}")
    return 1 if problems or kills < args.kills else 0


if __name__ == "__main__":
    run_main(main)
