"""Configuration: defaults, the documented file, each kind of bad value, env overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from adapter.config import Settings, load_settings, masked_dump
from adapter.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_defaults_load_without_a_file() -> None:
    settings = load_settings(None, environ={})
    assert settings.database.dsn.get_secret_value() == ""
    assert settings.retrieval.k == 0
    assert settings.auth.method == "none"


def test_shipped_config_documents_every_setting_with_its_default() -> None:
    """config.toml must list every key, each set to the code's default."""
    shipped = load_settings(REPO / "config.toml", environ={})
    defaults = load_settings(None, environ={})
    doc = tomllib.loads((REPO / "config.toml").read_text())
    for section in masked_dump(defaults):
        model = type(getattr(defaults, section))
        assert set(doc[section]) == set(model.model_fields), section
    dumped = masked_dump(shipped)
    for section, values in masked_dump(defaults).items():
        for key, value in values.items():
            if isinstance(value, str) and value.startswith("/"):
                continue  # paths resolve against different base dirs
            assert dumped[section][key] == value, f"[{section}] {key}"


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[paths]\nstate_dir = "state"\n'), environ={})
    assert settings.state_dir == (tmp_path / "state").resolve()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[bogus]\nx = 1\n", "[bogus]: unknown section"),
        ("[database]\npool_size = 3\n", "[database] pool_size"),
        ('[database]\npool_min_size = "two"\n', "[database] pool_min_size"),
        ("[retrieval]\nk = 99\n", "[retrieval] k"),
        ('[model]\ndevice = "tpu"\n', "[model] device"),
        ("[database]\npool_min_size = 5\npool_max_size = 2\n", "pool_max_size must be"),
        ('[auth]\nmethod = "smart"\nclient_id = "x"\n', "auth.private_key_path is required"),
        ("[fhir]\nverify_tls = 1\n", "[fhir] verify_tls"),
        ("[model]\nthreads = 2\n", "set encoder.threads = model.threads (now 1 and 2)"),
    ],
)
def test_bad_values_fail_naming_key_and_file(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[database\n"), environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_env_overrides_secrets_dsn_and_numbers(tmp_path: Path) -> None:
    env = {
        "DSFHIR_DATABASE__DSN": "postgresql://u:pw@db.example/dsfhir",
        "DSFHIR_AUTH__METHOD": "bearer",
        "DSFHIR_AUTH__TOKEN": "s3cret",
        "DSFHIR_RETRIEVAL__K": "5",
        "UNRELATED": "x",
    }
    settings = load_settings(write(tmp_path, "[retrieval]\nk = 2\n"), environ=env)
    assert settings.database.dsn.get_secret_value().endswith("/dsfhir")
    assert settings.retrieval.k == 5
    dumped = masked_dump(settings)
    assert dumped["auth"]["token"] == "***"
    assert dumped["database"]["dsn"] == "***"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DSFHIR_NOPE__X": "1"}, "unknown section [nope]"),
        ({"DSFHIR_DATABASE__NOPE": "1"}, "unknown key [database] nope"),
        ({"DSFHIR_RETRIEVAL__K": "many"}, "DSFHIR_RETRIEVAL__K"),
    ],
)
def test_bad_env_overrides_are_named(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ=env)
    assert expected in str(err.value)


def test_settings_are_frozen() -> None:
    settings = load_settings(None, environ={})
    with pytest.raises(ValueError, match="frozen"):
        settings.retrieval.k = 7  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_path_lists_load_from_toml_and_env(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[encoder]\nlabel_model_dirs = ["a", "b/c"]\n')
    settings = load_settings(cfg, environ={})
    assert settings.encoder.label_model_dirs == (Path("a"), Path("b/c"))
    none = load_settings(cfg, environ={"DSFHIR_ENCODER__LABEL_MODEL_DIRS": "[]"})
    assert none.encoder.label_model_dirs == ()
