"""Build contexts: packing with .dockerignore, hostile archives, and COPY source lookup."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from corral.errors import InvalidRequest, PayloadTooLarge
from corral.images.context import extract_context, pack_context, resolve_in_context

MB = 1 << 20


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.getnames()


def member(name: str, *, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
    return info, data


def tar_of(*members: tuple[tarfile.TarInfo, bytes], compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(buffer.getvalue()) if compress else buffer.getvalue()


def refused(archive: bytes, dest: Path) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        extract_context(archive, dest, max_bytes=MB)
    return info.value


class OneWayStream:
    """A pipe-like upload: read only, no seek, short reads."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size < 0 else min(size, 1 if self._pos == 0 else 4093)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk


# -- pack_context -----------------------------------------------------------------


def test_pack_then_extract_round_trips_files_modes_mtimes_and_symlinks(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"app/main.py": "print()", "run.sh": "#!/bin/sh", "README": "r"})
    (src / "empty").mkdir()
    (src / "run.sh").chmod(0o755)
    os.utime(src / "README", (1_000_000_000, 1_000_000_000))
    (src / "abs-link").symlink_to("/etc/passwd")
    (src / "rel-link").symlink_to("app/main.py")
    archive = pack_context(src)
    assert archive[:2] == b"\x1f\x8b"
    dest = tmp_path / "dest"
    extract_context(archive, dest, max_bytes=MB)
    assert (dest / "app/main.py").read_text() == "print()"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert (dest / "README").stat().st_mtime == 1_000_000_000
    assert (dest / "empty").is_dir()
    assert os.readlink(dest / "abs-link") == "/etc/passwd"
    assert os.readlink(dest / "rel-link") == "app/main.py"


def test_pack_is_deterministic_sorted_and_owner_free(tmp_path: Path) -> None:
    src = make_tree(tmp_path, {"b/2": "", "b/1": "", "a": "", "c.txt": ""})
    os.chown(src / "a", 1234, 1234)
    first = pack_context(src)
    assert first == pack_context(src)
    assert names(first) == ["a", "b", "b/1", "b/2", "c.txt"]
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tar} == {(0, 0, "", "")}


def test_pack_does_not_follow_symlinks_out_and_skips_fifos(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"secret": "s"})
    src = make_tree(tmp_path / "src", {"f": "x"})
    (src / "out").symlink_to(outside)
    os.mkfifo(src / "pipe")
    archive = pack_context(src)
    assert names(archive) == ["f", "out"]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getmember("out").issym()


def test_dockerignore_patterns(tmp_path: Path) -> None:
    files = {
        "app.py": "",
        "app.pyc": "",
        "pkg/mod.pyc": "",
        "pkg/mod.py": "",
        "node_modules/x/index.js": "",
        "node_modules/keep/yes.js": "",
        "build/out.o": "",
        "docs/a.md": "",
        "docs/b.md": "",
        "deep/a/b/c.log": "",
        "top.log": "",
        "secret.env": "",
        "Dockerfile": "",
    }
    src = make_tree(tmp_path, files)
    (src / ".dockerignore").write_text(
        "# comment line\n"
        "*.pyc\n"  # root only, as in Docker
        "node_modules\n"
        "!node_modules/keep\n"
        "/build/\n"
        "./docs/*.md\n"
        "!docs/b.md\n"
        "**/*.log\n"
        "  secret.env  \n"
        "\n"
        " # not a comment: a pattern that matches nothing\n"
        "Dockerfile\n"
        ".dockerignore\n"
    )
    assert names(pack_context(src)) == [
        "app.py",
        "deep",
        "deep/a",
        "deep/a/b",
        "docs",
        "docs/b.md",
        "node_modules/keep",
        "node_modules/keep/yes.js",
        "pkg",
        "pkg/mod.py",
        "pkg/mod.pyc",
    ]
    # The Dockerfile of the build is always sent, even when ignored.
    assert "Dockerfile" in names(pack_context(src, dockerfile=src / "Dockerfile"))


