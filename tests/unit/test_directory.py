from policies.access import Directory


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
