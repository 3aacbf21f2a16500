"""Hybrid backends: one backend's NER (or several backends' NER by vote), another's labels.

Kiwi's trade-off is not all-or-nothing: NER is where a fast encoder is strong, while RE and
UC are where an instruction-tuned LLM is expected to help. ``encoder+llm`` runs the encoder
for entities and asks the LLM only for each supplement's status and each supplement x event
relation (label scoring: one forward pass per pair, no decoding); ``llm+encoder`` is the
reverse. ``ensemble`` keeps the entity spans that at least two of the LLM, the encoder and
the lexicon rules agree on exactly (their errors differ: the LLM misses events, the encoder
cuts boundaries differently, the rules only know their dictionaries; they are not
independent, though: the LLM's floors use the rules' lexicon and event list), then labels
them with the weighted mean of two scorers' label probabilities (FusedClassifier). All are
measured in docs/results.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from extraction.api import EngineInfo
from extraction.corpus import Entity
from extraction.pipeline import Labels, LabelScores, SentenceResult, labels_from_scores


class Classifier(Protocol):
    """RE + UC over entities another backend found (offsets into each sentence)."""

    def classify(
        self,
        sentences: Sequence[str],
        ents: Mapping[int, list[Entity]],
        results: list[SentenceResult],
    ) -> Labels: ...


class LabelScorer(Protocol):
    """Label probabilities over entities another backend found (see LabelScores)."""

    @property
    def info(self) -> EngineInfo: ...

    def label_scores(
        self, sentences: Sequence[str], ents: Mapping[int, list[Entity]]
    ) -> dict[int, LabelScores]: ...


def fuse(
    first: dict[int, LabelScores], second: dict[int, LabelScores], weight: float
) -> dict[int, LabelScores]:
    """Weighted mean of two scorers' probabilities (``weight`` on the second); an item only
    one of them scored (e.g. cut off by the encoder's length limit) keeps that one's."""

    def mix(a: dict[Any, list[float]], b: dict[Any, list[float]]) -> dict[Any, list[float]]:
        out = dict(a)
        for key, pb in b.items():
            pa = a.get(key)
            out[key] = (
                pb
                if pa is None
                else [(1 - weight) * x + weight * y for x, y in zip(pa, pb, strict=True)]
            )
        return out

    return {
        i: LabelScores(
            mix(first.get(i, LabelScores()).usage, second.get(i, LabelScores()).usage),
            mix(first.get(i, LabelScores()).relations, second.get(i, LabelScores()).relations),
        )
        for i in first.keys() | second.keys()
    }


class MeanScorer:
    """A LabelScorer averaging several scorers' probabilities with equal weights (a seed
    ensemble: the same model trained with other seeds errs on other items)."""

    def __init__(self, scorers: Sequence[LabelScorer]) -> None:
        if not scorers:
            raise ValueError("MeanScorer needs at least one scorer")
        self.scorers = list(scorers)

    @property
    def info(self) -> EngineInfo:
        return self.scorers[0].info

    def label_scores(
        self, sentences: Sequence[str], ents: Mapping[int, list[Entity]]
    ) -> dict[int, LabelScores]:
        mean = self.scorers[0].label_scores(sentences, ents)
        for n, scorer in enumerate(self.scorers[1:], start=2):
            mean = fuse(mean, scorer.label_scores(sentences, ents), 1 / n)  # running mean
        return mean


class FusedClassifier:
    """A Classifier that averages two scorers' label probabilities (``weight`` on the
    second): the LLM and the encoder err on different pairs."""

    def __init__(self, first: LabelScorer, second: LabelScorer, weight: float = 0.5) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"fusion weight {weight} is not in [0, 1]")
        self.first, self.second, self.weight = first, second, weight

    def classify(
        self,
        sentences: Sequence[str],
        ents: Mapping[int, list[Entity]],
        results: list[SentenceResult],
    ) -> Labels:
        # A zero weight needs no scores from that side (the LLM's cost most of the time).
        a = self.first.label_scores(sentences, ents) if self.weight < 1 else {}
        b = self.second.label_scores(sentences, ents) if self.weight > 0 else {}
        return labels_from_scores(fuse(a, b, self.weight))


class EntityFinder(Protocol):
    """NER only: one result per sentence whose record has entities and no labels."""

    @property
    def info(self) -> EngineInfo: ...

    def find_entities(self, sentences: Sequence[str]) -> list[SentenceResult]: ...


def _labelled(
    sentences: Sequence[str], results: list[SentenceResult], classifier: Classifier
) -> list[SentenceResult]:
    ents = {i: list(r.record.entities) for i, r in enumerate(results) if r.record.entities}
    usage, rels = classifier.classify(sentences, ents, results)
    for i, found in ents.items():
        results[i].record = replace(
            results[i].record,
            entities=tuple(found),
            relations=tuple(rels.get(i, ())),
            usage=tuple(usage.get(i, ())),
        )
    return results


class HybridBackend:
    """A SentenceBackend: ``ner`` finds the entities, ``classifier`` labels them."""

    def __init__(self, ner: EntityFinder, classifier: Classifier, info: EngineInfo) -> None:
        self.ner = ner
        self.classifier = classifier
        self._info = info

    @property
    def info(self) -> EngineInfo:
        return self._info

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        return _labelled(sentences, self.ner.find_entities(sentences), self.classifier)


def vote(candidates: Sequence[Sequence[Entity]], min_votes: int) -> list[Entity]:
    """Spans (type, start, end) found by at least ``min_votes`` of the candidate lists,
    numbered T1.. in text order; a span keeps the first list's normalised name. Events
    without a voted supplement are dropped (guidelines §4)."""
    first: dict[tuple[str, int, int], Entity] = {}
    votes: Counter[tuple[str, int, int]] = Counter()
    for found in candidates:
        keys = {(e.type, e.start, e.end): e for e in found}
        votes.update(keys.keys())
        for key, ent in keys.items():
            first.setdefault(key, ent)
    kept = sorted((k for k, n in votes.items() if n >= min_votes), key=lambda k: (k[1], k[2]))
    if not any(k[0] == "supplement" for k in kept):
        return []
    return [
        Entity(f"T{n}", first[k].type, k[1], k[2], first[k].text, first[k].normalized)
        for n, k in enumerate(kept, start=1)
    ]


class VotingBackend:
    """A SentenceBackend: entities by majority vote of ``finders``, labelled by
    ``classifier``. Parse failures and dropped spans of every finder are counted."""

    def __init__(
        self,
        finders: Sequence[EntityFinder],
        classifier: Classifier,
        info: EngineInfo,
        min_votes: int = 2,
    ) -> None:
        if not 1 <= min_votes <= len(finders):
            raise ValueError(f"min_votes {min_votes} needs 1..{len(finders)} finders")
        self.finders = list(finders)
        self.classifier = classifier
        self.min_votes = min_votes
        self._info = info

    @property
    def info(self) -> EngineInfo:
        return self._info

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        per_finder = [f.find_entities(sentences) for f in self.finders]
        results: list[SentenceResult] = []
        for found in zip(*per_finder, strict=True):
            voted = vote([r.record.entities for r in found], self.min_votes)
            result = SentenceResult(replace(found[0].record, entities=tuple(voted)))
            for r in found:
                result.unparseable.update(r.unparseable)
                result.dropped_spans += r.dropped_spans
            results.append(result)
        return _labelled(sentences, results, self.classifier)


def hybrid_info(name: str, ner: EngineInfo, classifier: EngineInfo) -> EngineInfo:
    """Provenance naming both models (it goes into idempotency keys and Provenance)."""
    return EngineInfo(
        backend=name,
        software_version=ner.software_version,
        task_version=f"{ner.task_version}|{classifier.task_version}",
        base_model=f"{ner.base_model}+{classifier.base_model}",
        adapter=f"{ner.adapter}+{classifier.adapter}",
    )


def ensemble_info(
    finders: Sequence[EngineInfo], classifier: EngineInfo, extra: Sequence[EngineInfo] = ()
) -> EngineInfo:
    """Provenance naming every voter, then the classifier and any extra label scorers."""
    voters = [*finders, classifier, *extra]
    return EngineInfo(
        backend="ensemble",
        software_version=voters[0].software_version,
        task_version="|".join(dict.fromkeys(v.task_version for v in voters)),
        base_model="+".join(dict.fromkeys(v.base_model for v in voters)),
        adapter="+".join(dict.fromkeys(v.adapter for v in voters)),
    )
