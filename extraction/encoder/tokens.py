"""Subword <-> character alignment, word-level BIO labels and entity markers.

Labels live on words (the tokenizer's pre-tokenised units: whitespace and punctuation
split), predicted on each word's first subword. Entity boundaries in the corpus fall on
those units, so decoded spans map back to exact character offsets; a gold boundary inside
a word widens the span to the whole word (counted by :func:`misaligned`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NER_LABELS = ("O", "B-supplement", "I-supplement", "B-event", "I-event")
IGNORE = -100  # label of tokens that carry no prediction (specials, later subwords)
# Marker kinds (0 = ordinary token): the supplement under classification, and events.
SUP_OPEN, SUP_CLOSE, EV_OPEN, EV_CLOSE = 1, 2, 3, 4

Span = tuple[str, int, int]  # (entity type, start, end), end exclusive


@dataclass(frozen=True)
class Encoding:
    """One tokenised text: ids, and for every word its character span and token range."""

    input_ids: tuple[int, ...]
    words: tuple[tuple[int, int], ...]  # char (start, end) per word
    word_tokens: tuple[tuple[int, int], ...]  # token (first, last) per word, inclusive
    truncated: bool


def encode(tokenizer: Any, text: str, max_length: int) -> Encoding:
    """Tokenise with offsets (a fast tokenizer is required for word ids and offsets)."""
    enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_length)
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    words: list[tuple[int, int]] = []
    word_tokens: list[tuple[int, int]] = []
    last_word: int | None = None
    for tok_idx, word in enumerate(enc.word_ids()):
        if word is None:
            continue
        start, end = offsets[tok_idx]
        if word != last_word:
            words.append((start, end))
            word_tokens.append((tok_idx, tok_idx))
            last_word = word
        else:
            words[-1] = (words[-1][0], end)
            word_tokens[-1] = (word_tokens[-1][0], tok_idx)
    covered = words[-1][1] if words else 0
    truncated = bool(text[covered:].strip())
    return Encoding(tuple(enc["input_ids"]), tuple(words), tuple(word_tokens), truncated)


def word_range(enc: Encoding, start: int, end: int) -> tuple[int, int] | None:
    """First and last word overlapping the character span, or None (e.g. truncated away)."""
    hit = [i for i, (ws, we) in enumerate(enc.words) if ws < end and start < we]
    return (hit[0], hit[-1]) if hit else None


def word_labels(enc: Encoding, spans: Sequence[Span]) -> list[int]:
    """BIO label id per word; where gold spans overlap, the longer one keeps the words."""
    labels = [0] * len(enc.words)
    for etype, start, end in sorted(spans, key=lambda s: (s[1] - s[2], s[1])):
        rng = word_range(enc, start, end)
        if rng is None or any(labels[i] for i in range(rng[0], rng[1] + 1)):
            continue
        labels[rng[0]] = NER_LABELS.index(f"B-{etype}")
        for i in range(rng[0] + 1, rng[1] + 1):
            labels[i] = NER_LABELS.index(f"I-{etype}")
    return labels


def token_labels(enc: Encoding, labels: Sequence[int]) -> list[int]:
    """Word labels placed on each word's first subword; every other token is ignored."""
    out = [IGNORE] * len(enc.input_ids)
    for (first, _), label in zip(enc.word_tokens, labels, strict=True):
        out[first] = label
    return out


def decode(enc: Encoding, labels: Sequence[int]) -> list[Span]:
    """Character spans from word BIO labels.

    Lenient about invalid sequences, so no prediction is lost and spans never overlap:
    an ``I-x`` after ``O`` or after another type opens a new ``x`` span; ``B-x`` right
    after an ``x`` span starts a second, adjacent entity.
    """
    spans: list[Span] = []
    current: list[Any] | None = None  # [type, start, end]
    for (start, end), label_id in zip(enc.words, labels, strict=True):
        label = NER_LABELS[label_id]
        if label == "O":
            current = None
            continue
        tag, etype = label.split("-", 1)
        if tag == "I" and current is not None and current[0] == etype:
            current[2] = end
            spans[-1] = (etype, current[1], end)
            continue
        current = [etype, start, end]
        spans.append((etype, start, end))
    return spans


def misaligned(enc: Encoding, spans: Sequence[Span]) -> int:
    """How many gold spans do not start and end on word boundaries (lost to strict F1)."""
    starts = {s for s, _ in enc.words}
    ends = {e for _, e in enc.words}
    return sum(1 for _, s, e in spans if s not in starts or e not in ends)


@dataclass(frozen=True)
class Marked:
    """A token sequence with marker tokens inserted; ``heads`` are the opening markers."""

    input_ids: tuple[int, ...]
    markers: tuple[int, ...]  # marker kind per token, 0 for ordinary tokens
    sup_head: int  # position of the supplement's opening marker
    event_heads: tuple[int | None, ...]  # per event given, None when truncated away


def mark(
    enc: Encoding, supplement: tuple[int, int], events: Sequence[tuple[int, int]], filler: int
) -> Marked | None:
    """Insert open/close markers around the supplement and every event (character spans).

    ``filler`` is the placeholder id at marker positions (the model substitutes learned
    marker embeddings). None when the supplement is not within the encoded text.
    """
    sup = word_range(enc, *supplement)
    if sup is None:
        return None
    inserts: dict[int, list[int]] = {}  # token index -> marker kinds inserted before it

    def add(rng: tuple[int, int], open_kind: int, close_kind: int) -> None:
        first, last = enc.word_tokens[rng[0]][0], enc.word_tokens[rng[1]][1]
        inserts.setdefault(first, []).append(open_kind)
        inserts.setdefault(last + 1, []).insert(0, close_kind)

    add(sup, SUP_OPEN, SUP_CLOSE)
    ev_ranges = [word_range(enc, *ev) for ev in events]
    for rng in ev_ranges:
        if rng is not None and not (rng[0] <= sup[1] and sup[0] <= rng[1]):
            add(rng, EV_OPEN, EV_CLOSE)
    ids: list[int] = []
    kinds: list[int] = []
    where: dict[tuple[int, int], int] = {}  # (token index, kind) -> position of the marker
    for idx in range(len(enc.input_ids) + 1):
        for kind in inserts.get(idx, []):
            where[(idx, kind)] = len(ids)
            ids.append(filler)
            kinds.append(kind)
        if idx < len(enc.input_ids):
            ids.append(enc.input_ids[idx])
            kinds.append(0)
    sup_head = where[(enc.word_tokens[sup[0]][0], SUP_OPEN)]
    heads = tuple(
        where.get((enc.word_tokens[r[0]][0], EV_OPEN)) if r is not None else None for r in ev_ranges
    )
    return Marked(tuple(ids), tuple(kinds), sup_head, heads)
