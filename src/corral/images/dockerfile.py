"""Parse the Dockerfile subset corral templates are written in.

Supported: ``FROM``, ``RUN``, ``COPY``, ``ADD``, ``ENV``, ``WORKDIR``, ``USER``
and ``ARG``, with Docker's line rules: case-insensitive keywords, ``\\`` line
continuations (comment and blank lines inside one are skipped), ``#`` comment
lines, and parser directives at the top (``escape`` is honoured, ``syntax``
and ``check`` are ignored). Heredocs are not supported.

A template builds one image from one base, offline, with no runtime config of
its own, so everything else is refused with the line it is on: a second
``FROM`` or ``COPY --from`` (multi-stage), ``ADD <url>`` (builds have no
network), ``CMD``/``ENTRYPOINT``/``EXPOSE``/... (processes are started
through the API). ``ADD`` behaves exactly like ``COPY``: local tar archives are
copied, not unpacked.

Substitution (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}`` and
their colon-less forms) applies where Docker applies it: ``FROM`` (ARGs
declared before it only), ``COPY``/``ADD``, ``ENV``, ``WORKDIR``, ``USER`` and
``ARG`` defaults. ``RUN`` is left to the shell; each :class:`Run` carries the
ARG and ENV values in force as its environment instead.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from corral.errors import InvalidRequest

__all__ = [
    "DEFAULT_USER",
    "DEFAULT_WORKDIR",
    "SUPPORTED_INSTRUCTIONS",
    "Copy",
    "Dockerfile",
    "Run",
    "SetEnv",
    "SetUser",
    "SetWorkdir",
    "Step",
    "parse",
]

SUPPORTED_INSTRUCTIONS = ("FROM", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "ARG")
DEFAULT_WORKDIR = "/"
DEFAULT_USER = ""
"""The user of steps before any ``USER``: empty means the base image's own user (root if it names none)."""

_DIRECTIVES = ("syntax", "escape", "check")
_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*(.+?)\s*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[^\s:]+(:[^\s:]+)?")
_CHMOD = re.compile(r"[0-7]{1,4}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|git@")
_HEREDOC = re.compile(r"\d*<<-?([\"']?)[A-Za-z_][A-Za-z0-9_]*\1")
_FLAG = re.compile(r"--(\S*)\s*")
_BLANKS = re.compile(r"\s+")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]*")


