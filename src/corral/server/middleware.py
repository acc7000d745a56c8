"""ASGI middleware: API-key check and request body limits.

Both answer with the API's JSON error envelope before any route runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import AuthenticationError, CorralError, PayloadTooLarge

OPEN_PATHS = frozenset({"/health"})


async def send_error(send: Send, error: CorralError) -> None:
    body = json.dumps(error.envelope()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """With a key configured, every route but /health needs ``X-API-Key``."""

    def __init__(self, app: ASGIApp, *, key_sha256: str) -> None:
        self.app = app
        self.key_sha256 = key_sha256.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"x-api-key")
            digest = hashlib.sha256(given).hexdigest().encode() if given else b""
            if not hmac.compare_digest(digest, self.key_sha256):
                error = AuthenticationError("missing or wrong API key: send it as the X-API-Key header")
                if scope["type"] == "http":
                    await send_error(send, error)
                else:
                    await send({"type": "websocket.close", "code": 4401})
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit: file uploads get ``upload_limit``, the rest ``json_limit``."""

    def __init__(self, app: ASGIApp, *, json_limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = (scope["method"] == "PUT" and scope["path"].endswith("/files")) or (
            scope["method"] == "POST"
            and scope["path"].startswith("/v1/templates/")
            and scope["path"].endswith("/builds")
        )
        limit = self.upload_limit if is_upload else self.json_limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, _too_large(limit, is_upload))
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit, is_upload)
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int, is_upload: bool) -> PayloadTooLarge:
    what = "upload" if is_upload else "request body"
    details: dict[str, Any] = {"limit_bytes": limit}
    return PayloadTooLarge(f"the {what} is larger than the server's limit of {limit} bytes", details=details)
