"""Guidelines §1 hard negatives by context (extraction.product_context), and the lexicon
matching names written with periods."""

from __future__ import annotations

from pathlib import Path

import pytest

from extraction.lexicon import Lexicon
from extraction.product_context import is_product
from extraction.rules import lexicon_mentions, product_mentions

REPO = Path(__file__).resolve().parent.parent
LEXICON = Lexicon.load(REPO / "data/lexicon/supplements.tsv")


def verdict(text: str, name: str) -> bool:
    start = text.index(name)
    return is_product(text, start, start + len(name))


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Labs today: B12 233, TSH 3.4, ferritin 19.", "B12"),
        ("Magnesium 1.5 on the morning panel, repleting.", "Magnesium"),
        ("Folate >20 and B12 normal.", "Folate"),
        ("Folate >20 and B12 normal.", "B12"),
        ("Iron studies pending; recheck in 6 weeks.", "Iron"),
        ("Vitamin D and B12 levels sent with the CBC.", "Vitamin D"),
        ("Likes cranberry juice with breakfast.", "cranberry"),
        ("Has been cooking with turmeric and garlic since the diagnosis.", "garlic"),
        ("Potassium 40 mEq IV over 4 hours for K 2.8.", "Potassium"),
        ("TPN running with MVI and trace elements.", "MVI"),
        ("Uses a biotin shampoo for thinning hair.", "biotin"),
        ("Puts lavender essential oil in a diffuser at night.", "lavender"),
        ("Prior reaction to iodine contrast (urticaria).", "iodine"),
        ("History of calcium oxalate stones.", "calcium"),
        ("Weight loss from iodine-induced thyrotoxicosis.", "iodine"),
    ],
)
def test_non_product_contexts(text: str, name: str) -> None:
    assert not verdict(text, name)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Takes vitamin D3 50,000 IU weekly for 8 weeks.", "vitamin D3"),
        ("Fish oil 1200 mg daily and CoQ10 100 mg.", "Fish oil"),
        ("Magnesium glycinate 400 mg at bedtime for cramps.", "Magnesium glycinate"),
        ("Drinks aloe vera juice every morning for reflux.", "aloe vera"),
        ("Stopped her iron 2 wks ago because of constipation.", "iron"),
        ("Asked whether to keep taking probiotics with the IV antibiotics.", "probiotics"),
        ("Applies a barrier cream and takes zinc daily to help the ulcer heal.", "zinc"),
        # unit-less doses and ranges are not lab values
        ("Home meds: magnesium 400; calcium 600; melatonin 3.", "magnesium"),
        ("Vitamin D 1000 - continue, recheck in spring.", "Vitamin D"),
        ("Melatonin 0.5-1 mg at bedtime as needed.", "Melatonin"),
        # a stage is not a route; other IV treatments leave oral products alone
        ("Stage IV CKD, takes a renal vitamin daily and vitamin D 1000 IU.", "vitamin D"),
        ("Got IV fluids overnight and continued her turmeric.", "turmeric"),
        ("Started iron 325 mg PO daily after the IV iron course.", "iron"),
        ("TPN stopped and she resumed her multivitamin.", "multivitamin"),
    ],
)
def test_products_taken_stay(text: str, name: str) -> None:
    assert verdict(text, name)


def test_a_route_change_ends_the_iv_context() -> None:
    text = "Thiamine 200 mg IV x3 days, then thiamine 100 mg by mouth daily."
    oral = text.rindex("thiamine")
    assert not verdict(text, "Thiamine")
    assert is_product(text, oral, oral + len("thiamine"))


def test_mentions_split_into_products_and_others() -> None:
    text = "Ferritin low, iron sat 9%: start ferrous sulfate 325 mg daily, no cranberry juice."
    products, others = lexicon_mentions(LEXICON, text)
    assert [e.text for e in products] == ["ferrous sulfate"]
    assert [e.text for e in others] == ["iron", "cranberry"]


def test_names_with_periods_are_found() -> None:
    text = "Started St. John's wort 300 mg TID for low mood."
    assert [(e.text, e.normalized) for e in product_mentions(LEXICON, text)] == [
        ("St. John's wort", "st john's wort")
    ]
