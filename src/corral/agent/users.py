"""Users and groups from the image's ``/etc/passwd`` and ``/etc/group``, and path rules.

The files are parsed directly (no NSS: the agent's bundled libc has no NSS
modules, and the image may have none either) and re-read whenever they change,
so users added by a template build or a command are seen at once.

Which user a call acts as: ``Authorization: Basic base64("name:")`` on RPCs
(what the e2b SDK sends), the ``username`` query parameter on ``/files``, else
the default user: the image's ``User``, else ``user`` when the image has one,
else ``root``. As Docker reads ``USER``, a user is a name or a uid, and may
name a group (``name:group``, ``uid:gid``), which is then its only group. A uid
the image's ``passwd`` lacks is that uid with group 0 and home ``/``.
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
from dataclasses import dataclass, replace

DEFAULT_USERNAME = "user"
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no change" to setuid and chown
FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    """One passwd entry, with its groups resolved."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...] = ()


ROOT = User("root", 0, 0, "/root", "/bin/sh")


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _lines(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


class UserDb:
    """A cached view of ``passwd`` and ``group`` under ``etc``."""

    def __init__(self, etc: str = "/etc", *, default_user: str | None = None) -> None:
        self._passwd = posixpath.join(etc, "passwd")
        self._group = posixpath.join(etc, "group")
        self._default = default_user
        self._key: object = None
        self._users: dict[str, User] = {}
        self._names: dict[int, str] = {}
        self._group_names: dict[int, str] = {}
        self._gids: dict[str, int] = {}

    def _refresh(self) -> None:
        key = (_signature(self._passwd), _signature(self._group))
        if key == self._key:
            return
        members: dict[str, list[int]] = {}
        group_names: dict[int, str] = {}
        gids: dict[str, int] = {}
        for fields in _lines(self._group):
            if len(fields) < 3 or not fields[2].isdigit():
                continue
            gid = int(fields[2])
            group_names.setdefault(gid, fields[0])
            gids.setdefault(fields[0], gid)
            if len(fields) > 3:
                for member in filter(None, fields[3].split(",")):
                    members.setdefault(member.strip(), []).append(gid)
        users: dict[str, User] = {}
        names: dict[int, str] = {}
        for fields in _lines(self._passwd):
            if len(fields) < 7 or not fields[2].isdigit() or not fields[3].isdigit():
                continue
            name, uid, gid = fields[0], int(fields[2]), int(fields[3])
            groups = tuple(dict.fromkeys([gid, *members.get(name, [])]))
            users.setdefault(name, User(name, uid, gid, fields[5] or "/", fields[6], groups))
            names.setdefault(uid, name)
        self._users, self._names, self._group_names, self._gids = users, names, group_names, gids
        self._key = key

    def lookup(self, name: str) -> User | None:
        """The user ``name`` (a name or uid, maybe ``:group``); ``root`` exists even without a passwd entry."""
        self._refresh()
        who, colon, group = name.partition(":")
        user = self._users.get(who)
        if user is None and who.isdigit() and int(who) <= MAX_ID:
            known = self._names.get(int(who))
            user = self._users[known] if known is not None else User(who, int(who), 0, "/", "/bin/sh")
        if user is None and who == "root":
            user = ROOT
        if user is None or not colon:
            return user
        gid = int(group) if group.isdigit() and int(group) <= MAX_ID else self._gids.get(group)
        return None if gid is None else replace(user, gid=gid, groups=(gid,))

    def default(self) -> User:
        """The user a call acts as when it names none."""
        self._refresh()
        if self._default:
            user = self.lookup(self._default)
            if user is not None:
                return user
        return self._users.get(DEFAULT_USERNAME) or self._users.get("root") or ROOT

    def resolve(self, name: str | None) -> User:
        """The user called ``name``, or the default user for ``None``; ``LookupError`` if unknown."""
        if not name:
            return self.default()
        user = self.lookup(name)
        if user is None:
            raise LookupError(f"invalid username: '{name}'")
        return user

    def user_name(self, uid: int) -> str:
        self._refresh()
        return self._names.get(uid, str(uid))

    def group_name(self, gid: int) -> str:
        self._refresh()
        return self._group_names.get(gid, str(gid))


def username_from_authorization(value: str | None) -> str | None:
    """The user name in ``Basic base64("name:")``, or ``None`` without one."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def resolve_path(path: str, user: User) -> str:
    """An absolute, normalized path: ``~`` is the user's home, relative paths start there.

    ``~otheruser`` is refused (``ValueError``) as envd does; so is a NUL byte,
    which no path can hold (the OS would refuse it with a ``ValueError`` later on).
    """
    if "\0" in path:
        raise ValueError(f"a path cannot hold a NUL byte: {path!r}")
    if path.startswith("~"):
        if len(path) > 1 and path[1] != "/":
            raise ValueError(f"cannot expand user-specific home dir in {path!r}")
        path = user.home + path[1:]
    if not path.startswith("/"):
        path = posixpath.join(user.home, path)
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path