def _canonical(kind: str, **fields: Any) -> str:
    return json.dumps([kind, fields], sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Run:
    """Run a command in the image: ``argv`` (exec form) or ``shell`` (for ``/bin/sh -c``), never both."""

    argv: tuple[str, ...] | None
    shell: str | None
    env: tuple[tuple[str, str], ...]
    """The ARG and ENV values in force, sorted by name (ENV wins over an ARG of the same name)."""
    workdir: str
    user: str
    line: int

    def cache_key_text(self) -> str:
        env = [list(pair) for pair in self.env]
        argv = list(self.argv) if self.argv is not None else None
        return _canonical("RUN", argv=argv, shell=self.shell, env=env, workdir=self.workdir, user=self.user)


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy build-context sources (relative, maybe globs) to ``dest`` (absolute; a trailing ``/`` means "into")."""

    sources: tuple[str, ...]
    dest: str
    chown: str | None
    chmod: int | None
    workdir: str
    line: int

    def cache_key_text(self) -> str:
        """The step's text; the builder must add a digest of the copied content to its cache key."""
        return _canonical(
            "COPY", sources=list(self.sources), dest=self.dest, chown=self.chown, chmod=self.chmod, workdir=self.workdir
        )


@dataclass(frozen=True, slots=True)
class SetEnv:
    """Set an environment variable in the image's config (later RUN steps see it through their ``env``)."""

    name: str
    value: str

    def cache_key_text(self) -> str:
        return _canonical("ENV", name=self.name, value=self.value)


@dataclass(frozen=True, slots=True)
class SetWorkdir:
    """Set the image's working directory (absolute); the builder creates it, as Docker does."""

    path: str

    def cache_key_text(self) -> str:
        return _canonical("WORKDIR", path=self.path)


@dataclass(frozen=True, slots=True)
class SetUser:
    """Set the image's user, ``user[:group]`` by name or id."""

    user: str

    def cache_key_text(self) -> str:
        return _canonical("USER", user=self.user)


Step: TypeAlias = Run | Copy | SetEnv | SetWorkdir | SetUser


@dataclass(frozen=True, slots=True)
class Dockerfile:
    base: str
    """The image named by ``FROM``, variables substituted."""
    steps: tuple[Step, ...]


def parse(text: str, *, build_args: Mapping[str, str] | None = None) -> Dockerfile:
    """Parse a template's Dockerfile; ``build_args`` override ``ARG`` defaults, as ``--build-arg`` does.

    Raises :class:`~corral.errors.InvalidRequest` with ``details["line"]`` on anything outside the subset.
    """
    escape, instructions = _instructions(text)
    parser = _Parser(escape=escape, build_args=dict(build_args or {}))
    for instruction in instructions:
        parser.feed(instruction)
    return parser.result()


@dataclass(frozen=True, slots=True)
class _Instruction:
    keyword: str
    args: str
    line: int


def _error(line: int, message: str, **details: Any) -> InvalidRequest:
    return InvalidRequest(f"line {line}: {message}", details={"line": line, **details})


def _instructions(text: str) -> tuple[str, list[_Instruction]]:
    """Split into instructions: directives read, continuations joined, comments dropped."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")
    escape, index, seen = "\\", 0, set[str]()
    # Parser directives count only before anything else, blank lines included.
    while index < len(lines):
        match = _DIRECTIVE.fullmatch(lines[index].strip())
        if match is None or match[1].lower() not in _DIRECTIVES:
            break
        key, value = match[1].lower(), match[2]
        if key in seen:
            raise _error(index + 1, f"the {key} parser directive is given twice")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise _error(index + 1, f"the escape directive must be '\\' or '`', not {value!r}")
            escape = value
        index += 1
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    found: list[_Instruction] = []
    while index < len(lines):
        start, raw = index + 1, lines[index].lstrip()
        index += 1
        if not raw.strip() or raw.startswith("#"):
            continue
        parts: list[str] = []
        more = continuation.search(raw)
        parts.append(raw[: more.start()] if more else raw)
        while more and index < len(lines):
            raw = lines[index]
            index += 1
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue  # Docker skips comment and empty lines inside a continued instruction
            more = continuation.search(raw)
            parts.append(raw[: more.start()] if more else raw)
        keyword, *args = _BLANKS.split("".join(parts).strip(), maxsplit=1)
        found.append(_Instruction(keyword.upper(), args[0] if args else "", start))
    return escape, found


def _split_words(text: str, escape: str) -> list[str]:
    """Docker's ``parseWords``: split on unquoted blanks, keeping quotes and escapes for :class:`_Expander`."""
    words: list[str] = []
    word, quote, started, index = "", "", False, 0
    while index < len(text):
        ch = text[index]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'" and index + 1 < len(text):
                word += ch
                index += 1
                ch = text[index]
            word += ch
        elif ch.isspace():
            if started:
                words.append(word)
            word, started = "", False
        else:
            started = True
            if ch in ("'", '"'):
                quote = ch
            elif ch == escape and index + 1 < len(text):
                word += ch
                index += 1
                ch = text[index]
            word += ch
        index += 1
    if started:
        words.append(word)
    return words


class _SubstitutionError(ValueError):
    pass


class _Expander:
    """Docker's word processing: quote removal and ``$VAR`` expansion; no globbing, no command substitution.

    With ``quotes=False`` (exec-form JSON, already unquoted) only ``$`` is special.
    """

    def __init__(self, env: Mapping[str, str], *, escape: str, quotes: bool = True) -> None:
        self._env, self._escape, self._quotes = env, escape, quotes
        self._text, self._pos = "", 0

    def __call__(self, text: str) -> str:
        self._text, self._pos = text, 0
        return self._until(None)

    def _until(self, stop: str | None) -> str:
        out: list[str] = []
        text = self._text
        while self._pos < len(text):
            ch = text[self._pos]
            self._pos += 1
            if ch == stop:
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
            elif not self._quotes:
                out.append(ch)
            elif ch == "'":
                end = text.find("'", self._pos)
                if end < 0:
                    raise _SubstitutionError("a single quote is not closed")
                out.append(text[self._pos : end])
                self._pos = end + 1
            elif ch == '"':
                out.append(self._double())
            elif ch == self._escape:
                if self._pos < len(text):
                    out.append(text[self._pos])
                    self._pos += 1
            else:
                out.append(ch)
        if stop is not None:
            raise _SubstitutionError("a '${' is not closed by '}'")
        return "".join(out)

    def _double(self) -> str:
        out: list[str] = []
        text = self._text
        while self._pos < len(text):
            ch = text[self._pos]
            self._pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
            elif ch == self._escape and self._pos < len(text) and text[self._pos] in ('"', "$", self._escape):
                out.append(text[self._pos])
                self._pos += 1
            else:
                out.append(ch)
        raise _SubstitutionError("a double quote is not closed")

    def _name(self) -> str:
        match = _NAME_CHARS.match(self._text, self._pos)
        assert match is not None
        self._pos = match.end()
        return match[0]

    def _dollar(self) -> str:
        text = self._text
        if self._pos < len(text) and text[self._pos] != "{":
            name = self._name()
            return self._env.get(name, "") if name else "$"
        if self._pos >= len(text):
            return "$"
        self._pos += 1
        name = self._name()
        if not name:
            raise _SubstitutionError("'${' must be followed by a variable name")
        op = text[self._pos : self._pos + 1]
        self._pos += 1
        if op == "}":
            return self._env.get(name, "")
        colon = op == ":"
        if colon:
            op = text[self._pos : self._pos + 1]
            self._pos += 1
        if not op:
            raise _SubstitutionError("a '${' is not closed by '}'")
        if op not in ("-", "+"):
            raise _SubstitutionError(
                f"'${{{name}{':' if colon else ''}{op}...}}' is not supported "
                "(use ${VAR}, ${VAR:-default} or ${VAR:+alternative})"
            )
        word = self._until("}")
        value = self._env.get(name)
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            return value if is_set and value is not None else word
        return word if is_set else ""


def _json_list(text: str) -> list[str] | None:
    """The exec (JSON array) form, or None: like Docker, anything else is the shell form."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


class _Parser:
    """The state a Dockerfile builds up, one instruction at a time."""

    def __init__(self, *, escape: str, build_args: dict[str, str]) -> None:
        self.escape = escape
        self.build_args = build_args
        self.meta_args: dict[str, str | None] = {}  # ARGs before FROM: they reach FROM only
        self.args: dict[str, str | None] = {}  # ARGs after FROM; None when declared without a value
        self.env: dict[str, str] = {}
        self.workdir = DEFAULT_WORKDIR
        self.user = DEFAULT_USER
        self.base: str | None = None
        self.steps: list[Step] = []

    def result(self) -> Dockerfile:
        if self.base is None:
            raise _error(1, "the Dockerfile has no FROM instruction; a template starts with FROM <image>")
        return Dockerfile(base=self.base, steps=tuple(self.steps))

    def feed(self, ins: _Instruction) -> None:
        if ins.keyword not in SUPPORTED_INSTRUCTIONS:
            raise _error(
                ins.line,
                f"{ins.keyword} is not supported in corral templates (supported: {', '.join(SUPPORTED_INSTRUCTIONS)})",
                instruction=ins.keyword,
            )
        if not ins.args:
            raise _error(ins.line, f"{ins.keyword} needs arguments", instruction=ins.keyword)
        if self.base is None and ins.keyword not in ("FROM", "ARG"):
            raise _error(
                ins.line,
                f"{ins.keyword} comes before FROM; a template starts with FROM (only ARG may come before it)",
                instruction=ins.keyword,
            )
        handlers = {
            "FROM": self._from,
            "ARG": self._arg,
            "ENV": self._env,
            "WORKDIR": self._workdir,
            "USER": self._user,
            "RUN": self._run,
            "COPY": self._copy,
            "ADD": self._copy,
        }
        handlers[ins.keyword](ins)

    # -- substitution --------------------------------------------------------

    def scope(self) -> dict[str, str]:
        """What ``$VAR`` sees now: before FROM the meta ARGs, after it the stage's ARGs under its ENV."""
        if self.base is None:
            return {k: v for k, v in self.meta_args.items() if v is not None}
        return {k: v for k, v in self.args.items() if v is not None} | self.env

    def expand(self, text: str, ins: _Instruction, *, quotes: bool = True) -> str:
        try:
            return _Expander(self.scope(), escape=self.escape, quotes=quotes)(text)
        except _SubstitutionError as exc:
            raise _error(ins.line, f"{ins.keyword}: {exc}", instruction=ins.keyword) from None

    def words(self, text: str, ins: _Instruction) -> list[str]:
        return [self.expand(word, ins) for word in _split_words(text, self.escape)]

    def check_name(self, name: str, ins: _Instruction) -> None:
        if not _NAME.fullmatch(name):
            raise _error(
                ins.line,
                f"{ins.keyword}: {name!r} is not a valid name (letters, digits and '_'; no leading digit)",
                instruction=ins.keyword,
            )

    # -- instructions -------------------------------------------------------

    def _from(self, ins: _Instruction) -> None:
        if self.base is not None:
            raise _error(
                ins.line,
                "a second FROM: multi-stage builds are not supported (one FROM per template)",
                instruction="FROM",
            )
        raw = _split_words(ins.args, self.escape)
        if raw[0].startswith("--"):
            raise _error(ins.line, f"FROM {raw[0].split('=')[0]} is not supported", instruction="FROM")
        if len(raw) not in (1, 3) or (len(raw) == 3 and raw[1].lower() != "as"):
            raise _error(ins.line, "FROM takes one image, optionally followed by 'AS <name>'", instruction="FROM")
        base = self.expand(raw[0], ins)
        if not base or any(ch.isspace() for ch in base):
            raise _error(
                ins.line,
                f"FROM {raw[0]} gives the image name {base!r} (only ARGs declared before FROM can be used in it)",
                instruction="FROM",
            )
        self.base = base

    def _arg(self, ins: _Instruction) -> None:
        target = self.meta_args if self.base is None else self.args
        for word in _split_words(ins.args, self.escape):
            name, has_default, default = word.partition("=")
            self.check_name(name, ins)
            value: str | None
            if name in self.build_args:
                value = self.build_args[name]
            elif has_default:
                value = self.expand(default, ins)
            else:
                # Redeclared after FROM without a value: the default given before FROM, as Docker does.
                value = self.meta_args.get(name) if self.base is not None else None
            target[name] = value

    def _env(self, ins: _Instruction) -> None:
        words = _split_words(ins.args, self.escape)
        pairs: list[tuple[str, str]] = []
        if "=" not in words[0]:
            name, *rest = _BLANKS.split(ins.args, maxsplit=1)
            value = rest[0] if rest else ""
            if not value:
                raise _error(
                    ins.line, f"ENV {name} needs a value: ENV NAME=value (or ENV NAME value)", instruction="ENV"
                )
            pairs.append((name, value))
        else:
            for word in words:
                name, has_value, value = word.partition("=")
                if not has_value:
                    raise _error(ins.line, f"ENV: {word!r} has no '='; write NAME=value", instruction="ENV")
                pairs.append((name, value))
        # Every value sees the variables as they were before this line, as in Docker.
        expanded = [(name, self.expand(value, ins)) for name, value in pairs]
        for name, value in expanded:
            self.check_name(name, ins)
            self.env[name] = value
            self.steps.append(SetEnv(name, value))

    def _workdir(self, ins: _Instruction) -> None:
        path = self.expand(ins.args, ins)
        if not path:
            raise _error(ins.line, f"WORKDIR {ins.args} is empty after substitution", instruction="WORKDIR")
        self.workdir = posixpath.normpath(posixpath.join(self.workdir, path))
        if self.workdir.startswith("//"):
            self.workdir = "/" + self.workdir.lstrip("/")
        self.steps.append(SetWorkdir(self.workdir))

    def _user(self, ins: _Instruction) -> None:
        user = self.expand(ins.args, ins)
        if not _USER.fullmatch(user):
            raise _error(ins.line, f"USER takes one user[:group], not {user!r}", instruction="USER")
        self.user = user
        self.steps.append(SetUser(user))

    def _run(self, ins: _Instruction) -> None:
        if ins.args.startswith("--"):
            flag = ins.args.split()[0].split("=")[0]
            raise _error(ins.line, f"RUN {flag} is not supported in corral templates", instruction="RUN")
        argv = _json_list(ins.args)
        if argv is None and any(_HEREDOC.fullmatch(w) for w in _split_words(ins.args, self.escape)):
            raise _error(ins.line, "heredocs (<<EOF) are not supported in corral templates", instruction="RUN")
        if argv == []:
            raise _error(ins.line, "RUN [] has no command", instruction="RUN")
        env = self.scope()
        self.steps.append(
            Run(
                argv=tuple(argv) if argv is not None else None,
                shell=ins.args if argv is None else None,
                env=tuple(sorted(env.items())),
                workdir=self.workdir,
                user=self.user,
                line=ins.line,
            )
        )

    def _copy(self, ins: _Instruction) -> None:
        kw, rest = ins.keyword, ins.args
        chown: str | None = None
        chmod: int | None = None
        while (flag := _FLAG.match(rest)) is not None:
            rest = rest[flag.end() :]
            name, has_value, raw = flag[1].partition("=")
            if name == "from":
                raise _error(
                    ins.line, f"{kw} --from is not supported: multi-stage builds are not supported", instruction=kw
                )
            if name not in ("chown", "chmod"):
                raise _error(ins.line, f"{kw} --{name} is not supported (only --chown and --chmod)", instruction=kw)
            value = self.expand(raw, ins)
            if not has_value or not value:
                raise _error(ins.line, f"{kw} --{name} needs a value: --{name}=...", instruction=kw)
            if name == "chown":
                if not _USER.fullmatch(value):
                    raise _error(ins.line, f"{kw} --chown takes user[:group], not {value!r}", instruction=kw)
                chown = value
            else:
                if not _CHMOD.fullmatch(value):
                    raise _error(
                        ins.line, f"{kw} --chmod takes an octal mode such as 0644, not {value!r}", instruction=kw
                    )
                chmod = int(value, 8)
        listed = _json_list(rest)
        if listed is None and any(_HEREDOC.fullmatch(w) for w in _split_words(rest, self.escape)):
            raise _error(ins.line, "heredocs (<<EOF) are not supported in corral templates", instruction=kw)
        words = self.words(rest, ins) if listed is None else [self.expand(w, ins, quotes=False) for w in listed]
        if len(words) < 2:
            raise _error(ins.line, f"{kw} needs at least one source and a destination", instruction=kw)
        sources, dest = words[:-1], words[-1]
        for source in sources:
            if kw == "ADD" and _URL.match(source):
                raise _error(
                    ins.line,
                    f"ADD {source}: downloads are not supported, template builds have no network; "
                    "put the file in the build context instead",
                    instruction=kw,
                )
            if not source or ".." in source.split("/"):
                raise _error(ins.line, f"{kw} source {source!r} is outside the build context", instruction=kw)
        if not dest:
            raise _error(ins.line, f"{kw} destination is empty", instruction=kw)
        into = dest.endswith("/") or posixpath.basename(dest) in (".", "..")
        if len(sources) > 1 and not into:
            raise _error(
                ins.line, f"{kw} with several sources needs a directory destination ending in '/'", instruction=kw
            )
        target = posixpath.normpath(posixpath.join(self.workdir, dest))
        target = "/" + target.lstrip("/")
        if into and target != "/":
            target += "/"
        self.steps.append(
            Copy(sources=tuple(sources), dest=target, chown=chown, chmod=chmod, workdir=self.workdir, line=ins.line)
        )
