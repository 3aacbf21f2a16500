"""The lexicon floor under a model's supplements and the event gazetteer under its events
(extraction.rules.with_lexicon_floor, with_event_floor)."""

from __future__ import annotations

from pathlib import Path

from extraction.corpus import Entity
from extraction.lexicon import Lexicon
from extraction.rules import (
    EventGazetteer,
    lexicon_mentions,
    product_mentions,
    with_event_floor,
    with_lexicon_floor,
    without_non_products,
)

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


def test_event_gazetteer_finds_whole_phrases_case_blind_longest_first() -> None:
    gazetteer = EventGazetteer(["leg cramps", "cramps", "GI upset", "ab"])
    text = "Leg cramps and gi upset; no scramps, cramps at night."
    assert [e.text for e in gazetteer.find(text)] == ["Leg cramps", "gi upset", "cramps"]
    assert all(e.type == "event" and text[e.start : e.end] == e.text for e in gazetteer.find(text))
    assert EventGazetteer([]).find(text) == []  # no phrases: nothing found, no error


def test_acronyms_are_found_only_as_written() -> None:
    gazetteer = EventGazetteer(["ALL", "PAD", "Hives", "HIVES"])
    text = "ALL in remission; all meds reviewed, heating pad for PAD, hives resolved."
    assert [e.text for e in gazetteer.find(text)] == ["ALL", "PAD", "hives"]


def test_gazetteer_events_fill_in_beside_a_supplement_without_moving_the_models() -> None:
    gazetteer = EventGazetteer(["leg cramps", "insomnia", "sleep"])
    text = "Takes magnesium for leg cramps and melatonin for insomnia."
    model = [ent(text, "supplement", "magnesium"), ent(text, "event", "cramps")]
    out = with_event_floor(model, gazetteer.find(text))
    assert spans(out) == [
        ("supplement", "magnesium"),
        ("event", "cramps"),  # the model's boundaries stand over the gazetteer's
        ("event", "insomnia"),  # missed by the model, added
    ]
    text = "Insomnia is better."
    assert with_event_floor([], gazetteer.find(text)) == []  # no supplement: no events
    text = "Melatonin for sleep."
    tagged = [ent(text, "supplement", "Melatonin"), ent(text, "supplement", "sleep")]
    assert with_event_floor(tagged, gazetteer.find(text)) == tagged  # tagged otherwise: kept


def test_supplements_in_a_non_product_context_are_dropped() -> None:
    text = "Switch IV thiamine to oral thiamine; vitamin D level low; takes fish oil for dry eyes."
    model = [
        ent(text, "supplement", "IV thiamine"),
        ent(text, "supplement", "oral thiamine"),
        ent(text, "supplement", "vitamin D"),
        ent(text, "supplement", "fish oil"),
        ent(text, "event", "dry eyes"),
    ]
    assert spans(without_non_products(model, *lexicon_mentions(LEXICON, text))) == [
        ("supplement", "oral thiamine"),  # overlaps a product mention: kept
        ("supplement", "fish oil"),
        ("event", "dry eyes"),  # events are not the lexicon's business
    ]
    text = "Takes zorbex powder daily."  # a name the lexicon does not know: not its call
    unknown = [ent(text, "supplement", "zorbex powder")]
    assert without_non_products(unknown, *lexicon_mentions(LEXICON, text)) == unknown
