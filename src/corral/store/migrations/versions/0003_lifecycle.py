"""Pause, hibernation and timeouts of sandboxes; snapshots.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("on_timeout", sa.String(16), nullable=False, server_default="kill"))
        batch.add_column(sa.Column("auto_pause", sa.Integer, nullable=True))
        batch.add_column(sa.Column("remaining", sa.Float, nullable=True))
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("image_id", sa.String(64), nullable=False),
        sa.Column("template", sa.String(128), nullable=True),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("envs", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("remaining")
        batch.drop_column("auto_pause")
        batch.drop_column("on_timeout")
