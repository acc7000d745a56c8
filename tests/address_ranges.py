"""One test run per address range on a host: the range is taken with a lock, or another one is.

Test servers put their sandboxes in ``10.<base + index>.0.0/16`` (see
``tests/serverproc.py``). Two runs on one host with the same base share
addresses, link names and firewall tables, and fail each other's tests in
ways that look like bugs. So the run's first process takes a lock on its
base (``/run/lock/corral-test-range-<base>``) for as long as it lives: with
``CORRAL_TEST_SUBNET_BASE`` unset it takes the first free of ``BASES`` and
sets the variable for the rest of the run (its xdist workers inherit it);
with it set, it takes that one or stops. Imported by ``tests/conftest.py``
before anything reads the variable.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

BASES = (200, 20)
"""10.200-10.253, else 10.20-10.73: clear of corral's default 10.88 and the benchmarks' 10.180-10.181."""
LOCKS = Path("/run/lock")
_held: list[int] = []  # the lock's file descriptor, open for as long as this process runs


def _take(base: int) -> bool:
    LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCKS / f"corral-test-range-{base}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def take_a_range() -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or _held:
        return  # a worker of a run whose first process holds the range, or taken already
    asked = os.environ.get("CORRAL_TEST_SUBNET_BASE")
    if asked is not None:
        if not _take(int(asked)):
            raise RuntimeError(
                f"another test run on this host uses the address range of CORRAL_TEST_SUBNET_BASE={asked}; "
                "wait for it, or unset the variable to take a free range"
            )
        return
    for base in BASES:
        if _take(base):
            os.environ["CORRAL_TEST_SUBNET_BASE"] = str(base)
            return
    raise RuntimeError(
        f"two test runs on this host already use both test address ranges (bases {BASES}); wait for one to end"
    )
