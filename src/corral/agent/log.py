"""One line per notable event on stderr, which becomes the sandbox console log.

The agent avoids the ``logging`` package on purpose: it starts inside every
sandbox and each import is paid for at boot.
"""

from __future__ import annotations

import sys
import time


def log(message: str, **fields: object) -> None:
    """Write ``<UTC time> corral-agent: message key=value ...`` to stderr."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    extra = "".join(f" {key}={value!r}" for key, value in fields.items())
    line = f"{stamp}.{int(now % 1 * 1000):03d}Z corral-agent: {message}{extra}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed console must never take the agent down
