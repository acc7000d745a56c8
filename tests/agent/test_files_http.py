"""GET/POST /files: streaming downloads, multipart and raw uploads, atomicity."""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import time
from pathlib import Path

import httpx

from tests.agent.conftest import USER_UID, Agent, UserWorld


def test_download(client: httpx.Client, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "blob").write_bytes(data)
    r = client.get("/files", params={"path": str(tmp_path / "blob")})
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-length"] == str(len(data))


def test_download_of_a_file_that_says_it_is_empty(client: httpx.Client, tmp_path: Path) -> None:
    # /proc files report size 0 and are not; an empty regular file stays empty.
    r = client.get("/files", params={"path": "/proc/self/status"})
    assert r.status_code == 200 and b"Name:" in r.content
    (tmp_path / "empty").write_bytes(b"")
    r = client.get("/files", params={"path": str(tmp_path / "empty")})
    assert r.status_code == 200 and r.content == b""


def test_download_streams_a_large_file(client: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "large"
    with open(path, "wb") as f:
        for i in range(40):
            f.write(bytes([i]) * (1 << 20))
    received = 0
    with client.stream("GET", "/files", params={"path": str(path)}) as r:
        assert r.status_code == 200
        for i, chunk in enumerate(r.iter_bytes(1 << 20)):
            assert chunk == bytes([i]) * len(chunk)
            received += len(chunk)
    assert received == 40 << 20


def test_download_range(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    r = client.get("/files", params={"path": str(tmp_path / "f")}, headers={"Range": "bytes=2-5"})
    assert r.status_code == 206 and r.content == b"2345"
    assert r.headers["content-range"] == "bytes 2-5/10"
    tail = client.get("/files", params={"path": str(tmp_path / "f")}, headers={"Range": "bytes=-3"})
    assert tail.content == b"789"
    bad = client.get("/files", params={"path": str(tmp_path / "f")}, headers={"Range": "bytes=20-"})
    assert bad.status_code == 416


def test_download_errors(client: httpx.Client, tmp_path: Path) -> None:
    missing = client.get("/files", params={"path": str(tmp_path / "missing")})
    assert missing.status_code == 404
    assert missing.json()["code"] == 404 and "does not exist" in missing.json()["message"]
    directory = client.get("/files", params={"path": str(tmp_path)})
    assert directory.status_code == 400 and "is a directory" in directory.json()["message"]
    ghost = client.get("/files", params={"path": str(tmp_path), "username": "ghost"})
    assert ghost.status_code == 401


def test_download_of_what_is_no_file_is_refused_at_once(client: httpx.Client, tmp_path: Path) -> None:
    """A named pipe no one writes to, a socket, a symlink loop, a name too long: 400, and nothing hangs."""
    os.mkfifo(tmp_path / "fifo")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock"))
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    try:
        for name, says in [("fifo", "named pipe"), ("sock", "No such device"), ("loop1", "symbolic links"),
                           ("x" * 300, "too long")]:  # fmt: skip
            for _ in range(8):  # more than the agent's worker threads: none is left holding one
                r = client.get("/files", params={"path": str(tmp_path / name)}, timeout=10)
                assert r.status_code == 400 and says in r.json()["message"], (name, r.text)
    finally:
        listening.close()
    (tmp_path / "file").write_bytes(b"still served")
    assert client.get("/files", params={"path": str(tmp_path / "file")}, timeout=10).content == b"still served"


def test_download_of_a_device_is_what_it_gives(client: httpx.Client) -> None:
    """An endless device gives the pseudo-file limit's worth; one with nothing to give, nothing (no wait)."""
    assert len(client.get("/files", params={"path": "/dev/zero"}).content) == 4 << 20
    leader, follower = os.openpty()  # a terminal no one types into
    try:
        r = client.get("/files", params={"path": os.ttyname(follower)}, timeout=10)
        assert r.status_code == 200 and r.content == b""
    finally:
        os.close(leader)
        os.close(follower)


def test_upload_multipart(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "file.bin"
    data = os.urandom(200_000)
    r = client.post("/files", params={"path": str(target)}, files={"file": ("ignored", data)})
    assert r.status_code == 200
    assert r.json() == [{"name": "file.bin", "type": "file", "path": str(target)}]
    assert target.read_bytes() == data


def test_upload_multipart_many_files_named_by_part(client: httpx.Client, tmp_path: Path) -> None:
    files = [
        ("file", (str(tmp_path / "one.txt"), b"1")),
        ("other", ("x", b"not a file field")),
        ("file", (str(tmp_path / "sub" / "two.txt"), b"2" * 100_000)),
    ]
    r = client.post("/files", files=files)
    assert r.status_code == 200
    assert [e["path"] for e in r.json()] == [str(tmp_path / "one.txt"), str(tmp_path / "sub" / "two.txt")]
    assert (tmp_path / "one.txt").read_bytes() == b"1"
    assert (tmp_path / "sub" / "two.txt").read_bytes() == b"2" * 100_000
    assert not (tmp_path / "x").exists()


def test_upload_multipart_boundary_lookalikes(client: httpx.Client, tmp_path: Path) -> None:
    boundary = "XyZ"
    data = b"\r\n--XyZ-not-quite\r\n--Xy" + b"\r\n" * 3 + b"--XyZ"[:-1]
    body = (
        (
            f'preamble\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post(
        "/files",
        params={"path": str(tmp_path / "tricky")},
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 200, r.text
    assert (tmp_path / "tricky").read_bytes() == data


def test_upload_raw_streamed(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "raw" / "big"

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(30):
            yield bytes([i]) * (1 << 20)

    r = client.post(
        "/files",
        params={"path": str(target)},
        content=chunks(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200
    assert r.json() == [{"name": "big", "type": "file", "path": str(target)}]
    with open(target, "rb") as f:
        for i in range(30):
            assert f.read(1 << 20) == bytes([i]) * (1 << 20)


def test_upload_gzip(client: httpx.Client, tmp_path: Path) -> None:
    data = b"compressible " * 10_000
    r = client.post(
        "/files",
        params={"path": str(tmp_path / "gz")},
        content=gzip.compress(data),
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 200
    assert (tmp_path / "gz").read_bytes() == data


def test_upload_overwrites_keeping_the_mode(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "script"
    target.write_text("old")
    target.chmod(0o750)
    r = client.post(
        "/files",
        params={"path": str(target)},
        content=b"new",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o750


def test_upload_through_a_symlink_replaces_what_it_points_to(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "real").write_text("old")
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling").symlink_to("made/by/upload")
    for name in ("link", "dangling"):
        r = client.post("/files", params={"path": str(tmp_path / name)}, content=name.encode(),
                        headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 200, r.text
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_text() == "link"  # the link used to go
    assert (tmp_path / "made" / "by" / "upload").read_text() == "dangling"


def test_upload_over_what_is_no_regular_file_is_refused_and_leaves_it(client: httpx.Client, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to("fifo")
    cases = [("fifo", "a named pipe"), ("to-fifo", "a named pipe")]
    if os.geteuid() == 0:  # a null device of its own (never the host's /dev/null)
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        cases.append(("null", "a character device"))
    for name, kind in cases:
        r = client.post("/files", params={"path": str(tmp_path / name)}, content=b"x",
                        headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 400 and kind in r.json()["message"], r.text
    assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode) and (tmp_path / "to-fifo").is_symlink()
    assert os.geteuid() != 0 or stat.S_ISCHR((tmp_path / "null").stat().st_mode)  # it used to become a file


def test_upload_errors(client: httpx.Client, tmp_path: Path) -> None:
    raw = {"Content-Type": "application/octet-stream"}
    no_path = client.post("/files", content=b"x", headers=raw)
    assert no_path.status_code == 400 and "path" in no_path.json()["message"]
    onto_dir = client.post("/files", params={"path": str(tmp_path)}, content=b"x", headers=raw)
    assert onto_dir.status_code == 400 and "directory" in onto_dir.json()["message"]
    (tmp_path / "file").write_text("x")
    under_file = client.post("/files", params={"path": str(tmp_path / "file" / "child")}, content=b"x", headers=raw)
    assert under_file.status_code == 400
    other = client.post(
        "/files", params={"path": str(tmp_path / "t")}, content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert other.status_code == 400
    same_path = client.post(
        "/files",
        params={"path": str(tmp_path / "twice")},
        files=[("file", ("a", b"1")), ("file", ("b", b"2"))],
    )
    assert same_path.status_code == 400
    assert sorted(os.listdir(tmp_path)) == ["file", "twice"]  # no temporary file left behind


def test_interrupted_upload_leaves_nothing(agent: Agent, tmp_path: Path) -> None:
    target = tmp_path / "partial"
    target.write_bytes(b"previous")
    head = (
        f"POST /files?path={target} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", agent.port)) as s:
        s.sendall(head + b"a" * 500_000)
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while len(os.listdir(tmp_path)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path) == ["partial"]
    assert target.read_bytes() == b"previous"


def test_upload_and_download_as_a_user(user_agent: Agent, user_world: UserWorld) -> None:
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        r = c.post(
            "/files",
            params={"path": "notes/today.txt"},
            content=b"hi",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200
        written = user_world.home / "notes" / "today.txt"
        assert json.loads(r.content)[0]["path"] == str(written)
        assert written.stat().st_uid == USER_UID
        assert written.parent.stat().st_uid == USER_UID
        assert c.get("/files", params={"path": "~/notes/today.txt"}).content == b"hi"
        as_root = c.post(
            "/files",
            params={"path": str(user_world.root / "rootfile"), "username": "root"},
            content=b"r",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert as_root.status_code == 200
        assert (user_world.root / "rootfile").stat().st_uid == 0
        (user_world.root / "rootfile").chmod(0o4755)  # setuid root
        over = c.post("/files", params={"path": str(user_world.root / "rootfile")}, content=b"mine",
                      headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert over.status_code == 200
        kept = (user_world.root / "rootfile").stat()  # written over as user: root's still, setuid gone
        assert (kept.st_uid, kept.st_mode & 0o7777) == (0, 0o755)
