"""The Dockerfile subset of corral templates: what parses to what, and every refusal."""

from __future__ import annotations

import dataclasses
import json

import pytest

from corral.errors import InvalidRequest
from corral.images.dockerfile import Copy, Dockerfile, Run, SetEnv, SetUser, SetWorkdir, Step, parse


def refused(text: str, *, build_args: dict[str, str] | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(text, build_args=build_args)
    return info.value


def only(text: str) -> Step:
    steps = parse("FROM base\n" + text).steps
    assert len(steps) == 1, steps
    return steps[0]


def runs(text: str, *, build_args: dict[str, str] | None = None) -> list[Run]:
    return [s for s in parse(text, build_args=build_args).steps if isinstance(s, Run)]


# -- structure -----------------------------------------------------------------


def test_a_small_template_parses_to_its_steps() -> None:
    text = """\
# A template.
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
USER 1000
"""
    env = (("PIP_NO_CACHE_DIR", "1"),)
    assert parse(text) == Dockerfile(
        base="python:3.12-slim",
        steps=(
            SetEnv("PIP_NO_CACHE_DIR", "1"),
            SetWorkdir("/app"),
            Copy(sources=("requirements.txt",), dest="/app/", chown=None, chmod=None, workdir="/app", line=6),
            Run(argv=None, shell="pip install -r requirements.txt", env=env, workdir="/app", user="", line=7),
            SetUser("1000"),
        ),
    )


def test_keywords_are_case_insensitive() -> None:
    parsed = parse("from alpine\nrun echo hi\nCoPy a /b\nworkdir /w\nuser u\nenv A=1\narg B\nadd c /d\n")
    assert parsed.base == "alpine"
    assert [type(s) for s in parsed.steps] == [Run, Copy, SetWorkdir, SetUser, SetEnv, Copy]


def test_keyword_and_arguments_may_be_separated_by_tabs() -> None:
    assert only("RUN\techo  a\tb") == Run(None, "echo  a\tb", (), "/", "", 2)


def test_steps_and_dockerfile_are_frozen() -> None:
    parsed = parse("FROM a\nRUN x\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.base = "b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.steps[0].line = 3  # type: ignore[union-attr]


def test_from_accepts_an_as_name_and_digests() -> None:
    assert parse("FROM alpine@sha256:abc AS build\n").base == "alpine@sha256:abc"
    assert parse("FROM alpine as build\n").base == "alpine"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "no FROM"),
        ("# only a comment\n\n", 1, "no FROM"),
        ("ARG A=1\n", 1, "no FROM"),
        ("RUN echo\nFROM a\n", 1, "RUN comes before FROM"),
        ("ENV A=1\nFROM a\n", 1, "only ARG may come before it"),
        ("FROM a\nRUN x\nFROM b\n", 3, "multi-stage builds are not supported"),
        ("FROM --platform=linux/arm64 a\n", 1, "FROM --platform is not supported"),
        ("FROM a b\n", 1, "AS <name>"),
        ("FROM a AS\n", 1, "AS <name>"),
        ("FROM a FOR b\n", 1, "AS <name>"),
        ("FROM $NOPE\n", 1, "only ARGs declared before FROM"),
    ],
)
def test_from_rules(text: str, line: int, words: str) -> None:
    error = refused(text)
    assert words in error.message
    assert error.message.startswith(f"line {line}: ")
    assert error.details["line"] == line


@pytest.mark.parametrize(
    "keyword", ["EXPOSE", "CMD", "ENTRYPOINT", "HEALTHCHECK", "LABEL", "VOLUME", "SHELL", "ONBUILD", "STOPSIGNAL"]
)
def test_unsupported_instructions_are_named_with_their_line(keyword: str) -> None:
    error = refused(f"FROM a\nRUN x\n{keyword.lower()} something\n")
    assert error.message == (
        f"line 3: {keyword} is not supported in corral templates "
        "(supported: FROM, RUN, COPY, ADD, ENV, WORKDIR, USER, ARG)"
    )
    assert error.details == {"line": 3, "instruction": keyword}
    assert error.code == "invalid_request"


def test_unknown_and_misspelled_instructions_are_refused() -> None:
    assert refused("FROM a\nRUNN x\n").details == {"line": 2, "instruction": "RUNN"}
    assert refused("EXPOSE 80\nFROM a\n").details["instruction"] == "EXPOSE"


