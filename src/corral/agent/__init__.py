"""The in-sandbox agent: runs as PID 1 in every sandbox and speaks E2B's envd protocol.

It is shipped alone into sandboxes (see :mod:`corral.images.agent_bundle`), so
it uses the Python standard library only and imports nothing else from corral.
Start it with ``python -m corral.agent [--host H] [--port P] [--user NAME]``.
"""

ENVD_VERSION = "0.5.7"
"""The envd protocol level served: what an E2B-compatible API reports as ``envdVersion``."""

DEFAULT_PORT = 49983
"""envd's port, which the e2b SDK connects to."""
