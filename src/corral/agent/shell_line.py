"""Command lines that need no shell: ``bash -c "python3 app.py --port 8000"`` started as the program itself.

Inside gVisor a ``bash`` start costs 10-20 ms before it runs anything. For a
line that is one simple command, bash does nothing but find the program on
``PATH`` and ``exec`` it in its own place (no fork), with three variables
changed: ``PWD`` (the working directory), ``SHLVL`` (as it came, at least 0)
and ``_`` (the program's path). :func:`direct_command` does the same without
starting bash, so that what runs, its arguments, its environment, its pid
and process group are those bash would have given.

A line is simple here when it is words of plain characters, ``'single'`` or
``"double"`` quoted parts without ``$``, backquotes, backslashes or ``!``,
separated by blanks; the first word must not assign a variable, be a shell
keyword or a builtin (``true``, ``false`` without arguments and ``echo``
with plain ones behave exactly as their programs, so those run as them).
Anything else runs through bash, as does every line when the environment
could change what bash does (``BASH_ENV``, ``SHELLOPTS``, ``BASHOPTS``,
exported functions, ``POSIXLY_CORRECT``, a relative ``PATH`` entry). When
the program cannot be started (not found, not executable, a script without
``#!``), the caller runs the line through bash after all, which reports the
error as it always has.
"""

from __future__ import annotations

import os
import re
import string

from .launcher import find_program

SHELLS = frozenset({"bash"})
"""Program names taken as a shell whose ``-c`` line may run without it (bash only: its rules are the ones copied)."""

_PLAIN = frozenset(string.ascii_letters + string.digits + "_@%+=:,./-")
_NOT_IN_DOUBLE = frozenset("$`\\!")
_BLANKS = " \t"
# As bash 5.2 lists them (`compgen -k`, `compgen -b`).
_KEYWORD_NAMES = "if then else elif fi case esac for select while until do done in function time { } ! [[ ]] coproc"
_BUILTIN_NAMES = (
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue declare dirs disown "
    "echo enable eval exec exit export false fc fg getopts hash help history jobs kill let local logout mapfile "
    "popd printf pushd pwd read readarray readonly return set shift shopt source suspend test times trap true "
    "type typeset ulimit umask unalias unset wait"
)
_KEYWORDS = frozenset(_KEYWORD_NAMES.split())
_BUILTINS = frozenset(_BUILTIN_NAMES.split())
_UNSAFE_ENV = frozenset({"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT"})
_SHLVL = re.compile(r"\s*[-+]?\d{1,3}\s*")
_MAX_SHLVL = 998  # from 999 on bash warns and resets the level


def simple_words(line: str) -> list[str] | None:
    """The words of ``line`` after quote removal, if it is plain words and simple quotes only; else ``None``."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i = 0
    while i < len(line):
        char = line[i]
        if char in _BLANKS:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        elif char in _PLAIN:
            word.append(char)
            in_word = True
        elif char in "'\"":
            end = line.find(char, i + 1)
            if end < 0:
                return None
            part = line[i + 1 : end]
            if char == '"' and not _NOT_IN_DOUBLE.isdisjoint(part):
                return None
            word.append(part)
            in_word, i = True, end
        else:
            return None
        i += 1
    if in_word:
        words.append("".join(word))
    return words


def _runs_as_program(words: list[str]) -> bool:
    """Whether bash would run ``words`` as a program: not an assignment, keyword or (differing) builtin."""
    first, args = words[0], words[1:]
    if not first or "=" in first or first.startswith("%") or first in _KEYWORDS:
        return False
    if first not in _BUILTINS:
        return True
    if first in ("true", "false"):
        return not args  # the programs take --help and --version
    if first == "echo":
        return all(not arg.startswith("-") and "\\" not in arg for arg in args)
    return False


def _shell_level(env: dict[str, str]) -> str | None:
    """``SHLVL`` as bash leaves it for a program it ``exec``s; ``None`` if bash would warn about it."""
    value = env.get("SHLVL", "")
    if not _SHLVL.fullmatch(value):
        return "0"  # bash reads anything else as 0
    level = max(int(value), 0)
    return str(level) if level <= _MAX_SHLVL else None


def _working_directory(env: dict[str, str], cwd: str) -> str:
    """``PWD`` as bash sets it: the inherited one if it names ``cwd``, else ``cwd`` without symlinks."""
    inherited = env.get("PWD", "")
    if os.path.isabs(inherited):
        try:
            if os.path.samefile(inherited, cwd):
                return inherited
        except OSError:
            pass
    return os.path.realpath(cwd)


def direct_command(
    cmd: str, args: list[str], env: dict[str, str], cwd: str
) -> tuple[str, list[str], dict[str, str]] | None:
    """What to start instead of ``cmd args`` when that is bash running one simple command.

    ``(program, arguments, environment)``, or ``None`` to start ``cmd args`` as it is.
    """
    if os.path.basename(cmd) not in SHELLS or len(args) != 2 or args[0] != "-c":
        return None
    if not _UNSAFE_ENV.isdisjoint(env) or any(name.startswith("BASH_FUNC_") for name in env):
        return None
    path = env.get("PATH", os.defpath)
    if any(not os.path.isabs(directory) for directory in path.split(os.pathsep)):
        return None  # searched from the command's cwd, not ours
    words = simple_words(args[1])
    if not words or not _runs_as_program(words):
        return None
    level = _shell_level(env)
    if level is None:
        return None
    try:
        program = find_program(words[0], env)
    except FileNotFoundError:
        return None  # bash says so, in its words
    changed = dict(env, PWD=_working_directory(env, cwd), SHLVL=level, _=program)
    return words[0], words[1:], changed
