"""Which image each sandbox runs on, and templates.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("image_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("template", sa.String(128), nullable=True))
    op.create_table(
        "templates",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("dockerfile", sa.Text, nullable=False),
        sa.Column("build_args", sa.JSON, nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=True),
        sa.Column("memory_mb", sa.Integer, nullable=True),
        sa.Column("start_cmd", sa.Text, nullable=True),
        sa.Column("ready_cmd", sa.Text, nullable=True),
        sa.Column("ready_timeout", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("image_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("build_log", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("templates")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("template")
        batch.drop_column("image_id")
