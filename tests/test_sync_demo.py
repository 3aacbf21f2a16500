"""``examples/demo.py`` (what ``make demo`` runs): the full flow, and a re-run writes nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO
from tests.fhir_server import config_toml


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dsfhir_demo", REPO / "examples" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_end_to_end_and_a_rerun_writes_nothing(
    tmp_path: Path, fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    # the shipped lexicon and corpus event terms, like `make demo`
    body = config_toml("", fresh_dsn, tmp_path / "state", tmp_path / "engine")
    body = body.replace(f'lexicon = "{tmp_path / "engine" / "supplements.tsv"}"',
                        f'lexicon = "{REPO / "data" / "lexicon" / "supplements.tsv"}"')  # fmt: skip
    config.write_text(body)
    demo = load_demo()

    assert demo.main(["--config", str(config), "--backend", "lexicon"]) == 0
    first = capsys.readouterr().out
    assert "seeded: 19 new patients/notes" in first  # 6 patients, 13 notes
    assert "cycle 1: sync cycle ok: notes seen=13 processed=12" in first
    assert "amended: 2 notes got a second version" in first
    assert "cycle 2: sync cycle ok: notes seen=2 processed=2" in first
    assert "Patient/demo-p3" in first
    assert "DocumentReference/demo-n7: no-text-attachment: application/pdf" in first
    assert "entered-in-error" in first  # the amended cardiology note dropped a supplement
    assert '"code": "AIAST"' in first

    assert demo.main(["--config", str(config), "--backend", "lexicon"]) == 0
    again = capsys.readouterr().out
    assert "seeded: 0 new" in again and "amended: 0 notes" in again
    assert again.count("resources written=0") == 2
    assert (
        first.split("== written back")[1].split("== one example")[0]
        == (again.split("== written back")[1].split("== one example")[0])
    )
