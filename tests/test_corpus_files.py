"""The shipped corpus, notes and lexicon validate and keep the coverage issue 3 promises."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from extraction.corpus import Record, load_corpus
from extraction.corpus_build import NEAR_DUP_JACCARD, _tokens
from extraction.corpus_stats import compute_stats
from extraction.evaluate_notes import load_gold_notes
from extraction.lexicon import Lexicon

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"
LEXICON = CORPUS.parent / "lexicon" / "supplements.tsv"


@pytest.fixture(scope="module")
def train() -> list[Record]:
    return load_corpus(CORPUS / "train.jsonl")


@pytest.fixture(scope="module")
def dev() -> list[Record]:
    return load_corpus(CORPUS / "dev.jsonl")


def test_sizes(train: list[Record], dev: list[Record]) -> None:
    assert len(train) >= 2000
    assert len(dev) >= 300


@pytest.mark.parametrize("split", ["train", "dev"])
def test_label_balance_and_shares(split: str, train: list[Record], dev: list[Record]) -> None:
    stats = compute_stats(train if split == "train" else dev)
    assert (
        min(stats.share(stats.usage, ("continue", "start", "discontinue", "uncertain")).values())
        >= 0.15
    )
    rel = stats.share(stats.relations, ("indication", "adverse_event", "not_related"))
    assert min(rel.values()) >= 0.15
    no_supp = stats.no_supplement / stats.records
    multi = stats.multi_supplement / stats.records
    assert 0.10 <= no_supp <= 0.20
    assert multi >= 0.33


def test_distinct_supplements(train: list[Record], dev: list[Record]) -> None:
    names = {e.normalized for r in train + dev for e in r.supplements}
    assert len(names) >= 120


def test_guideline_invariants(train: list[Record], dev: list[Record]) -> None:
    for rec in train + dev:
        if not rec.supplements:
            assert not rec.entities, f"{rec.id}: events without a supplement"
        spans = sorted((e.start, e.end) for e in rec.entities)
        assert all(a[1] <= b[0] for a, b in pairwise(spans)), f"{rec.id}: overlap"
        for ent in rec.supplements:
            assert ent.normalized and ent.normalized == ent.normalized.lower(), rec.id


def test_no_near_duplicates_between_train_and_dev(train: list[Record], dev: list[Record]) -> None:
    train_sets = [_tokens(r.text) for r in train]
    for rec in dev:
        toks = _tokens(rec.text)
        for other in train_sets:
            union = len(toks | other)
            assert not union or len(toks & other) / union < NEAR_DUP_JACCARD, rec.id


def test_notes_dev() -> None:
    notes = load_gold_notes(CORPUS / "notes-dev.jsonl")
    assert len(notes) == 25
    for note_id, note in notes.items():
        words = len(note["text"].split())
        assert 200 <= words <= 700, note_id
        for fact in note["expected_relations"]:
            assert fact["relation"] in ("indication", "adverse_event"), note_id
            assert fact["event"].lower() in note["text"].lower(), note_id
        for supp in note["expected_supplements"]:
            assert supp["status"] in ("continue", "start", "discontinue", "uncertain"), note_id
    first = json.loads((CORPUS / "notes-dev.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"id", "note_type", "text", "expected_supplements", "expected_relations"}


def test_lexicon_covers_corpus_names(train: list[Record], dev: list[Record]) -> None:
    lexicon = Lexicon.load(LEXICON)
    names = {e.normalized for r in train + dev for e in r.supplements}
    missing = sorted(n for n in names if n not in lexicon)
    assert not missing
    assert all(e.unii == "" or e.code_source for e in lexicon.entries.values())
