"""Training examples from gold records, and padded tensor batches (training and inference).

One NER example per sentence (every sentence, so the model learns that hard negatives and
supplement-free sentences have no entities) and one marked example per gold supplement,
carrying its usage status and the relation label of each event in the sentence.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from extraction.corpus import RELATION_TYPES, USAGE_STATUSES, Record
from extraction.encoder.tokens import IGNORE, Marked, encode, mark, token_labels, word_labels


@dataclass(frozen=True)
class NerExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # token-level, IGNORE where no prediction is made


@dataclass(frozen=True)
class MarkedExample:
    marked: Marked
    status: int
    relations: tuple[int, ...]  # one label per event head of ``marked`` that is not None


def filler_id(tokenizer: Any) -> int:
    """Placeholder id at marker positions (its embedding is replaced)."""
    return int(tokenizer.unk_token_id)


def examples(
    tokenizer: Any, records: Sequence[Record], max_length: int
) -> tuple[list[NerExample], list[MarkedExample]]:
    """All NER and marked examples of a gold corpus."""
    ner: list[NerExample] = []
    marked: list[MarkedExample] = []
    filler = filler_id(tokenizer)
    for rec in records:
        enc = encode(tokenizer, rec.text, max_length)
        spans = [(e.type, e.start, e.end) for e in rec.entities]
        ner.append(NerExample(enc.input_ids, tuple(token_labels(enc, word_labels(enc, spans)))))
        status_of = {u.entity: u.status for u in rec.usage}
        rel_of = {(r.head, r.tail): r.type for r in rec.relations}
        events = rec.events
        for sup in rec.supplements:
            m = mark(enc, (sup.start, sup.end), [(e.start, e.end) for e in events], filler)
            if m is None:
                continue
            labels = tuple(
                RELATION_TYPES.index(rel_of.get((sup.id, ev.id)) or "not_related")
                for ev, head in zip(events, m.event_heads, strict=True)
                if head is not None
            )
            status = USAGE_STATUSES.index(status_of.get(sup.id) or "uncertain")
            marked.append(MarkedExample(m, status, labels))
    return ner, marked


def pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def mask_of(rows: Sequence[Sequence[int]]) -> Tensor:
    return pad([[1] * len(r) for r in rows], 0)


@dataclass(frozen=True)
class MarkedBatch:
    input_ids: Tensor
    markers: Tensor
    attention_mask: Tensor
    sup_heads: Tensor
    pair_rows: Tensor  # row of each (supplement, event) pair
    pair_sup: Tensor
    pair_ev: Tensor


def marked_batch(items: Sequence[Marked], pad_id: int) -> MarkedBatch:
    """Tensors for a batch of marked sequences; pairs cover every event head present."""
    rows, sups, evs = [], [], []
    for i, m in enumerate(items):
        for head in m.event_heads:
            if head is not None:
                rows.append(i)
                sups.append(m.sup_head)
                evs.append(head)
    return MarkedBatch(
        input_ids=pad([m.input_ids for m in items], pad_id),
        markers=pad([m.markers for m in items], 0),
        attention_mask=mask_of([m.input_ids for m in items]),
        sup_heads=torch.tensor([m.sup_head for m in items], dtype=torch.long),
        pair_rows=torch.tensor(rows, dtype=torch.long),
        pair_sup=torch.tensor(sups, dtype=torch.long),
        pair_ev=torch.tensor(evs, dtype=torch.long),
    )


def ner_targets(items: Sequence[NerExample]) -> Tensor:
    return pad([x.labels for x in items], IGNORE)


def marked_targets(items: Sequence[MarkedExample]) -> tuple[Tensor, Tensor]:
    status = torch.tensor([x.status for x in items], dtype=torch.long)
    relations = torch.tensor([r for x in items for r in x.relations], dtype=torch.long)
    return status, relations


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: padding is most of the cost on short sentences."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 16
    batches: list[list[int]] = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    return batches


def epoch_plan(
    ner_lengths: Sequence[int],
    marked_lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[tuple[str, list[int]]]:
    """The epoch's batches of both kinds, interleaved; a pure function of (seed, epoch),
    so a resumed run replays the same order and skips the batches already done."""
    rng = random.Random(seed * 1000 + epoch)
    plan = [("ner", b) for b in length_batches(ner_lengths, batch_size, rng)]
    plan += [("marked", b) for b in length_batches(marked_lengths, batch_size, rng)]
    rng.shuffle(plan)
    return plan
