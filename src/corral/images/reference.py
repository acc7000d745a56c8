"""Image references: what ``python:3.12`` or ``127.0.0.1:5000/team/app@sha256:...`` means.

The rules are Docker's: the first path component is a registry host when it
has a dot or a colon or is ``localhost``; otherwise the registry is
``docker.io`` and a one-component name lives under ``library/``. A reference
without tag or digest means ``:latest``. Names under ``corral/`` are corral's
own local images (built, committed or templates) and are never pulled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.errors import InvalidRequest

DEFAULT_REGISTRY = "docker.io"
LOCAL_NAMESPACE = "corral"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::[0-9]{1,5})?$"  # name or IPv4, port
    r"|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$"  # [IPv6], port
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str | None
    """The registry host (with port), or None for a local ``corral/`` name."""
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_local(self) -> bool:
        return self.registry is None

    @property
    def name(self) -> str:
        """Registry and repository, without tag or digest."""
        return self.repository if self.registry is None else f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None and not (self.is_local and self.tag == "latest" and self.digest is None):
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def pinned(self, digest: str) -> Reference:
        """This repository at exactly ``digest`` (what a pull really fetches)."""
        return Reference(self.registry, self.repository, None, digest)

    @property
    def transport(self) -> str:
        """The reference as skopeo's ``docker://`` transport wants it."""
        return f"docker://{self}"


def parse(text: str) -> Reference:
    """Parse an image reference, or raise :class:`InvalidRequest` saying what is wrong."""

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"'{text}' is not a valid image reference: {why}", details={"image": text})

    if not text or len(text) > 512 or text != text.strip():
        raise bad("it is empty, too long or has surrounding spaces")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise bad("a digest must look like sha256:<64 hex digits>")
    parts = rest.split("/")
    registry: str | None = None
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
        if not _HOST.match(registry):
            raise bad(f"'{registry}' is not a registry host")
    tag: str | None = None
    last, colon, maybe_tag = parts[-1].partition(":")
    if colon:
        if not _TAG.match(maybe_tag):
            raise bad(f"'{maybe_tag}' is not a valid tag")
        parts[-1], tag = last, maybe_tag
    for part in parts:
        if not _COMPONENT.match(part):
            raise bad(f"'{part}' is not a valid name component (lowercase letters, digits, '.', '_', '-')")
    if registry is None and parts[0] == LOCAL_NAMESPACE and len(parts) > 1:
        return Reference(None, "/".join(parts), tag or ("latest" if not digest else None), digest or None)
    if registry is None:
        registry = DEFAULT_REGISTRY
        if len(parts) == 1:
            parts.insert(0, "library")
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry, "/".join(parts), tag, digest or None)


def is_insecure_host(registry: str, extra: frozenset[str] = frozenset()) -> bool:
    """Loopback registries speak plain HTTP without asking (Docker's rule); others only when configured."""
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return registry in extra or host in {"localhost", "127.0.0.1", "[::1]"} or host.startswith("127.")
