"""The lexicon floor under a model's supplements (extraction.rules.with_lexicon_floor)."""

from __future__ import annotations

from pathlib import Path

from extraction.corpus import Entity
from extraction.lexicon import Lexicon
from extraction.rules import product_mentions, with_lexicon_floor

REPO = Path(__file__).resolve().parent.parent
LEXICON = Lexicon.load(REPO / "data/lexicon/supplements.tsv")


def ent(text: str, etype: str, surface: str) -> Entity:
    start = text.index(surface)
    return Entity("", etype, start, start + len(surface), surface)


def spans(found: list[Entity]) -> list[tuple[str, str]]:
    return [(e.type, e.text) for e in found]


def test_products_exclude_levels_deficiencies_and_diets() -> None:
    text = "Vitamin D level was low; takes vitamin D 2000 IU and magnesium for cramps."
    assert [e.text for e in product_mentions(LEXICON, text)] == ["vitamin D", "magnesium"]
    assert product_mentions(LEXICON, "Iron deficiency noted; dietary fiber advised.") == []


def test_missed_products_are_added_and_boundaries_snapped() -> None:
    text = "Takes fish oil 1 g daily and magnesium for leg cramps."
    model = [ent(text, "supplement", "fish oil 1 g"), ent(text, "event", "leg cramps")]
    out = with_lexicon_floor(model, product_mentions(LEXICON, text))
    assert spans(out) == [
        ("supplement", "fish oil"),  # snapped to the lexicon's span
        ("supplement", "magnesium"),  # missed by the model, added
        ("event", "leg cramps"),
    ]
    assert out[0].normalized == "fish oil"


def test_text_the_model_tagged_otherwise_is_left_alone() -> None:
    text = "Melatonin gummies caused vivid dreams."
    event = Entity("", "event", 0, 17, "Melatonin gummies")  # a model's (wrong) decision
    products = product_mentions(LEXICON, text)
    assert with_lexicon_floor([event], products) == [event]  # not turned into a supplement
    text = "Stopped fish oil."
    two = [ent(text, "supplement", "fish"), ent(text, "event", "oil")]
    products = product_mentions(LEXICON, text)
    assert with_lexicon_floor(two, products) == two  # ambiguous overlap: kept as the model said
