"""/v1/sandboxes/{id}/exec and /processes: commands, streamed or not."""

from __future__ import annotations

import functools
import signal as signals

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse

from corral.core import commands
from corral.errors import InvalidRequest
from corral.server.routes.deps import Manager
from corral.server.schemas import (
    Exec,
    ExecResult,
    ProcessInfo,
    ProcessList,
    SignalBody,
    Started,
    StdinData,
)
from corral.server.streaming import NDJSON, ndjson

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["commands"])


def _selector(pid: str) -> int | str:
    return int(pid) if pid.isdigit() else pid


@router.post(
    "/exec",
    responses={201: {"model": Started}, 200: {"content": {NDJSON: {}}, "model": ExecResult}},
)
async def exec_command(sandbox_id: str, body: Exec, manager: Manager) -> Response:
    """Run a command: to completion, streamed (NDJSON), or in the background."""
    row, agent = await manager.awake(sandbox_id)
    request = commands.ExecRequest(
        cmd=body.cmd,
        argv=body.argv,
        cwd=body.cwd,
        envs={**row.envs, **body.envs},  # a pooled sandbox learns its envs at claim
        user=body.user,
        timeout=manager.settings.exec_timeout if body.timeout is None else body.timeout,
        stdin=body.stdin,
        stdin_open=body.stdin_open,
        tag=body.tag,
    )
    shell = await manager.shell(sandbox_id)
    paused_for = functools.partial(manager.lifecycle.paused_for, sandbox_id)
    if body.stream:
        # With ``background`` the process outlives this stream; without, it dies with it.
        pid, events = await commands.start(agent, request, shell, background=body.background)
        items = commands.stream(
            agent,
            pid,
            events,
            None if body.background else request.timeout,
            kill_on_abandon=not body.background,
            paused_for=paused_for,
        )
        judge = functools.partial(manager.call_failed, sandbox_id)
        return StreamingResponse(ndjson(items, {"type": "start", "pid": pid}, judge=judge), media_type=NDJSON)
    if body.background:
        pid, events = await commands.start(agent, request, shell, background=True)
        await events.aclose()  # type: ignore[attr-defined]
        return JSONResponse(Started(pid=pid).model_dump(), status_code=201)
    result = await commands.run(
        agent, request, shell, output_limit=manager.settings.exec_output_limit_mb << 20, paused_for=paused_for
    )
    answer = ExecResult(
        pid=result.pid,
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        truncated=result.truncated,
    )
    return JSONResponse(answer.model_dump())


@router.get("/processes")
async def list_processes(sandbox_id: str, manager: Manager) -> ProcessList:
    """Processes started through the API that are still running."""
    found = await (await manager.awake_agent(sandbox_id)).list_processes()
    return ProcessList(
        processes=[
            ProcessInfo(
                pid=int(p.get("pid", 0)),
                tag=p.get("tag"),
                cmd=p.get("config", {}).get("cmd", ""),
                args=list(p.get("config", {}).get("args", [])),
                cwd=p.get("config", {}).get("cwd"),
            )
            for p in found
        ]
    )


@router.get("/processes/{pid}/stream", responses={200: {"content": {NDJSON: {}}}})
async def stream_process(sandbox_id: str, pid: str, manager: Manager) -> StreamingResponse:
    """Follow a running process: its output from now on, then its end."""
    agent = await manager.awake_agent(sandbox_id)
    events = agent.connect(_selector(pid)).__aiter__()
    first = await anext(events, None)  # errors (unknown pid) surface before the 200
    if first is None or first.kind != "start":
        raise InvalidRequest("the agent did not confirm the process")
    return StreamingResponse(
        ndjson(
            commands.stream(agent, first.pid, events, None, kill_on_abandon=False),
            {"type": "start", "pid": first.pid},
            judge=functools.partial(manager.call_failed, sandbox_id),
        ),
        media_type=NDJSON,
    )


@router.post("/processes/{pid}/stdin", status_code=204)
async def send_stdin(sandbox_id: str, pid: str, body: StdinData, manager: Manager) -> Response:
    data = body.payload()
    await (await manager.awake_agent(sandbox_id)).send_stdin(_selector(pid), data)
    return Response(status_code=204)


@router.post("/processes/{pid}/stdin/close", status_code=204)
async def close_stdin(sandbox_id: str, pid: str, manager: Manager) -> Response:
    await (await manager.awake_agent(sandbox_id)).close_stdin(_selector(pid))
    return Response(status_code=204)


@router.post("/processes/{pid}/signal", status_code=204)
async def send_signal(sandbox_id: str, pid: str, body: SignalBody, manager: Manager) -> Response:
    """Send a signal (name like ``SIGTERM`` or a number) to the process's group."""
    await (await manager.awake_agent(sandbox_id)).signal(_selector(pid), _signal_name(body.signal))
    return Response(status_code=204)


def _signal_name(value: str | int) -> str:
    try:
        if isinstance(value, int) or value.isdigit():
            return signals.Signals(int(value)).name
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        return signals.Signals[name].name
    except (KeyError, ValueError):
        raise InvalidRequest(f"unknown signal {value!r}") from None
