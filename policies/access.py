"""Who a principal is: its transitive group closure, computed with Casbin's role graph.

A caller's principal set is ``user:<name>`` itself plus every group it belongs to directly
or through nested groups. That set is what the index pre-filter matches ACLs against, so a
group nobody was ever put in (or that we have never heard of) grants nothing.

Imports: casbin only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import casbin

MODEL = Path(__file__).resolve().parent / "model.conf"

# Casbin stops walking the role graph at this depth; our nesting is far shallower.
MAX_NESTING = 32


class Directory:
    """Group memberships, queried for a principal's transitive closure."""

    def __init__(self, memberships: Iterable[tuple[str, str]]) -> None:
        """``memberships`` are ``(member, group)`` pairs: ``("user:alice", "group:finance")``."""
        self._enforcer = casbin.Enforcer(str(MODEL))
        self._enforcer.get_role_manager().max_hierarchy_level = MAX_NESTING
        rules = [[member, group] for member, group in memberships]
        if rules:
            self._enforcer.add_grouping_policies(rules)

    def principals_for(self, principal: str) -> frozenset[str]:
        """``principal`` plus every group it belongs to, transitively."""
        roles = self._enforcer.get_implicit_roles_for_user(principal)
        return frozenset([principal, *roles])

    def groups(self) -> frozenset[str]:
        return frozenset(self._enforcer.get_all_roles())
