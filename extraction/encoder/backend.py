"""The encoder :class:`~extraction.pipeline.SentenceBackend`: NER, then UC and RE per supplement.

Per batch of sentences: one NER pass over all of them; entities decoded from word BIO
labels; events dropped where no supplement was found (guidelines §4: such sentences have
no entities); names normalised; then one marked pass per supplement gives its usage status
and its relation to every event of the sentence. TE triples are the non-``not_related``
relations.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from extraction.api import EngineInfo
from extraction.corpus import Entity, Record
from extraction.encoder.data import filler_id, marked_batch, mask_of, pad
from extraction.encoder.model import (
    MultiTaskEncoder,
    add_lora,
    base_hash,
    base_name,
    build_model,
    load_base,
    load_weights,
    merge_lora,
)
from extraction.encoder.normalize import LazyEmbedder, Normalizer, merged_lexicon
from extraction.encoder.tokens import Encoding, Marked, decode, encode, mark
from extraction.errors import ModelLoadError
from extraction.lexicon import Lexicon
from extraction.pipeline import Labels, LabelScores, SentenceResult, labels_from_scores
from extraction.rules import with_lexicon

ENCODER_TASK_VERSION = "encoder-1"
MANIFEST = "manifest.json"
NAMES_FILE = "names.json"
INDEX_FILE = "surface_vectors.npz"
# Inference reads up to this many subwords per sentence: the pipeline cuts sentences at
# 600 characters (~200 subwords), well inside the encoder's 512 positions.
INFER_MAX_LENGTH = 320


def software_version() -> str:
    try:
        return version("dsfhir")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class EncoderOptions:
    """Inference options.

    ``known_only``: drop supplement mentions that neither the lexicon nor its nearest entry
    by embedding recognises (in full notes these are mostly prescription drugs on med lists
    and abbreviations); off, new products are kept under their own lower-cased name.
    ``lexicon_gate``: skip the model for sentences without any lexicon candidate (most
    sentences of a note): several times faster on notes, but a supplement written in a form
    the lexicon cannot match is then never seen (with ``known_only`` it is dropped anyway
    unless its embedding is close to an entry).
    """

    batch_size: int = 32
    known_only: bool = True
    lexicon_gate: bool = False
    lexicon_floor: bool = False  # see extraction.rules.with_lexicon


class EncoderBackend:
    """Sentences in, per-sentence records out (offsets into each sentence)."""

    def __init__(
        self,
        model: MultiTaskEncoder,
        tokenizer: Any,
        normalizer: Normalizer,
        info: EngineInfo,
        options: EncoderOptions | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self._info = info
        self.options = options or EncoderOptions()
        self.batch_size = self.options.batch_size

    @property
    def info(self) -> EngineInfo:
        return self._info

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        return self._predict(sentences, self._records)

    def find_entities(self, sentences: Sequence[str]) -> list[SentenceResult]:
        """NER only: records with entities and no labels (for the hybrid backends)."""
        return self._predict(sentences, self._entity_records)

    def _predict(
        self, sentences: Sequence[str], records: Callable[[Sequence[str]], list[Record]]
    ) -> list[SentenceResult]:
        gate = self.normalizer.lexicon
        todo = [
            i for i, s in enumerate(sentences)
            if not self.options.lexicon_gate or gate.mentions_any(s)
        ]  # fmt: skip
        found = dict(zip(todo, records([sentences[i] for i in todo]), strict=True))
        return [
            SentenceResult(dataclasses.replace(found[i], id=f"s{i}") if i in found
                           else Record(f"s{i}", text))
            for i, text in enumerate(sentences)
        ]  # fmt: skip

    @contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def classify(
        self,
        sentences: Sequence[str],
        ents: Mapping[int, list[Entity]],
        results: list[SentenceResult],
    ) -> Labels:
        """UC and RE over entities found by another NER backend (the reverse hybrid)."""
        return labels_from_scores(self.label_scores(sentences, ents))

    def label_scores(
        self, sentences: Sequence[str], ents: Mapping[int, list[Entity]]
    ) -> dict[int, LabelScores]:
        """Label probabilities over entities found by any NER backend (for label fusion)."""
        idx = [i for i, found in ents.items() if found]
        with self._inference():
            encs = [encode(self.tokenizer, sentences[i], INFER_MAX_LENGTH) for i in idx]
            scores = self._scores(encs, [ents[i] for i in idx])
        return dict(zip(idx, scores, strict=True))

    def _found(self, sentences: Sequence[str]) -> tuple[list[Encoding], list[list[Entity]]]:
        encs = [encode(self.tokenizer, s, INFER_MAX_LENGTH) for s in sentences]
        entities = [self._entities(text, ents) for text, ents in zip(
            sentences, self._ner(encs), strict=True)]  # fmt: skip
        return encs, entities

    def _entity_records(self, sentences: Sequence[str]) -> list[Record]:
        with self._inference():
            _, entities = self._found(sentences)
        return [Record("", s, tuple(ents)) for s, ents in zip(sentences, entities, strict=True)]

    def _records(self, sentences: Sequence[str]) -> list[Record]:
        with self._inference():
            encs, entities = self._found(sentences)
            usage, relations = labels_from_scores(dict(enumerate(self._scores(encs, entities))))
        return [
            Record("", text, tuple(ents), tuple(relations[i]), tuple(usage[i]))
            for i, (text, ents) in enumerate(zip(sentences, entities, strict=True))
        ]

    def _batches(self, n: int, lengths: Sequence[int]) -> list[list[int]]:
        # Sorting by length keeps padding (most of the cost on short sentences) low.
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def _ner(self, encs: Sequence[Encoding]) -> list[list[tuple[str, int, int]]]:
        out: list[list[tuple[str, int, int]]] = [[] for _ in encs]
        pad_id = int(self.tokenizer.pad_token_id)
        for idx in self._batches(len(encs), [len(e.input_ids) for e in encs]):
            rows = [encs[i].input_ids for i in idx]
            logits = self.model.ner_logits(pad(rows, pad_id), mask_of(rows))
            best = logits.argmax(-1).tolist()
            for row, i in enumerate(idx):
                firsts = [first for first, _ in encs[i].word_tokens]
                out[i] = decode(encs[i], [best[row][t] for t in firsts])
        return out

    def _entities(self, text: str, spans: Sequence[tuple[str, int, int]]) -> list[Entity]:
        found: list[Entity] = []
        for etype, start, end in sorted(spans, key=lambda s: s[1]):
            surface, norm = text[start:end], None
            if etype == "supplement":
                norm, known = self.normalizer.resolve(surface)
                if self.options.known_only and not known:
                    continue
            found.append(Entity("", etype, start, end, surface, norm))
        if self.options.lexicon_floor:
            found = with_lexicon(found, self.normalizer.lexicon, text)
        if not any(e.type == "supplement" for e in found):
            return []  # events exist only beside a supplement (guidelines §4)
        return [
            Entity(f"T{n}", e.type, e.start, e.end, e.text, e.normalized)
            for n, e in enumerate(found, start=1)
        ]

    def _scores(
        self, encs: Sequence[Encoding], entities: Sequence[Sequence[Entity]]
    ) -> list[LabelScores]:
        jobs: list[tuple[int, Entity, list[Entity], Marked]] = []
        filler = filler_id(self.tokenizer)
        for i, (enc, ents) in enumerate(zip(encs, entities, strict=True)):
            events = [e for e in ents if e.type == "event"]
            for sup in (e for e in ents if e.type == "supplement"):
                spans = [(e.start, e.end) for e in events]
                m = mark(enc, (sup.start, sup.end), spans, filler)
                if m is not None:
                    jobs.append((i, sup, events, m))
        out = [LabelScores() for _ in encs]
        pad_id = int(self.tokenizer.pad_token_id)
        for idx in self._batches(len(jobs), [len(j[3].input_ids) for j in jobs]):
            batch = marked_batch([jobs[k][3] for k in idx], pad_id)
            states = self.model.marked_states(batch.input_ids, batch.markers, batch.attention_mask)
            statuses = self.model.uc_logits(states, batch.sup_heads).softmax(-1).tolist()
            rels = self.model.re_logits(
                states, batch.pair_rows, batch.pair_sup, batch.pair_ev
            ).softmax(-1).tolist()  # fmt: skip
            pair = 0
            for row, k in enumerate(idx):
                sent, sup, events, m = jobs[k]
                out[sent].usage[sup.id] = statuses[row]
                for ev, head in zip(events, m.event_heads, strict=True):
                    if head is not None:
                        out[sent].relations[(sup.id, ev.id)] = rels[pair]
                        pair += 1
        return out


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"no trained encoder at {model_dir} (run `dsfhir encoder train`)")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def load_backend(
    model_dir: Path,
    base_dir: Path,
    lexicon: Lexicon | None,
    options: EncoderOptions | None = None,
    nearest: bool = True,
) -> EncoderBackend:
    """A trained encoder from ``model_dir`` on the base it was trained from (hash-checked).

    ``nearest``: map surfaces the lexicon does not know to the nearest entry by embedding
    (loads the base model a second time, on the first such surface).
    """
    manifest = read_manifest(model_dir)
    digest = base_hash(base_dir)
    if manifest.get("base_model_sha256") != digest:
        raise ModelLoadError(
            f"{model_dir} was trained on a different base model than {base_dir} "
            "(hash mismatch); retrain with `dsfhir encoder train`"
        )
    tokenizer, encoder = load_base(base_dir)
    model = build_model(tokenizer, encoder)
    config = manifest.get("config", {})
    if config.get("lora_rank"):
        if not config.get("lora_alpha"):
            raise ModelLoadError(f"{model_dir}: the manifest gives lora_rank but no lora_alpha")
        add_lora(model, int(config["lora_rank"]), int(config["lora_alpha"]))
    load_weights(model, model_dir)
    if config.get("lora_rank"):
        merge_lora(model)
    model.eval()
    names = json.loads((model_dir / NAMES_FILE).read_text(encoding="utf-8"))
    embed = LazyEmbedder(base_dir) if nearest else None
    normalizer = Normalizer(merged_lexicon(lexicon, names), embed, cache=model_dir / INDEX_FILE)
    info = EngineInfo(
        backend="encoder",
        software_version=software_version(),
        task_version=ENCODER_TASK_VERSION,
        base_model=f"{base_name(base_dir)}@{digest[:12]}",
        adapter=f"{model_dir.name}@{str(manifest.get('weights_sha256', ''))[:12]}",
    )
    return EncoderBackend(model, tokenizer, normalizer, info, options)
