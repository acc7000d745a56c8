"""Templates: a Dockerfile-subset recipe built into an image inside corral sandboxes.

A build walks the steps of the template's Dockerfile from its ``FROM`` image:

- ``RUN`` starts a sandbox on the image so far (builds are as isolated as
  anything else), runs the command there with the step's env, user and
  workdir, streams its output, and takes what it wrote as a new layer;
- ``COPY``/``ADD`` write the build-context files into a new layer on the host,
  without a sandbox;
- ``ENV``, ``WORKDIR`` and ``USER`` change only the image's config.

Every step's result is an (unnamed) image whose id is a hash of its parent's
id and the step (and, for ``COPY``, of the copied content): a rebuild finds
unchanged steps by id and skips them. The last image is named
``corral/templates/<name>``. A failing step fails the build with its output
and exit code; the template keeps the image of its last good build.

Spawning (``Sandbox.create(template=...)``) starts the template's start
command in the background and hands the sandbox out once its readiness check
(a command) exits 0. Its first spawn (of an image and shape) also has a boot
snapshot taken with the service ready (:mod:`corral.core.boot_snapshots`):
later spawns restore the sandbox with its service running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corral.core import commands
from corral.core.agent_client import AgentClient
from corral.core.boot_snapshots import Started
from corral.core.clock import utcnow
from corral.core.sandboxes import CreateRequest, SandboxManager
from corral.errors import BuildFailed, Conflict, ExecTimeout, InvalidRequest, NotReady, TemplateNotFound
from corral.images import context as build_context
from corral.images import dockerfile
from corral.images.store import Image, ImageConfig, content_id
from corral.store.models import SandboxRow, TemplateRow

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
BUILD_LOG_LIMIT = 256 * 1024
BUILD_STEP_TIMEOUT = 3600.0
IMAGE_PREFIX = "corral/templates/"

Emit = Callable[[dict[str, Any]], None]


def service_key(row: TemplateRow) -> str:
    """What a template starts in its sandboxes, hashed: boot snapshots taken with it running are keyed by it."""
    return hashlib.sha256(json.dumps([row.start_cmd, row.ready_cmd]).encode()).hexdigest()[:16]


def image_name(template: str) -> str:
    return IMAGE_PREFIX + template


@dataclass(slots=True)
class TemplateSpec:
    name: str
    dockerfile: str
    build_args: dict[str, str]
    vcpus: int | None = None
    memory_mb: int | None = None
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float = 60.0


class TemplateService:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.store = manager.store
        self.images = manager.images
        self._building: set[str] = set()

    def start(self) -> None:
        """A build the last server was running when it stopped is over: say so."""
        for row in self.store.list_templates():
            if row.state == "building":
                self.store.update_template(
                    row.name, state="failed", error="the server stopped during the build; build it again"
                )

    # -- records ---------------------------------------------------------------

    def get(self, name: str) -> TemplateRow:
        row = self.store.get_template(name)
        if row is None:
            raise TemplateNotFound(f"no template '{name}' exists", details={"template": name})
        return row

    def list_templates(self) -> list[TemplateRow]:
        return self.store.list_templates()

    def put(self, spec: TemplateSpec) -> TemplateRow:
        """Create a template or replace its recipe (its image stays until the next build)."""
        if not _NAME.match(spec.name):
            raise InvalidRequest(
                f"'{spec.name}' is not a valid template name (lowercase letters, digits, '.', '_', '-'; 63 at most)",
                details={"template": spec.name},
            )
        dockerfile.parse(spec.dockerfile, build_args=spec.build_args)  # reject a bad recipe now, not at build
        if spec.ready_timeout <= 0:
            raise InvalidRequest("ready_timeout must be positive")
        fields = {
            "dockerfile": spec.dockerfile,
            "build_args": dict(spec.build_args),
            "vcpus": spec.vcpus,
            "memory_mb": spec.memory_mb,
            "start_cmd": spec.start_cmd,
            "ready_cmd": spec.ready_cmd,
            "ready_timeout": spec.ready_timeout,
        }
        if self.store.get_template(spec.name) is None:
            return self.store.add_template(
                TemplateRow(name=spec.name, state="new", build_log="", created_at=utcnow(), **fields)
            )
        updated = self.store.update_template(spec.name, **fields)
        assert updated is not None
        return updated

    def delete(self, name: str) -> None:
        self.get(name)
        if name in self._building:
            raise Conflict(f"template '{name}' is being built", details={"template": name})
        self.store.delete_template(name)
        with self.images.store.locked():
            self.images.store.untag(image_name(name))

    # -- building --------------------------------------------------------------

    async def build(self, name: str, context_tar: bytes | None, emit: Emit) -> TemplateRow:
        """Build the template from its Dockerfile and the given build context (a tar, maybe gzip'd)."""
        row = self.get(name)
        if name in self._building:
            raise Conflict(f"template '{name}' is already being built", details={"template": name})
        self._building.add(name)
        log_lines: list[str] = []

        def say(line: str) -> None:
            log_lines.append(line)
            emit({"type": "log", "data": line})

        self.store.update_template(name, state="building", error=None)
        started = time.monotonic()
        work = self.images.store.work_dir(f"context-{name}")
        try:
            recipe = dockerfile.parse(row.dockerfile, build_args=row.build_args)
            if context_tar:
                await asyncio.to_thread(
                    build_context.extract_context,
                    context_tar,
                    work,
                    max_bytes=self.manager.settings.max_upload_mb * 1024 * 1024,
                )
            builder = _Build(self, row, work, emit, say)
            image = await builder.run(recipe)
            with self.images.store.locked():
                self.images.store.tag(image.id, image_name(name))
            say(f"built {image_name(name)} ({image.id[:12]}) in {time.monotonic() - started:.1f}s")
            updated = self.store.update_template(
                name, state="ready", image_id=image.id, built_at=utcnow(), build_log=_tail(log_lines)
            )
        except BaseException as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            say(f"build failed: {message}")
            self.store.update_template(name, state="failed", error=message, build_log=_tail(log_lines))
            raise
        finally:
            self._building.discard(name)
            await asyncio.to_thread(shutil.rmtree, work, True)
        assert updated is not None
        return updated

    # -- spawning --------------------------------------------------------------

    async def spawn(self, request: CreateRequest) -> SandboxRow:
        """A sandbox from a template: its image and resources, started and ready."""
        assert request.template is not None
        row = self.get(request.template)
        if not row.image_id or not self.images.store.has(row.image_id):
            raise Conflict(
                f"template '{row.name}' has no image yet ({row.state}); build it first",
                details={"template": row.name, "state": row.state},
            )
        image = self.images.store.get(row.image_id)
        request = replace(
            request,
            vcpus=request.vcpus or row.vcpus,
            memory_mb=request.memory_mb or row.memory_mb,
        )
        started = None
        if row.start_cmd or row.ready_cmd:

            async def start_and_wait(agent: AgentClient, shell: list[str]) -> None:
                await self._start_and_wait(agent, shell, row, image.config)

            started = Started(key=service_key(row), run=start_and_wait)
        return await self.manager.create(request, image=image, image_label=image_name(row.name), started=started)

    async def _start_and_wait(
        self, agent: AgentClient, shell: list[str], row: TemplateRow, config: ImageConfig
    ) -> None:
        cwd = config.workdir or None
        if row.start_cmd:
            start = commands.ExecRequest(cmd=row.start_cmd, cwd=cwd, tag="start")
            _pid, events = await commands.start(agent, start, shell, background=True)
            await events.aclose()  # type: ignore[attr-defined]
        if not row.ready_cmd:
            return
        deadline = time.monotonic() + row.ready_timeout
        delay, last = 0.02, None
        while True:
            check = commands.ExecRequest(cmd=row.ready_cmd, cwd=cwd, timeout=max(1.0, deadline - time.monotonic()))
            with contextlib.suppress(ExecTimeout):
                last = await commands.run(agent, check, shell)
                if last.exit_code == 0:
                    return
            if time.monotonic() + delay >= deadline:
                raise NotReady(
                    f"template '{row.name}': the readiness check did not pass within {row.ready_timeout:g}s",
                    details={
                        "template": row.name,
                        "ready_cmd": row.ready_cmd,
                        "exit_code": last.exit_code if last else None,
                        "output": ((last.stdout + last.stderr)[-2000:] if last else ""),
                    },
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


class _Build:
    """One run of one template's build."""

    def __init__(
        self, service: TemplateService, row: TemplateRow, context_dir: Path, emit: Emit, say: Callable[[str], None]
    ):
        self.service = service
        self.manager = service.manager
        self.images = service.images
        self.row = row
        self.context_dir = context_dir
        self.emit = emit
        self.say = say

    async def run(self, recipe: dockerfile.Dockerfile) -> Image:
        self.say(f"FROM {recipe.base}")

        def pulled(progress: Any) -> None:
            self.emit({"type": "progress", "phase": progress.phase, "done": progress.done, "total": progress.total})

        image = await self.images.get_or_pull(recipe.base, on_progress=pulled)
        total = len(recipe.steps)
        for index, step in enumerate(recipe.steps, 1):
            text = _describe(step)
            key = content_id(image.id, step.cache_key_text(), await self._content_key(step))
            if self.images.store.has(key):
                self.emit({"type": "step", "index": index, "total": total, "text": text, "cached": True})
                self.say(f"[{index}/{total}] {text} (cached)")
                image = self.images.store.get(key)
                continue
            self.emit({"type": "step", "index": index, "total": total, "text": text, "cached": False})
            self.say(f"[{index}/{total}] {text}")
            image = await self._step(image, step, key)
        return image

    async def _content_key(self, step: dockerfile.Step) -> str:
        if not isinstance(step, dockerfile.Copy):
            return ""
        return await asyncio.to_thread(_digest_sources, self.context_dir, step.sources)

    async def _step(self, image: Image, step: dockerfile.Step, key: str) -> Image:
        config = image.config
        if isinstance(step, dockerfile.SetEnv):
            return self._config_image(image, key, replace(config, env={**config.env, step.name: step.value}))
        if isinstance(step, dockerfile.SetWorkdir):
            made = await self._host_layer(image, content_id(key, "dir"), lambda layer, lowers: _make_dirs(
                layer, layer / _resolve_in_image(lowers, step.path), lowers))  # fmt: skip
            return self._config_image(made, key, replace(config, workdir=step.path))
        if isinstance(step, dockerfile.SetUser):
            return self._config_image(image, key, replace(config, user=step.user))
        if isinstance(step, dockerfile.Copy):
            return await self._copy(image, step, key)
        argv = list(step.argv) if step.argv is not None else ["/bin/sh", "-c", step.shell or ""]
        # A command's user travels as a name alone; one with a group (USER name:group) is the image's
        # USER already, which the build sandbox's agent takes whole as its default user.
        user = None if step.user and ":" in step.user else step.user or "root"
        return await self._run_step(image, key, argv, user=user, env=step.env, workdir=step.workdir)

    def _layer_image(self, image: Image, key: str, layer_dir: Path) -> Image:
        """The step's result: ``layer_dir`` over ``image``, both ids derived from the cache key."""
        return self.images.store.stack(
            layer_dir, parent=image, source="build", layer_id=content_id(key, "layer"), image_id=key
        )

    def _config_image(self, image: Image, key: str, config: ImageConfig) -> Image:
        with self.images.store.locked():
            return self.images.store.add_image(
                Image(
                    id=key,
                    layers=image.layers,
                    config=config,
                    source="build",
                    created=time.time(),
                    parent=image.id,
                )
            )

    async def _run_step(
        self,
        image: Image,
        key: str,
        argv: list[str],
        *,
        user: str | None,
        env: tuple[tuple[str, str], ...],
        workdir: str,
    ) -> Image:
        request = CreateRequest(
            vcpus=self.row.vcpus,
            memory_mb=self.row.memory_mb,
            timeout=int(BUILD_STEP_TIMEOUT) + 600,
            metadata={"corral.build": self.row.name},
        )
        sandbox = await self.manager.create(
            request, image=image, image_label=f"build of {self.row.name}", boot_snapshot=False
        )
        layer_dir = self.images.store.work_dir(f"layer-{key[:12]}")
        try:
            agent = self.manager.agent(sandbox.id)
            shell = await self.manager.shell(sandbox.id)
            if workdir != "/":
                mkdir = commands.ExecRequest(argv=["mkdir", "-p", workdir], user="root")
                await commands.run(agent, mkdir, shell)
            run = commands.ExecRequest(argv=argv, user=user, envs=dict(env), cwd=workdir, timeout=BUILD_STEP_TIMEOUT)
            pid, events = await commands.start(agent, run, shell, background=False)
            output: list[str] = []
            exit_code: int | None = None
            async for item in commands.stream(agent, pid, events, run.timeout):
                if item["type"] == "end":
                    exit_code = item["exit_code"]
                    break
                output.append(item["data"])
                for line in item["data"].splitlines():
                    self.say(line)
            if exit_code != 0:
                tail = "".join(output)[-4000:]
                raise BuildFailed(
                    f"step '{' '.join(argv)[:200]}' failed with exit code {exit_code}",
                    details={"exit_code": exit_code, "output": tail, "argv": argv},
                )
            await self.manager.runtime.export_changes(self.manager.runtime_handle(sandbox.id), layer_dir)
            return self._layer_image(image, key, layer_dir)
        finally:
            shutil.rmtree(layer_dir, ignore_errors=True)
            with contextlib.suppress(Exception):
                await self.manager.kill(sandbox.id)

    async def _copy(self, image: Image, step: dockerfile.Copy, key: str) -> Image:
        def copy(layer: Path, lowers: list[Path]) -> None:
            _copy_into(self.context_dir, step, layer, _owner(lowers, step.chown), lowers)

        return await self._host_layer(image, key, copy)

    async def _host_layer(self, image: Image, key: str, make: Callable[[Path, list[Path]], None]) -> Image:
        """A layer written on the host by ``make(layer_dir, image_layers_top_first)``; no sandbox needed."""
        layer_dir = self.images.store.work_dir(f"layer-{key[:12]}")
        try:
            await asyncio.to_thread(make, layer_dir, self.images.store.layer_paths(image))
            return self._layer_image(image, key, layer_dir)
        finally:
            shutil.rmtree(layer_dir, ignore_errors=True)


def _describe(step: dockerfile.Step) -> str:
    if isinstance(step, dockerfile.Run):
        return "RUN " + (step.shell if step.shell is not None else json.dumps(list(step.argv or ())))
    if isinstance(step, dockerfile.Copy):
        return f"COPY {' '.join(step.sources)} {step.dest}"
    if isinstance(step, dockerfile.SetEnv):
        return f"ENV {step.name}={step.value}"
    if isinstance(step, dockerfile.SetWorkdir):
        return f"WORKDIR {step.path}"
    return f"USER {step.user}"


def _digest_sources(context_dir: Path, sources: tuple[str, ...]) -> str:
    """A hash of everything a COPY would copy: names, modes, link targets and contents."""
    digest = hashlib.sha256()
    for source in sources:
        for path in build_context.resolve_in_context(context_dir, source):
            items = [path] if not path.is_dir() or path.is_symlink() else [path, *sorted(path.rglob("*"))]
            for item in items:
                st = item.lstat()
                digest.update(f"{item.relative_to(context_dir)}\0{st.st_mode:o}\0".encode())
                if item.is_symlink():
                    digest.update(os.readlink(item).encode())
                elif item.is_file():
                    with item.open("rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            digest.update(chunk)
    return digest.hexdigest()


def _owner(layers_top_first: list[Path], chown: str | None) -> tuple[int, int]:
    """``user[:group]`` (names or ids) as numbers, names looked up in the image's own passwd/group."""
    if not chown:
        return 0, 0
    user, _, group = chown.partition(":")

    def lookup(name: str, table: str, id_field: int) -> int:
        if name.isdigit():
            return int(name)
        for layer in layers_top_first:
            path = layer / "etc" / table
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    parts = line.split(":")
                    if len(parts) > id_field and parts[0] == name:
                        return int(parts[id_field])
                break
        raise InvalidRequest(f"COPY --chown: the image has no {'user' if table == 'passwd' else 'group'} '{name}'")

    uid = lookup(user, "passwd", 2)
    gid = lookup(group, "group", 2) if group else (uid if user.isdigit() else lookup(user, "passwd", 3))
    return uid, gid


def _copy_into(
    context_dir: Path, step: dockerfile.Copy, layer: Path, owner: tuple[int, int], lowers: list[Path]
) -> None:
    """Docker's COPY rules: a directory's contents are copied, a dest ending in ``/`` is a directory."""
    sources = [p for s in step.sources for p in build_context.resolve_in_context(context_dir, s)]
    dest = step.dest if step.dest.startswith("/") else os.path.join(step.workdir or "/", step.dest)
    inside = _resolve_in_image(lowers, dest)  # /bin -> usr/bin on merged-/usr images
    existing_dir = not inside or any(_is_real_dir(lower / inside) for lower in lowers)
    into_dir = dest.endswith("/") or existing_dir or len(sources) > 1 or (len(sources) == 1 and sources[0].is_dir())
    target_root = layer / inside
    _make_dirs(layer, target_root if into_dir else target_root.parent, lowers)
    for source in sources:
        target = target_root / source.name if into_dir and not source.is_dir() else target_root
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
        for item in [target, *(target.rglob("*") if target.is_dir() else [])]:
            os.lchown(item, *owner)
            if step.chmod is not None and not item.is_symlink():
                item.chmod(step.chmod)


def _resolve_in_image(lowers: list[Path], path: str) -> str:
    """``path`` inside the image with its symlinks followed as the image sees them, relative to its root."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        top = next((lower / candidate for lower in lowers if os.path.lexists(lower / candidate)), None)
        if top is not None and top.is_symlink():
            hops += 1
            if hops > 40:
                raise InvalidRequest(f"COPY destination '{path}' has a symlink loop in the image")
            target = os.readlink(top)
            parts = [p for p in target.split("/") if p and p != "."] + parts
            if target.startswith("/"):
                resolved = []
            continue
        resolved.append(part)
    return "/".join(resolved)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _make_dirs(layer: Path, directory: Path, lowers: list[Path]) -> None:
    """Create ``directory`` in the layer. A dir the image has keeps its owner and mode (in overlayfs
    the upper copy of a directory decides them); a new one is root's, 0755."""
    current = layer
    for part in directory.relative_to(layer).parts:
        current = current / part
        if current.exists():
            continue
        relative = current.relative_to(layer)
        below = next((lower / relative for lower in lowers if (lower / relative).exists()), None)
        current.mkdir()
        if below is not None and _is_real_dir(below):
            st = below.stat()
            os.chown(current, st.st_uid, st.st_gid)
            current.chmod(st.st_mode & 0o7777)
        else:
            current.chmod(0o755)


def _tail(lines: list[str]) -> str:
    text = "\n".join(lines)
    return text[-BUILD_LOG_LIMIT:]
