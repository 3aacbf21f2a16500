"""``dsfhir sync --once [--dry-run DIR]`` and ``dsfhir report`` through the real entry point."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapter import migrate
from adapter.cli import main
from tests.fhir_server import SekmetServer, config_toml, docref, patient, run_sekmet

NOTE = (
    "Continues vitamin D3 2000 IU daily. She stopped ginkgo due to bruising. "
    "Recommend starting magnesium for muscle cramps."
)


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    with run_sekmet(tmp_path_factory.mktemp("cli-fhir")) as srv:
        srv.put(patient("p1"))
        srv.put(docref("n1", "p1", NOTE))
        yield srv


def test_sync_once_dry_run_then_real_run_then_report(
    server: SekmetServer, fresh_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_toml(server.base_url, fresh_dsn, tmp_path / "state", tmp_path))

    assert main(["--config", str(config), "sync", "--once"]) == 1  # schema not migrated yet
    assert "dsfhir db migrate" in capsys.readouterr().err
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        migrate.apply_pending(conn, migrate.default_migrations_dir())

    dry = tmp_path / "bundles"
    assert main(["--config", str(config), "sync", "--once", "--dry-run", str(dry)]) == 0
    out = capsys.readouterr().out
    assert "notes seen=1 processed=1" in out and "resources written=0" in out
    bundle = json.loads((dry / "n1_1.json").read_text())
    assert len(bundle["entry"]) == 5  # 3 statements, 1 observation, 1 provenance
    assert server.search("MedicationStatement") == []

    assert main(["--config", str(config), "sync", "--once"]) == 0
    assert "resources written=5" in capsys.readouterr().out
    assert main(["--config", str(config), "sync", "--once"]) == 0
    assert "notes seen=0" in capsys.readouterr().out

    assert main(["--config", str(config), "report"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[0] == "Patient/p1"
    body = "\n".join(report)
    assert "ginkgo" in body and "stopped" in body
    assert "magnesium" in body and "intended" in body
    assert "adverse event: bruising <- ginkgo" in body


def test_sync_needs_once_and_a_base_url(
    tmp_path: Path, fresh_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_toml("", fresh_dsn, tmp_path / "state", tmp_path))
    assert main(["--config", str(config), "sync"]) == 1
    assert "--once" in capsys.readouterr().err
    assert main(["--config", str(config), "sync", "--once"]) == 1
    assert "base_url is required" in capsys.readouterr().err