@pytest.mark.parametrize("keyword", ["RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "ARG"])
def test_instructions_without_arguments_are_refused(keyword: str) -> None:
    assert "needs arguments" in refused(f"FROM a\n{keyword}   \n").message


# -- lines, comments, continuations, directives -------------------------------


def test_continuations_join_lines_and_skip_comment_and_blank_lines_inside() -> None:
    text = (
        "FROM a\n\n# comment\n"
        "RUN apt-get update && \\\n"
        "    # inside: skipped\n"
        "\n"
        "    apt-get install -y \\  \n"
        "\tcurl\n"
        "RUN next\n"
    )
    first, second = runs(text)
    assert first.shell == "apt-get update &&     apt-get install -y \tcurl"
    assert first.line == 4
    assert (second.shell, second.line) == ("next", 9)


def test_a_hash_inside_an_instruction_is_not_a_comment() -> None:
    assert runs("FROM a\nRUN echo hi # there\n")[0].shell == "echo hi # there"


def test_indented_comments_and_crlf_and_bom_are_handled() -> None:
    parsed = parse("\ufeffFROM a\r\n   # indented comment\r\nRUN x \\\r\n  y\r\n")
    assert parsed.steps == (Run(None, "x   y", (), "/", "", 3),)


def test_a_continuation_at_end_of_file_ends_the_instruction() -> None:
    assert runs("FROM a\nRUN echo \\")[0].shell == "echo"
    assert "needs arguments" in refused("FROM a\nRUN \\\n").message


def test_parser_directives_at_the_top_are_read_and_escape_is_honoured() -> None:
    text = "# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN dir c:\\ && `\n    echo done\nCOPY `$x /d\n"
    parsed = parse(text)
    assert parsed.steps[0] == Run(None, "dir c:\\ &&     echo done", (), "/", "", 4)
    assert isinstance(parsed.steps[1], Copy) and parsed.steps[1].sources == ("$x",)


def test_directives_after_anything_else_are_plain_comments() -> None:
    # A blank line, a comment or an unknown directive ends the directives, as in Docker.
    for head in ("\n", "# hello\n", "# unknown=1\n"):
        parsed = parse(head + "# escape=`\nFROM a\nRUN x \\\n  y\n")
        assert parsed.steps[0] == Run(None, "x   y", (), "/", "", 4 if head else 3)


def test_bad_directives_are_refused() -> None:
    assert refused("# escape=!\nFROM a\n").details["line"] == 1
    assert "given twice" in refused("# escape=`\n# escape=`\nFROM a\n").message


# -- RUN ------------------------------------------------------------------------


def test_run_shell_and_exec_forms() -> None:
    shell, exec_form = runs('FROM a\nRUN echo "$HOME" ${X:-y}\nRUN ["/bin/echo", "a b", "$HOME"]\n')
    assert (shell.shell, shell.argv) == ('echo "$HOME" ${X:-y}', None)  # the shell substitutes, not the parser
    assert (exec_form.shell, exec_form.argv) == (None, ("/bin/echo", "a b", "$HOME"))


def test_run_with_something_that_is_not_a_json_string_list_is_the_shell_form() -> None:
    assert runs("FROM a\nRUN [ -f /x ] && echo yes\n")[0].shell == "[ -f /x ] && echo yes"
    assert runs('FROM a\nRUN ["a", 1]\n')[0].shell == '["a", 1]'


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("RUN []", "RUN [] has no command"),
        ("RUN --mount=type=cache,target=/x make", "RUN --mount is not supported"),
        ("RUN --network=none make", "RUN --network is not supported"),
        ("RUN <<EOF", "heredocs"),
        ("RUN cat <<-'END' > /f", "heredocs"),
    ],
)
def test_run_refusals(line: str, words: str) -> None:
    error = refused(f"FROM a\n{line}\n")
    assert words in error.message and error.details["line"] == 2


def test_shell_arithmetic_is_not_mistaken_for_a_heredoc() -> None:
    assert runs("FROM a\nRUN echo $((1<<3))\n")[0].shell == "echo $((1<<3))"


def test_run_gets_arg_and_env_values_as_its_environment() -> None:
    text = "ARG G=global\nFROM a\nARG A=1 B\nARG C=c\nENV C=from-env D=d\nRUN x\nUSER u:g\nWORKDIR /w\nRUN y\n"
    first, second = runs(text, build_args={"A": "override", "UNUSED": "z"})
    assert first.env == (("A", "override"), ("C", "from-env"), ("D", "d"))  # B has no value; G is not redeclared
    assert (first.user, first.workdir) == ("", "/")
    assert (second.user, second.workdir, second.env) == ("u:g", "/w", first.env)


