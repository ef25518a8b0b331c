import pytest

from connectors.globs import glob_match


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("finance/**", "finance/budget.xlsx", True),
        ("finance/**", "finance/2027/q1/budget.xlsx", True),
        ("finance/**", "financet/budget.xlsx", False),
        ("finance/**", "other/finance/budget.xlsx", False),
        ("finance/payroll-*", "finance/payroll-notes.txt", True),
        ("finance/payroll-*", "finance/sub/payroll-notes.txt", False),
        ("**", "a.md", True),
        ("**", "deep/er/a.md", True),
        ("**/*.pdf", "a.pdf", True),
        ("**/*.pdf", "x/y/a.pdf", True),
        ("**/*.pdf", "x/y/a.pdfx", False),
        ("*.md", "a.md", True),
        ("*.md", "dir/a.md", False),
        ("doc?.txt", "doc1.txt", True),
        ("doc?.txt", "doc/.txt", False),
        ("[ab].txt", "a.txt", True),
        ("[!ab].txt", "a.txt", False),
        ("people/dana-*.md", "people/dana-private-notes.md", True),
        ("a+b/(x).md", "a+b/(x).md", True),  # regex metacharacters are literal
        ("finance/**", "finance/q4\nboard.txt", True),  # a newline is a letter
        ("*", "a\nb", True),
        ("*.txt", "a.txt\n", False),  # '$' would match before the final newline
        ("finance/**", "finance/..\n", True),  # wcmatch refuses this legal name
        ("?", "\u2028", True),
        ("*", "caf\udce9", True),  # a byte that is not UTF-8, as os gives it
        ("[!ab]", "/", False),  # a set never matches the folder separator
        ("x[!ab]y", "x/y", False),
        ("[a-c].md", "b.md", True),
        ("[]a].md", "].md", True),  # ']' first in a set is literal
        ("a\\b", "a\\b", True),  # a backslash is a letter, not an escape
        ("*", ".hidden", True),  # the default exclude '**/.*' relies on it
        ("Finance/**", "finance/a", False),  # case-sensitive
    ],
)
def test_glob_match(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


@pytest.mark.parametrize("pattern", ["", "/abs/**", "bad[glob", "x[]", "x[!]", "[z-a]"])
def test_bad_globs_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="bad glob"):
        glob_match(pattern, "x")
