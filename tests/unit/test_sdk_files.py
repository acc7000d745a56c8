"""The sync SDK's files: request shapes, typed entries, streamed reads and uploads."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from corral import (
    EntryInfo,
    FileNotFound,
    InvalidRequest,
    NotADirectory_,
    Sandbox,
)
from corral.sdk import _http, _upload
from tests.unit.sdk_fake import FakeCorral, install


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    return install(monkeypatch)


@pytest.fixture
def sbx(fake: FakeCorral) -> Sandbox:
    return Sandbox.create()


def test_write_and_read_back(fake: FakeCorral, sbx: Sandbox) -> None:
    entry = sbx.files.write("/home/user/a.txt", "héllo", user="root")
    sent = fake.last()
    assert (sent.method, sent.path) == ("PUT", f"/v1/sandboxes/{sbx.id}/files")
    assert sent.params == [("path", "/home/user/a.txt"), ("user", "root")]
    assert sent.body == "héllo".encode()
    assert entry == EntryInfo(
        name="a.txt",
        path="/home/user/a.txt",
        type="file",
        size=6,
        mode=0o644,
        permissions="-rw-r--r--",
        owner="user",
        group="user",
        modified_at=datetime(2026, 11, 23, 20, 0, tzinfo=UTC),
        symlink_target=None,
    )
    assert EntryInfo.from_json(entry.to_json()) == entry
    assert sbx.files.read("a.txt") == "héllo"
    assert fake.last().params == [("path", "a.txt")]
    assert sbx.files.read("a.txt", format="bytes") == "héllo".encode()
    chunks = list(sbx.files.read("a.txt", format="stream"))
    assert len(chunks) > 1 and b"".join(chunks) == "héllo".encode()


def test_uploads_stream_file_objects_and_iterators(
    fake: FakeCorral, sbx: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_upload, "CHUNK_SIZE", 1000)
    blob = bytes(range(256)) * 20
    sbx.files.write("/tmp/blob.bin", io.BytesIO(blob))
    sent = fake.last()
    assert sent.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in sent.headers
    assert fake.sandboxes[sbx.id].files["/tmp/blob.bin"] == blob

    sbx.files.write("/tmp/text.txt", io.StringIO("ü" * 700))  # a text-mode file is encoded
    assert fake.sandboxes[sbx.id].files["/tmp/text.txt"] == ("ü" * 700).encode()

    def pieces() -> Iterator[bytes]:
        yield b"one,"
        yield b"two"

    sbx.files.write("/tmp/gen.txt", pieces())
    assert fake.last().headers.get("transfer-encoding") == "chunked"
    assert sbx.files.read("/tmp/gen.txt") == "one,two"
    monkeypatch.setattr(_http, "SEND_PIECE", 1000)
    sbx.files.write("/tmp/whole.bin", blob)  # larger than a piece: sent in pieces, its length known
    sent = fake.last()
    assert sent.headers.get("content-length") == str(len(blob))
    assert "transfer-encoding" not in sent.headers
    assert fake.sandboxes[sbx.id].files["/tmp/whole.bin"] == blob
    sbx.files.write("/tmp/raw.bin", bytearray(b"\x00\x01"))
    assert sbx.files.read("/tmp/raw.bin", format="bytes") == b"\x00\x01"
    with pytest.raises(InvalidRequest):
        sbx.files.write("/tmp/x", 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        sbx.files.write("/tmp/x", [1, 2])  # type: ignore[list-item]


def test_list_stat_exists(fake: FakeCorral, sbx: Sandbox) -> None:
    sbx.files.write("/srv/a/b/c.txt", "c")
    sbx.files.write("/srv/top.txt", "t")
    assert [e.path for e in sbx.files.list("/srv")] == ["/srv/a", "/srv/top.txt"]
    assert fake.last().params == [("path", "/srv"), ("depth", "1")]
    deep = sbx.files.list("/srv", depth=3, user="root")
    assert [e.path for e in deep] == ["/srv/a", "/srv/a/b", "/srv/a/b/c.txt", "/srv/top.txt"]
    assert fake.last().params == [("path", "/srv"), ("depth", "3"), ("user", "root")]
    assert [e.type for e in deep] == ["dir", "dir", "file", "file"]
    assert sbx.files.stat("/srv/a").is_dir
    assert sbx.files.get_info("/srv/top.txt").size == 1
    assert sbx.files.exists("/srv/top.txt") is True
    assert sbx.files.exists("/srv/none") is False
    with pytest.raises(NotADirectory_):
        sbx.files.list("/srv/top.txt")


def test_remove_rename_make_dir_chmod(fake: FakeCorral, sbx: Sandbox) -> None:
    sbx.files.write("/w/a.txt", "a")
    moved = sbx.files.rename("/w/a.txt", "/w/b.txt")
    assert moved.path == "/w/b.txt" and moved.name == "b.txt"
    assert fake.last().body == {"source": "/w/a.txt", "destination": "/w/b.txt"}
    assert sbx.files.make_dir("/w/d/e") is True
    assert fake.last().body == {"path": "/w/d/e"}
    assert sbx.files.make_dir("/w/d/e", user="root") is False
    assert fake.last().body == {"path": "/w/d/e", "user": "root"}

    assert sbx.files.chmod("/w/b.txt", 0o755).permissions == "-rwxr-xr-x"
    assert fake.last().body == {"path": "/w/b.txt", "mode": "755"}
    assert sbx.files.chmod("/w/b.txt", "0o640").mode == 0o640
    assert fake.last().body == {"path": "/w/b.txt", "mode": "640"}
    for bad in ("rwx", "9", "", 0o17777, -1):
        with pytest.raises(InvalidRequest):
            sbx.files.chmod("/w/b.txt", bad)

    with pytest.raises(Exception, match="not empty"):
        sbx.files.remove("/w")
    assert fake.last().params == [("path", "/w"), ("recursive", "false")]
    sbx.files.remove("/w", recursive=True)
    assert fake.last().params == [("path", "/w"), ("recursive", "true")]
    assert not sbx.files.exists("/w/b.txt")


def test_file_errors_map_to_builtin_kinds(sbx: Sandbox) -> None:
    with pytest.raises(FileNotFound) as info:
        sbx.files.read("/missing")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        sbx.files.read("/missing", format="stream")  # raised at the call, not on iteration
    with pytest.raises(IsADirectoryError):
        sbx.files.read("/home/user")
    with pytest.raises(FileNotFound):
        sbx.files.remove("/missing")
    with pytest.raises(InvalidRequest):
        sbx.files.read("/x", format="yaml")  # type: ignore[call-overload]