def test_a_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    src = make_tree(tmp_path, {"a": "", "b": "", "ci/Dockerfile": "", "ci/Dockerfile.dockerignore": "a\nci\n"})
    (src / ".dockerignore").write_text("b\n")
    assert names(pack_context(src)) == [".dockerignore", "a", "ci", "ci/Dockerfile", "ci/Dockerfile.dockerignore"]
    assert names(pack_context(src, dockerfile=src / "ci/Dockerfile")) == [".dockerignore", "b", "ci/Dockerfile"]


def test_a_dockerfile_outside_the_context_is_not_packed(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ctx", {"a": ""})
    (tmp_path / "Dockerfile").write_text("FROM a\n")
    assert names(pack_context(src, dockerfile=tmp_path / "Dockerfile")) == ["a"]


# -- extract_context: good archives ------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("as_stream", [False, True])
def test_extract_plain_or_gzip_from_bytes_or_a_stream(tmp_path: Path, compress: bool, as_stream: bool) -> None:
    archive = tar_of(member("./d", kind=tarfile.DIRTYPE, mode=0o755), member("d/f", data=b"hi"), compress=compress)
    extract_context(OneWayStream(archive) if as_stream else archive, tmp_path / "x", max_bytes=MB)  # type: ignore[arg-type]
    assert (tmp_path / "x/d/f").read_bytes() == b"hi"


def test_extract_creates_missing_parents_and_applies_directory_modes_last(tmp_path: Path) -> None:
    archive = tar_of(
        member("ro", kind=tarfile.DIRTYPE, mode=0o555),
        member("ro/inner/file", data=b"x", mode=0o4755),
        member(".", kind=tarfile.DIRTYPE),
    )
    extract_context(archive, tmp_path, max_bytes=MB)
    assert stat.S_IMODE((tmp_path / "ro").stat().st_mode) == 0o555
    file_stat = (tmp_path / "ro/inner/file").stat()
    assert stat.S_IMODE(file_stat.st_mode) == 0o755  # no setuid from an upload
    assert file_stat.st_uid == os.getuid()


def test_owners_in_the_archive_are_ignored(tmp_path: Path) -> None:
    info, data = member("f", data=b"x")
    info.uid, info.gid, info.uname, info.gname = 4321, 4321, "someone", "else"
    extract_context(tar_of((info, data)), tmp_path, max_bytes=MB)
    assert ((tmp_path / "f").stat().st_uid, (tmp_path / "f").stat().st_gid) == (os.getuid(), os.getgid())


def test_symlinks_to_anywhere_are_created_but_never_followed(tmp_path: Path) -> None:
    victim = make_tree(tmp_path / "victim", {"file": "original"})
    archive = tar_of(
        member("abs", kind=tarfile.SYMTYPE, link=str(victim / "file")),
        member("up", kind=tarfile.SYMTYPE, link="../../victim"),
        member("abs", data=b"replaces the link, not its target"),
    )
    dest = tmp_path / "dest"
    extract_context(archive, dest, max_bytes=MB)
    assert (victim / "file").read_text() == "original"
    assert not (dest / "abs").is_symlink() and (dest / "abs").read_bytes().startswith(b"replaces")
    assert os.readlink(dest / "up") == "../../victim"


def test_hard_links_to_earlier_files_inside_are_kept(tmp_path: Path) -> None:
    archive = tar_of(member("a/f", data=b"x"), member("g", kind=tarfile.LNKTYPE, link="a/f"))
    extract_context(archive, tmp_path, max_bytes=MB)
    assert (tmp_path / "g").stat().st_ino == (tmp_path / "a/f").stat().st_ino


def test_a_later_member_replaces_an_earlier_file(tmp_path: Path) -> None:
    archive = tar_of(member("f", data=b"old"), member("f", data=b"new"), member("f2", data=b"x"))
    extract_context(archive, tmp_path, max_bytes=MB)
    assert (tmp_path / "f").read_bytes() == b"new"


# -- extract_context: refusals --------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "bad", "words"),
    [
        ([member("/etc/cron.d/x", data=b"x")], "/etc/cron.d/x", "absolute path"),
        ([member("../escape", data=b"x")], "../escape", "'..' component"),
        ([member("a/../../escape", data=b"x")], "a/../../escape", "'..' component"),
        ([member("ok/..", kind=tarfile.DIRTYPE)], "ok/..", "'..' component"),
        (
            [member("a", kind=tarfile.SYMTYPE, link="/etc"), member("a/passwd", data=b"root::0:0")],
            "a/passwd",
            "through the symlink 'a'",
        ),
        (
            [member("d", kind=tarfile.DIRTYPE), member("d/l", kind=tarfile.SYMTYPE, link="../.."), member("d/l/x")],
            "d/l/x",
            "through the symlink 'd/l'",
        ),
        (
            [member("in", kind=tarfile.DIRTYPE), member("l", kind=tarfile.SYMTYPE, link="in"), member("l/x")],
            "l/x",
            "through the symlink 'l'",
        ),
        ([member("f", data=b"x"), member("f/x", data=b"y")], "f/x", "needs 'f' to be a directory"),
        ([member("d", kind=tarfile.DIRTYPE), member("d", data=b"x")], "d", "would replace a directory"),
        ([member("d", kind=tarfile.DIRTYPE), member("d", kind=tarfile.SYMTYPE, link="/")], "d", "replace a directory"),
        ([member("h", kind=tarfile.LNKTYPE, link="/etc/passwd")], "h", "absolute path"),
        ([member("h", kind=tarfile.LNKTYPE, link="../../etc/passwd")], "h", "'..' component"),
        ([member("h", kind=tarfile.LNKTYPE, link="later")], "h", "not to a file extracted before it"),
        ([member("h", kind=tarfile.LNKTYPE, link="")], "h", "not to a file extracted before it"),
        ([member("d", kind=tarfile.DIRTYPE), member("h", kind=tarfile.LNKTYPE, link="d")], "h", "not to a file"),
        (
            [member("s", kind=tarfile.SYMTYPE, link="/etc/passwd"), member("h", kind=tarfile.LNKTYPE, link="s")],
            "h",
            "not to a file extracted before it",
        ),
        (
            [member("s", kind=tarfile.SYMTYPE, link="/etc"), member("h", kind=tarfile.LNKTYPE, link="s/passwd")],
            "h",
            "through the symlink 's'",
        ),
        ([member("l", kind=tarfile.SYMTYPE, link="")], "l", "symlink to nothing"),
        ([member("null", kind=tarfile.CHRTYPE)], "null", "devices, fifos"),
        ([member("sda", kind=tarfile.BLKTYPE)], "sda", "devices, fifos"),
        ([member("fifo", kind=tarfile.FIFOTYPE)], "fifo", "devices, fifos"),
        ([member("sparse", kind=tarfile.GNUTYPE_SPARSE)], "sparse", "sparse files are refused"),
        ([member("x" * 300, data=b"x")], "x" * 300, "cannot be created"),
    ],
)
def test_unsafe_members_are_refused_by_name(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], bad: str, words: str
) -> None:
    before = set(Path("/etc").iterdir())
    error = refused(tar_of(*members), tmp_path / "dest")
    assert error.details == {"member": bad}
    assert f"build context member {bad!r}" in error.message and words in error.message, error.message
    assert set(Path("/etc").iterdir()) == before
    assert not (tmp_path / "escape").exists()


