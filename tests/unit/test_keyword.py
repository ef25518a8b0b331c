"""The keyword encoder: stable, stemmed, stop words dropped."""

from indexing.index import KEYWORD_MODEL
from indexing.keyword import KeywordEncoder


def test_the_model_name_matches_its_parameters() -> None:
    assert KeywordEncoder.name == KEYWORD_MODEL
    assert "k1.2" in KEYWORD_MODEL and "b0.75" in KEYWORD_MODEL and "avg150" in KEYWORD_MODEL


def test_stemming_and_stop_words() -> None:
    k = KeywordEncoder()
    assert k.query("budgets") == k.query("budget")  # Snowball stemmer
    assert k.query("the budget of a team") == k.query("budget team")  # stop words dropped
    assert set(k.query("budget").indices) <= set(k.document("The 2027 budget").indices)


def test_documents_saturate_term_frequency() -> None:
    k = KeywordEncoder()
    once = dict(zip(*k.document("budget plan").__dict__.values(), strict=True))
    many = dict(zip(*k.document("budget budget budget budget plan").__dict__.values(), strict=True))
    (term,) = k.query("budget").indices
    assert once[term] < many[term] < 2.2 * once[term]  # grows, but sub-linearly (k=1.2)


def test_encoding_is_deterministic_across_instances() -> None:
    text = "Expenses above 500 EUR need manager approval."
    assert KeywordEncoder().document(text) == KeywordEncoder().document(text)
