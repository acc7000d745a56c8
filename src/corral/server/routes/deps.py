"""What routes get from the app: the sandbox manager."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from corral.core.sandboxes import SandboxManager


def _manager(request: Request) -> SandboxManager:
    manager: SandboxManager = request.app.state.manager
    return manager


Manager = Annotated[SandboxManager, Depends(_manager)]
