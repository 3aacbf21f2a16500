"""Scoring primitives: P/R/F1 from counts, one-to-one matching, label metrics, bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

A = TypeVar("A")
B = TypeVar("B")

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20250101


@dataclass(frozen=True)
class PRF:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return f1_from_counts(self.tp, self.fp, self.fn)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0 when there is nothing to score; 1 when both sides are empty."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def max_matching(left: Sequence[A], right: Sequence[B], compatible: Callable[[A, B], bool]) -> int:
    """Size of a maximum one-to-one matching between ``left`` and ``right``."""
    return len(matching_pairs(left, right, compatible))


def matching_pairs(
    left: Sequence[A], right: Sequence[B], compatible: Callable[[A, B], bool]
) -> dict[int, int]:
    """A maximum one-to-one matching as {left index: right index} (Kuhn's algorithm).

    Relaxed scoring must not let one long predicted span claim two gold spans, so a greedy
    first-overlap pass is not enough; sets here are tiny (a sentence or a note).
    """
    adj = [[j for j, r in enumerate(right) if compatible(item, r)] for item in left]
    owner: list[int | None] = [None] * len(right)

    def augment(i: int, seen: set[int]) -> bool:
        for j in adj[i]:
            if j in seen:
                continue
            seen.add(j)
            current = owner[j]
            if current is None or augment(current, seen):
                owner[j] = i
                return True
        return False

    for i in range(len(left)):
        augment(i, set())
    return {i: j for j, i in enumerate(owner) if i is not None}


def label_counts(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Per-label (tp, fp, fn) flattened, then (correct, total): the bootstrap's count vector."""
    out: list[int] = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        out += [tp, fp, fn]
    out += [sum(g == p for g, p in zip(gold, pred, strict=True)), len(gold)]
    return out


def label_metrics_from_counts(counts: Sequence[float], labels: Sequence[str]) -> dict[str, object]:
    """Accuracy (= micro-F1 for single-label items), macro-F1 and per-label F1."""
    per_label: dict[str, float | None] = {}
    for i, lab in enumerate(labels):
        tp, fp, fn = counts[3 * i : 3 * i + 3]
        per_label[lab] = round(f1_from_counts(tp, fp, fn), 4) if tp + fp + fn else None
    correct, total = counts[-2], counts[-1]
    return {
        "accuracy": round(correct / total, 4) if total else 0.0,
        "macro_f1": round(macro_f1(counts, len(labels)), 4),
        "per_label_f1": per_label,
        "n": int(total),
    }


def macro_f1(counts: Sequence[float] | np.ndarray, n_labels: int) -> float:
    """Mean per-label F1 over the labels that occur in gold or prediction."""
    f1s = [
        f1_from_counts(*counts[3 * i : 3 * i + 3])
        for i in range(n_labels)
        if sum(counts[3 * i : 3 * i + 3])
    ]
    return float(sum(f1s) / len(f1s)) if f1s else 0.0


def bootstrap_ci(
    per_item: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """95% percentile interval of ``statistic`` over item-level resamples of count rows.

    ``per_item`` is [n_items, n_counts]; each resample sums the rows of the drawn items.
    """
    n = per_item.shape[0]
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, size=n)
        values[b] = statistic(per_item[idx].sum(axis=0))
    low, high = np.percentile(values, [2.5, 97.5])
    return (round(float(low), 4), round(float(high), 4))
