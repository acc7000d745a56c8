"""Pulling images from OCI/Docker registries: skopeo fetches, umoci unpacks.

A pull first asks the registry what the reference points at (``skopeo inspect
--raw``): for a multi-arch index, the manifest of this host's platform. Its
digest is the image's id, so a second pull of the same digest, under any name,
only adds the name; pulls of one digest running at the same time share one
download. The image is copied into a throw-away OCI layout in ``images/tmp``,
unpacked there with ``umoci raw unpack`` into one flattened rootfs, and moved
into the store with a rename: an interrupted or failed pull leaves nothing.

Registry credentials come from the server's configuration (an auth file in the
containers-auth.json format) and are only ever handed to skopeo on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import ImageNotFound, InvalidRequest, RegistryError, RuntimeFailure
from corral.images import reference
from corral.images.store import Image, ImageConfig, ImageStore

log = logging.getLogger(__name__)

_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_UMOCI_ERROR = "\u2a2f"
"""The mark at the start of umoci's error line (a cross)."""
_GO_CRASH = re.compile(r"(panic|fatal error|SIG[A-Z]+): ")
"""The line that says why a Go program crashed."""
_FULL_DISK = 1 << 20
"""Less than this many bytes free after a failed unpack: the disk filled up."""
_NOT_FOUND_HINTS = ("manifest unknown", "name unknown", "not found", "404", "repository name not known")


@dataclass(frozen=True, slots=True)
class Progress:
    """One step of a pull, for progress bars: ``done`` of ``total`` bytes in ``phase``."""

    phase: str  # resolving | downloading | unpacking | done
    done: int = 0
    total: int = 0
    image_id: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    auth_file: Path | None = None
    insecure_registries: frozenset[str] = frozenset()
    timeout: float = 600.0


def host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return "linux", arch


class Puller:
    """Pulls images into one :class:`ImageStore`, at most once per digest at a time."""

    def __init__(self, store: ImageStore, options: RegistryOptions | None = None) -> None:
        self.store = store
        self.options = options or RegistryOptions()
        self._inflight: dict[str, asyncio.Future[Image]] = {}

    async def pull(self, name: str, *, on_progress: ProgressCallback | None = None) -> Image:
        """Pull ``name`` (any reference) and point its canonical name at the result."""
        ref = reference.parse(name)
        if ref.is_local:
            raise ImageNotFound(
                f"'{name}' is a local corral image name; it cannot be pulled from a registry",
                details={"image": name},
            )
        report = on_progress or (lambda _p: None)
        report(Progress("resolving"))
        digest, manifest = await self._resolve(ref)
        image_id = digest.removeprefix("sha256:")
        if not self.store.has(image_id):
            inflight = self._inflight.get(image_id)
            if inflight is None:
                inflight = asyncio.get_running_loop().create_future()
                self._inflight[image_id] = inflight
                try:
                    inflight.set_result(await self._fetch(ref.pinned(digest), manifest, image_id, report))
                except asyncio.CancelledError:
                    inflight.cancel()
                    raise
                except BaseException as exc:
                    inflight.set_exception(exc)
                    inflight.exception()  # retrieved: waiters (if any) re-raise it
                    raise
                finally:
                    del self._inflight[image_id]
            else:
                await asyncio.shield(inflight)
        with self.store.locked():
            self.store.tag(image_id, str(ref))
        image = self.store.get(image_id)
        report(Progress("done", image.size, image.size, image_id))
        return image

    # -- steps -----------------------------------------------------------------

    def _skopeo(self, *args: str, registry: str) -> list[str]:
        argv = ["skopeo", *args[:1]]
        if self.options.auth_file:
            argv.append(f"--authfile={self.options.auth_file}")
        if reference.is_insecure_host(registry, self.options.insecure_registries):
            argv.append("--src-tls-verify=false" if args[0] == "copy" else "--tls-verify=false")
        return argv + list(args[1:])

    async def _resolve(self, ref: reference.Reference) -> tuple[str, dict[str, Any]]:
        """The digest and manifest of this host's platform's image for ``ref``."""
        assert ref.registry is not None
        raw = await self._inspect(ref)
        manifest = _json(raw, ref)
        if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
            os_name, arch = host_platform()
            for entry in manifest.get("manifests", []):
                plat = entry.get("platform") or {}
                if plat.get("os") == os_name and plat.get("architecture") == arch:
                    digest = str(entry["digest"])
                    return digest, _json(await self._inspect(ref.pinned(digest)), ref)
            available = sorted(
                f"{(e.get('platform') or {}).get('os')}/{(e.get('platform') or {}).get('architecture')}"
                for e in manifest.get("manifests", [])
            )
            raise ImageNotFound(
                f"image '{ref}' has no {os_name}/{arch} variant (it has: {', '.join(available) or 'none'})",
                details={"image": str(ref), "platforms": available},
            )
        return ref.digest or "sha256:" + hashlib.sha256(raw).hexdigest(), manifest

    async def _inspect(self, ref: reference.Reference) -> bytes:
        assert ref.registry is not None
        argv = self._skopeo("inspect", "--raw", ref.transport, registry=ref.registry)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RegistryError(
                f"registry {ref.registry} did not answer within 60s", details={"image": str(ref)}
            ) from None
        if proc.returncode != 0:
            raise _registry_error(ref, err.decode(errors="replace"))
        return out

    async def _fetch(
        self, ref: reference.Reference, manifest: dict[str, Any], image_id: str, report: ProgressCallback
    ) -> Image:
        assert ref.registry is not None
        work = self.store.work_dir(f"pull-{image_id[:12]}")
        try:
            layout, rootfs = work / "layout", work / "rootfs"
            total = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
            started = time.monotonic()
            copy = await asyncio.create_subprocess_exec(
                *self._skopeo("copy", "--quiet", ref.transport, f"oci:{layout}:image", registry=ref.registry),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
            )
            waiting = asyncio.ensure_future(copy.communicate())
            try:
                while not waiting.done():
                    report(Progress("downloading", min(_dir_bytes(layout / "blobs"), total), total, image_id))
                    await asyncio.wait({waiting}, timeout=0.25)
                    if time.monotonic() - started > self.options.timeout:
                        raise RegistryError(
                            f"pulling '{ref}' took longer than {self.options.timeout:g}s", details={"image": str(ref)}
                        )
            finally:
                if not waiting.done():
                    copy.kill()
                    with contextlib.suppress(BaseException):
                        await waiting
            _, err = waiting.result()
            if copy.returncode != 0:
                raise _registry_error(ref, err.decode(errors="replace"))
            report(Progress("unpacking", total, total, image_id))
            unpack = await asyncio.create_subprocess_exec(
                "umoci", "raw", "unpack", "--image", f"{layout}:image", str(rootfs),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await unpack.communicate()
            if unpack.returncode != 0:
                text = out.decode(errors="replace").strip()
                raise RuntimeFailure(
                    f"unpacking '{ref}' failed: {_unpack_error(text, self.store.root)}",
                    details={"image": str(ref), "output": text[-2000:]},
                )
            config = _image_config(layout)
            rootfs.chmod(0o755)
            image = self.store.stack(
                rootfs, parent=None, config=config, source="pull", layer_id=image_id, image_id=image_id,
                digest=f"sha256:{image_id}",
            )  # fmt: skip
            log.info("pulled %s (%s, %d MiB)", ref, image_id[:12], image.size >> 20)
            return image
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)


