"""The offline base images have what they promise."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytestmark = pytest.mark.runsc


def test_corral_base_has_python_pip_git_curl_and_a_c_toolchain(sandbox_factory: Callable[..., object]) -> None:
    sbx = sandbox_factory()
    r = sbx.commands.run(  # type: ignore[attr-defined]
        "python3 -c 'print(6*7)' && pip3 --version >/dev/null && git --version >/dev/null && "
        "curl --version >/dev/null && printf 'int main(){return 0;}' > /tmp/t.c && gcc -o /tmp/t /tmp/t.c && /tmp/t "
        "&& python3 -m venv /tmp/venv && echo ok"
    )
    assert r.stdout == "42\nok\n", r.stderr


def test_corral_node_has_node_and_npm(sandbox_factory: Callable[..., object]) -> None:
    sbx = sandbox_factory(image="corral/node")
    r = sbx.commands.run("node -e 'console.log(6*7)' && npm --version >/dev/null && python3 -c 'print(1)'")  # type: ignore[attr-defined]
    assert r.stdout == "42\n1\n", r.stderr
