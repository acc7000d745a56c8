"""A database whose disk is full: DiskFull (507 disk_full), with what to do, not a 500."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from corral.errors import DiskFull
from corral.store.db import Store
from corral.store.models import SandboxRow


def row(i: int) -> SandboxRow:
    return SandboxRow(
        id=f"sb{i:012d}", image="corral/base", runtime="runsc", state="running", vcpus=1, memory_mb=512,
        timeout=300, created_at=datetime.now(UTC), slot=i, address=f"10.0.{i // 250}.{i % 250}",
        agent_url="http://10.0.0.1:49983", meta={"note": "x" * 2000},
    )  # fmt: skip


def test_a_full_database_disk_is_disk_full(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'corral.db'}")

    def cramped(dbapi_conn: Any, _record: Any) -> None:
        # SQLite's own way to run out of room: what a full disk answers too (SQLITE_FULL).
        dbapi_conn.execute("PRAGMA max_page_count=40")

    event.listen(store.engine, "connect", cramped)
    store.engine.dispose()  # the next connection gets the limit
    with pytest.raises(DiskFull, match=r"the server's database \(.*corral.db\) cannot be written: its disk is full"):
        for i in range(1000):
            store.add_sandbox(row(i))
    assert len(store.list_sandboxes()) < 1000  # it was the database that refused, and it still reads
    store.close()
