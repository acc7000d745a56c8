"""Templates on a corral server: ``Templates`` (sync) and ``AsyncTemplates``.

from corral import Sandbox, Templates
with Templates() as templates:
    templates.build("py-tools", dockerfile="FROM corral/base\\nRUN pip install ...", context=".",
                    ready_cmd="true", on_log=print)
with Sandbox.create(template="py-tools") as sbx:
    ...
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from corral.errors import InternalError, InvalidRequest, error_from_envelope
from corral.sdk import _routes as routes
from corral.sdk._base import AsyncClient, SyncClient
from corral.sdk.models import TemplateInfo

__all__ = ["AsyncTemplates", "Templates"]

LogHandler = Callable[[str], None]


def _recipe(
    dockerfile: str | None,
    dockerfile_path: str | Path | None,
    context: str | Path | None,
    **options: Any,
) -> tuple[dict[str, Any], bytes]:
    """The template body and the packed build context a build sends."""
    from corral.images.context import pack_context

    if (dockerfile is None) == (dockerfile_path is None):
        raise InvalidRequest("give exactly one of 'dockerfile' (its text) or 'dockerfile_path'")
    text = dockerfile if dockerfile is not None else Path(dockerfile_path).read_text()  # type: ignore[arg-type]
    packed = pack_context(Path(context)) if context is not None else b""
    return {"dockerfile": text, **options}, packed


class _BuildReader:
    def __init__(self, on_log: LogHandler | None) -> None:
        self.on_log = on_log
        self.template: TemplateInfo | None = None

    def feed(self, line: str) -> None:
        if not line.strip():
            return
        event: dict[str, Any] = json.loads(line)
        kind = event.get("type")
        if kind == "log" and self.on_log is not None:
            self.on_log(str(event.get("data", "")))
        elif kind == "template":
            self.template = TemplateInfo.from_json(event["template"])
        elif kind == "error":
            raise error_from_envelope(500, event)

    def result(self) -> TemplateInfo:
        if self.template is None:
            raise InternalError("the build's stream ended without a result")
        return self.template


class Templates(SyncClient):
    """The templates of one server. ``close()`` (or leaving the ``with``) frees the connection."""

    def build(
        self,
        name: str,
        *,
        dockerfile: str | None = None,
        dockerfile_path: str | Path | None = None,
        context: str | Path | None = None,
        build_args: Mapping[str, str] | None = None,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        start_cmd: str | None = None,
        ready_cmd: str | None = None,
        ready_timeout: float | None = None,
        on_log: LogHandler | None = None,
    ) -> TemplateInfo:
        """Define (or redefine) template ``name`` and build it; raises ``BuildFailed`` if a step fails."""
        body, packed = _recipe(
            dockerfile, dockerfile_path, context, build_args=dict(build_args or {}), vcpus=vcpus,
            memory_mb=memory_mb, start_cmd=start_cmd, ready_cmd=ready_cmd, ready_timeout=ready_timeout,
        )  # fmt: skip
        self._http.call(routes.put_template(name, body))
        reader = _BuildReader(on_log)
        with self._http.stream(routes.build_template(name, packed)) as response:
            for line in response.iter_lines():
                reader.feed(line)
        return reader.result()

    def list(self) -> builtins.list[TemplateInfo]:
        return self._http.call(routes.list_templates())

    def get(self, name: str) -> TemplateInfo:
        """One template, with its last build's log."""
        return self._http.call(routes.get_template(name))

    def delete(self, name: str) -> None:
        self._http.call(routes.delete_template(name))


class AsyncTemplates(AsyncClient):
    """The async twin of :class:`Templates`."""

    async def build(
        self,
        name: str,
        *,
        dockerfile: str | None = None,
        dockerfile_path: str | Path | None = None,
        context: str | Path | None = None,
        build_args: Mapping[str, str] | None = None,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        start_cmd: str | None = None,
        ready_cmd: str | None = None,
        ready_timeout: float | None = None,
        on_log: LogHandler | None = None,
    ) -> TemplateInfo:
        body, packed = _recipe(
            dockerfile, dockerfile_path, context, build_args=dict(build_args or {}), vcpus=vcpus,
            memory_mb=memory_mb, start_cmd=start_cmd, ready_cmd=ready_cmd, ready_timeout=ready_timeout,
        )  # fmt: skip
        await self._http.call(routes.put_template(name, body))
        reader = _BuildReader(on_log)
        async with self._http.stream(routes.build_template(name, packed)) as response:
            async for line in response.aiter_lines():
                reader.feed(line)
        return reader.result()

    async def list(self) -> builtins.list[TemplateInfo]:
        return await self._http.call(routes.list_templates())

    async def get(self, name: str) -> TemplateInfo:
        return await self._http.call(routes.get_template(name))

    async def delete(self, name: str) -> None:
        await self._http.call(routes.delete_template(name))
