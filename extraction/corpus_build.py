"""Build ``train.jsonl`` / ``dev.jsonl`` from the hand-written sources.

The split is seeded and stratified by source batch; near-duplicate sentences (same
normalised text, or word-set Jaccard >= 0.6) are grouped and kept on one side, so dev never
contains a re-worded copy of a training sentence.

Usage: ``python -m extraction.corpus_build data/corpus/src/*.jsonl --out data/corpus``
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections import defaultdict
from pathlib import Path

from extraction.authoring import compile_files
from extraction.corpus import Record, write_records

NEAR_DUP_JACCARD = 0.6
DEV_SHARE = 0.14
_TOKEN = re.compile(r"[a-z]+")


def _tokens(text: str) -> frozenset[str]:
    return frozenset(_TOKEN.findall(text.lower()))


def near_duplicate_groups(records: list[Record]) -> list[list[int]]:
    """Union-find over pairs that are near-duplicates; returns index groups."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    toks = [_tokens(r.text) for r in records]
    by_token: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        for w in t:
            by_token[w].append(i)
    for i, t in enumerate(toks):
        candidates: set[int] = set()
        for w in t:
            if len(by_token[w]) < 200:  # rare words pick candidates; common ones don't
                candidates.update(j for j in by_token[w] if j > i)
        for j in candidates:
            union = len(t | toks[j])
            if union and len(t & toks[j]) / union >= NEAR_DUP_JACCARD:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        groups[find(i)].append(i)
    return list(groups.values())


def _rank(record_id: str) -> str:
    return hashlib.sha256(f"dsfhir-split-v1:{record_id}".encode()).hexdigest()


def split(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """Deterministic train/dev split by source batch, near-duplicate groups kept together."""
    groups = near_duplicate_groups(records)
    by_batch: dict[str, list[list[int]]] = defaultdict(list)
    for group in groups:
        batch = str(records[group[0]].extra.get("batch", ""))
        by_batch[batch].append(group)
    dev_idx: set[int] = set()
    for batch_groups in by_batch.values():
        total = sum(len(g) for g in batch_groups)
        taken = 0
        for group in sorted(batch_groups, key=lambda g: _rank(records[g[0]].id)):
            if taken >= DEV_SHARE * total:
                break
            if len(group) == 1:  # a clustered sentence family stays in train
                dev_idx.update(group)
                taken += 1
    train = [r for i, r in enumerate(records) if i not in dev_idx]
    dev = [r for i, r in enumerate(records) if i in dev_idx]
    return train, dev


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extraction.corpus_build")
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    records = []
    seen_text: set[str] = set()
    for path in sorted(args.sources):
        for rec in compile_files([path]):
            key = " ".join(rec.text.lower().split())
            if key in seen_text:  # an exact repeat adds nothing but weight
                continue
            seen_text.add(key)
            extra = dict(rec.extra) | {"batch": path.stem}
            records.append(Record(rec.id, rec.text, rec.entities, rec.relations, rec.usage, extra))
    train, dev = split(records)
    write_records(args.out / "train.jsonl", train)
    write_records(args.out / "dev.jsonl", dev)
    print(f"train {len(train)}  dev {len(dev)}  (from {len(records)} records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
