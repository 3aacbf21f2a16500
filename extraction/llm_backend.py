"""The RAMIE backend: one instruction-tuned LLM (+ LoRA), retrieval-augmented prompts.

Per batch of sentences: NER (generated JSON, grounded in the text) -> UC for each
supplement and RE for each supplement x event pair (scored in one forward pass over the
label tokens: no decoding, never unparseable) -> TE triples from NER + RE, or from the TE
task itself (``te_mode``). Retrieval is keyed on the input alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from extraction.api import EngineInfo
from extraction.corpus import Entity, Record, Relation
from extraction.generate import Generator
from extraction.lexicon import Lexicon
from extraction.parsing import find_span, parse_list
from extraction.pipeline import Labels, LabelScores, SentenceResult, labels_from_scores
from extraction.rules import EventGazetteer, with_event_floor, with_lexicon
from extraction.tasks import ANSWER_PREFIX, LABELS, Demo, mark, render_prompt


def option_token_ids(tokenizer: Any) -> dict[str, list[int]]:
    """The first token of each label: labels are scored on it (they differ there)."""
    return {
        task: [tokenizer.encode(lab, add_special_tokens=False)[0] for lab in labels]
        for task, labels in LABELS.items()
    }


class Retriever(Protocol):
    def nearest(self, task: str, queries: Sequence[str], k: int) -> Sequence[Sequence[Demo]]: ...


class NoRetrieval:
    """k = 0 everywhere: the fine-tuned model without demonstrations."""

    def nearest(self, task: str, queries: Sequence[str], k: int) -> Sequence[Sequence[Demo]]:
        return [[] for _ in queries]


@dataclass(frozen=True)
class LlmOptions:
    k: int = 0
    te_mode: str = "pipeline"  # "pipeline" (NER + RE) or "task" (the TE prompt)
    lexicon_gate: bool = True  # skip sentences with no lexicon candidate (cannot hold one)
    hints: bool = True
    known_only: bool = True  # drop supplement mentions the lexicon cannot place
    # Lexicon products the model missed are added, spans snapped; supplements naming only a
    # level, deficiency, intake or IV product are dropped (rules.without_non_products).
    lexicon_floor: bool = False
    # (task, version) of the prompt templates the adapter was trained with; absent = current.
    prompt_versions: tuple[tuple[str, int], ...] = ()
    # (task, per-label logit offsets) fitted by `dsfhir calibrate`; absent = none.
    label_offsets: tuple[tuple[str, tuple[float, ...]], ...] = ()


class LlmBackend:
    """A SentenceBackend over a loaded model, a retriever and the lexicon."""

    def __init__(
        self,
        generator: Generator,
        retriever: Retriever,
        lexicon: Lexicon,
        info: EngineInfo,
        options: LlmOptions | None = None,
        event_floor: EventGazetteer | None = None,
    ) -> None:
        """``event_floor``: gazetteer events the model missed are added (see
        :func:`~extraction.rules.with_event_floor`); the model's events are its weak spot
        (dev: 0.75 precision, 0.63 recall alone)."""
        self.gen = generator
        self.event_floor = event_floor
        self.retriever = retriever
        self.lexicon = lexicon
        self._info = info
        self.opts = options or LlmOptions()
        self._option_ids = option_token_ids(generator.loaded.tokenizer)
        self._versions = dict(self.opts.prompt_versions)
        self._offsets = dict(self.opts.label_offsets)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def _prompts(self, task: str, inputs: Sequence[str]) -> list[str]:
        demos = self.retriever.nearest(task, inputs, self.opts.k)
        hint = self.lexicon.candidates if self.opts.hints else None
        version = self._versions.get(task)
        return [
            render_prompt(task, text, d, hint, version)
            for text, d in zip(inputs, demos, strict=True)
        ]

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        results = self.find_entities(sentences)
        ents = {i: list(r.record.entities) for i, r in enumerate(results) if r.record.entities}
        usage, rels = self.classify(sentences, ents, results)
        for i, found in ents.items():
            results[i].record = Record(
                f"s{i}", sentences[i], tuple(found), tuple(rels.get(i, ())), tuple(usage.get(i, ()))
            )
        return results

    def find_entities(self, sentences: Sequence[str]) -> list[SentenceResult]:
        """NER only: records with entities and no labels (for the hybrid backends)."""
        results = [SentenceResult(Record(f"s{i}", s)) for i, s in enumerate(sentences)]
        todo = [
            i for i, s in enumerate(sentences)
            if not self.opts.lexicon_gate or self.lexicon.mentions_any(s)
        ]  # fmt: skip
        self.gen.loaded.use("ner")
        outputs = self.gen.generate(self._prompts("ner", [sentences[i] for i in todo]))
        for i, out in zip(todo, outputs, strict=True):
            found = self._ground_ner(sentences[i], out, results[i])
            results[i].record = Record(f"s{i}", sentences[i], tuple(found))
        return results

    def _ground_ner(self, text: str, output: str, res: SentenceResult) -> list[Entity]:
        parsed = parse_list(output, (2, 3))
        if not parsed.valid:
            res.unparseable["ner"] += 1
        res.dropped_spans += parsed.invalid_items
        taken: list[tuple[int, int]] = []
        found: list[Entity] = []
        cursor = 0
        for item in parsed.items:
            kind, mention = item[0].lower(), item[1]
            span = find_span(text, mention, taken, cursor)
            if kind not in ("s", "e") or span is None:
                res.dropped_spans += 1
                continue
            taken.append(span)
            cursor = span[1]
            surface = text[span[0] : span[1]]
            if kind == "s":
                known = self.lexicon.normalize(surface)
                if known is None and self.opts.known_only:
                    continue  # e.g. a prescription drug or a lab name taken for a supplement
                norm = known or (item[2] if len(item) > 2 else "")
                found.append(
                    Entity("", "supplement", *span, surface, norm.lower() or surface.lower())
                )
            else:
                found.append(Entity("", "event", *span, surface))
        if self.opts.lexicon_floor:
            found = with_lexicon(found, self.lexicon, text)
        if self.event_floor is not None:
            found = with_event_floor(found, self.event_floor.find(text))
        if not any(e.type == "supplement" for e in found):
            return []  # events exist only beside a supplement (guidelines §4)
        found.sort(key=lambda e: e.start)
        return [
            Entity(f"T{n}", e.type, e.start, e.end, e.text, e.normalized)
            for n, e in enumerate(found, 1)
        ]

    def classify(
        self,
        sentences: Sequence[str],
        ents: Mapping[int, list[Entity]],
        results: list[SentenceResult],
    ) -> Labels:
        """UC for each supplement and RE (or TE) over entities found by any NER backend."""
        te_task = self.opts.te_mode == "task"
        usage, rels = labels_from_scores(self.label_scores(sentences, ents, not te_task))
        if te_task:
            return usage, self._te_task(sentences, ents, results)
        return usage, rels

    def label_scores(
        self, sentences: Sequence[str], ents: Mapping[int, list[Entity]], relations: bool = True
    ) -> dict[int, LabelScores]:
        """Label probabilities (softmax over the label tokens' scores, after any calibration
        offsets) for each supplement's status and each supplement x event pair."""
        out = {i: LabelScores() for i, found in ents.items() if found}
        sups = [(i, e) for i, found in ents.items() for e in found if e.type == "supplement"]
        probs = self._probs("uc", [mark(sentences[i], e) for i, e in sups])
        for (i, e), p in zip(sups, probs, strict=True):
            out[i].usage[e.id] = p
        if not relations:
            return out
        pairs = [
            (i, s, e)
            for i, found in ents.items()
            for s in found if s.type == "supplement"
            for e in found if e.type == "event"
        ]  # fmt: skip
        probs = self._probs("re", [mark(sentences[i], s, e) for i, s, e in pairs])
        for (i, s, e), p in zip(pairs, probs, strict=True):
            out[i].relations[(s.id, e.id)] = p
        return out

    def _probs(self, task: str, marked: list[str]) -> list[list[float]]:
        if not marked:
            return []
        prompts = [p + ANSWER_PREFIX[task] for p in self._prompts(task, marked)]
        self.gen.loaded.use(task)
        offsets = self._offsets.get(task, ()) or (0.0,) * len(LABELS[task])
        rows = self.gen.option_logits(prompts, self._option_ids[task])
        return [_softmax([v + o for v, o in zip(row, offsets, strict=True)]) for row in rows]

    def _te_task(
        self,
        sentences: Sequence[str],
        ents: Mapping[int, list[Entity]],
        results: list[SentenceResult],
    ) -> dict[int, list[Relation]]:
        """Relations from the TE prompt, attached to NER's entities by span overlap."""
        idx = [i for i, found in ents.items() if found]
        self.gen.loaded.use("te")
        outputs = self.gen.generate(self._prompts("te", [sentences[i] for i in idx]))
        out: dict[int, list[Relation]] = {}
        for i, output in zip(idx, outputs, strict=True):
            parsed = parse_list(output, (3,))
            results[i].unparseable["te"] += 0 if parsed.valid else 1
            for head, rel, tail in parsed.items:
                pair = _attach(sentences[i], ents[i], head, tail)
                if pair is None or rel not in ("indication", "adverse_event"):
                    results[i].dropped_spans += 1
                    continue
                if all((r.head, r.tail) != pair for r in out.get(i, [])):
                    out.setdefault(i, []).append(Relation(pair[0], pair[1], rel))
        return out


def _attach(text: str, found: list[Entity], head: str, tail: str) -> tuple[str, str] | None:
    def pick(mention: str, etype: str) -> str | None:
        span = find_span(text, mention, [])
        if span is None:
            return None
        for ent in found:
            if ent.type == etype and ent.start < span[1] and span[0] < ent.end:
                return ent.id
        return None

    h, t = pick(head, "supplement"), pick(tail, "event")
    return (h, t) if h and t else None


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]
