"""Who a principal is (its transitive group closure) and what policy permits, both from
one Casbin enforcer over the group graph.

A caller's principal set is ``user:<name>`` itself plus every group it belongs to directly
or through nested groups. That set is what the index pre-filter matches ACLs against, so a
group nobody was ever put in (or that we have never heard of) grants nothing.

Policy rules (``p, subject, object, action``) come from the deployment's policy file, in
Casbin's CSV form; ``g, member, group`` lines there add memberships (e.g. an agent to a
group). See ``model.conf`` for how subjects and objects match.

Imports: casbin only.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import casbin

MODEL = Path(__file__).resolve().parent / "model.conf"

# Casbin stops walking the role graph at this depth; our nesting is far shallower.
MAX_NESTING = 32

ACTIONS = ("act_for", "read", "administer", "review")


class PolicyFileError(ValueError):
    """The policy file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class PolicyFile:
    rules: list[tuple[str, str, str]] = field(default_factory=list)
    memberships: list[tuple[str, str]] = field(default_factory=list)


def read_policy_file(path: Path) -> PolicyFile:
    """Parse ``p, sub, obj, act`` and ``g, member, group`` lines; ``#`` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{path}: not UTF-8 text: {exc}") from exc
    policy = PolicyFile()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in next(csv.reader([line], skipinitialspace=True))]
        where = f"{path}:{number}"
        if cells[0] == "p":
            if len(cells) != 4 or not all(cells[1:]):
                raise PolicyFileError(f"{where}: expected 'p, subject, object, action'")
            if cells[3] not in ACTIONS:
                raise PolicyFileError(
                    f"{where}: unknown action {cells[3]!r}; known: {', '.join(ACTIONS)}"
                )
            policy.rules.append((cells[1], cells[2], cells[3]))
        elif cells[0] == "g":
            if len(cells) != 3 or not all(cells[1:]):
                raise PolicyFileError(f"{where}: expected 'g, member, group'")
            policy.memberships.append((cells[1], cells[2]))
        else:
            raise PolicyFileError(f"{where}: a line starts with 'p' (a rule) or 'g' (a member)")
    return policy


class Directory:
    """Group memberships, queried for a principal's transitive closure, and policy rules.

    ``rules`` is ``None`` when the deployment has no policy file: then nothing narrows
    what the agent files declare, and ``permits`` answers ``True``. With a policy file,
    whatever it does not allow is refused.
    """

    def __init__(
        self,
        memberships: Iterable[tuple[str, str]],
        rules: Iterable[tuple[str, str, str]] | None = None,
    ) -> None:
        """``memberships`` are ``(member, group)`` pairs: ``("user:alice", "group:finance")``."""
        self._enforcer = casbin.Enforcer(str(MODEL))
        self._enforcer.get_role_manager().max_hierarchy_level = MAX_NESTING
        links = [[member, group] for member, group in memberships]
        if links:
            self._enforcer.add_grouping_policies(links)
        self.has_policy = rules is not None
        policies = [list(rule) for rule in rules or ()]
        if policies:
            self._enforcer.add_policies(policies)

    def principals_for(self, principal: str) -> frozenset[str]:
        """``principal`` plus every group it belongs to, transitively."""
        roles = self._enforcer.get_implicit_roles_for_user(principal)
        return frozenset([principal, *roles])

    def groups(self) -> frozenset[str]:
        return frozenset(self._enforcer.get_all_roles())

    def permits(self, subject: str, obj: str, action: str) -> bool:
        """Whether policy allows ``subject`` to ``action`` on ``obj``; always, without a
        policy file."""
        if not self.has_policy:
            return True
        return bool(self._enforcer.enforce(subject, obj, action))