def test_writing_through_a_symlink_fails_even_in_a_gzip_stream(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    archive = tar_of(member("a", kind=tarfile.SYMTYPE, link=str(target)), member("a/planted", data=b"x"), compress=True)
    assert "through the symlink 'a'" in refused(archive, tmp_path / "dest").message
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    "data", [b"", b"not a tar at all" * 64, gzip.compress(b"not a tar" * 100, mtime=0)], ids=["empty", "text", "gzip"]
)
def test_what_is_not_a_tar_is_refused(tmp_path: Path, data: bytes) -> None:
    assert "not a valid tar or tar.gz archive" in refused(data, tmp_path).message


def test_a_truncated_archive_is_refused(tmp_path: Path) -> None:
    archive = tar_of(member("f", data=b"x" * 100_000), compress=True)
    assert "not a valid tar" in refused(archive[: len(archive) // 2], tmp_path).message
    plain = tar_of(member("f", data=b"x" * 100_000))
    assert "not a valid tar" in refused(plain[:60_000], tmp_path).message


# -- extract_context: size limit ------------------------------------------------------------


def test_the_uncompressed_size_is_bounded(tmp_path: Path) -> None:
    archive = tar_of(member("big", data=b"\0" * (4 * MB)), compress=True)
    assert len(archive) < 64 * 1024  # a small upload that inflates
    with pytest.raises(PayloadTooLarge) as info:
        extract_context(archive, tmp_path / "small", max_bytes=MB)
    assert info.value.status == 413 and info.value.details == {"max_bytes": MB}
    extract_context(archive, tmp_path / "big-enough", max_bytes=5 * MB)
    assert (tmp_path / "big-enough/big").stat().st_size == 4 * MB


def test_the_limit_counts_headers_and_many_small_members(tmp_path: Path) -> None:
    archive = tar_of(*(member(f"f{i}") for i in range(2000)), compress=True)
    with pytest.raises(PayloadTooLarge):
        extract_context(archive, tmp_path, max_bytes=512 * 1000)


def test_a_huge_header_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    archive = tar_of(member("n" * (8 * MB), data=b"x"), compress=True)
    with pytest.raises(PayloadTooLarge):
        extract_context(archive, tmp_path, max_bytes=MB)


def test_the_limit_applies_to_streams_too(tmp_path: Path) -> None:
    archive = tar_of(member("big", data=b"y" * (2 * MB)))
    with pytest.raises(PayloadTooLarge):
        extract_context(OneWayStream(archive), tmp_path, max_bytes=MB)  # type: ignore[arg-type]


# -- resolve_in_context -------------------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = make_tree(
        tmp_path / "ctx",
        {"a.txt": "", "b.txt": "", "c.md": "", "src/x/main.py": "", "src/y/main.py": "", "src/z/other.py": ""},
    )
    (root / "inside-link").symlink_to("src/x")
    (root / "dangling").symlink_to("nowhere")
    make_tree(tmp_path / "outside", {"secret": ""})
    return root


def rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root.resolve()).as_posix() for p in paths]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a.txt", ["a.txt"]),
        ("/a.txt", ["a.txt"]),
        ("./src/x/", ["src/x"]),
        (".", ["."]),
        ("/", ["."]),
        ("*.txt", ["a.txt", "b.txt"]),
        ("?.md", ["c.md"]),
        ("[ab].txt", ["a.txt", "b.txt"]),
        ("[!a].txt", ["b.txt"]),
        ("[^a].txt", ["b.txt"]),
        ("src/*/main.py", ["src/x/main.py", "src/y/main.py"]),
        ("*/*/other.py", ["src/z/other.py"]),
        ("inside-link", ["inside-link"]),
        ("inside-link/main.py", ["src/x/main.py"]),
    ],
)
def test_copy_sources_resolve_inside_the_context(context: Path, source: str, expected: list[str]) -> None:
    assert rel(resolve_in_context(context, source), context) == expected


