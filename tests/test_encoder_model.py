"""The encoder backend end to end on the real MiniLM.

A tiny in-test training run (16 sentences, 40 steps, one thread: seconds) lowers the loss,
learns its sentences, saves and reloads identically and resumes exactly; its output is
accepted by the evaluator, the note pipeline and the FHIR mappers. A regression guard
scores the shipped model (``models/ds-encoder``) on a fixed dev slice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from extraction.corpus import Record, load_corpus, parse_record, write_records
from extraction.encoder.backend import EncoderBackend, load_backend
from extraction.encoder.config import TrainConfig
from extraction.encoder.data import examples
from extraction.encoder.model import base_hash, build_model, default_base_dir, load_base
from extraction.encoder.normalize import Normalizer, merged_lexicon
from extraction.encoder.train import TrainResult, batch_loss, train
from extraction.evaluate import Predictions, load_predictions, score_sentences
from extraction.hybrid import HybridBackend, hybrid_info
from extraction.lexicon import Lexicon
from extraction.pipeline import NotePipeline
from extraction.rules import RulesBackend
from tests.conftest import REPO

CORPUS = REPO / "data" / "corpus"
LEXICON = REPO / "data" / "lexicon" / "supplements.tsv"
TINY = TrainConfig(
    epochs=8, batch_size=8, learning_rate=3e-4, warmup_fraction=0.1, max_length=64,
    seed=7, threads=1, checkpoint_every=1000, lora_rank=0,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # inference on one thread too


@pytest.fixture(scope="module")
def train_slice(supplement_train_slice: list[Record]) -> list[Record]:
    return supplement_train_slice


@pytest.fixture(scope="module")
def dev_slice() -> list[Record]:
    return load_corpus(CORPUS / "dev.jsonl")[:24]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, train_slice: list[Record]) -> TrainResult:
    out = tmp_path_factory.mktemp("encoder")
    return train(default_base_dir(), train_slice, [], out, TINY, progress=lambda _: None)


@pytest.fixture(scope="module")
def reloaded(tiny: TrainResult) -> EncoderBackend:
    # No project lexicon: the training slice's names are all it knows, as after training.
    return load_backend(tiny.out_dir, default_base_dir(), lexicon=None, nearest=False)


def predict(backend: EncoderBackend, gold: list[Record]) -> list[Record]:
    """Predictions as records with the gold ids (the backend numbers sentences s0, s1...)."""
    results = backend.predict([r.text for r in gold])
    return [dataclasses.replace(res.record, id=g.id) for g, res in zip(gold, results, strict=True)]


def scores(backend: EncoderBackend, gold: list[Record]) -> dict[str, Any]:
    return score_sentences(gold, Predictions(by_id={r.id: r for r in predict(backend, gold)}))


def test_a_few_steps_lower_the_loss(tiny: TrainResult, train_slice: list[Record]) -> None:
    tokenizer, encoder = load_base(default_base_dir())
    torch.manual_seed(TINY.seed)
    fresh = build_model(tokenizer, encoder)
    ner, marked = examples(tokenizer, train_slice, 64)
    pad_id = int(tokenizer.pad_token_id)

    def loss(model: Any) -> float:
        model.eval()
        with torch.no_grad():
            return float(batch_loss(model, "ner", ner, pad_id)) + float(
                batch_loss(model, "marked", marked, pad_id)
            )

    before, after = loss(fresh), loss(tiny.model)
    assert after < 0.5 * before, (before, after)
    assert tiny.state.step == tiny.manifest["steps"] >= 30 and tiny.manifest["completed"]


def test_the_tiny_run_learns_its_sentences(
    reloaded: EncoderBackend, train_slice: list[Record]
) -> None:
    report = scores(reloaded, train_slice)
    assert report["ner"]["per_type"]["supplement_relaxed"]["f1"] >= 0.7, report["ner"]
    assert report["ner"]["strict"]["f1"] >= 0.6
    assert report["uc"]["end_to_end"]["accuracy"] >= 0.5


def test_manifest_records_provenance(tiny: TrainResult, train_slice: list[Record]) -> None:
    m = tiny.manifest
    assert m["base_model_sha256"] == base_hash(default_base_dir())
    assert m["train_records"] == len(train_slice) and m["config"]["seed"] == TINY.seed
    assert len(m["weights_sha256"]) == 64 and len(m["train_corpus_sha256"]) == 64
    # The frozen word embeddings are not saved: about half of the 90 MB base.
    size = (tiny.out_dir / m["weights_file"]).stat().st_size
    assert 20e6 < size < 60e6
    assert not (tiny.out_dir / "checkpoint.pt").exists()  # removed once complete


def test_save_and_reload_give_identical_outputs(
    tiny: TrainResult, reloaded: EncoderBackend, dev_slice: list[Record]
) -> None:
    batch = tiny.tokenizer([r.text for r in dev_slice[:12]], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    markers = torch.zeros_like(ids)
    markers[:, 1] = 1
    heads = torch.ones(len(ids), dtype=torch.long)
    outs = []
    for model in (tiny.model, reloaded.model):
        model.eval()
        with torch.no_grad():
            states = model.marked_states(ids, markers, mask)
            outs.append((model.ner_logits(ids, mask), model.uc_logits(states, heads)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_resume_continues_exactly(tmp_path: Path, train_slice: list[Record]) -> None:
    cfg = TrainConfig(
        epochs=1,
        batch_size=4,
        max_length=48,
        seed=3,
        threads=1,
        checkpoint_every=2,
        max_steps=4,
        lora_rank=0,
    )
    base, records = default_base_dir(), train_slice[:8]
    part = tmp_path / "part"
    first = train(base, records, [], part, dataclasses.replace(cfg, max_steps=2))
    assert (part / "checkpoint.pt").is_file() and not first.manifest["completed"]
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
        if not rec.supplements:
            assert not rec.entities  # guidelines §4: no events without a supplement
    path = tmp_path / "pred.jsonl"
    write_records(path, preds)
    loaded = load_predictions(path)
    assert not loaded.invalid_lines
    report = score_sentences(dev_slice, loaded)
    assert report["missing_predictions"] == 0
    assert set(report) >= {"ner", "re", "te", "uc"}


def test_note_pipeline_and_mappers_accept_the_output(reloaded: EncoderBackend) -> None:
    from mappers.bundle import BundleOptions, note_bundle
    from mappers.note import NoteContext

    note = json.loads((CORPUS / "notes-dev.jsonl").read_text().splitlines()[0])["text"]
    (ext,) = NotePipeline(reloaded).extract([note])
    assert ext.sentences > 5 and ext.supplements
    for ent in ext.record.entities:
        assert note[ent.start : ent.end] == ent.text
    assert {s.status for s in ext.supplements} <= {"continue", "start", "discontinue", "uncertain"}
    json.dumps(ext.to_json())
    opts = BundleOptions(system="urn:test", software="t", recorded="2026-01-01T00:00:00Z")
    ctx = NoteContext(doc_id="d1", version_id="1", subject="Patient/p1")
    planned = note_bundle(ctx, ext.supplements, ext.facts, reloaded.info, opts)
    assert planned is not None and planned.bundle["resourceType"] == "Bundle"


def test_normalisation_falls_back_to_the_nearest_entry() -> None:
    lexicon = merged_lexicon(None, {"fish oil": "fish oil", "Ashwagandha": "ashwagandha"})
    vectors = {"fish oil": [1.0, 0.0], "Ashwagandha": [0.0, 1.0], "ashwagandha": [0.0, 1.0]}

    def embed(texts: Any) -> np.ndarray:
        known = {"omega pills": [0.96, 0.28], "furosemide": [0.6, 0.8]}
        return np.array([vectors.get(t) or known[t] for t in texts], dtype=np.float32)

    norm = Normalizer(lexicon, embed, floor=0.9)
    assert norm.resolve("Fish Oil") == ("fish oil", True)  # the lexicon first
    assert norm.resolve("omega pills") == ("fish oil", True)  # nearest entry, cos 0.96
    assert norm.resolve("furosemide") == ("furosemide", False)  # nothing close enough
    assert Normalizer(lexicon, None).resolve("Omega  Pills") == ("omega pills", False)


SHIPPED = REPO / "models" / "ds-encoder"


def test_regression_guard_on_a_fixed_dev_slice() -> None:
    """Floors a little under the shipped model's scores on the first 80 dev sentences."""
    lexicon = Lexicon.load(LEXICON) if LEXICON.is_file() else None
    backend = load_backend(SHIPPED, default_base_dir(), lexicon, nearest=False)
    report = scores(backend, load_corpus(CORPUS / "dev.jsonl")[:80])
    # Measured (LoRA, seed 13, 4 epochs): NER 0.858, UC 0.823, RE 0.765, TE 0.678.
    assert report["ner"]["strict"]["f1"] >= 0.83
    assert report["uc"]["end_to_end"]["accuracy"] >= 0.79
    assert report["re"]["end_to_end"]["macro_f1"] >= 0.72
    assert report["te"]["strict"]["f1"] >= 0.64


