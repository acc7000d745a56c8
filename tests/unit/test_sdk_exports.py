"""``corral``'s public surface: ``__all__`` is complete, and importing it stays light."""

from __future__ import annotations

import inspect
import pkgutil
import subprocess
import sys

import corral
import corral.errors
import corral.sdk


def test_every_name_in_all_resolves() -> None:
    for name in corral.__all__:
        assert getattr(corral, name) is not None, name
    assert sorted(corral.__all__) == sorted(set(corral.__all__))
    assert set(corral.__all__) <= set(dir(corral))


def test_all_covers_the_sdk_and_the_error_tree() -> None:
    plumbing = {"error_from_envelope", "DEFAULT_URL", "DEFAULT_REQUEST_TIMEOUT", "ReadFormat"}
    wanted = (set(corral.sdk.__all__) | set(corral.errors.__all__)) - plumbing
    assert wanted <= set(corral.__all__)
    assert set(corral.__all__) - {"__version__"} <= set(corral.sdk.__all__) | set(corral.errors.__all__)


def test_every_public_sdk_class_is_exported() -> None:
    for info in pkgutil.iter_modules(corral.sdk.__path__):
        if info.name.startswith("_"):
            continue
        module = __import__(f"corral.sdk.{info.name}", fromlist=["*"])
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__ and not name.startswith("_"):
                assert name in corral.sdk.__all__, f"corral.sdk.{info.name}.{name} is not exported"
                assert name in corral.__all__, f"corral.{name} is not exported"


def test_every_error_class_is_exported() -> None:
    for name, value in vars(corral.errors).items():
        if inspect.isclass(value) and issubclass(value, corral.CorralError):
            assert name in corral.__all__


def test_importing_corral_does_not_load_httpx() -> None:
    code = "import sys, corral, corral.errors; assert 'httpx' not in sys.modules; corral.Sandbox"
    code += "; assert 'httpx' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute() -> None:
    try:
        corral.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
