"""schedules on sources; group memberships remember their origin (file or source)

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("schedule", sa.String(length=100), nullable=True))
    # The primary key gains origin (a membership may be asserted by several origins): the
    # table is rebuilt, which works the same on SQLite and PostgreSQL; existing rows came
    # from the principals file.
    op.create_table(
        "group_memberships_new",
        sa.Column("group", sa.String(length=255), nullable=False),
        sa.Column("member", sa.String(length=255), nullable=False),
        sa.Column("origin", sa.String(length=110), nullable=False),
        sa.ForeignKeyConstraint(["group"], ["principals.name"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member"], ["principals.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group", "member", "origin"),
    )
    op.execute(
        'INSERT INTO group_memberships_new ("group", member, origin) '
        "SELECT \"group\", member, 'principals' FROM group_memberships"
    )
    op.drop_table("group_memberships")
    op.rename_table("group_memberships_new", "group_memberships")


def downgrade() -> None:
    op.create_table(
        "group_memberships_old",
        sa.Column("group", sa.String(length=255), nullable=False),
        sa.Column("member", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["group"], ["principals.name"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member"], ["principals.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group", "member"),
    )
    op.execute(
        'INSERT INTO group_memberships_old ("group", member) '
        'SELECT DISTINCT "group", member FROM group_memberships'
    )
    op.drop_table("group_memberships")
    op.rename_table("group_memberships_old", "group_memberships")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("schedule")
