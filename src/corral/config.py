"""Server settings: argument, then ``CORRAL_*`` environment variable, then default.

Every field's docstring is its documentation; ``docs/configuration.md`` is
checked against this class by a test.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 7423


class Settings(BaseSettings):
    """Everything the server can be told. Read once at start."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="forbid")

    host: str = "127.0.0.1"
    """Address the API listens on. Anything but loopback needs an API key."""

    port: int = DEFAULT_PORT
    """TCP port of the API."""

    data_dir: Path = Path("/var/lib/corral")
    """Where images, sandboxes' disks, bundles and the database live."""

    database_url: str | None = None
    """SQLAlchemy URL of the state store; default: SQLite (WAL) in ``data_dir``."""

    api_key: SecretStr | None = None
    """API key clients must send as ``X-API-Key``. Only its SHA-256 is kept in memory."""

    api_key_sha256: str | None = None
    """The key's SHA-256 in hex, instead of ``api_key``, so the key itself need not be stored."""

    runtime: Literal["runsc", "runc"] = "runsc"
    """OCI runtime for sandboxes: ``runsc`` (gVisor, the default) or ``runc`` (trusted code only)."""

    runsc_path: str | None = None
    """The runsc binary; default: corral's own (``/usr/local/lib/corral/bin/runsc``) or ``runsc`` on PATH."""

    runsc_platform: str = "systrap"
    """gVisor platform: ``systrap`` (fast, needs runsc >= 2023) or ``ptrace``; older runsc falls back to ptrace."""

    cgroup_favordynmods: bool = True
    """At start, turn on the host's cgroup2 ``favordynmods`` (kernel >= 6.0): each sandbox start then
    moves runsc between cgroups without waiting (about 20 ms less per create). See docs/operations.md."""

    snapshot_compression: Literal["none", "flate-best-speed"] = "none"
    """How gVisor writes saved memory (snapshots, forks, hibernation).

    ``none``: the fastest to save and to restore, about 4x the disk; or ``flate-best-speed``."""

    default_image: str = "corral/base"
    """Image used when a create request names none."""

    registry_auth_file: Path | None = None
    """Registry credentials for pulls, in containers-auth.json format (``skopeo login --authfile``).

    Used on the host only; never enters a sandbox."""

    insecure_registries: list[str] = Field(default_factory=list)
    """Registries (``host:port``) reached over plain HTTP or unverified TLS. Loopback registries always are."""

    pull_timeout: float = Field(default=1800.0, gt=0)
    """Seconds one image pull may take before it is abandoned (and leaves nothing behind)."""

    default_timeout: int = Field(default=300, ge=0)
    """Seconds a sandbox lives when a create request gives no timeout (0: until killed)."""

    max_timeout: int = Field(default=86_400, ge=1)
    """Longest timeout a request may ask for, in seconds."""

    default_vcpus: int = Field(default=1, ge=1)
    """vCPUs of a sandbox when the request gives none."""

    max_vcpus: int = Field(default=8, ge=1)
    """Most vCPUs one sandbox may have."""

    default_memory_mb: int = Field(default=512, ge=64)
    """Memory limit of a sandbox in MiB when the request gives none."""

    max_memory_mb: int = Field(default=16_384, ge=64)
    """Largest memory limit one sandbox may have, in MiB."""

    default_disk_mb: int = Field(default=10_240, ge=0)
    """Size of a sandbox's disk in MiB (everything it writes outside tmpfs) when the request gives none.
    0: sandboxes write to the data dir's filesystem without a limit of their own."""

    max_disk_mb: int = Field(default=102_400, ge=16)
    """Largest disk one sandbox may have, in MiB."""

    pids_limit: int = Field(default=1024, ge=16)
    """Most processes and threads one sandbox may run at once (and at most one per MiB of memory, 256 at least)."""

    paused_time_counts: bool = False
    """Whether paused or hibernated time counts toward sandbox and command timeouts (by default their clocks stop)."""

    exec_timeout: int = Field(default=60, ge=0)
    """Seconds a command may run when the exec request gives no timeout (0: no limit)."""

    exec_output_limit_mb: int = Field(default=64, ge=1)
    """Most output a command run to its end (not streamed) answers, per stream (stdout, stderr), in MiB of text
    (counted in characters). The command runs on; what it prints past this is dropped and the result says
    ``truncated``. Streamed and background output is passed on as it comes, not held, so it has no limit."""

    sandbox_subnet: str = "10.88.0.0/16"
    """Addresses for sandboxes' links to the host; each sandbox takes a /30 from it."""

    default_network: dict[str, Any] = Field(default_factory=lambda: {"mode": "public_only"})
    """Egress policy of sandboxes whose create request gives none, as JSON (see docs/network.md):
    e.g. ``{"mode": "allowlist", "allow_domains": ["pypi.org"]}``."""

    dns_servers: list[str] = Field(default_factory=list)
    """Resolvers the sandboxes' DNS forwarder asks (``ip`` or ``ip:port``); default: the host's ``/etc/resolv.conf``."""

    dns_port: int = Field(default=0, ge=0, le=65535)
    """Host port of the DNS forwarder (sandboxes' port 53 is redirected to it); 0: any free port."""

    preview_port: int = Field(default=7424, ge=0, le=65535)
    """Port of the preview proxy (``http://{port}-{sandbox_id}.{preview_domain}:{preview_port}/``); 0: no proxy."""

    preview_domain: str = "localhost"
    """Domain under which preview host names live; browsers resolve ``*.localhost`` to 127.0.0.1 by themselves."""

    max_json_body_kb: int = Field(default=1024, ge=1)
    """Largest JSON request body, in KiB."""

    max_upload_mb: int = Field(default=4096, ge=1)
    """Largest file upload, in MiB."""

    start_timeout: float = Field(default=20.0, gt=0)
    """Seconds a new sandbox's agent has to answer before the create fails (counted from its boot, not its wait)."""

    max_concurrent_starts: int = Field(default=0, ge=0)
    """Sandboxes that may boot at once (runtime start until the agent answers); other creates wait their turn.
    0: twice the host's CPUs. Creates restored from boot snapshots wait too; restores of snapshots and
    fork copies do not."""

    boot_snapshots: int = Field(default=8, ge=0, le=1000)
    """Booted sandboxes kept saved on disk, one per image and shape (vCPUs, memory), about 12 MB each: a create
    restores its image and shape's instead of booting (see docs/api.md, *Boot snapshots*). The least recently
    used go first. 0: every create boots. Only gVisor (runsc) sandboxes have them."""

    spare_disks: int = Field(default=16, ge=0, le=100)
    """Disks of ``default_disk_mb`` kept formatted and mounted ahead (about 4 MB of host disk each), so that
    a create only moves one's mount into place (16: a fork into ten finds its disks made even right after a
    few creates). 0: every create formats and mounts its own."""

    spare_links: int = Field(default=16, ge=0, le=64)
    """Sandbox links (network namespace and veth pair, addressed and up) kept made ahead, each on an address
    kept aside, so that a create runs no ``ip`` command on its way (16: a fork into ten takes links only,
    even right after a few creates). 0: every create makes its own."""

    reaper_interval: float = Field(default=1.0, gt=0)
    """How often, in seconds, expired sandboxes are looked for."""

    log_level: str = "info"
    """Log level of the server process."""

    @field_validator("sandbox_subnet")
    @classmethod
    def _subnet_is_ipv4(cls, value: str) -> str:
        net = ipaddress.ip_network(value, strict=True)
        if net.version != 4 or net.prefixlen > 28:
            raise ValueError("sandbox_subnet must be an IPv4 network of /28 or larger")
        return value

    @field_validator("default_network")
    @classmethod
    def _network_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        from corral.errors import InvalidRequest
        from corral.net.policy import EgressPolicy

        try:
            return EgressPolicy.from_json(value).to_json()
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'corral.db'}"

    def api_key_digest(self) -> str | None:
        """SHA-256 (hex) of the API key, if one is configured (an empty one is none)."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return hashlib.sha256(self.api_key.get_secret_value().encode()).hexdigest()
        return self.api_key_sha256.lower() if self.api_key_sha256 else None
