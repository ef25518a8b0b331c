import re
from pathlib import Path

import pytest

from policies.access import Directory, PolicyFileError, read_policy_file


def test_transitive_groups() -> None:
    d = Directory(
        [
            ("user:alice", "group:finance"),
            ("group:finance", "group:staff"),
            ("group:staff", "group:everyone"),
            ("user:grace", "group:engineering"),
        ]
    )
    assert d.principals_for("user:alice") == {
        "user:alice",
        "group:finance",
        "group:staff",
        "group:everyone",
    }
    assert d.principals_for("user:grace") == {"user:grace", "group:engineering"}


def test_unknown_user_holds_only_itself() -> None:
    assert Directory([("user:a", "group:g")]).principals_for("user:nobody") == {"user:nobody"}


def test_cycles_terminate() -> None:
    d = Directory([("group:a", "group:b"), ("group:b", "group:a"), ("user:u", "group:a")])
    assert d.principals_for("user:u") == {"user:u", "group:a", "group:b"}


def test_empty_directory() -> None:
    assert Directory([]).principals_for("user:x") == {"user:x"}


MEMBERS = [
    ("user:alice", "group:support"),
    ("group:support", "group:staff"),
    ("user:bob", "group:finance"),
    ("agent:helper", "group:bots"),
]


def test_without_a_policy_file_everything_is_permitted() -> None:
    d = Directory(MEMBERS)
    assert not d.has_policy
    assert d.permits("agent:anything", "user:anyone", "act_for")


def test_an_empty_policy_file_permits_nothing() -> None:
    d = Directory(MEMBERS, rules=[])
    assert d.has_policy
    assert not d.permits("agent:helper", "user:alice", "act_for")


def test_rules_apply_to_group_members_on_both_sides() -> None:
    d = Directory(
        MEMBERS,
        rules=[
            ("agent:helper", "group:staff", "act_for"),
            ("group:bots", "source:wiki", "read"),
            ("agent:auditor", "*", "act_for"),
        ],
    )
    # alice is in support, which is in staff: nested membership of the object counts.
    assert d.permits("agent:helper", "user:alice", "act_for")
    assert not d.permits("agent:helper", "user:bob", "act_for")
    # the rule names group:bots as subject: its member agent:helper inherits it.
    assert d.permits("agent:helper", "source:wiki", "read")
    assert not d.permits("agent:helper", "source:hr", "read")
    assert not d.permits("agent:helper", "source:wiki", "act_for")
    assert d.permits("agent:auditor", "user:bob", "act_for")
    assert not d.permits("agent:other", "user:alice", "act_for")


def test_policy_file_is_parsed_with_line_numbers_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "policy.csv"
    good.write_text(
        "# who may act for whom\n"
        "p, agent:helper, group:staff, act_for\n"
        "p, agent:helper, source:wiki, read  # trailing comment\n"
        "\n"
        "g, agent:helper, group:bots\n"
    )
    policy = read_policy_file(good)
    assert policy.rules == [
        ("agent:helper", "group:staff", "act_for"),
        ("agent:helper", "source:wiki", "read"),
    ]
    assert policy.memberships == [("agent:helper", "group:bots")]
    for text, message in [
        ("p, agent:x, user:y\n", ":1: expected 'p, subject, object, action'"),
        ("\np, agent:x, user:y, delete\n", ":2: unknown action 'delete'"),
        ("x, a, b\n", ":1: a line starts with 'p'"),
        ("g, a\n", ":1: expected 'g, member, group'"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(PolicyFileError, match=re.escape(message)):
            read_policy_file(bad)
    with pytest.raises(PolicyFileError, match="cannot read"):
        read_policy_file(tmp_path / "missing.csv")
