"""filesystem.Filesystem and corral.Agent/Chmod over raw Connect (unary JSON)."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from pathlib import Path

import httpx

from tests.agent.conftest import USER_UID, Agent, UserWorld
from tests.agent.helpers import unary

FS = "filesystem.Filesystem"


def test_stat_file(client: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_text("hello")
    path.chmod(0o640)
    r = unary(client, f"{FS}/Stat", {"path": str(path)})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    entry = r.json()["entry"]
    assert entry["name"] == "hello.txt"
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["path"] == str(path)
    assert int(entry["size"]) == 5
    assert entry["mode"] == 0o640
    assert entry["permissions"] == "-rw-r-----"
    assert entry["owner"] == "root" and entry["group"] == "root"
    modified = datetime.fromisoformat(entry["modifiedTime"].replace("Z", "+00:00"))
    assert abs(modified.timestamp() - path.stat().st_mtime) < 1
    assert "symlinkTarget" not in entry


def test_stat_directory_and_symlink(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    directory = unary(client, f"{FS}/Stat", {"path": str(tmp_path / "dir")}).json()["entry"]
    assert directory["type"] == "FILE_TYPE_DIRECTORY"
    assert directory["permissions"].startswith("d")
    link = unary(client, f"{FS}/Stat", {"path": str(tmp_path / "link")}).json()["entry"]
    assert link["type"] == "FILE_TYPE_DIRECTORY"
    assert link["isSymlink"] is True
    assert link["symlinkTarget"] == str(tmp_path / "dir")
    assert link["permissions"].startswith("L")
    dangling = unary(client, f"{FS}/Stat", {"path": str(tmp_path / "dangling")}).json()["entry"]
    assert dangling["type"] == "FILE_TYPE_SYMLINK"


def test_stat_missing_is_not_found(client: httpx.Client, tmp_path: Path) -> None:
    r = unary(client, f"{FS}/Stat", {"path": str(tmp_path / "missing")})
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert "message" in r.json()


def test_list_dir_with_depth(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "inner").mkdir()
    (tmp_path / "b" / "inner" / "deep.txt").write_text("x")
    (tmp_path / "a.txt").write_text("a")
    one = unary(client, f"{FS}/ListDir", {"path": str(tmp_path)}).json()["entries"]
    assert [(e["name"], e["type"]) for e in one] == [
        ("a.txt", "FILE_TYPE_FILE"),
        ("b", "FILE_TYPE_DIRECTORY"),
    ]
    two = unary(client, f"{FS}/ListDir", {"path": str(tmp_path), "depth": 2}).json()["entries"]
    assert [e["path"] for e in two] == [
        str(tmp_path / "a.txt"),
        str(tmp_path / "b"),
        str(tmp_path / "b" / "inner"),
    ]
    three = unary(client, f"{FS}/ListDir", {"path": str(tmp_path), "depth": 3}).json()["entries"]
    assert str(tmp_path / "b" / "inner" / "deep.txt") in [e["path"] for e in three]


def test_list_dir_errors(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    missing = unary(client, f"{FS}/ListDir", {"path": str(tmp_path / "missing")})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    not_dir = unary(client, f"{FS}/ListDir", {"path": str(tmp_path / "file")})
    assert not_dir.status_code == 400 and not_dir.json()["code"] == "invalid_argument"


def test_make_dir(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z"
    r = unary(client, f"{FS}/MakeDir", {"path": str(target)})
    assert r.status_code == 200
    assert r.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    assert target.is_dir()
    again = unary(client, f"{FS}/MakeDir", {"path": str(target)})
    assert again.status_code == 409 and again.json()["code"] == "already_exists"
    (tmp_path / "f").write_text("")
    over_file = unary(client, f"{FS}/MakeDir", {"path": str(tmp_path / "f")})
    assert over_file.status_code == 400 and over_file.json()["code"] == "invalid_argument"


def test_remove(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    (tmp_path / "empty").mkdir()
    assert unary(client, f"{FS}/Remove", {"path": str(tmp_path / "file")}).json() == {}
    assert not (tmp_path / "file").exists()
    refused = unary(client, f"{FS}/Remove", {"path": str(tmp_path / "tree"), "recursive": False})
    assert refused.status_code == 400 and refused.json()["code"] == "failed_precondition"
    assert (tmp_path / "tree" / "sub" / "f").exists()
    empty = unary(client, f"{FS}/Remove", {"path": str(tmp_path / "empty"), "recursive": False})
    assert empty.status_code == 200 and not (tmp_path / "empty").exists()
    assert unary(client, f"{FS}/Remove", {"path": str(tmp_path / "tree")}).status_code == 200
    assert not (tmp_path / "tree").exists()
    # like envd: removing what is not there succeeds
    assert unary(client, f"{FS}/Remove", {"path": str(tmp_path / "never")}).status_code == 200


def test_remove_symlink_to_directory_removes_the_link_only(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert unary(client, f"{FS}/Remove", {"path": str(tmp_path / "link")}).status_code == 200
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "target" / "keep").exists()


def test_move(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("content")
    r = unary(
        client,
        f"{FS}/Move",
        {"source": str(tmp_path / "src.txt"), "destination": str(tmp_path / "new" / "dst.txt")},
    )
    assert r.status_code == 200
    entry = r.json()["entry"]
    assert entry["path"] == str(tmp_path / "new" / "dst.txt") and entry["name"] == "dst.txt"
    assert (tmp_path / "new" / "dst.txt").read_text() == "content"
    assert not (tmp_path / "src.txt").exists()
    missing = unary(client, f"{FS}/Move", {"source": str(tmp_path / "nope"), "destination": str(tmp_path / "x")})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_a_move_into_itself_or_through_a_symlink_loop_is_the_callers_error(
    client: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    into = unary(client, f"{FS}/Move", {"source": str(tmp_path / "d"), "destination": str(tmp_path / "d/new/d")})
    assert into.status_code == 400 and into.json()["code"] == "invalid_argument", into.text
    assert "into itself" in into.json()["message"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["sub"]  # no parent made for it
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    looped = unary(client, f"{FS}/ListDir", {"path": str(tmp_path / "loop1"), "depth": 1})
    assert looped.status_code == 400 and looped.json()["code"] == "invalid_argument", looped.text


def test_chmod(client: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text("#!/bin/sh\n")
    r = unary(client, "corral.Agent/Chmod", {"path": str(path), "mode": 0o755})
    assert r.status_code == 200
    assert r.json()["entry"]["mode"] == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    octal = unary(client, "corral.Agent/Chmod", {"path": str(path), "mode": "600"})
    assert octal.json()["entry"]["permissions"] == "-rw-------"
    missing = unary(client, "corral.Agent/Chmod", {"path": str(tmp_path / "nope"), "mode": 0o644})
    assert missing.status_code == 404


def test_protocol_errors(client: httpx.Client, agent: Agent) -> None:
    unknown = unary(client, f"{FS}/Frobnicate", {})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unimplemented"
    bad_json = client.post(f"/{FS}/Stat", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "invalid_argument"
    proto = client.post(f"/{FS}/Stat", content=b"", headers={"Content-Type": "application/proto"})
    assert proto.status_code == 415
    assert client.get("/health").status_code == 204


def test_keep_alive_serves_many_calls_on_one_connection(agent: Agent, tmp_path: Path) -> None:
    with httpx.Client(base_url=agent.url, limits=httpx.Limits(max_connections=1)) as c:
        for _ in range(20):
            assert unary(c, f"{FS}/Stat", {"path": str(tmp_path)}).status_code == 200


def test_paths_resolve_for_the_user(user_agent: Agent, user_world: UserWorld) -> None:
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        made = unary(c, f"{FS}/MakeDir", {"path": "~/made/deep"})
        relative = unary(c, f"{FS}/Stat", {"path": "made"})
        as_root = unary(c, f"{FS}/Stat", {"path": "~"}, user="root")
        other = unary(c, f"{FS}/Stat", {"path": "~root/x"})
        ghost = unary(c, f"{FS}/Stat", {"path": "/"}, user="ghost")
    assert made.status_code == 200
    assert made.json()["entry"]["path"] == str(user_world.home / "made" / "deep")
    for created in (user_world.home / "made", user_world.home / "made" / "deep"):
        assert created.stat().st_uid == USER_UID and created.stat().st_gid == USER_UID
    assert made.json()["entry"]["owner"] == "user"
    assert relative.json()["entry"]["path"] == str(user_world.home / "made")
    assert as_root.json()["entry"]["path"] == "/root"
    assert other.status_code == 400 and other.json()["code"] == "invalid_argument"
    assert ghost.status_code == 401 and ghost.json()["code"] == "unauthenticated"
    assert os.path.isdir(user_world.home)
