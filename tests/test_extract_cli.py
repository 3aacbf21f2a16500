"""``dsfhir extract`` on the fast lexicon backend: records out, bad input isolated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[extraction]\n"
        'backend = "lexicon"\n'
        f'lexicon = "{REPO / "data/lexicon/supplements.tsv"}"\n'
        f'event_terms = "{REPO / "data/corpus/train.jsonl"}"\n'
        "max_note_chars = 200000\n"
    )
    return cfg


def test_extract_file_isolates_bad_records(config: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    good = {"id": "a", "text": "Continue fish oil for high triglycerides.\nStopped ginkgo in May."}
    huge = {"id": "big", "text": "Takes magnesium for leg cramps. " * 33_000}  # ~1 MB
    src.write_bytes(
        b"\n".join(
            [
                json.dumps(good).encode(),
                json.dumps({"id": "empty", "text": "  "}).encode(),
                b'{"id": "latin1", "text": "caf\xe9"}',
                json.dumps({"text": "no id"}).encode(),
                json.dumps(huge).encode(),
                json.dumps({"id": "z", "text": "Melatonin 3 mg qhs for insomnia."}).encode(),
            ]
        )
    )
    out = tmp_path / "out.jsonl"
    rc = main(["--config", str(config), "extract", "--input", str(src), "--output", str(out)])
    assert rc == 1  # some records failed, none lost
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a", "empty", "line-3", "line-4", "big", "z"}
    assert "text is empty" in rows["empty"]["error"]
    assert "UTF-8" in rows["line-3"]["error"] or "utf-8" in rows["line-3"]["error"]
    assert "id" in rows["line-4"]["error"]
    assert rows["big"]["truncated"] is True
    names = {s["normalized"]: s["status"] for s in rows["a"]["supplements"]}
    assert names == {"fish oil": "continue", "ginkgo": "discontinue"}
    assert rows["z"]["entities"][0]["text"] == "Melatonin"


def test_extract_text_prints_a_readable_result(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "extract", "--text", "Started vitamin D 2000 IU."]) == 0
    out = capsys.readouterr().out
    assert "vitamin d: start" in out


def test_extract_needs_output_with_input(config: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("")
    assert main(["--config", str(config), "extract", "--input", str(src)]) == 2


@pytest.mark.parametrize("backend", ["encoder+llm", "llm+encoder", "ensemble"])
def test_hybrid_without_a_trained_encoder_says_what_to_run(
    backend: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(config), "extract", "--backend", backend, "--k", "0", "--text", "x y"]
    assert main(argv) == 1
    assert "dsfhir encoder train" in capsys.readouterr().err


def test_the_engine_reports_its_switches_and_the_cli_overrides_them(config: Path) -> None:
    import argparse

    from adapter.cli_extract import overridden
    from adapter.config import load_settings
    from adapter.engine import opened_extractor

    settings = load_settings(config, {})
    with opened_extractor(settings, None) as extractor:
        assert extractor.info.options == "lexicon-gate+known-only+lexicon-floor+status-rules"
    flags = {"backend": "llm", "te_mode": None, "no_gate": True, "lexicon_floor": False,
             "event_floor": True, "status_rules": False, "calibration": None, "k": None,
             "adapter": None, "ensemble_encoder_weight": 0.75}  # fmt: skip
    ext = overridden(argparse.Namespace(**flags), settings).extraction
    assert (ext.backend, ext.lexicon_gate, ext.lexicon_floor) == ("llm", False, False)
    assert ext.ensemble_encoder_weight == 0.75
    assert (ext.event_floor, ext.status_rules) == (True, False)
    bad = {**flags, "ensemble_encoder_weight": 1.5}
    with pytest.raises(ConfigError, match="ensemble_encoder_weight"):
        overridden(argparse.Namespace(**bad), settings)


def test_the_ensembles_switches_name_its_label_weight(config: Path) -> None:
    from adapter.config import load_settings
    from adapter.engine import pipeline_options

    settings = load_settings(config, {"DSFHIR_EXTRACTION__BACKEND": "ensemble"})
    assert pipeline_options(settings) == (
        "lexicon-gate+known-only+lexicon-floor+event-floor+status-rules+encoder-weight-1"
    )
    weighted = load_settings(
        config,
        {
            "DSFHIR_EXTRACTION__BACKEND": "ensemble",
            "DSFHIR_EXTRACTION__ENSEMBLE_ENCODER_WEIGHT": "0.5",
        },
    )
    assert pipeline_options(weighted).endswith("+encoder-weight-0.5")


@pytest.mark.parametrize(
    ("argv", "manifest"),
    [
        (["train"], '{"adapter_sha256": "x"}'),  # the LLM adapter in model.adapter
        (["train", "--backend", "encoder"], '{"completed": true}'),  # the encoder dir
        (["encoder", "train"], '{"completed": true}'),
    ],
)
def test_training_does_not_replace_the_configured_model_unasked(
    argv: list[str], manifest: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "shipped"
    model.mkdir()
    (model / "manifest.json").write_text(manifest)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n[model]\nadapter = "{model}"\n'
        f'[encoder]\nmodel_dir = "{model}"\nlabel_model_dirs = []\n'
    )
    assert main(["--config", str(cfg), *argv]) == 1
    assert "--out DIR" in capsys.readouterr().err
    assert [p.name for p in model.iterdir()] == ["manifest.json"]  # untouched
