"""The state store: SQLAlchemy over SQLite (WAL) by default, PostgreSQL by URL.

Calls are short and synchronous; the server makes them from its event loop,
which serializes writes (what SQLite wants) without a lock of our own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, and_, create_engine, event, or_, select
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

from corral.errors import DiskFull
from corral.store.models import PoolRow, SandboxRow, SnapshotRow, TemplateRow

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


FULL = ("database or disk is full", "no space left on device")
"""What SQLite and PostgreSQL say when their disk has no room left."""

FULL_BELOW = 1 << 20
"""Free bytes under which SQLite's "disk I/O error" is taken for a full disk."""


def _out_of_room(context: ExceptionContext) -> bool:
    said = str(context.original_exception).lower()
    if any(words in said for words in FULL):
        return True
    # SQLite that cannot make its WAL's shared-memory file on a full disk says only "disk I/O error".
    database = context.engine.url.database if context.engine is not None else None
    if "disk i/o error" not in said or context.engine is None or context.engine.dialect.name != "sqlite":
        return False
    folder = Path(database or ".").parent
    return folder.is_dir() and shutil.disk_usage(folder).free < FULL_BELOW


def _disk_full(context: ExceptionContext) -> None:
    """A database whose disk is full as :class:`DiskFull`: a 507 saying so, not a 500 (and at
    start, a line saying what to do)."""
    if _out_of_room(context):
        url = context.engine.url if context.engine is not None else None
        where = (url.database if url is not None and url.get_backend_name() == "sqlite" else str(url)) or "?"
        raise DiskFull(
            f"the server's database ({where}) cannot be written: its disk is full; "
            "delete snapshots, images or sandboxes, or give the data dir more room",
            details={"database": where},
        )


class Store:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        event.listen(self.engine, "handle_error", _disk_full)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.migrate()

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- sandboxes -------------------------------------------------------------

    def add_sandbox(self, row: SandboxRow) -> SandboxRow:
        with self.session() as s:
            s.add(row)
        return row

    def get_sandbox(self, sandbox_id: str) -> SandboxRow | None:
        with self.session() as s:
            return s.get(SandboxRow, sandbox_id)

    def list_sandboxes(
        self,
        *,
        states: set[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[SandboxRow]:
        """Sandboxes oldest first (``created_at``, then ``id``): those after ``after``, at most ``limit``."""
        query = select(SandboxRow).order_by(SandboxRow.created_at, SandboxRow.id)
        if states:
            query = query.where(SandboxRow.state.in_(states))
        if after is not None:
            at, last_id = after
            query = query.where(
                or_(SandboxRow.created_at > at, and_(SandboxRow.created_at == at, SandboxRow.id > last_id))
            )
        rows: list[SandboxRow] = []
        with self.session() as s:
            for row in s.scalars(query):
                if metadata and not all(row.meta.get(k) == v for k, v in metadata.items()):
                    continue
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
        return rows

    def update_sandbox(self, sandbox_id: str, **fields: Any) -> SandboxRow | None:
        with self.session() as s:
            row = s.get(SandboxRow, sandbox_id)
            if row is None:
                return None
            for key, value in fields.items():
                setattr(row, key, value)
        return row

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self.session() as s:
            row = s.get(SandboxRow, sandbox_id)
            if row is not None:
                s.delete(row)

    def used_slots(self) -> set[int]:
        with self.session() as s:
            return set(s.scalars(select(SandboxRow.slot)))

    # -- templates -------------------------------------------------------------

    def add_template(self, row: TemplateRow) -> TemplateRow:
        with self.session() as s:
            s.add(row)
        return row

    def get_template(self, name: str) -> TemplateRow | None:
        with self.session() as s:
            return s.get(TemplateRow, name)

    def list_templates(self) -> list[TemplateRow]:
        with self.session() as s:
            return list(s.scalars(select(TemplateRow).order_by(TemplateRow.name)))

    def update_template(self, name: str, **fields: Any) -> TemplateRow | None:
        with self.session() as s:
            row = s.get(TemplateRow, name)
            if row is None:
                return None
            for key, value in fields.items():
                setattr(row, key, value)
        return row

    def delete_template(self, name: str) -> None:
        with self.session() as s:
            row = s.get(TemplateRow, name)
            if row is not None:
                s.delete(row)

    # -- snapshots -------------------------------------------------------------

    def add_snapshot(self, row: SnapshotRow) -> SnapshotRow:
        with self.session() as s:
            s.add(row)
        return row

    def get_snapshot(self, snapshot_id: str) -> SnapshotRow | None:
        with self.session() as s:
            return s.get(SnapshotRow, snapshot_id)

    def list_snapshots(self, *, sandbox_id: str | None = None) -> list[SnapshotRow]:
        query = select(SnapshotRow).order_by(SnapshotRow.created_at)
        if sandbox_id:
            query = query.where(SnapshotRow.sandbox_id == sandbox_id)
        with self.session() as s:
            return list(s.scalars(query))

    def update_snapshot(self, snapshot_id: str, **fields: Any) -> SnapshotRow | None:
        with self.session() as s:
            row = s.get(SnapshotRow, snapshot_id)
            if row is None:
                return None
            for key, value in fields.items():
                setattr(row, key, value)
        return row

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self.session() as s:
            row = s.get(SnapshotRow, snapshot_id)
            if row is not None:
                s.delete(row)

    # -- pools -----------------------------------------------------------------

    def list_pools(self) -> list[PoolRow]:
        with self.session() as s:
            return list(s.scalars(select(PoolRow).order_by(PoolRow.key)))

    def get_pool(self, key: str) -> PoolRow | None:
        with self.session() as s:
            return s.get(PoolRow, key)

    def put_pool(self, key: str, size: int) -> PoolRow:
        with self.session() as s:
            row = s.get(PoolRow, key)
            if row is None:
                row = PoolRow(key=key, size=size, hits=0, misses=0)
                s.add(row)
            else:
                row.size = size
        return row

    def count_pool(self, key: str, *, hit: bool) -> None:
        with self.session() as s:
            row = s.get(PoolRow, key)
            if row is not None:
                if hit:
                    row.hits += 1
                else:
                    row.misses += 1

    def delete_pool(self, key: str) -> None:
        with self.session() as s:
            row = s.get(PoolRow, key)
            if row is not None:
                s.delete(row)
