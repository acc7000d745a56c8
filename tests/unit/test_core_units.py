"""Small pure pieces of the server side: addressing, limits, error and event mapping."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from corral import errors
from corral.core.agent_client import _process_event, connect_error
from corral.core.files import parse_mode, to_entry
from corral.core.sandboxes import pids_limit
from corral.net.links import host_iface, network_for_slot, slot_count
from corral.runtimes.base import SandboxSpec
from corral.runtimes.oci import host_limits


def test_slots_map_to_disjoint_point_to_point_links() -> None:
    assert slot_count("10.88.0.0/16") == 16384
    first, second = network_for_slot("10.88.0.0/16", 0), network_for_slot("10.88.0.0/16", 1)
    assert (first.host_address, first.sandbox_address) == ("10.88.0.1", "10.88.0.2")
    assert (second.host_address, second.sandbox_address) == ("10.88.0.5", "10.88.0.6")
    assert host_iface(first) != host_iface(second) and len(host_iface(first)) <= 15
    # two servers with different subnets never share an interface name
    assert host_iface(network_for_slot("10.89.0.0/16", 0)) != host_iface(first)
    with pytest.raises(ValueError):
        network_for_slot("10.88.0.0/16", 16384)


def test_pids_scale_with_memory() -> None:
    assert pids_limit(1024, 512) == 512
    assert pids_limit(1024, 64) == 256
    assert pids_limit(1024, 8192) == 1024


def test_host_wall_sits_above_the_sandbox_limits() -> None:
    spec = SandboxSpec("sbx", Path("/"), network_for_slot("10.88.0.0/16", 0), memory_mb=512, pids_limit=512)
    memory, pids = host_limits(spec)
    assert memory == (512 + 512) << 20  # twice the limit at most
    assert pids > 512


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"code": "not_found", "message": "no such file"}, errors.FileNotFound),
        (409, {"code": "already_exists", "message": "exists"}, errors.FileExists_),
        (403, {"code": "permission_denied", "message": "denied"}, errors.PermissionDenied),
        (403, {"code": 403, "message": "error writing file '/x': Read-only file system"}, errors.PermissionDenied),
        (400, {"code": "invalid_argument", "message": "path is a directory"}, errors.IsADirectory_),
        (400, {"code": "invalid_argument", "message": "not a directory"}, errors.NotADirectory_),
        (400, {"code": "failed_precondition", "message": "directory not empty"}, errors.Conflict),
        (400, {"code": "invalid_argument", "message": "bad"}, errors.InvalidRequest),
        (504, {"code": "deadline_exceeded", "message": "late"}, errors.ExecTimeout),
        (503, {"code": "unavailable", "message": "down"}, errors.AgentUnavailable),
        # An unknown sandbox user: the agent says so as envd does (Connect, then its /files route).
        (401, {"code": "unauthenticated", "message": "invalid username: 'nobody2'"}, errors.InvalidRequest),
        (401, {"message": "invalid username: 'nobody2'"}, errors.InvalidRequest),
        (500, {"code": "internal", "message": "boom"}, errors.InternalError),
        (500, None, errors.InternalError),
    ],
)
def test_every_agent_error_is_mapped(status: int, body: object, expected: type[errors.CorralError]) -> None:
    error = connect_error(status, body, missing=errors.FileNotFound)
    assert type(error) is expected


def test_process_events_from_envd_json() -> None:
    assert _process_event({"event": {"start": {"pid": 7}}}).pid == 7  # type: ignore[union-attr]
    data = _process_event({"event": {"data": {"stderr": base64.b64encode(b"oops").decode()}}})
    assert data is not None and (data.kind, data.data) == ("stderr", b"oops")
    ok = _process_event({"event": {"end": {"exited": True, "status": "exit status 0"}}})
    assert ok is not None and (ok.exit_code, ok.error) == (0, None)  # proto3 JSON omits zero values
    failed = _process_event(
        {"event": {"end": {"exitCode": 3, "exited": True, "status": "exit status 3", "error": "exit status 3"}}}
    )
    assert failed is not None and (failed.exit_code, failed.error) == (3, None)
    killed = _process_event({"event": {"end": {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}}})
    assert killed is not None and killed.exit_code == 137
    assert _process_event({"event": {"keepalive": {}}}) is None


def test_modes_and_entries() -> None:
    assert parse_mode("755") == 0o755 and parse_mode("0o644") == 0o644 and parse_mode(0o700) == 0o700
    for bad in ("rwx", "99999", -1):
        with pytest.raises(errors.InvalidRequest):
            parse_mode(bad)
    entry = to_entry({"name": "l", "path": "/l", "type": "FILE_TYPE_FILE", "size": "12", "symlinkTarget": "/x"})
    assert entry["type"] == "symlink" and entry["size"] == 12
    assert to_entry({"type": "FILE_TYPE_DIRECTORY"})["type"] == "dir"
