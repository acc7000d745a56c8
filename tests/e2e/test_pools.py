"""Warm pools: sandboxes started ahead, claimed by create, refilled, counted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from tests.leftovers import kill_sandbox_process

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("pools")]

KEY = "image:corral/base"


def pool(url: str) -> dict[str, int]:
    found = [p for p in httpx.get(f"{url}/v1/pools").json()["pools"] if p["key"] == KEY]
    return found[0] if found else {}


def wait_ready(url: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while pool(url).get("ready", 0) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool(url)["ready"] >= n


def test_a_warm_pool_is_claimed_refilled_and_counted(corral_url: str) -> None:
    r = httpx.put(f"{corral_url}/v1/pools/image:corral/base", json={"size": 1})
    assert r.status_code == 200 and r.json()["key"] == KEY
    try:
        wait_ready(corral_url, 1)
        waiting = [
            s["id"] for s in httpx.get(f"{corral_url}/v1/sandboxes", params={"state": "pooled"}).json()["sandboxes"]
        ]
        assert len(waiting) == 1
        assert waiting[0] not in [s.id for s in Sandbox.list(url=corral_url)]  # not anyone's yet
        with Sandbox.create(url=corral_url, envs={"GREETING": "hi"}, metadata={"who": "pool-test"}, timeout=60) as sbx:
            assert sbx.id == waiting[0]
            info = sbx.info()
            assert info.state == "running" and info.metadata == {"who": "pool-test"} and info.ends_at is not None
            assert sbx.commands.run("id -un").stdout == "user\n"
            assert sbx.commands.run("echo $GREETING").stdout == "hi\n"  # the claim's envs reach commands
            assert pool(corral_url)["hits"] >= 1
            wait_ready(corral_url, 1)  # refilled in the background
            # other resources than the pool's: a miss, made the usual way
            other = Sandbox.create(url=corral_url, memory_mb=256)
            try:
                assert other.id not in waiting and pool(corral_url)["misses"] >= 1
            finally:
                other.kill()
    finally:
        assert httpx.delete(f"{corral_url}/v1/pools/image:corral/base").status_code == 204
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{corral_url}/v1/sandboxes", params={"state": "pooled"}).json()["sandboxes"]
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert httpx.get(f"{corral_url}/v1/sandboxes", params={"state": "pooled"}).json()["sandboxes"] == []


def test_a_pooled_sandbox_that_dies_is_replaced_not_handed_out(corral_url: str) -> None:
    assert httpx.put(f"{corral_url}/v1/pools/{KEY}", json={"size": 1}).status_code == 200
    try:
        wait_ready(corral_url, 1)
        (victim,) = httpx.get(f"{corral_url}/v1/sandboxes", params={"state": "pooled"}).json()["sandboxes"]
        kill_sandbox_process(victim["id"])
        deadline = time.monotonic() + 30
        while httpx.get(f"{corral_url}/v1/sandboxes/{victim['id']}").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        wait_ready(corral_url, 1)  # refilled
        with Sandbox.create(url=corral_url) as sbx:
            assert sbx.id != victim["id"] and sbx.commands.run("echo alive").stdout == "alive\n"
    finally:
        assert httpx.delete(f"{corral_url}/v1/pools/{KEY}").status_code == 204


def test_bad_pool_keys_and_sizes(corral_url: str) -> None:
    assert httpx.put(f"{corral_url}/v1/pools/nonsense", json={"size": 1}).status_code == 422
    assert httpx.put(f"{corral_url}/v1/pools/image:corral/base", json={"size": 1000}).status_code == 422
    r = httpx.put(f"{corral_url}/v1/pools/template:no-such", json={"size": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "template_not_found"


def test_a_pool_that_cannot_start_a_sandbox_says_why(corral_url: str) -> None:
    key = "image:localhost:9/no-such-image:1"  # a registry nothing answers at: the pull fails at once
    try:
        assert httpx.put(f"{corral_url}/v1/pools/{key}", json={"size": 1}).status_code == 200
        deadline = time.monotonic() + 30
        while True:
            (pool,) = [p for p in httpx.get(f"{corral_url}/v1/pools").json()["pools"] if p["key"] == key]
            if pool["error"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "localhost:9/no-such-image:1" in pool["error"] and pool["ready"] == 0, pool
        cli = [str(Path(sys.executable).with_name("corral")), "--url", corral_url, "pool", "list"]
        table = subprocess.run(cli, capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "300"})
        assert table.stdout.split("\n")[0].split()[-1] == "ERROR" and "no-such-image" in table.stdout
    finally:
        httpx.delete(f"{corral_url}/v1/pools/{key}")
