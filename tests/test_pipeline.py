"""Sentence splitting with offsets, note-level aggregation (§7), the note pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from extraction.aggregate import aggregate, status_detail
from extraction.api import Span
from extraction.corpus import Entity, Record, Relation, Usage
from extraction.lexicon import Lexicon
from extraction.pipeline import NotePipeline
from extraction.rules import RulesBackend
from extraction.sentences import check_text, split_sentences

REPO = Path(__file__).resolve().parent.parent
NOTE = """HPI: 64 yo F on warfarin. She takes fish oil 1 g p.o. daily for high triglycerides.
Dr. Lee advised stopping ginkgo after easy bruising!
MEDICATIONS:
- Magnesium glycinate 400 mg qhs
PLAN: Hold fish oil 7 days before surgery. Start vitamin D 2000 IU daily."""


def test_sentences_keep_offsets_and_respect_abbreviations() -> None:
    sents = split_sentences(NOTE)
    assert all(NOTE[s.start : s.end] == s.text for s in sents)
    texts = [s.text for s in sents]
    assert "Dr. Lee advised stopping ginkgo after easy bruising!" in texts
    assert any(t.startswith("She takes fish oil 1 g p.o. daily") for t in texts)
    assert "- Magnesium glycinate 400 mg qhs" in texts


def test_long_sentences_are_windowed() -> None:
    text = "fish oil, " * 200
    pieces = split_sentences(text, max_chars=100)
    assert all(len(p.text) <= 100 for p in pieces)
    assert all(text[p.start : p.end] == p.text for p in pieces)


@pytest.mark.parametrize(("value", "reason"), [("", "empty"), ("  \n", "empty"), ("a\x00b", "NUL")])
def test_bad_text_is_refused_with_reason(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_text(value, 1000)


def test_oversized_text_is_truncated_and_flagged() -> None:
    text, cut = check_text("x" * 50, 10)
    assert (len(text), cut) == (10, True)


def _rec(text: str, specs: list[tuple[str, str, str | None]]) -> Record:
    ents, usage, pos = [], [], 0
    for i, (mention, etype, status) in enumerate(specs, 1):
        start = text.index(mention, pos)
        pos = start + len(mention)
        ents.append(
            Entity(
                f"T{i}",
                etype,
                start,
                pos,
                mention,
                mention.lower() if etype == "supplement" else None,
            )
        )
        if status:
            usage.append(Usage(f"T{i}", status))
    return Record("n", text, tuple(ents), (), tuple(usage))


def test_latest_definite_status_wins_uncertain_only_if_all_uncertain() -> None:
    text = "Allergy: melatonin. Takes fish oil. Asked about melatonin. Hold fish oil pre-op."
    rec = _rec(
        text,
        [("melatonin", "supplement", "uncertain"), ("fish oil", "supplement", "continue"),
         ("melatonin", "supplement", "uncertain"), ("fish oil", "supplement", "discontinue")],
    )  # fmt: skip
    supps, _ = aggregate(rec)
    status = {s.normalized: s.status for s in supps}
    assert status == {"melatonin": "uncertain", "fish oil": "discontinue"}
    fish = next(s for s in supps if s.normalized == "fish oil")
    assert len(fish.mentions) == 2 and fish.status_detail == "stopped"


def test_facts_are_distinct_triples() -> None:
    text = "Ginkgo caused bruising; ginkgo stopped for bruising."
    rec = _rec(
        text,
        [("Ginkgo", "supplement", "continue"), ("bruising", "event", None),
         ("ginkgo", "supplement", "discontinue"), ("bruising", "event", None)],
    )  # fmt: skip
    rec = Record(
        rec.id,
        text,
        rec.entities,
        (Relation("T1", "T2", "adverse_event"), Relation("T3", "T4", "adverse_event")),
        rec.usage,
    )
    _, facts = aggregate(rec)
    assert [(f.supplement, f.relation, f.event) for f in facts] == [
        ("ginkgo", "adverse_event", "bruising")
    ]


@pytest.mark.parametrize(
    ("text", "status", "detail"),
    [
        ("Recommend starting vitamin D 2000 IU daily.", "start", "planned"),
        ("Started vitamin D last week.", "start", "started"),
        ("Denies vitamin D use.", "discontinue", "denied"),
        ("Stopped vitamin D.", "discontinue", "stopped"),
        ("Takes vitamin D.", "continue", None),
    ],
)
def test_status_detail_splits_planned_and_denied(
    text: str, status: str, detail: str | None
) -> None:
    start = text.index("vitamin D")
    assert status_detail(text, status, Span(start, start + 9)) == detail


@pytest.fixture(scope="module")
def rules_pipeline() -> NotePipeline:
    lexicon = Lexicon.load(REPO / "data/lexicon/supplements.tsv")
    backend = RulesBackend(lexicon, ["high triglycerides", "easy bruising", "bruising"])
    return NotePipeline(backend, max_sentence_chars=300)


def test_rules_pipeline_on_a_note(rules_pipeline: NotePipeline) -> None:
    (result,) = rules_pipeline.extract([NOTE])
    rec = result.record
    for ent in rec.entities:
        assert NOTE[ent.start : ent.end] == ent.text  # offsets into the whole note
    names = {s.normalized: s.status for s in result.supplements}
    assert {"fish oil", "ginkgo", "magnesium", "vitamin d"} <= set(names)
    assert names["fish oil"] == "discontinue"  # the plan's hold is the latest mention
    assert result.sentences >= 5
    out = result.to_json()
    assert out["supplements"] and "facts" in out


def test_pipeline_names_the_bad_input(rules_pipeline: NotePipeline) -> None:
    with pytest.raises(ValueError, match="input 1: text is empty"):
        rules_pipeline.extract(["Takes fish oil.", "   "])
