"""Label-prior correction: which instances are unseen, the offset fit, the manifest chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapter.cli_calibrate import training_runs
from extraction.calibration import fit_offsets, gold_index, score, unseen_instances
from extraction.corpus import load_corpus
from extraction.errors import ModelLoadError
from extraction.tasks import instances
from extraction.training import TrainOptions, options_from_json, options_json, select_instances

DATA = Path(__file__).parent / "data"


def test_unseen_instances_exclude_every_run_behind_the_adapter() -> None:
    pool = [i for r in load_corpus(DATA / "eval_gold.jsonl") for i in instances(r)]
    first = TrainOptions(seed=1, max_per_task=(("re", 2), ("uc", 2)))
    second = TrainOptions(seed=2, max_per_task=(("re", 2), ("uc", 2)))
    seen = {(i.task, i.example_id) for o in (first, second) for i in select_instances(pool, o)}
    unseen = unseen_instances(pool, [first, second])
    assert unseen and all(i.task in ("re", "uc") for i in unseen)
    assert not seen & {(i.task, i.example_id) for i in unseen}
    everything = {(i.task, i.example_id) for i in pool if i.task in ("re", "uc")}
    assert seen & everything | {(i.task, i.example_id) for i in unseen} == everything


def test_offsets_undo_a_skewed_prior() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=300)
    logits = rng.normal(size=(300, 3)).astype(np.float32)
    logits[np.arange(300), gold] += 1.5  # informative ...
    logits[:, 0] += 2.0  # ... but biased to label 0
    fit = fit_offsets("re", logits, list(gold))
    assert fit.after > fit.before + 0.1
    assert fit.offsets[0] == 0.0 and min(fit.offsets[1:]) > 0  # the others are lifted
    shifted = (logits + np.asarray(fit.offsets)).argmax(axis=1)
    assert score("re", gold, shifted) == pytest.approx(fit.after)


def test_no_evidence_means_no_correction() -> None:
    gold = [0, 1, 2, 3]
    logits = np.eye(4, dtype=np.float32) * 5
    fit = fit_offsets("uc", logits, gold)
    assert fit.offsets == (0.0, 0.0, 0.0, 0.0) and fit.before == fit.after == 1.0


def test_gold_index_reads_targets_and_refuses_unknown() -> None:
    assert gold_index("re", '{"relation":"adverse_event"}') == 1
    assert gold_index("uc", '{"usage":"uncertain"}') == 3
    with pytest.raises(ValueError, match="names none of"):
        gold_index("uc", '{"usage":"maybe"}')


def test_options_round_trip_through_a_manifest() -> None:
    opts = TrainOptions(max_per_task=(("ner", 3),), train_k=(0, 1), init_adapter="x")
    assert options_from_json(json.loads(json.dumps(options_json(opts)))) == opts


def test_training_runs_follow_warm_starts(tmp_path: Path) -> None:
    first, second = TrainOptions(seed=1), TrainOptions(seed=2)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"weights")
    (old / "manifest.json").write_text(json.dumps({"train_options": options_json(first)}))
    from extraction.llm import file_sha256

    init = {"path": str(old), "sha256": file_sha256(old / "adapter_model.safetensors")}
    manifest = {"train_options": options_json(second), "init_adapter": init}
    (new / "manifest.json").write_text(json.dumps(manifest))
    assert [run.options for run in training_runs(new)] == [second, first]
    (old / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(ModelLoadError, match="gone or changed"):
        training_runs(new)
    init["runs"] = [{"train_options": options_json(first)}]  # recorded: old adapter not needed
    (new / "manifest.json").write_text(json.dumps(manifest))
    assert [run.options for run in training_runs(new)] == [second, first]


def test_a_correction_that_does_not_generalise_is_dropped() -> None:
    from extraction.calibration import cross_checked_fit

    rng = np.random.default_rng(1)
    gold = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4)).astype(np.float32)  # pure noise: nothing to correct
    fit = cross_checked_fit("uc", logits, list(gold))
    assert fit.offsets == (0.0, 0.0, 0.0, 0.0) and fit.after == fit.before
    assert fit.held_out_gain is not None and fit.held_out_gain < 0.02
    logits[np.arange(200), gold] += 1.5
    logits[:, 0] += 2.5  # a real, learnable prior skew
    kept = cross_checked_fit("uc", logits, list(gold))
    assert kept.after > kept.before and kept.held_out_gain is not None
    assert kept.held_out_gain >= 0.02


def test_calibration_refuses_a_run_on_another_corpus(tmp_path: Path) -> None:
    from adapter.cli_calibrate import _unseen

    corpus = tmp_path / "train.jsonl"
    corpus.write_text((DATA / "eval_gold.jsonl").read_text())
    manifest = {"train_options": options_json(TrainOptions()), "corpus": {"x": "0" * 64}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="another corpus"):
        _unseen(tmp_path, corpus)


def _manifest(path: Path, calibration: dict[str, object]) -> None:
    data = {"adapter_sha256": "abc", "calibration": calibration}
    (path / "manifest.json").write_text(json.dumps(data))


def test_offsets_are_checked_when_the_adapter_loads(tmp_path: Path) -> None:
    from extraction.llm import adapter_label_offsets

    good = {"re": {"offsets": [0, 0.5, 1]}, "uc": {"offsets": [0, 0, 0, 0]}}
    _manifest(tmp_path, {"adapter_sha256": "abc", "tasks": good})
    assert adapter_label_offsets(tmp_path) == {"re": (0.0, 0.5, 1.0), "uc": (0.0,) * 4}
    _manifest(tmp_path, {"adapter_sha256": "old", "tasks": good})
    with pytest.raises(ModelLoadError, match="other weights"):
        adapter_label_offsets(tmp_path)
    _manifest(tmp_path, {"adapter_sha256": "abc", "tasks": {"re": {"offsets": [0, 1]}}})
    with pytest.raises(ModelLoadError, match="does not fit its labels"):
        adapter_label_offsets(tmp_path)
    assert adapter_label_offsets(None) == {}


def test_calibration_is_named_in_provenance() -> None:
    from adapter.engine import calibration_tag
    from extraction.llm_backend import LlmOptions

    assert calibration_tag(LlmOptions()) == ""
    one = calibration_tag(LlmOptions(label_offsets=(("re", (0.0, 0.5, 1.0)),)))
    two = calibration_tag(LlmOptions(label_offsets=(("re", (0.0, 0.5, 1.5)),)))
    assert one.startswith("+cal:") and one != two


def test_warm_start_must_not_overwrite_itself_or_change_shape(tmp_path: Path) -> None:
    from adapter.cli_model import check_warm_start

    init = tmp_path / "init"
    init.mkdir()
    config = {"r": 8, "lora_alpha": 16, "target_modules": list(reversed(TrainOptions().targets))}
    (init / "adapter_config.json").write_text(json.dumps(config))
    check_warm_start(init, [tmp_path / "out"], TrainOptions())  # same shape, other output
    with pytest.raises(ModelLoadError, match="also the output directory"):
        check_warm_start(init, [tmp_path / "init"], TrainOptions())
    with pytest.raises(ModelLoadError, match="pass the same --rank"):
        check_warm_start(init, [tmp_path / "out"], TrainOptions(rank=16))
