"""Where the SDK finds a corral server, and how it talks to it.

Each setting is resolved the same way: the argument, then its ``CORRAL_*``
environment variable, then the default.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "DEFAULT_URL", "ConnectionConfig"]

DEFAULT_URL = "http://127.0.0.1:7423"
"""The server a bare ``corral serve`` listens on."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds one HTTP request may take (commands get their own timeout on top)."""


class ConnectionConfig:
    """The connection settings shared by the sync and the async SDK.

    ``url``: the server's base URL (``CORRAL_URL``, default ``http://127.0.0.1:7423``).
    ``api_key``: sent as ``X-API-Key`` when set (``CORRAL_API_KEY``).
    ``request_timeout``: seconds one HTTP request may take; ``None`` or ``0`` for no limit.
    """

    __slots__ = ("api_key", "request_timeout", "url")

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.url: str = (url or os.environ.get("CORRAL_URL") or DEFAULT_URL).rstrip("/")
        self.api_key: str | None = api_key or os.environ.get("CORRAL_API_KEY") or None
        self.request_timeout: float | None = request_timeout or None

    @property
    def headers(self) -> dict[str, str]:
        """The headers every request carries."""
        headers = {"User-Agent": "corral-sdk-python"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return f"ConnectionConfig(url={self.url!r}, api_key={key}, timeout={self.request_timeout})"
