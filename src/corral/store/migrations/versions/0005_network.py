"""Sandboxes' egress policies and published ports.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("network", sa.JSON, nullable=True))
        batch.add_column(sa.Column("ports", sa.JSON, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("auto_publish", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("auto_publish")
        batch.drop_column("ports")
        batch.drop_column("network")
