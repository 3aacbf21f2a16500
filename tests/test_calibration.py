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
    assert training_runs(new) == [second, first]
    (old / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(ModelLoadError, match="gone or changed"):
        training_runs(new)
    init["runs"] = [options_json(first)]  # recorded: no longer needs the old adapter
    (new / "manifest.json").write_text(json.dumps(manifest))
    assert training_runs(new) == [second, first]


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
