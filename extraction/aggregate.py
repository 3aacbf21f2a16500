"""Note-level lists from mention-level results (guidelines §7).

A supplement's note status is that of its latest mention with a definite status
(continue/start/discontinue); ``uncertain`` only when every mention is uncertain.
"""

from __future__ import annotations

import re

from extraction.api import NoteFact, NoteSupplement, Span, StatusDetail
from extraction.corpus import Record

DEFINITE = ("continue", "start", "discontinue")
# A "start" that is only advised or planned must never read as a medication being taken.
_PLANNED = re.compile(
    r"\b(recommend\w*|consider\w*|may\s+try|might\s+try|could\s+try|try(ing)?\s+a?|trial|"
    r"suggest\w*|advis\w*|plan(ned|s)?|will\s+(start|begin|add|resume|restart)|"
    r"to\s+(start|begin|add|resume|restart)|should\s+(start|take)|prescrib\w*|"
    r"resume|restart|counsel\w*|encourag\w*|rx|discussed|option)\b",
    re.IGNORECASE,
)
_STARTED = re.compile(
    r"\b(started|began|begun|initiated|since\s+starting|newly|recently\s+(added|started)|"
    r"has\s+been\s+taking|now\s+(on|taking)|added)\b",
    re.IGNORECASE,
)
_DENIED = re.compile(
    r"\b(denies|denied|never\s+(taken|took|used|tried)|not\s+(taking|on|using)|"
    r"does\s+not\s+take|doesn'?t\s+take|no\s+(use|history)\s+of|refus\w*)\b",
    re.IGNORECASE,
)


def _context(text: str, span: Span, width: int = 120) -> str:
    """The clause around a mention (bounded), where status cue words live."""
    left = max(text.rfind(sep, 0, span.start) for sep in ("\n", ". ", "; "))
    right_candidates = [i for i in (text.find(s, span.end) for s in ("\n", ". ", "; ")) if i >= 0]
    right = min(right_candidates) if right_candidates else len(text)
    return text[max(left + 1, span.start - width) : min(right, span.end + width)]


def status_detail(text: str, status: str, span: Span) -> StatusDetail | None:
    """Split start into started/planned and discontinue into stopped/denied by cue words."""
    ctx = _context(text, span)
    if status == "start":
        if _STARTED.search(ctx) and not _PLANNED.search(ctx):
            return "started"
        return "planned" if _PLANNED.search(ctx) else "started"
    if status == "discontinue":
        return "denied" if _DENIED.search(ctx) else "stopped"
    return None


def aggregate(record: Record) -> tuple[tuple[NoteSupplement, ...], tuple[NoteFact, ...]]:
    """Note-level supplements (status per §7) and distinct relation facts."""
    status_of = {u.entity: u.status for u in record.usage}
    by_name: dict[str, list[tuple[Span, str, str]]] = {}
    for ent in sorted(record.supplements, key=lambda e: e.start):
        name = (ent.normalized or ent.text).strip().lower()
        status = status_of.get(ent.id) or "uncertain"
        by_name.setdefault(name, []).append((Span(ent.start, ent.end), status, ent.text))
    supplements = []
    for name, mentions in by_name.items():
        definite = [m for m in mentions if m[1] in DEFINITE]
        span, status = (
            (definite[-1][0], definite[-1][1]) if definite else (mentions[-1][0], "uncertain")
        )
        supplements.append(
            NoteSupplement(
                normalized=name,
                status=status,
                status_detail=status_detail(record.text, status, span),
                mentions=tuple(m[0] for m in mentions),
                texts=tuple(dict.fromkeys(m[2] for m in mentions)),
            )
        )
    return tuple(supplements), _facts(record)


def _facts(record: Record) -> tuple[NoteFact, ...]:
    seen: set[tuple[str, str, str]] = set()
    facts = []
    for rel in record.relations:
        if rel.type not in ("indication", "adverse_event"):
            continue
        head, tail = record.entity(rel.head), record.entity(rel.tail)
        name = (head.normalized or head.text).strip().lower()
        key = (name, rel.type, tail.text.strip().lower())
        if key in seen:
            continue
        seen.add(key)
        facts.append(
            NoteFact(
                name, rel.type, tail.text, Span(head.start, head.end), Span(tail.start, tail.end)
            )
        )
    return tuple(facts)