def test_cache_keys_are_canonical_and_cover_everything_but_the_line() -> None:
    a = Run(None, "make", (("A", "1"),), "/src", "root", 3)
    assert a.cache_key_text() == Run(None, "make", (("A", "1"),), "/src", "root", 99).cache_key_text()
    variants = [
        Run(None, "make", (("A", "2"),), "/src", "root", 3),
        Run(None, "make", (("A", "1"),), "/", "root", 3),
        Run(None, "make", (("A", "1"),), "/src", "", 3),
        Run(("make",), None, (("A", "1"),), "/src", "root", 3),
    ]
    assert len({a.cache_key_text(), *(v.cache_key_text() for v in variants)}) == 5
    assert json.loads(a.cache_key_text()) == [
        "RUN",
        {"argv": None, "env": [["A", "1"]], "shell": "make", "user": "root", "workdir": "/src"},
    ]
    copy = Copy(("a",), "/b", "1:1", 0o644, "/", 2)
    assert json.loads(copy.cache_key_text())[1] == {
        "chmod": 0o644,
        "chown": "1:1",
        "dest": "/b",
        "sources": ["a"],
        "workdir": "/",
    }
    keys = {SetEnv("A", "1").cache_key_text(), SetWorkdir("/A").cache_key_text(), SetUser("A").cache_key_text()}
    assert len(keys) == 3


# -- COPY / ADD -----------------------------------------------------------------


def test_copy_shell_and_json_forms_and_destinations() -> None:
    parsed = parse(
        "FROM a\nWORKDIR /app\nCOPY a.txt b/ ./\nCOPY src dst\nCOPY x ../up\n"
        'COPY ["with space.txt", "dir/"]\nCOPY "quoted name" /abs\nCOPY . .\nCOPY y /\n'
    )
    copies = [(s.sources, s.dest) for s in parsed.steps if isinstance(s, Copy)]
    assert copies == [
        (("a.txt", "b/"), "/app/"),
        (("src",), "/app/dst"),
        (("x",), "/up"),
        (("with space.txt",), "/app/dir/"),
        (("quoted name",), "/abs"),
        ((".",), "/app/"),
        (("y",), "/"),
    ]
    assert all(s.workdir == "/app" for s in parsed.steps if isinstance(s, Copy))


def test_copy_options() -> None:
    step = only("COPY --chown=user:group --chmod=0755 a /b")
    assert step == Copy(("a",), "/b", "user:group", 0o755, "/", 2)
    assert only("COPY --chmod=644 --chown=1000 a /b") == Copy(("a",), "/b", "1000", 0o644, "/", 2)


def test_add_of_local_files_is_a_copy_and_does_not_unpack() -> None:
    assert only("ADD --chown=1 app.tar.gz /opt/") == Copy(("app.tar.gz",), "/opt/", "1", None, "/", 2)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("COPY --from=build /x /y", "multi-stage builds are not supported"),
        ("COPY --link a /b", "COPY --link is not supported"),
        ("ADD --checksum=sha256:00 a /b", "ADD --checksum is not supported"),
        ("COPY --chown a /b", "--chown needs a value"),
        ("COPY --chown= a /b", "--chown needs a value"),
        ("COPY --chown=a:b:c x /y", "--chown takes user[:group]"),
        ("COPY --chmod=u+x a /b", "octal mode"),
        ("COPY --chmod=0999 a /b", "octal mode"),
        ("COPY onlyone", "at least one source and a destination"),
        ('COPY ["onlyone"]', "at least one source and a destination"),
        ("COPY a b /not-a-dir", "ending in '/'"),
        ("COPY ../secret /x", "outside the build context"),
        ("COPY a/../../x /x", "outside the build context"),
        ("COPY <<EOF /x", "heredocs"),
        ("COPY a $EMPTY", "destination is empty"),
        ("ADD https://example.com/x.tgz /x", "template builds have no network"),
        ("ADD a http://h/y /d/", "downloads are not supported"),
        ("ADD git@github.com:o/r.git /src", "downloads are not supported"),
        ('COPY "unclosed /x', "double quote is not closed"),
    ],
)
def test_copy_and_add_refusals(line: str, words: str) -> None:
    error = refused(f"FROM a\n\n{line}\n")
    assert words in error.message, error.message
    assert error.details["line"] == 3


def test_copy_substitutes_in_sources_destination_and_options() -> None:
    text = 'FROM a\nARG UID=1000\nENV APP=/srv/app SRC="my src"\nCOPY --chown=${UID}:$UID ${SRC} $APP/\n'
    step = parse(text).steps[-1]
    assert step == Copy(("my src",), "/srv/app/", "1000:1000", None, "/", 4)
    json_form = parse('FROM a\nENV D=/d\nCOPY ["$D\\"q", "${D}/"]\n').steps[-1]
    assert isinstance(json_form, Copy) and json_form.sources == ('/d"q',) and json_form.dest == "/d/"


# -- ENV, ARG, substitution ------------------------------------------------------


