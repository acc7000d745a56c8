"""The async SDK mirrors the sync one: same public names, same parameters, awaitable methods."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from corral import (
    AsyncCommandHandle,
    AsyncCommands,
    AsyncFiles,
    AsyncImages,
    AsyncPools,
    AsyncSandbox,
    AsyncTemplates,
    CommandHandle,
    Commands,
    Files,
    Images,
    Pools,
    Sandbox,
    Templates,
)

TWINS = [
    (Sandbox, AsyncSandbox),
    (Commands, AsyncCommands),
    (Files, AsyncFiles),
    (CommandHandle, AsyncCommandHandle),
    (Images, AsyncImages),
    (Templates, AsyncTemplates),
    (Pools, AsyncPools),
]

# Protocol methods that differ by design between the twins.
SYNC_ONLY = {"__enter__", "__exit__", "__iter__"}
ASYNC_ONLY = {"__aenter__", "__aexit__", "__aiter__"}


def _public(cls: type) -> dict[str, Any]:
    return {
        name: inspect.getattr_static(cls, name)
        for name in dir(cls)
        if not name.startswith("_") or name in SYNC_ONLY | ASYNC_ONLY
        if name not in object.__dict__ or name in cls.__dict__
    }


def _kind(member: Any) -> str:
    return type(member).__name__  # function, property, classmethod, staticmethod


def _params(member: Any) -> list[tuple[str, Any, Any]]:
    func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=[s.__name__ for s, _ in TWINS])
def test_same_public_names(sync: type, async_: type) -> None:
    sync_names = set(_public(sync)) - SYNC_ONLY
    async_names = set(_public(async_)) - ASYNC_ONLY
    assert sync_names == async_names
    mirrored = {"__enter__": "__aenter__", "__exit__": "__aexit__", "__iter__": "__aiter__"}
    for name in SYNC_ONLY & set(_public(sync)):
        assert mirrored[name] in _public(async_), f"{async_.__name__} lacks {mirrored[name]}"


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=[s.__name__ for s, _ in TWINS])
def test_same_signatures_and_awaitable(sync: type, async_: type) -> None:
    sync_members, async_members = _public(sync), _public(async_)
    for name, member in sync_members.items():
        if name in SYNC_ONLY:
            continue
        twin = async_members[name]
        assert _kind(member) == _kind(twin), name
        if isinstance(member, property) or member is twin:
            continue  # a property, or one method both inherit (no I/O: get_host)
        assert _params(member) == _params(twin), f"{sync.__name__}.{name}"
        func = twin.__func__ if isinstance(twin, classmethod | staticmethod) else twin
        assert inspect.iscoroutinefunction(func), f"{async_.__name__}.{name} is not async"
        sync_func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        assert not inspect.iscoroutinefunction(sync_func), f"{sync.__name__}.{name} is async"


def test_aliases_are_the_same_method() -> None:
    assert Commands.exec is Commands.run and AsyncCommands.exec is AsyncCommands.run
    assert Files.get_info is Files.stat and AsyncFiles.get_info is AsyncFiles.stat
    assert Sandbox.get_info is Sandbox.info and AsyncSandbox.get_info is AsyncSandbox.info
