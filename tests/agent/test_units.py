"""The agent's pieces on their own: users, paths, wire helpers, multipart, exit statuses."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from corral.agent.connect import EnvelopeReader, RpcError, end_of_stream, field, pack
from corral.agent.filesystem import go_permissions, rfc3339
from corral.agent.main import base_environment, parse_args
from corral.agent.multipart import MultipartReader, header_params
from corral.agent.process import exit_of, parse_signal
from corral.agent.users import User, UserDb, resolve_path, username_from_authorization


def test_user_db(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text(
        "# comment\nroot:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:User:/home/user:/bin/bash\n"
        "broken line\nsvc:x:999:999::/:\n"
    )
    (tmp_path / "group").write_text("root:x:0:\nuser:x:1000:\ndocker:x:998:user,other\nwheel:x:10:user\n")
    db = UserDb(str(tmp_path))
    user = db.lookup("user")
    assert user == User("user", 1000, 1000, "/home/user", "/bin/bash", (1000, 998, 10))
    assert db.default().name == "user"
    assert db.lookup("ghost") is None
    assert db.user_name(999) == "svc" and db.user_name(4242) == "4242"
    assert db.group_name(998) == "docker" and db.group_name(4242) == "4242"
    assert UserDb(str(tmp_path), default_user="svc").default().name == "svc"
    with pytest.raises(LookupError):
        db.resolve("ghost")
    assert db.resolve(None).name == "user"


def test_user_db_reads_users_as_dockers_user_instruction_does(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n")
    (tmp_path / "group").write_text("root:x:0:\nuser:x:1000:\nstaff:x:50:user\n")
    db = UserDb(str(tmp_path))
    assert db.lookup("1000") == db.lookup("user")  # a uid the image has: that user
    assert db.lookup("65532") == User("65532", 65532, 0, "/", "/bin/sh")  # one it lacks: group 0, home /
    assert db.lookup("user:staff") == User("user", 1000, 50, "/home/user", "/bin/bash", (50,))  # its only group
    assert db.lookup("1001:1001") == User("1001", 1001, 1001, "/", "/bin/sh", (1001,))
    assert db.lookup("user:nogroup") is None and db.lookup("4294967295") is None and db.lookup("-1") is None
    image_user = UserDb(str(tmp_path), default_user="65532")  # distroless's nonroot, as its USER names it
    assert image_user.default().uid == 65532 and image_user.resolve(None).uid == 65532


def test_user_db_rereads_changes_and_falls_back_to_root(tmp_path: Path) -> None:
    db = UserDb(str(tmp_path))  # no passwd at all: a bare busybox image
    assert db.default().name == "root" and db.default().uid == 0
    assert db.lookup("root") is not None
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1:1::/home/user:/bin/sh\n")
    assert db.default().name == "user"


def test_resolve_path() -> None:
    user = User("user", 1000, 1000, "/home/user", "/bin/sh")
    assert resolve_path("~", user) == "/home/user"
    assert resolve_path("~/a/../b", user) == "/home/user/b"
    assert resolve_path("notes.txt", user) == "/home/user/notes.txt"
    assert resolve_path("", user) == "/home/user"
    assert resolve_path("/etc//passwd/", user) == "/etc/passwd"
    assert resolve_path("//x", user) == "/x"
    with pytest.raises(ValueError):
        resolve_path("~root/x", user)


def test_username_from_authorization() -> None:
    token = base64.b64encode(b"alice:").decode()
    assert username_from_authorization(f"Basic {token}") == "alice"
    assert username_from_authorization(None) is None
    assert username_from_authorization("Bearer x") is None
    assert username_from_authorization("Basic !!!") is None


def test_go_permissions() -> None:
    assert go_permissions(stat.S_IFREG | 0o644) == "-rw-r--r--"
    assert go_permissions(stat.S_IFDIR | 0o755) == "drwxr-xr-x"
    assert go_permissions(stat.S_IFDIR | stat.S_ISVTX | 0o777) == "dtrwxrwxrwx"
    assert go_permissions(stat.S_IFLNK | 0o777) == "Lrwxrwxrwx"
    assert go_permissions(stat.S_IFREG | stat.S_ISUID | 0o755) == "urwxr-xr-x"
    assert go_permissions(stat.S_IFCHR | 0o666) == "Dcrw-rw-rw-"


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_envelopes() -> None:
    data = pack({"a": 1}) + end_of_stream(RpcError("not_found", "gone"))
    reader = EnvelopeReader()
    assert reader.feed(data[:3]) == []
    frames = reader.feed(data[3:])
    assert frames == [(0, b'{"a":1}'), (2, b'{"error":{"code":"not_found","message":"gone"}}')]
    assert field({"exitCode": 3}, "exit_code") == 3
    assert field({"exit_code": 4}, "exit_code") == 4


def test_exit_statuses() -> None:
    assert exit_of(0).to_json() == {"exitCode": 0, "exited": True, "status": "exit status 0"}
    assert exit_of(2 << 8).error == "exit status 2"
    killed = exit_of(signal.SIGKILL)
    assert (killed.exit_code, killed.exited, killed.status) == (-1, False, "signal: killed")
    assert exit_of(signal.SIGSEGV | 0x80).status == "signal: segmentation fault (core dumped)"


def test_parse_signal() -> None:
    assert parse_signal("SIGNAL_SIGKILL") == 9
    assert parse_signal("SIGNAL_SIGTERM") == 15
    assert parse_signal("SIGINT") == 2
    assert parse_signal("HUP") == 1
    assert parse_signal(10) == 10
    for bad in ("SIGNAL_UNSPECIFIED", "SIGNAL_BOGUS", 0, None, 1000):
        with pytest.raises(RpcError):
            parse_signal(bad)


def test_header_params() -> None:
    params = header_params('form-data; name="file"; filename="dir/a \\"b\\".txt"')
    assert params == {"name": "file", "filename": 'dir/a "b".txt'}
    assert header_params("form-data; filename*=utf-8''%C3%A9t%C3%A9.txt")["filename"] == "été.txt"
    assert header_params("multipart/form-data; boundary=abc")["boundary"] == "abc"


def test_multipart_reader_across_tiny_reads() -> None:
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        b"hello\r\n--b0und not it\r\n"
        b'\r\n--b0undary\r\nContent-Disposition: form-data; name="note"\r\n\r\nsecond'
        b"\r\n--b0undary--\r\n"
    )

    async def scenario() -> list[tuple[str | None, bytes]]:
        position = 0

        async def read() -> bytes:
            nonlocal position
            chunk = body[position : position + 3]
            position += 3
            return chunk

        reader = MultipartReader(read, "b0undary")
        parts = []
        while (part := await reader.next_part()) is not None:
            data = b""
            while chunk := await part.read():
                data += chunk
            parts.append((part.name, data))
        return parts

    assert asyncio.run(scenario()) == [
        ("file", b"hello\r\n--b0und not it\r\n"),
        ("note", b"second"),
    ]


def test_parse_args_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    options = parse_args(["--port", "1234", "--host=::1", "--user", "bob"])
    assert (options.host, options.port, options.user) == ("::1", 1234, "bob")
    with pytest.raises(SystemExit):
        parse_args(["--bogus"])
    monkeypatch.setenv("CORRAL_AGENT_PORT", "777")
    monkeypatch.setenv("PYTHONHOME", sys.prefix)
    monkeypatch.setenv("KEEP_ME", "1")
    assert parse_args([]).port == 777
    env = base_environment()
    assert "CORRAL_AGENT_PORT" not in env and "PYTHONHOME" not in env
    assert env["KEEP_ME"] == "1" and "HOME" not in env


def test_agent_imports_only_the_standard_library() -> None:
    # The agent ships alone into sandboxes. With -I -S no site-packages are on the
    # path, and corral/__init__.py is bypassed as in the bundle: any import of
    # something outside the stdlib (or the rest of corral) fails.
    package = str(Path(__file__).parents[2] / "src" / "corral")
    code = (
        "import sys, types\n"
        f"p = types.ModuleType('corral'); p.__path__ = [{package!r}]\n"
        "sys.modules['corral'] = p\n"
        "import corral.agent.main, corral.agent.server, corral.agent.limits\n"
        "others = [n for n in sys.modules if n.startswith('corral.') and not n.startswith('corral.agent')]\n"
        "assert not others, others\n"
    )
    subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True, env={**os.environ})
