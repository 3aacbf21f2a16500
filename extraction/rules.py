"""The lexicon-only baseline: dictionary NER plus cue-word rules for status and relations.

It is the floor every model must beat and a fast fallback backend. Supplements come from
the lexicon (with hard-negative context filters), events from a gazetteer of event phrases
(built from the training corpus), relations and usage from nearby cue words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from extraction.api import EngineInfo
from extraction.corpus import Entity, Record, Relation, Usage
from extraction.lexicon import Lexicon
from extraction.pipeline import SentenceResult
from extraction.product_context import is_product

RULES_VERSION = "rules-1"

_UNCERTAIN = re.compile(
    r"\b(allerg\w*|intoleran\w*|mother|father|mom|dad|sister|brother|wife|husband|son|daughter|"
    r"family|asked\s+about|interested|wonder\w*|avoid|unsure|ingest\w*|overdose|accidental)\b",
    re.IGNORECASE,
)
_DISCONTINUE = re.compile(
    r"\b(stop\w*|d/?c'?d?|discontinu\w*|hold|held|holding|quit|ran\s+out|off\s+of|denies|"
    r"not\s+taking|no\s+longer|never\s+taken|refus\w*|tapered|switched\s+from|cease\w*)\b",
    re.IGNORECASE,
)
_START = re.compile(
    r"\b(start\w*|began|begin|initiat\w*|recommend\w*|consider\w*|trial|try|new|resum\w*|"
    r"restart\w*|suggest\w*|advis\w*|add\w*|prescrib\w*)\b",
    re.IGNORECASE,
)
_INDICATION = re.compile(
    r"\b(for|to\s+help|helps?|treat\w*|prevent\w*|prophylaxis|manage|control|with\s+benefit)\b",
    re.IGNORECASE,
)
_ADVERSE = re.compile(
    r"\b(after|since\s+start\w*|due\s+to|caus\w*|from|because|induced|associated|attributed|"
    r"likely|secondary|side\s+effect|reaction|->|led\s+to|resulting)\b",
    re.IGNORECASE,
)


def lexicon_mentions(lexicon: Lexicon, text: str) -> tuple[list[Entity], list[Entity]]:
    """Lexicon hits, split into products taken and names in a non-product context (a
    level, deficiency, diet or infusion)."""
    products: list[Entity] = []
    others: list[Entity] = []
    for start, end, name in lexicon.find_mentions(text):
        ent = Entity("", "supplement", start, end, text[start:end], name)
        (products if is_product(text, start, end) else others).append(ent)
    return products, others


def product_mentions(lexicon: Lexicon, text: str) -> list[Entity]:
    """Lexicon hits that name a product taken (not a level, deficiency, diet or infusion)."""
    return lexicon_mentions(lexicon, text)[0]


def _overlaps(ent: Entity, spans: Sequence[Entity]) -> bool:
    return any(s.start < ent.end and ent.start < s.end for s in spans)


def without_non_products(
    found: Sequence[Entity], products: Sequence[Entity], others: Sequence[Entity]
) -> list[Entity]:
    """A model's entities less the supplements that overlap only lexicon names in a
    non-product context (``others`` of :func:`lexicon_mentions`: "vitamin D level", "copper
    deficiency", "IV iron", "vitamin K intake"): guidelines §1 exclude those, and a small
    model tags them anyway."""
    return [
        e
        for e in found
        if e.type != "supplement" or _overlaps(e, products) or not _overlaps(e, others)
    ]


def with_lexicon_floor(found: Sequence[Entity], products: Sequence[Entity]) -> list[Entity]:
    """A model's entities with the lexicon as a floor for supplements.

    A model supplement overlapping a lexicon product takes the lexicon's span and name
    (boundary errors such as "fish oil 1 g" are the commonest strict-match miss); a lexicon
    product the model left out is added, unless it overlaps something the model did tag
    (an event such as "iron deficiency"). Ids are left for the caller to assign.
    """
    out = list(found)
    for prod in products:
        hits = [i for i, e in enumerate(out) if e.start < prod.end and prod.start < e.end]
        if not hits:
            out.append(prod)
        elif len(hits) == 1 and out[hits[0]].type == "supplement":
            out[hits[0]] = prod
    return sorted(out, key=lambda e: e.start)


def with_lexicon(found: Sequence[Entity], lexicon: Lexicon, text: str) -> list[Entity]:
    """The lexicon floor under a model's supplements, less the supplements that name only a
    non-product (guidelines §1, :mod:`extraction.product_context`)."""
    products, others = lexicon_mentions(lexicon, text)
    return without_non_products(with_lexicon_floor(found, products), products, others)


class EventGazetteer:
    """Event phrases seen in annotated training data, found whole-word and case-blind
    (longest phrase first), except acronyms: a phrase only ever written in capitals is
    found only as written ("ALL" is a leukaemia, "all" is not; "PAD" is not a heating pad).
    """

    def __init__(self, terms: Iterable[str]) -> None:
        forms: dict[str, set[str]] = {}
        for term in (t.strip() for t in terms):
            if len(term) > 2:
                forms.setdefault(term.lower(), set()).add(term)
        alternatives: list[tuple[int, str]] = []
        for key, written in forms.items():
            if all(f.isupper() for f in written):
                alternatives += [(len(f), re.escape(f)) for f in written]
            else:
                alternatives.append((len(key), f"(?i:{re.escape(key)})"))
        # Longest first, so a phrase wins over the shorter phrases inside it.
        alternatives.sort(key=lambda a: a[0], reverse=True)
        body = "|".join(a for _, a in alternatives) or r"(?!x)x"
        self._pattern = re.compile(rf"(?<![\w-])(?:{body})(?![\w])")

    def find(self, text: str) -> list[Entity]:
        return [
            Entity("", "event", m.start(), m.end(), m.group(0))
            for m in self._pattern.finditer(text)
        ]


def with_event_floor(found: Sequence[Entity], events: Sequence[Entity]) -> list[Entity]:
    """A model's entities plus the gazetteer events that overlap nothing it tagged.

    Only for sentences where a supplement was found (events exist only beside one:
    guidelines §4). Where the model tagged an overlapping span, its boundaries stand.
    Ids are left for the caller to assign.
    """
    if not any(e.type == "supplement" for e in found):
        return list(found)
    out = list(found)
    for ev in events:
        if not _overlaps(ev, out):
            out.append(ev)
    return sorted(out, key=lambda e: e.start)


class RulesBackend:
    """Sentence backend using only the lexicon, an event gazetteer and cue words."""

    def __init__(self, lexicon: Lexicon, event_terms: Iterable[str]) -> None:
        self.lexicon = lexicon
        self._events = EventGazetteer(event_terms)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("lexicon", RULES_VERSION, RULES_VERSION, "none", "none")

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        return [SentenceResult(self._one(i, s)) for i, s in enumerate(sentences)]

    def find_entities(self, sentences: Sequence[str]) -> list[SentenceResult]:
        """NER only (the cue rules cost next to nothing, so they run and are dropped)."""
        return [
            SentenceResult(replace(r.record, relations=(), usage=()))
            for r in self.predict(sentences)
        ]

    def _supplements(self, text: str) -> list[Entity]:
        return product_mentions(self.lexicon, text)

    def _one(self, idx: int, text: str) -> Record:
        supps = self._supplements(text)
        if not supps:
            return Record(f"s{idx}", text)
        ents = with_event_floor(supps, self._events.find(text))
        ents = [
            Entity(f"T{i}", e.type, e.start, e.end, e.text, e.normalized)
            for i, e in enumerate(ents, start=1)
        ]
        usage = [Usage(e.id, _usage(text, e)) for e in ents if e.type == "supplement"]
        rels = [
            Relation(s.id, ev.id, label)
            for s in ents
            if s.type == "supplement"
            for ev in ents
            if ev.type == "event"
            for label in [_relation(text, s, ev)]
            if label != "not_related"
        ]
        return Record(f"s{idx}", text, tuple(ents), tuple(rels), tuple(usage))


def _usage(text: str, ent: Entity) -> str:
    window = text[max(0, ent.start - 60) : ent.end + 40]
    if _UNCERTAIN.search(window):
        return "uncertain"
    if _DISCONTINUE.search(window):
        return "discontinue"
    if _START.search(window):
        return "start"
    return "continue"


def _relation(text: str, supp: Entity, event: Entity) -> str:
    lo, hi = (
        sorted((supp.end, event.start)) if supp.start < event.start else (event.end, supp.start)
    )
    between = text[lo:hi]
    if len(between) > 80:
        return "not_related"
    if supp.start < event.start and _INDICATION.search(between) and not _ADVERSE.search(between):
        return "indication"
    if _ADVERSE.search(between) or (event.start < supp.start and "from" in between):
        return "adverse_event"
    return "not_related"
