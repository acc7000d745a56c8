"""Image references mean what Docker says they mean."""

from __future__ import annotations

import pytest

from corral.errors import InvalidRequest
from corral.images.reference import is_insecure_host, parse

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.12", "docker.io/library/python:3.12"),
        ("team/app:v1", "docker.io/team/app:v1"),
        ("ghcr.io/o/r:tag", "ghcr.io/o/r:tag"),
        ("127.0.0.1:5000/x:tag", "127.0.0.1:5000/x:tag"),
        ("localhost/x", "localhost/x:latest"),
        (f"python@{DIGEST}", f"docker.io/library/python@{DIGEST}"),
        (f"python:3.12@{DIGEST}", f"docker.io/library/python:3.12@{DIGEST}"),
        ("corral/base", "corral/base"),
        ("corral/base:latest", "corral/base"),
        ("corral/templates/x", "corral/templates/x"),
        ("corral/mine:v2", "corral/mine:v2"),
        ("[::1]:5000/x:1", "[::1]:5000/x:1"),
    ],
)
def test_canonical_names(text: str, canonical: str) -> None:
    assert str(parse(text)) == canonical


def test_corral_names_are_local() -> None:
    assert parse("corral/base").is_local
    assert not parse("python").is_local
    assert parse("127.0.0.1:5000/corral/base").registry == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "text", ["", " python", "Python", "a//b", "x:", "x:-bad", "x@sha256:123", "bad host:5000/x", "x/../y", "a" * 600]
)
def test_bad_references_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(text)
    assert "is not a valid image reference" in info.value.message


def test_loopback_registries_are_plain_http() -> None:
    assert is_insecure_host("127.0.0.1:5000") and is_insecure_host("localhost:5000")
    assert not is_insecure_host("ghcr.io")
    assert is_insecure_host("registry.lan:5000", frozenset({"registry.lan:5000"}))
