"""File entries as the API shows them, from the agent's envd ``EntryInfo``."""

from __future__ import annotations

from typing import Any

from corral.errors import InvalidRequest

_TYPES = {"FILE_TYPE_FILE": "file", "FILE_TYPE_DIRECTORY": "dir", "FILE_TYPE_SYMLINK": "symlink"}


def to_entry(info: dict[str, Any]) -> dict[str, Any]:
    target = info.get("symlinkTarget") or None
    return {
        "name": info.get("name", ""),
        "path": info.get("path", ""),
        "type": "symlink" if target else _TYPES.get(str(info.get("type")), "file"),
        "size": int(info.get("size", 0)),
        "mode": int(info.get("mode", 0)),
        "permissions": info.get("permissions", ""),
        "owner": info.get("owner", ""),
        "group": info.get("group", ""),
        "modified_at": info.get("modifiedTime"),
        "symlink_target": target,
    }


def parse_mode(mode: str | int) -> int:
    """``"755"``, ``"0o755"`` or ``493`` to an int, refusing anything past 0o7777."""
    try:
        value = mode if isinstance(mode, int) else int(mode.removeprefix("0o"), 8)
    except ValueError:
        raise InvalidRequest(f"mode {mode!r} is not an octal number like '755'") from None
    if not 0 <= value <= 0o7777:
        raise InvalidRequest(f"mode {mode!r} is out of range (0 to 7777 octal)")
    return value
