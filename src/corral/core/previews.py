"""Preview URLs: who may reach which sandbox's port through the preview proxy.

Each sandbox has an access token, an HMAC of its id under a key only the
server holds (``preview.key`` in the data dir, made at first start): nothing
to store per sandbox, the same after a restart, and useless for any other
sandbox. A sandbox whose policy says ``previews: public`` needs none.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from corral.core.network import policy_of
from corral.errors import CorralError, RuntimeFailure
from corral.net.preview import PreviewError, PreviewProxy, Wanted
from corral.runtimes.base import AGENT_PORT

if TYPE_CHECKING:
    from corral.core.sandboxes import SandboxManager

log = logging.getLogger(__name__)


def load_key(data_dir: Path) -> bytes:
    path = data_dir / "preview.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        key = secrets.token_bytes(32)
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex())
        return key


class Previews:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        s = manager.settings
        self._key = load_key(s.data_dir)
        self.proxy = PreviewProxy(
            host=s.host,
            port=s.preview_port,
            domain=s.preview_domain,
            route=self.route,
            touch=lambda sandbox_id: manager.lifecycle.touch(sandbox_id),  # traffic is activity: no idle hibernation
        )
        self.enabled = False
        """Whether the proxy listens (it does once started, unless ``preview_port`` is 0)."""

    async def start(self) -> None:
        if self.manager.settings.preview_port:
            try:
                await self.proxy.start()
            except OSError as exc:
                raise RuntimeFailure(
                    f"the preview proxy cannot listen on {self.proxy.host}:{self.proxy.port} ({exc.strerror}); "
                    "set CORRAL_PREVIEW_PORT to a free port, or to 0 for no previews"
                ) from None
            self.enabled = True
            log.info("preview proxy on http://*.%s:%d", self.proxy.domain, self.proxy.port)

    async def aclose(self) -> None:
        await self.proxy.aclose()

    def token(self, sandbox_id: str) -> str:
        return hmac.new(self._key, sandbox_id.encode(), hashlib.sha256).hexdigest()[:40]

    def host(self, sandbox_id: str, port: int) -> str:
        """``{port}-{id}.{domain}:{proxy port}``: what ``get_host(port)`` returns."""
        return f"{port}-{sandbox_id}.{self.proxy.domain}:{self.proxy.port}"

    def url_template(self, sandbox_id: str) -> str:
        """The sandbox's preview URL with ``{port}`` where the port goes."""
        return f"http://{{port}}-{sandbox_id}.{self.proxy.domain}:{self.proxy.port}"

    async def route(self, wanted: Wanted) -> str:
        if wanted.port == AGENT_PORT:  # it runs commands as root: a preview's viewer must not get that
            raise PreviewError(
                404, "Not a preview port", f"Port {AGENT_PORT} is the sandbox's agent, which is not served here."
            )
        row = self.manager.store.get_sandbox(wanted.sandbox_id)
        if row is None or row.state in ("starting", "pooled"):
            raise PreviewError(404, "No such sandbox", f"There is no sandbox '{wanted.sandbox_id}'.")
        if policy_of(row).previews != "public":
            if wanted.token is None:
                raise PreviewError(
                    401,
                    "Access token needed",
                    "This preview is private: send the sandbox's access token as the X-Corral-Preview-Token "
                    "header, or open the URL once with ?corral_preview_token=TOKEN.",
                )
            if not hmac.compare_digest(wanted.token, self.token(row.id)):
                raise PreviewError(403, "Wrong access token", "That is not this sandbox's access token.")
        if row.state == "dead":
            raise PreviewError(502, "Sandbox is dead", f"Sandbox '{row.id}' stopped: {row.error or 'unknown cause'}.")
        try:
            await self.manager.lifecycle.ensure_awake(row.id)  # a hit wakes it and counts as activity
        except CorralError as exc:
            raise PreviewError(502, "Sandbox unavailable", exc.message) from None
        return row.address
