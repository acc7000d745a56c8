"""Each sandbox's disk size (and the size a snapshot's sandbox had).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("sandboxes", "snapshots"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("disk_mb", sa.Integer, nullable=True))


def downgrade() -> None:
    for table in ("snapshots", "sandboxes"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("disk_mb")
