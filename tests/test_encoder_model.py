"""The encoder backend end to end on the real MiniLM: a tiny in-test training run learns,
saves and reloads identically, resumes exactly, and its output is accepted by the
evaluator, the note pipeline and the FHIR mappers. A regression guard checks the fully
trained model of this checkout (``dsfhir encoder train``) when one is present.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from extraction.corpus import Record, load_corpus, parse_record, write_records
from extraction.encoder.backend import EncoderBackend, load_backend
from extraction.encoder.config import TrainConfig
from extraction.encoder.data import examples
from extraction.encoder.model import base_hash, build_model, default_base_dir, load_base
from extraction.encoder.train import TrainResult, batch_loss, train
from extraction.evaluate import Predictions, load_predictions, score_sentences
from extraction.pipeline import NotePipeline
from tests.conftest import REPO

CORPUS = REPO / "data" / "corpus"
# Small enough for a few seconds on 2 cores, large enough to learn common supplement names.
TINY = TrainConfig(
    epochs=1, batch_size=8, learning_rate=3e-4, warmup_fraction=0.0, max_length=64,
    seed=7, threads=2, checkpoint_every=1000, max_steps=36,
)  # fmt: skip


@pytest.fixture(scope="module")
def train_slice() -> list[Record]:
    return load_corpus(CORPUS / "train.jsonl")[:160]


@pytest.fixture(scope="module")
def dev_slice() -> list[Record]:
    return load_corpus(CORPUS / "dev.jsonl")[:40]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, train_slice: list[Record]) -> TrainResult:
    out = tmp_path_factory.mktemp("encoder")
    return train(default_base_dir(), train_slice, [], out, TINY, progress=lambda _: None)


@pytest.fixture(scope="module")
def reloaded(tiny: TrainResult) -> EncoderBackend:
    return load_backend(tiny.out_dir, default_base_dir(), lexicon=None)


def predict(backend: EncoderBackend, gold: list[Record]) -> list[Record]:
    """Predictions as records with the gold ids (the backend numbers sentences s0, s1...)."""
    results = backend.predict([r.text for r in gold])
    return [dataclasses.replace(res.record, id=g.id) for g, res in zip(gold, results, strict=True)]


def scores(backend: EncoderBackend, gold: list[Record]) -> dict[str, Any]:
    return score_sentences(gold, Predictions(by_id={r.id: r for r in predict(backend, gold)}))


def fixed_batches(tokenizer: Any, records: list[Record]) -> list[tuple[str, list[Any]]]:
    ner, marked = examples(tokenizer, records, 64)
    return [("ner", ner[:16]), ("marked", marked[:16])]


def eval_loss(model: Any, batches: list[tuple[str, list[Any]]], pad_id: int) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(batch_loss(model, kind, items, pad_id)) for kind, items in batches)


def test_a_few_steps_lower_the_loss(tiny: TrainResult, train_slice: list[Record]) -> None:
    tokenizer, encoder = load_base(default_base_dir())
    torch.manual_seed(TINY.seed)
    fresh = build_model(tokenizer, encoder)
    batches = fixed_batches(tokenizer, train_slice)
    pad_id = int(tokenizer.pad_token_id)
    before, after = eval_loss(fresh, batches, pad_id), eval_loss(tiny.model, batches, pad_id)
    assert after < 0.75 * before, (before, after)
    assert tiny.state.step == TINY.max_steps


def test_manifest_records_provenance(tiny: TrainResult, train_slice: list[Record]) -> None:
    m = tiny.manifest
    assert m["base_model_sha256"] == base_hash(default_base_dir())
    assert m["train_records"] == len(train_slice) and m["config"]["seed"] == TINY.seed
    assert len(m["weights_sha256"]) == 64 and not m["completed"]
    # The saved weights leave out the frozen word embeddings: well under the 90 MB base.
    size = (tiny.out_dir / m["weights_file"]).stat().st_size
    assert 20e6 < size < 60e6


def test_save_and_reload_give_identical_outputs(
    tiny: TrainResult, reloaded: EncoderBackend, dev_slice: list[Record]
) -> None:
    texts = [r.text for r in dev_slice[:12]]
    batch = tiny.tokenizer(texts, padding=True, return_tensors="pt")
    tiny.model.eval()
    with torch.no_grad():
        a = tiny.model.ner_logits(batch["input_ids"], batch["attention_mask"])
        b = reloaded.model.ner_logits(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(a, b)
    markers = torch.zeros_like(batch["input_ids"])
    markers[:, 1] = 1
    with torch.no_grad():
        sa = tiny.model.marked_states(batch["input_ids"], markers, batch["attention_mask"])
        sb = reloaded.model.marked_states(batch["input_ids"], markers, batch["attention_mask"])
    heads = torch.ones(len(texts), dtype=torch.long)
    assert torch.equal(tiny.model.uc_logits(sa, heads), reloaded.model.uc_logits(sb, heads))


def test_resume_continues_exactly(tmp_path: Path, train_slice: list[Record]) -> None:
    cfg = TrainConfig(
        epochs=1, batch_size=4, max_length=48, seed=3, threads=2, checkpoint_every=2, max_steps=4
    )
    part = tmp_path / "part"
    base = default_base_dir()
    records = train_slice[:24]
    train(base, records, [], part, dataclasses.replace(cfg, max_steps=2))
    resumed = train(base, records, [], part, cfg, resume=True)
    straight = train(base, records, [], tmp_path / "straight", cfg)
    assert resumed.state.step == straight.state.step == 4
    assert resumed.state.losses == straight.state.losses
    sa, sb = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_records_are_accepted_by_the_evaluator(
    reloaded: EncoderBackend, dev_slice: list[Record], tmp_path: Path
) -> None:
    preds = predict(reloaded, dev_slice)
    for rec in preds:
        parse_record(rec.to_json())  # strict gold-format validity: offsets, ids, one status
    path = tmp_path / "pred.jsonl"
    write_records(path, preds)
    loaded = load_predictions(path)
    assert not loaded.invalid_lines
    report = score_sentences(dev_slice, loaded)
    assert report["missing_predictions"] == 0
    assert set(report) >= {"ner", "re", "te", "uc"}


def test_the_tiny_model_has_learned(reloaded: EncoderBackend, dev_slice: list[Record]) -> None:
    """A learning floor on held-out sentences (the untrained heads score ~0 here)."""
    report = scores(reloaded, dev_slice)
    supp = report["ner"]["per_type"]["supplement_relaxed"]["f1"]
    assert supp >= 0.5, report["ner"]["per_type"]


def test_note_pipeline_and_mappers_accept_the_output(reloaded: EncoderBackend) -> None:
    from mappers.bundle import BundleOptions, note_bundle
    from mappers.note import NoteContext

    note = json.loads((CORPUS / "notes-dev.jsonl").read_text().splitlines()[0])["text"]
    (ext,) = NotePipeline(reloaded).extract([note])
    assert ext.sentences > 5 and ext.record.entities
    for ent in ext.record.entities:
        assert note[ent.start : ent.end] == ent.text
    assert {s.status for s in ext.supplements} <= {"continue", "start", "discontinue", "uncertain"}
    json.dumps(ext.to_json())
    opts = BundleOptions(system="urn:test", software="t", recorded="2026-01-01T00:00:00Z")
    ctx = NoteContext(doc_id="d1", version_id="1", subject="Patient/p1")
    bundle = note_bundle(ctx, ext.supplements, ext.facts, reloaded.info, opts)
    assert bundle is None or bundle.bundle["resourceType"] == "Bundle"


def trained_dir() -> Path:
    return REPO / ".dsfhir" / "encoder"


@pytest.mark.skipif(
    not (trained_dir() / "manifest.json").is_file()
    or not json.loads((trained_dir() / "manifest.json").read_text()).get("completed"),
    reason="no fully trained encoder in .dsfhir/encoder (run `dsfhir encoder train`)",
)
def test_regression_guard_on_a_fixed_dev_slice() -> None:
    """Floors a little under the trained model's scores on the first 80 dev sentences."""
    backend = load_backend(trained_dir(), default_base_dir(), lexicon=None)
    report = scores(backend, load_corpus(CORPUS / "dev.jsonl")[:80])
    assert report["ner"]["strict"]["f1"] >= 0.70
    assert report["uc"]["end_to_end"]["accuracy"] >= 0.55
    assert report["re"]["end_to_end"]["macro_f1"] >= 0.45
