from dataclasses import dataclass

from context_server.packing import Shingles, jaccard, pack, shingles


@dataclass
class Item:
    name: str
    tokens: int
    shingles: Shingles


def item(name: str, text: str, tokens: int) -> Item:
    return Item(name, tokens, shingles(text))


def test_near_duplicates_keep_the_better_scored_copy() -> None:
    text = "every employee has twenty seven days of paid leave per year"
    assert jaccard(shingles(text), shingles(text + " really")) >= 0.8
    assert jaccard(shingles(text), shingles("the office opens at nine every day")) == 0.0
    kept, dropped = pack([item("a", text, 10), item("b", text + " really", 10)], budget=100)
    assert [k.name for k in kept] == ["a"] and dropped == 1


def test_greedy_packing_skips_what_does_not_fit_and_goes_on() -> None:
    items = [
        item("big", "alpha beta gamma delta", 80),
        item("too-big", "epsilon zeta eta theta", 50),
        item("small", "iota kappa lambda mu", 15),
    ]
    kept, dropped = pack(items, budget=100)
    assert [k.name for k in kept] == ["big", "small"] and dropped == 0
    assert pack(items, budget=1) == ([], 0)