@pytest.mark.parametrize("source", ["missing", "*.rs", "src/*/nope.py", "a.txt/x", "dangling"])
def test_a_source_that_matches_nothing_is_refused(context: Path, source: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_in_context(context, source)
    assert info.value.message == f"COPY source {source!r} matches nothing in the build context"
    assert info.value.details == {"source": source}


@pytest.mark.parametrize(
    ("make_link", "source"),
    [
        (lambda root: (root / "abs").symlink_to(root.parent / "outside"), "abs"),
        (lambda root: (root / "abs").symlink_to(root.parent / "outside"), "abs/secret"),
        (lambda root: (root / "rel").symlink_to("../outside/secret"), "rel"),
        (lambda root: (root / "rel").symlink_to("../outside/secret"), "r*"),
        (lambda root: (root / "etc").symlink_to("/etc"), "etc/passwd"),
        (lambda root: (root / "src/root").symlink_to("/"), "src/*"),
    ],
)
def test_symlinks_out_of_the_context_are_refused(context: Path, make_link: object, source: str) -> None:
    make_link(context)  # type: ignore[operator]
    with pytest.raises(InvalidRequest) as info:
        resolve_in_context(context, source)
    assert "is a symlink that leads outside the build context" in info.value.message


@pytest.mark.parametrize("source", ["..", "../outside/secret", "src/../../outside", "a/../a.txt"])
def test_dot_dot_is_refused(context: Path, source: str) -> None:
    with pytest.raises(InvalidRequest, match=r"leaves the build context \('\.\.' is not allowed\)"):
        resolve_in_context(context, source)
