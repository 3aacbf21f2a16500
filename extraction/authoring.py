"""Compile hand-written corpus sources into the annotation format.

Annotators write each sentence once, naming mentions by their surface text instead of
counting characters (the error-prone part), e.g.::

    {"id": "card-0001", "specialty": "cardiology", "section": "hpi",
     "text": "Stopped ginkgo after easy bruising; continues fish oil for high triglycerides.",
     "s": [["ginkgo", "ginkgo", "discontinue"], ["fish oil", "fish oil", "continue"]],
     "e": ["easy bruising", "high triglycerides"],
     "r": [["ginkgo", "easy bruising", "adverse_event"],
           ["fish oil", "high triglycerides", "indication"]]}

``s`` = [mention, normalized, status]; ``e`` = event mentions; ``r`` = [supplement mention,
event mention, relation]. A mention written ``text#2`` is the 2nd occurrence of ``text``
in the sentence; without ``#n`` it is the first occurrence, at word boundaries, that no
other mention already covers (longer mentions are placed first). This compiler computes
offsets and ids, and the result is validated by :func:`extraction.corpus.parse_record`.

Usage: ``python -m extraction.authoring SRC.jsonl [...] -o OUT.jsonl``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from extraction.corpus import Record, parse_record, write_records
from extraction.corpus_stats import compute_stats
from extraction.errors import CorpusError

_OCC = re.compile(r"^(?P<text>.*?)#(?P<n>\d+)$")


def _occurrences(text: str, needle: str) -> list[int]:
    """Start offsets of ``needle`` in ``text`` that sit on word boundaries."""
    out = []
    for m in re.finditer(re.escape(needle), text):
        s, e = m.start(), m.end()
        before_ok = s == 0 or not (text[s - 1].isalnum() and needle[0].isalnum())
        after_ok = e == len(text) or not (text[e].isalnum() and needle[-1].isalnum())
        if before_ok and after_ok:
            out.append(s)
    return out


def _split_key(key: str) -> tuple[str, int | None]:
    m = _OCC.match(key)
    if m:
        return m.group("text"), int(m.group("n"))
    return key, None


def _place(text: str, keys: list[str]) -> dict[str, tuple[int, int]]:
    """Give each mention key a non-overlapping (start, end) span in ``text``."""
    placed: dict[str, tuple[int, int]] = {}
    explicit = [k for k in keys if _split_key(k)[1] is not None]
    plain = sorted((k for k in keys if _split_key(k)[1] is None), key=len, reverse=True)
    for key in explicit + plain:
        if key in placed:
            raise ValueError(f"mention {key!r} listed twice; use {key}#2 for a repeat")
        needle, nth = _split_key(key)
        starts = _occurrences(text, needle)
        if nth is not None:
            if len(starts) < nth:
                raise ValueError(f"mention {key!r}: only {len(starts)} occurrence(s) in text")
            candidates = [starts[nth - 1]]
        else:
            candidates = starts
        span = next(
            (
                (s, s + len(needle))
                for s in candidates
                if all(s + len(needle) <= a or s >= b for a, b in placed.values())
            ),
            None,
        )
        if span is None:
            raise ValueError(f"mention {key!r} not found (free, on word boundaries) in text")
        placed[key] = span
    return placed


def compile_source(src: dict[str, Any]) -> Record:
    """Turn one authoring object into a validated :class:`Record`."""
    text = src["text"]
    supps = [tuple(x) for x in src.get("s", [])]
    events = list(src.get("e", []))
    if events and not supps:
        raise ValueError("events are annotated only in sentences with a supplement")
    spans = _place(text, [s[0] for s in supps] + events)
    order = sorted(spans, key=lambda k: spans[k][0])
    ids = {key: f"T{i}" for i, key in enumerate(order, start=1)}
    norm = {s[0]: s[1] for s in supps}
    status = {s[0]: s[2] for s in supps}
    entities = []
    for key in order:
        start, end = spans[key]
        ent: dict[str, Any] = {"id": ids[key], "start": start, "end": end, "text": text[start:end]}
        if key in norm:
            ent.update(type="supplement", normalized=norm[key])
        else:
            ent["type"] = "event"
        entities.append(ent)
    relations = []
    for head, tail, rtype in src.get("r", []):
        if head not in norm or tail not in events:
            raise ValueError(f"relation {head!r}->{tail!r} does not join a listed s and e")
        relations.append({"head": ids[head], "tail": ids[tail], "type": rtype})
    usage = [{"entity": ids[k], "status": status[k]} for k in order if k in status]
    raw = {k: v for k, v in src.items() if k not in ("s", "e", "r")}
    raw.update(entities=entities, relations=relations, usage=usage)
    return parse_record(raw)


def compile_files(paths: list[Path]) -> list[Record]:
    """Compile several source files; every bad line raises CorpusError naming it."""
    records: list[Record] = []
    seen: set[str] = set()
    for path in paths:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            rid = None
            try:
                src = json.loads(line)
                rid = src.get("id")
                rec = compile_source(src)
            except Exception as exc:  # report every kind of authoring slip the same way
                raise CorpusError(str(path), lineno, rid, str(exc)) from exc
            if rec.id in seen:
                raise CorpusError(str(path), lineno, rec.id, "duplicate record id")
            seen.add(rec.id)
            records.append(rec)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extraction.authoring")
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="write compiled JSONL here")
    parser.add_argument("--stats", action="store_true", help="print label balance as JSON")
    args = parser.parse_args(argv)
    try:
        records = compile_files(args.sources)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        write_records(args.output, records)
    if args.stats:
        print(json.dumps(compute_stats(records).as_dict(), indent=1))
    print(f"ok: {len(records)} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
