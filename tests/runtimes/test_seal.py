"""The agent bundle's read-only host mount: made once, however often a server starts."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from corral.runtimes.oci import seal_read_only
from tests.leftovers import mounts_under
from tests.serverproc import unmount_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def test_sealing_twice_leaves_one_read_only_mount(tmp_path: Path) -> None:
    bundle = tmp_path / "agent-bundle"
    bundle.mkdir()
    (bundle / "python3").write_text("#!")
    try:
        for _ in range(3):  # three server starts
            asyncio.run(seal_read_only(bundle))
        assert mounts_under(bundle) == [str(bundle)]
        with pytest.raises(OSError) as refused:
            (bundle / "python3").write_text("truncated")
        assert refused.value.errno == errno.EROFS
        assert (bundle / "python3").read_text() == "#!"
    finally:
        unmount_under(tmp_path)
    assert mounts_under(bundle) == []
