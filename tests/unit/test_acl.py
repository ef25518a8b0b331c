import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.base import PUBLIC, Acl, check_principal

names = st.sampled_from(["alice", "bob", "carol", "finance", "eng", "x.y-z"])
users = st.lists(names.map(lambda n: f"user:{n}"), max_size=3)
groups = st.lists(names.map(lambda n: f"group:{n}"), max_size=3)


def test_principals_are_validated() -> None:
    assert check_principal("user:alice@example.com") == "user:alice@example.com"
    for bad in ["alice", "user:", "role:admin", "user:al ice", "group:*"]:
        with pytest.raises(ValueError):
            check_principal(bad)


def test_acl_rejects_principals_in_the_wrong_field() -> None:
    with pytest.raises(ValidationError):
        Acl(users=("group:finance",))
    with pytest.raises(ValidationError):
        Acl(groups=("user:alice",))


def test_acl_is_normalised_so_equal_acls_compare_equal() -> None:
    a = Acl.of(["group:b", "user:x", "group:a", "group:a"], deny=["user:z"])
    b = Acl(users=("user:x",), groups=("group:a", "group:b"), deny=("user:z",))
    assert a == b
    assert Acl.model_validate(a.model_dump(mode="json")) == a


def test_private_and_public() -> None:
    assert Acl.private("user:dana").grants({"user:dana"})
    assert not Acl.private("user:dana").grants({"user:alice", "group:finance"})
    assert Acl(public=True).grants(set())
    assert PUBLIC in Acl(public=True).allow_tokens()
    assert not Acl().grants({"user:alice"})  # an empty ACL grants nobody


@given(users, groups, st.booleans(), users, users, groups)
def test_grants_is_allow_and_not_deny(
    allow_users: list[str],
    allow_groups: list[str],
    public: bool,
    deny: list[str],
    caller_user: list[str],
    caller_groups: list[str],
) -> None:
    acl = Acl(users=tuple(allow_users), groups=tuple(allow_groups), public=public, deny=tuple(deny))
    held = set(caller_user) | set(caller_groups)
    allowed = public or bool(held & (set(allow_users) | set(allow_groups)))
    assert acl.grants(held) == (allowed and not (held & set(deny)))
