"""A sandbox's console is read from its end: it may be as large as the sandbox's disk."""

from __future__ import annotations

from pathlib import Path

from corral.runtimes.oci import console_path, read_console


def test_a_small_console_is_read_whole(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("one\ntwo\n")
    assert read_console(console) == "one\ntwo\n"


def test_a_large_one_is_its_end_from_a_whole_line_and_says_what_was_left_out(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    lines = [f"line {i:05d}\n" for i in range(10_000)]  # 11 bytes each
    console.write_text("".join(lines))
    text = read_console(console, limit=1000)
    first, *rest = text.splitlines(keepends=True)
    assert rest == lines[-len(rest) :] and 85 <= len(rest) <= 91
    assert first == f"[{110_000 - 11 * len(rest)} bytes of earlier console left out]\n"


def test_it_is_on_the_sandboxs_disk_and_where_it_was_for_sandboxes_made_before(tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    (new / "disk").mkdir(parents=True)
    (old / "disk").mkdir(parents=True)
    (old / "console.log").write_text("made before\n")
    assert console_path(new) == new / "disk" / "console.log"
    assert console_path(old) == old / "console.log"
