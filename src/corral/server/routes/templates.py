"""/v1/templates: define, build (streaming the log), list, get and delete templates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from corral.core.templates import TemplateService, TemplateSpec
from corral.server.routes.deps import Manager
from corral.server.schemas import Template, TemplateBody, TemplateList
from corral.server.streaming import NDJSON, events_while, ndjson

router = APIRouter(prefix="/v1/templates", tags=["templates"])


def _service(request: Request) -> TemplateService:
    service: TemplateService = request.app.state.templates
    return service


@router.put("/{name}")
async def put_template(name: str, body: TemplateBody, request: Request, manager: Manager) -> Template:
    """Create a template or replace its recipe; build it with POST .../builds."""
    row = _service(request).put(TemplateSpec(name=name, **body.model_dump()))
    return Template.from_row(row)


@router.get("")
async def list_templates(request: Request) -> TemplateList:
    return TemplateList(templates=[Template.from_row(r) for r in _service(request).list_templates()])


@router.get("/{name}")
async def get_template(name: str, request: Request) -> Template:
    """One template, with its last build's log."""
    return Template.from_row(_service(request).get(name), with_log=True)


@router.delete("/{name}", status_code=204)
async def delete_template(name: str, request: Request) -> Response:
    """Delete the template and its name for its image (the data goes at the next image gc)."""
    _service(request).delete(name)
    return Response(status_code=204)


@router.post(
    "/{name}/builds",
    responses={200: {"content": {NDJSON: {}}, "model": Template}},
    openapi_extra={"requestBody": {"content": {"application/x-tar": {}, "application/gzip": {}}}},
)
async def build_template(
    name: str,
    request: Request,
    stream: Annotated[bool, Query(description="Answer with NDJSON log events, then the template.")] = True,
) -> Response:
    """Build the template. The body is the build context as a tar (gzip'd or not); it may be empty."""
    service = _service(request)
    service.get(name)
    context = await request.body()

    if not stream:
        row = await service.build(name, context or None, lambda _event: None)
        return Response(Template.from_row(row).model_dump_json(), media_type="application/json")

    async def work(emit: Any) -> Any:
        return await service.build(name, context or None, emit)

    def done(row: Any) -> dict[str, Any]:
        return {"type": "template", "template": Template.from_row(row).model_dump(mode="json")}

    return StreamingResponse(ndjson(events_while(work, done)), media_type=NDJSON)
