"""Hybrid backends: one backend's NER, another's relation and usage classification.

Kiwi's trade-off is not all-or-nothing: NER is where a fast encoder is strong, while RE and
UC are where an instruction-tuned LLM is expected to help. ``encoder+llm`` runs the encoder
for entities and asks the LLM only for each supplement's status and each supplement x event
relation (label scoring: one forward pass per pair, no decoding); ``llm+encoder`` is the
reverse. Both are measured in docs/results.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from extraction.api import EngineInfo
from extraction.corpus import Entity
from extraction.pipeline import Labels, SentenceBackend, SentenceResult


class Classifier(Protocol):
    """RE + UC over entities another backend found (offsets into each sentence)."""

    def classify(
        self,
        sentences: Sequence[str],
        ents: Mapping[int, list[Entity]],
        results: list[SentenceResult],
    ) -> Labels: ...


class HybridBackend:
    """A SentenceBackend: ``ner`` finds the entities, ``classifier`` labels them."""

    def __init__(self, ner: SentenceBackend, classifier: Classifier, info: EngineInfo) -> None:
        self.ner = ner
        self.classifier = classifier
        self._info = info

    @property
    def info(self) -> EngineInfo:
        return self._info

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        results = self.ner.predict(sentences)
        ents = {i: list(r.record.entities) for i, r in enumerate(results) if r.record.entities}
        usage, rels = self.classifier.classify(sentences, ents, results)
        for i, found in ents.items():
            results[i].record = replace(
                results[i].record,
                entities=tuple(found),
                relations=tuple(rels.get(i, ())),
                usage=tuple(usage.get(i, ())),
            )
        return results


def hybrid_info(name: str, ner: EngineInfo, classifier: EngineInfo) -> EngineInfo:
    """Provenance naming both models (it goes into idempotency keys and Provenance)."""
    return EngineInfo(
        backend=name,
        software_version=ner.software_version,
        task_version=f"{ner.task_version}|{classifier.task_version}",
        base_model=f"{ner.base_model}+{classifier.base_model}",
        adapter=f"{ner.adapter}+{classifier.adapter}",
    )
