"""Warm pools and which sandbox is waiting in one.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("pool", sa.String(300), nullable=True))
    op.create_table(
        "pools",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("misses", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pools")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("pool")
