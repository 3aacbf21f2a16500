"""The command line: help, usage errors, exit codes, config show, db commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.cli import main


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sub", [["db", "--help"], ["data", "stats", "--help"], ["config", "show", "--help"]]
)
def test_every_subcommand_has_help(sub: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(sub)
    assert exc.value.code == 0


@pytest.mark.parametrize("argv", [["nope"], ["db"], ["data", "validate"], ["--config"]])
def test_usage_errors_exit_two(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_config_error_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[retrieval]\nk = -1\n")
    assert main(["--config", str(bad), "config", "show"]) == 1
    assert "[retrieval] k" in capsys.readouterr().err


def test_config_show_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[auth]\nmethod = "basic"\nusername = "svc"\n')
    monkeypatch.setenv("DSFHIR_AUTH__PASSWORD", "hunter2")
    assert main(["--config", str(cfg), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    data = json.loads(out.split("\n", 1)[1])
    assert data["auth"]["password"] == "***"
    assert data["auth"]["username"] == "svc"


def test_db_migrate_and_status_against_external_dsn(
    fresh_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    monkeypatch.setenv("DSFHIR_DATABASE__DSN", fresh_dsn)
    assert main(["--config", str(cfg), "db", "status"]) == 0
    assert "pending" in capsys.readouterr().out
    assert main(["--config", str(cfg), "db", "migrate"]) == 0
    assert "applied 0001" in capsys.readouterr().out
    assert main(["--config", str(cfg), "db", "migrate"]) == 0
    assert "nothing to apply" in capsys.readouterr().out


def test_unreachable_database_is_a_clean_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[database]\nconnect_timeout_s = 1.0\n")
    monkeypatch.setenv("DSFHIR_DATABASE__DSN", f"postgresql://x@/nodb?host={tmp_path}")
    assert main(["--config", str(cfg), "db", "status"]) == 1
    assert "cannot connect to Postgres" in capsys.readouterr().err
