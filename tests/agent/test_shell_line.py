"""A simple ``bash -c`` line runs as its program, and nothing it can see tells it from bash having run it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.agent.shell_line import direct_command, simple_words
from tests.agent.conftest import Agent
from tests.agent.helpers import server_stream, start_message

START = "process.Process/Start"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root"}
NO_SHORTCUT = {"BASH_ENV": "/dev/null"}
"""Makes the agent start bash (an environment it cannot vouch for), which then sources nothing: the reference."""


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("python3 app.py --port 8000", ["python3", "app.py", "--port", "8000"]),
        ("  ls   -la\t/tmp  ", ["ls", "-la", "/tmp"]),
        ("python3 -c 'print(6*7); x = \"$HOME\"'", ["python3", "-c", 'print(6*7); x = "$HOME"']),
        ("echo \"two  spaces\" a\"b\"'c' ''", ["echo", "two  spaces", "abc", ""]),
        ("date +%s user@host a=b x,y:z", ["date", "+%s", "user@host", "a=b", "x,y:z"]),
        ("", []),
    ],
)
def test_plain_words_and_simple_quotes_are_split_as_bash_splits_them(line: str, words: list[str]) -> None:
    assert simple_words(line) == words


@pytest.mark.parametrize(
    "line",
    [
        "ls | wc -l",
        "cd /tmp && ls",
        "ls > out",
        "echo $HOME",
        'echo "$HOME"',
        "echo `id`",
        "ls *.py",
        "ls ~",
        "echo a # comment",
        "echo {a,b}",
        "sleep 1 &",
        "(ls)",
        "echo 'unterminated",
        'echo "back\\slash"',
        "echo a\\ b",
        "ls\nls",
        "echo caf\u00e9",
    ],
)
def test_anything_the_shell_would_interpret_is_not_simple(line: str) -> None:
    assert simple_words(line) is None


@pytest.mark.parametrize(
    ("line", "program"),
    [
        ("ls -la", "ls"),
        ("true", "true"),
        ("echo hello world", "echo"),
        ("/bin/ls /", "/bin/ls"),
    ],
)
def test_a_simple_line_becomes_its_program(line: str, program: str) -> None:
    direct = direct_command("/bin/bash", ["-c", line], ENV, "/tmp")
    assert direct is not None
    cmd, args, env = direct
    assert [cmd, *args] == line.split()
    assert cmd == program
    assert env["_"] == shutil.which(program, path=ENV["PATH"]) if "/" not in program else program
    assert (env["PWD"], env["SHLVL"]) == (os.path.realpath("/tmp"), "0")
    assert {k: v for k, v in env.items() if k not in ("_", "PWD", "SHLVL")} == ENV


@pytest.mark.parametrize(
    ("cmd", "args", "env"),
    [
        ("/bin/bash", ["-c", "cd /tmp"], ENV),  # a builtin
        ("/bin/bash", ["-c", "export A=1"], ENV),
        ("/bin/bash", ["-c", "true --help"], ENV),  # /bin/true would print its help
        ("/bin/bash", ["-c", "echo -e a"], ENV),
        ("/bin/bash", ["-c", "if"], ENV),  # a keyword
        ("/bin/bash", ["-c", "A=1 env"], ENV),  # an assignment
        ("/bin/bash", ["-c", "no-such-program-here"], ENV),  # bash words the error
        ("/bin/bash", ["-c", "ls", "name"], ENV),  # $0 given
        ("/bin/bash", ["-l", "-c", "ls"], ENV),  # a login shell reads profiles
        ("/bin/sh", ["-c", "ls"], ENV),  # dash has rules of its own
        ("/bin/bash", ["-c", "ls"], {**ENV, "BASH_ENV": "/etc/rc"}),
        ("/bin/bash", ["-c", "ls"], {**ENV, "SHELLOPTS": "xtrace"}),
        ("/bin/bash", ["-c", "ls"], {**ENV, "BASH_FUNC_ls%%": "() { echo no; }"}),
        ("/bin/bash", ["-c", "ls"], {**ENV, "PATH": "bin:/usr/bin"}),  # relative to the command's cwd
        ("/bin/bash", ["-c", "ls"], {**ENV, "SHLVL": "999"}),  # bash warns
    ],
)
def test_lines_bash_must_see_keep_bash(cmd: str, args: list[str], env: dict[str, str]) -> None:
    assert direct_command(cmd, args, env, "/tmp") is None


def test_levels_and_working_directories_are_as_bash_leaves_them(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    link = str(tmp_path / "link")

    def changed(env: dict[str, str], cwd: str) -> tuple[str, str]:
        direct = direct_command("/bin/bash", ["-c", "ls"], {**ENV, **env}, cwd)
        assert direct is not None
        return direct[2]["SHLVL"], direct[2]["PWD"]

    assert changed({"SHLVL": "3"}, link) == ("3", str(tmp_path / "real"))
    assert changed({"SHLVL": "-4", "PWD": link}, link) == ("0", link)  # an inherited PWD naming the cwd stays
    assert changed({"SHLVL": "x", "PWD": "/"}, link) == ("0", str(tmp_path / "real"))


@pytest.fixture(scope="module")
def scripts() -> Iterator[Path]:
    """A directory anyone may read, with a script lacking ``#!`` and a file that is not executable."""
    root = Path(tempfile.mkdtemp(prefix="corral-shell-line-"))
    try:
        root.chmod(0o755)
        (root / "no-shebang").write_text("echo from a script without a shebang: $0\n")
        (root / "no-shebang").chmod(0o755)
        (root / "plain").write_text("data\n")
        (root / "plain").chmod(0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


LINES = [  # each line, and whether it runs without bash
    ("env", True),
    (
        "python3 -c 'import os, sys; print(sys.argv[1:], os.getcwd(), os.getpgid(0) == os.getpid() == os.getsid(0))'"
        " a \"b  c\" ''",
        True,
    ),
    ("echo plain   words \"and  quoted\" 'single $HOME'", True),
    ("true", True),
    ("false", True),
    ("ls -d /tmp /no/such/dir", True),
    ("no-such-program-here --flag", False),
    ("{scripts}/no-shebang one", False),  # tried, then run by bash after all
    ("{scripts}/plain", False),
    ("echo $GREETING | tr a-z A-Z", False),
]


def _run(c: httpx.Client, line: str, envs: dict[str, str]) -> tuple[int, list[str], str]:
    result = server_stream(c, START, start_message("/bin/bash", "-c", line, envs=envs, cwd="/tmp"))
    stdout = result.output("stdout").decode().splitlines()
    if line == "env":  # the same variables, perhaps in another order, and the reference's own BASH_ENV
        stdout = sorted(entry for entry in stdout if not entry.startswith("BASH_ENV="))
    return result.exit["exitCode"], stdout, result.output("stderr").decode()


def _same_as_bash(agent: Agent, scripts: Path) -> None:
    with httpx.Client(base_url=agent.url, timeout=30) as c:
        for template, without_shell in LINES:
            line = template.format(scripts=scripts)
            before = agent.log().count("without_shell=")
            direct = _run(c, line, {"GREETING": "hi"})
            assert agent.log().count("without_shell=") - before == int(without_shell), line
            assert direct == _run(c, line, {"GREETING": "hi", **NO_SHORTCUT}), line


def test_the_program_sees_what_bash_would_give_it(agent: Agent, scripts: Path) -> None:
    _same_as_bash(agent, scripts)


def test_the_same_as_another_user(user_agent: Agent, scripts: Path) -> None:
    _same_as_bash(user_agent, scripts)
