"""A real OCI registry for tests (Debian's ``docker-registry`` on 127.0.0.1) and images to push to it.

Images are made here from scratch as OCI layouts (gzip'd tar layers, config,
manifest, optionally a multi-platform index) and pushed with ``skopeo``, so
the pull path is exercised against the real registry with nothing from the
internet.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.serverproc import free_port

BUSYBOX = Path("/bin/busybox")


@dataclass
class Layer:
    files: dict[str, bytes | str] = field(default_factory=dict)
    """path -> content (str: a symlink target when it starts with '->', else text)."""
    executables: set[str] = field(default_factory=set)

    def tar_gz(self) -> tuple[bytes, str]:
        """(gzip'd tar, diff id of the uncompressed tar)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs: set[str] = set()
            for path in sorted(self.files):
                parts = path.strip("/").split("/")
                for i in range(1, len(parts)):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(d)
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                content = self.files[path]
                info = tarfile.TarInfo(path.strip("/"))
                if isinstance(content, str) and content.startswith("->"):
                    info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                    tar.addfile(info)
                    continue
                data = content.encode() if isinstance(content, str) else content
                info.size = len(data)
                info.mode = 0o755 if path in self.executables else 0o644
                tar.addfile(info, io.BytesIO(data))
        plain = raw.getvalue()
        return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def busybox_layer(extra: dict[str, bytes | str] | None = None) -> Layer:
    """A tiny rootfs: static busybox as /bin/sh and friends, /etc/passwd with root and ``user``."""
    files: dict[str, bytes | str] = {
        "bin/busybox": BUSYBOX.read_bytes(),
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        "etc/group": "root:x:0:\nuser:x:1000:\n",
        "home/user/.keep": "",
        "root/.keep": "",
        "tmp/.keep": "",
    }
    for tool in ("sh", "echo", "cat", "ls", "env", "id", "sleep", "true", "mkdir", "rm", "pwd", "printf"):
        files[f"bin/{tool}"] = "->busybox"
    files.update(extra or {})
    return Layer(files, executables={"bin/busybox"})


def write_layout(
    layout: Path,
    variants: dict[str, list[Layer]],
    *,
    env: list[str] | None = None,
    user: str = "",
    workdir: str = "",
) -> dict[str, str]:
    """An OCI layout with one image per ``os/arch`` in ``variants``; an index when there are several.

    Returns the manifest digest of each platform.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest, len(data)

    manifests = []
    digests = {}
    for plat, layers in variants.items():
        os_name, arch = plat.split("/")
        layer_descs, diff_ids = [], []
        for layer in layers:
            gz, diff_id = layer.tar_gz()
            digest, size = put(gz)
            layer_descs.append(
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
            )
            diff_ids.append(diff_id)
        config = {
            "architecture": arch,
            "os": os_name,
            "config": {"Env": env or ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": user, "WorkingDir": workdir},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config_digest, config_size = put(json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layer_descs,
        }
        digest, size = put(json.dumps(manifest).encode())
        digests[plat] = digest
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": {"os": os_name, "architecture": arch},
            }
        )
    if len(manifests) == 1:
        top = {**manifests[0], "annotations": {"org.opencontainers.image.ref.name": "latest"}}
        top.pop("platform")
    else:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        digest, size = put(json.dumps(index).encode())
        top = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return digests


class Registry:
    """``docker-registry`` serving plain HTTP on 127.0.0.1 from a temporary dir."""

    def __init__(self, root: Path, *, users: dict[str, str] | None = None) -> None:
        """``users``: name -> password; then every request needs HTTP basic auth."""
        self.root = root
        self.users = users or {}
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        config = self.root / "config.yml"
        self.root.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '127.0.0.1:{self.port}'}}\n"
        )
        if self.users:
            import bcrypt

            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(
                "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}\n" for u, p in self.users.items())
            )
            with config.open("a") as f:
                f.write(f"auth: {{htpasswd: {{realm: corral-tests, path: {htpasswd}}}}}\n")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=(self.root / "registry.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-2000:]}")

    def push(self, layout: Path, name: str, *, tag: str = "latest") -> str:
        """Push the layout's image (or index, with every platform) as ``name:tag``; return the reference."""
        ref = f"{self.host}/{name}:{tag}"
        done = subprocess.run(
            [
                "skopeo",
                "copy",
                "--all",
                "--quiet",
                "--dest-tls-verify=false",
                *self._creds("--dest-creds"),
                f"oci:{layout}:latest",
                f"docker://{ref}",
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"skopeo could not push {ref}: {done.stderr}")
        return ref

    def _creds(self, option: str) -> list[str]:
        if not self.users:
            return []
        user, password = next(iter(self.users.items()))
        return [f"{option}={user}:{password}"]

    def auth_file(self, path: Path) -> Path:
        """A containers-auth.json with the first user's credentials for this registry."""
        user, password = next(iter(self.users.items()))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root / "data", ignore_errors=True)
