"""The ``corral`` command line: a thin shell over the SDK (see :mod:`corral.cli.main`)."""

import sys

# httpx imports its own command line's modules (click, pygments and rich's console, progress
# and syntax: 50 ms of every corral command) whenever they are installed, as they are beside
# corral's CLI, which never runs httpx's. Marked absent, httpx takes its fallback for a
# missing `httpx[cli]`, and rich is imported only by the commands that draw with it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not installed"
