"""Encoder token alignment: subword <-> character offsets, BIO labels and decoding, markers.

Uses the real all-MiniLM-L6-v2 tokenizer (WordPiece, lower-casing, accent stripping).
"""

from __future__ import annotations

from typing import Any

import pytest

from extraction.corpus import load_corpus
from extraction.encoder.model import default_base_dir
from extraction.encoder.tokens import (
    EV_CLOSE,
    EV_OPEN,
    IGNORE,
    NER_LABELS,
    SUP_CLOSE,
    SUP_OPEN,
    decode,
    encode,
    mark,
    misaligned,
    token_labels,
    word_labels,
)
from tests.conftest import REPO

OUT, BS, IS, BE, IE = range(5)


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_base_dir()), local_files_only=True)


def words(text: str, tok: Any) -> list[str]:
    return [text[s:e] for s, e in encode(tok, text, 64).words]


def test_words_map_back_to_the_original_characters(tok: Any) -> None:
    text = "Took D3+K2 and Échinacea; cholecalciferol 50,000 units."
    enc = encode(tok, text, 64)
    assert [text[s:e] for s, e in enc.words] == [
        "Took", "D3", "+", "K2", "and", "Échinacea", ";", "cholecalciferol",
        "50", ",", "000", "units", ".",
    ]  # fmt: skip
    # "cholecalciferol" is several subwords but one word; only its first subword is labelled.
    first, last = enc.word_tokens[7]
    assert last - first >= 2
    labels = token_labels(enc, word_labels(enc, [("supplement", 26, 41)]))
    assert labels[first] == BS and all(x == IGNORE for x in labels[first + 1 : last + 1])
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS], [SEP]
    assert not enc.truncated


def test_adjacent_entities_stay_separate(tok: Any) -> None:
    text = "glucosamine/chondroitin and D3 K2 daily"
    spans = [
        ("supplement", 0, 11), ("supplement", 12, 23),
        ("supplement", 28, 30), ("supplement", 31, 33),
    ]  # fmt: skip
    enc = encode(tok, text, 64)
    labels = word_labels(enc, spans)
    # glucosamine / chondroitin and D3 K2 daily
    assert labels == [BS, OUT, BS, OUT, BS, BS, OUT]
    assert decode(enc, labels) == spans


def test_decoding_is_lenient_and_never_overlaps(tok: Any) -> None:
    text = "fish oil for dry eyes"
    enc = encode(tok, text, 64)
    assert decode(enc, [BS, IS, OUT, BE, IE]) == [("supplement", 0, 8), ("event", 13, 21)]
    # I- without a B- opens a span; a type switch inside a span starts a new one.
    assert decode(enc, [IS, IS, OUT, IE, IE]) == [("supplement", 0, 8), ("event", 13, 21)]
    assert decode(enc, [BS, IE, OUT, OUT, OUT]) == [("supplement", 0, 4), ("event", 5, 8)]
    assert decode(enc, [BE, BE, OUT, OUT, OUT]) == [("event", 0, 4), ("event", 5, 8)]
    assert decode(enc, [OUT] * 5) == []


def test_overlapping_gold_candidates_keep_the_longer_span(tok: Any) -> None:
    text = "Nature Made fish oil daily"
    enc = encode(tok, text, 64)
    labels = word_labels(enc, [("supplement", 12, 20), ("supplement", 0, 20)])
    assert decode(enc, labels) == [("supplement", 0, 20)]


def test_boundary_inside_a_word_widens_to_the_word(tok: Any) -> None:
    text = "Vitamin-D3 daily"  # "Vitamin", "-", "D3", "daily"
    enc = encode(tok, text, 64)
    spans = [("supplement", 0, 9)]  # ends inside "D3"
    assert misaligned(enc, spans) == 1
    assert decode(enc, word_labels(enc, spans)) == [("supplement", 0, 10)]


def test_every_gold_span_of_the_dev_corpus_round_trips(tok: Any) -> None:
    records = load_corpus(REPO / "data" / "corpus" / "dev.jsonl")
    for rec in records:
        enc = encode(tok, rec.text, 128)
        spans = sorted(((e.type, e.start, e.end) for e in rec.entities), key=lambda s: s[1])
        assert misaligned(enc, spans) == 0, rec.id
        assert decode(enc, word_labels(enc, spans)) == spans, rec.id


def test_truncation_is_reported_and_spans_beyond_it_are_dropped(tok: Any) -> None:
    text = "melatonin " * 30 + "fish oil"
    enc = encode(tok, text, 16)
    assert enc.truncated
    assert decode(enc, word_labels(enc, [("supplement", len(text) - 8, len(text))])) == []
    assert mark(enc, (len(text) - 8, len(text)), [], filler=100) is None


def test_markers_wrap_the_supplement_and_events(tok: Any) -> None:
    text = "Stopped ginkgo after easy bruising"
    enc = encode(tok, text, 64)
    m = mark(enc, (8, 14), [(21, 34), (8, 14)], filler=100)
    assert m is not None
    names = tok.convert_ids_to_tokens(list(m.input_ids))
    kinds = list(m.markers)
    shown = [f"<{k}>" if k else n for n, k in zip(names, kinds, strict=True)]
    assert shown == [
        "[CLS]", "stopped", f"<{SUP_OPEN}>", "gin", "##k", "##go", f"<{SUP_CLOSE}>",
        "after", f"<{EV_OPEN}>", "easy", "br", "##uising", f"<{EV_CLOSE}>", "[SEP]",
    ]  # fmt: skip
    assert m.markers[m.sup_head] == SUP_OPEN
    first_event, overlapping = m.event_heads
    assert first_event is not None and m.markers[first_event] == EV_OPEN
    assert overlapping is None  # an event on the supplement's own span is not marked
    assert kinds.count(EV_OPEN) == 1 and kinds.count(SUP_CLOSE) == 1


def test_label_inventory() -> None:
    assert NER_LABELS == ("O", "B-supplement", "I-supplement", "B-event", "I-event")