def test_env_forms() -> None:
    parsed = parse(
        "FROM a\n"
        "ENV A=1 B=\"two words\" C=three\\ words D='$A single'\n"
        "ENV LEGACY  a  value with  spaces \n"
        "ENV E=$A F=${B}\n"
        "ENV A=x G=$A\n"
    )
    assert parsed.steps == (
        SetEnv("A", "1"),
        SetEnv("B", "two words"),
        SetEnv("C", "three words"),
        SetEnv("D", "$A single"),
        SetEnv("LEGACY", "a  value with  spaces"),
        SetEnv("E", "1"),
        SetEnv("F", "two words"),
        SetEnv("A", "x"),
        SetEnv("G", "1"),  # values on one line see the variables as they were before it
    )


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("ENV ONLY", "needs a value"),
        ("ENV A=1 B", "has no '='"),
        ("ENV 1A=x", "not a valid name"),
        ("ENV A-B=x", "not a valid name"),
        ("ARG 9=x", "not a valid name"),
        ("ENV A=${B", "not closed by '}'"),
        ("ENV A=${B%x}", "is not supported (use ${VAR}"),
        ("ENV A=${:-x}", "must be followed by a variable name"),
        ("ENV A='x", "single quote is not closed"),
        ("WORKDIR ${B:?required}", "is not supported"),
        ("WORKDIR $EMPTY", "empty after substitution"),
        ("USER two words", "one user[:group]"),
        ("USER a:b:c", "one user[:group]"),
    ],
)
def test_env_arg_workdir_user_refusals(line: str, words: str) -> None:
    error = refused(f"FROM a\n{line}\n")
    assert words in error.message, error.message
    assert error.details["line"] == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$SET", "v"),
        ("${SET}", "v"),
        ("pre${SET}post", "prevpost"),
        ("$SET.x", "v.x"),
        ("$UNSET", ""),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${SET:-dflt}", "v"),
        ("${UNSET-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${UNSET:-${SET}-nested}", "v-nested"),
        ('"${UNSET:-a b}"', "a b"),
        ("\\$SET", "$SET"),
        ('"\\$SET"', "$SET"),
        ("'$SET'", "$SET"),
        ('"$SET and ${SET}"', "v and v"),
        ("a$", "a$"),
        ("$-x", "$-x"),
        ('"a\\b"', "a\\b"),
        ("a\\b", "ab"),
    ],
)
def test_substitution(value: str, expected: str) -> None:
    parsed = parse(f"FROM a\nENV SET=v EMPTY=\nENV OUT={value}\n")
    assert parsed.steps[-1] == SetEnv("OUT", expected)


def test_args_before_from_reach_from_only_unless_redeclared() -> None:
    text = (
        "ARG REPO=docker.io/library\nARG TAG\nFROM ${REPO}/python:${TAG:-3.12}\nENV R=x$REPO\nARG REPO\nENV S=$REPO\n"
    )
    parsed = parse(text)
    assert parsed.base == "docker.io/library/python:3.12"
    assert parsed.steps == (SetEnv("R", "x"), SetEnv("S", "docker.io/library"))
    assert parse(text, build_args={"TAG": "3.11", "REPO": "r"}).base == "r/python:3.11"


def test_env_in_the_stage_does_not_reach_from_and_args_need_declaring() -> None:
    parsed = parse(
        "FROM a\nENV V=$NOT_DECLARED\nARG NOT_DECLARED\nENV W=$NOT_DECLARED\n", build_args={"NOT_DECLARED": "b"}
    )
    assert parsed.steps == (SetEnv("V", ""), SetEnv("W", "b"))


def test_arg_defaults_are_substituted_and_env_beats_arg() -> None:
    parsed = parse("FROM a\nARG A=1\nARG B=${A}2 C\nENV A=env\nENV OUT=$A$B${C-unset}\n")
    assert parsed.steps[-1] == SetEnv("OUT", "env12unset")


def test_build_args_are_taken_literally() -> None:
    parsed = parse("FROM a\nARG X=default\nENV OUT=$X\n", build_args={"X": "$HOME 'q'"})
    assert parsed.steps[-1] == SetEnv("OUT", "$HOME 'q'")


# -- WORKDIR, USER ------------------------------------------------------------------


def test_workdir_resolves_against_the_previous_one() -> None:
    parsed = parse("FROM a\nWORKDIR rel\nWORKDIR sub/\nWORKDIR ../other\nWORKDIR /abs/./x\nWORKDIR ../../..\n")
    assert [s.path for s in parsed.steps if isinstance(s, SetWorkdir)] == [
        "/rel",
        "/rel/sub",
        "/rel/other",
        "/abs/x",
        "/",
    ]


def test_workdir_and_user_substitute_variables() -> None:
    parsed = parse('FROM a\nENV HOME=/home/me NAME=me\nWORKDIR $HOME/"my dir"\nUSER ${NAME}:${GROUP:-staff}\nRUN x\n')
    assert parsed.steps[2:] == (
        SetWorkdir("/home/me/my dir"),
        SetUser("me:staff"),
        Run(None, "x", (("HOME", "/home/me"), ("NAME", "me")), "/home/me/my dir", "me:staff", 5),
    )