def _image_config(layout: Path) -> ImageConfig:
    """The runtime part of the OCI image config in a one-image layout."""

    def blob(digest: str) -> dict[str, Any]:
        algo, _, hexd = digest.partition(":")
        data: dict[str, Any] = json.loads((layout / "blobs" / algo / hexd).read_text())
        return data

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    config = blob(manifest["config"]["digest"]).get("config") or {}
    env = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return ImageConfig(
        env=env,
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        workdir=str(config.get("WorkingDir") or ""),
        user=str(config.get("User") or ""),
    )


def _registry_error(ref: reference.Reference, stderr: str) -> Exception:
    message = _tool_message(_last_line(stderr.strip())) or "unknown error"
    lowered = message.lower()
    details = {"image": str(ref), "registry": ref.registry, "registry_message": message}
    if any(hint in lowered for hint in _NOT_FOUND_HINTS):
        return ImageNotFound(f"image '{ref}' was not found: {message}", details=details)
    if "unauthorized" in lowered or "authentication required" in lowered or "denied" in lowered:
        return RegistryError(f"registry {ref.registry} refused access to '{ref}': {message}", details=details)
    return RegistryError(f"could not reach image '{ref}' at {ref.registry}: {message}", details=details)


def _json(raw: bytes, ref: reference.Reference) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise RegistryError(
            f"registry {ref.registry} sent a manifest that is not JSON", details={"image": str(ref)}
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"'{ref}' does not name an image manifest", details={"image": str(ref)})
    return data


def _unpack_error(output: str, disk: Path) -> str:
    """What went wrong in a failed ``umoci unpack``, in one line.

    umoci reports an error on one line marked with a cross; a crash of the Go
    program leaves its reason on one line (``panic: ...``, ``fatal error:
    ...``, or the signal, ``SIGQUIT: quit``), followed by goroutine stacks. A
    full ``disk`` (the image store's) is named as such even when the output
    does not say so (a crash while writing can hide it).
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    reason = next((line.removeprefix(_UMOCI_ERROR).strip() for line in lines if line.startswith(_UMOCI_ERROR)), None)
    reason = reason or next((line for line in lines if _GO_CRASH.match(line)), None)
    reason = reason or (lines[-1] if lines else "umoci said nothing")
    with contextlib.suppress(OSError):
        free = os.statvfs(disk)
        if "no space left on device" not in reason and free.f_bavail * free.f_frsize < _FULL_DISK:
            reason = f"no space left on device in {disk} ({reason})"
    return reason


# skopeo's error line: time="..." level=fatal msg="quoted, with \" and \\ escaped"
_LOG_MESSAGE = re.compile(r'\bmsg="((?:[^"\\]|\\.)*)"')


def _tool_message(line: str) -> str:
    """The message of a Go tool's ``msg="..."`` log line, unquoted; any other line as it is."""
    match = _LOG_MESSAGE.search(line)
    if match is None:
        return line
    return re.sub(r"\\(.)", lambda m: {"n": " ", "t": " "}.get(m.group(1), m.group(1)), match.group(1))


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