def _rules() -> RulesBackend:
    train = load_corpus(CORPUS / "train.jsonl")
    return RulesBackend(Lexicon.load(LEXICON), [e.text for r in train for e in r.events])


def test_classify_over_its_own_entities_matches_predict(
    reloaded: EncoderBackend, dev_slice: list[Record]
) -> None:
    texts = [r.text for r in dev_slice]
    own = reloaded.predict(texts)
    ents = {i: list(res.record.entities) for i, res in enumerate(own) if res.record.entities}
    assert ents  # the slice has supplements the tiny model finds
    usage, rels = reloaded.classify(texts, ents, own)
    for i in ents:
        assert usage.get(i, []) == list(own[i].record.usage)
        assert rels.get(i, []) == list(own[i].record.relations)


def test_reverse_hybrid_labels_another_backends_entities(
    reloaded: EncoderBackend, dev_slice: list[Record]
) -> None:
    """llm+encoder's shape: any NER backend's entities, the encoder's RE/UC labels."""
    rules = _rules()
    info = hybrid_info("lexicon+encoder", rules.info, reloaded.info)
    hybrid = HybridBackend(rules, reloaded, info)
    texts = [r.text for r in dev_slice]
    mixed, plain = hybrid.predict(texts), rules.predict(texts)
    assert any(res.record.supplements for res in mixed)
    for res, base in zip(mixed, plain, strict=True):
        rec = parse_record(res.record.to_json())  # gold-format valid: ids, offsets, one status
        assert rec.entities == base.record.entities  # NER is the rules backend's, untouched
        assert {u.entity for u in rec.usage} == {s.id for s in rec.supplements}
        assert all(rec.entity(r.head).type == "supplement" for r in rec.relations)
    assert hybrid.info.backend == "lexicon+encoder" and "+" in hybrid.info.adapter


def test_dsfhir_train_backend_encoder_uses_encoder_defaults(tmp_path: Path) -> None:
    """`dsfhir train --backend encoder` = `dsfhir encoder train`; unset flags keep its defaults."""
    from adapter.cli import main
    from extraction.encoder.config import TrainConfig

    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n[extraction]\nlexicon = "{LEXICON}"\n'
    )
    gold = REPO / "tests" / "data" / "eval_gold.jsonl"
    out = tmp_path / "enc"
    argv = ["--config", str(cfg), "train", "--backend", "encoder", "--train", str(gold),
            "--dev", str(gold), "--out", str(out), "--epochs", "1", "--max-steps", "2",
            "--threads", "1", "--lr", "1e-4"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 2
    assert manifest["config"]["learning_rate"] == 1e-4
    assert manifest["config"]["batch_size"] == TrainConfig().batch_size  # not the LLM's default
