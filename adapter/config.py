"""The one configuration object: ``config.toml`` validated into frozen models, env overrides on top.

Every setting has a default here and is documented in ``config.toml``. Relative paths
resolve against the directory of the config file, so a deployment is relocatable.
Environment variables ``DSFHIR_<SECTION>__<KEY>`` override any key (meant for secrets
and the DSN, which should not live in the file).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from adapter.errors import ConfigError

ENV_PREFIX = "DSFHIR_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PathsConfig(_Section):
    state_dir: Path = Path(".dsfhir")


class DatabaseConfig(_Section):
    dsn: SecretStr = SecretStr("")
    pool_min_size: int = Field(1, ge=1)
    pool_max_size: int = Field(4, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _sizes(self) -> DatabaseConfig:
        if self.pool_max_size < self.pool_min_size:
            raise ValueError("pool_max_size must be >= pool_min_size")
        return self


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class FhirConfig(_Section):
    base_url: str = ""
    timeout_s: float = Field(30.0, gt=0)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    page_size: int = Field(50, ge=1, le=1000)
    max_retries: int = Field(3, ge=0, le=10)
    backoff_base_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    since_param: Literal["_lastUpdated", "date"] = "_lastUpdated"
    categories: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    strict_search: bool = True
    safety_lag_s: int = Field(120, ge=0)
    overlap_s: int = Field(300, ge=0)
    max_note_bytes: int = Field(1_000_000, ge=1)


class AuthConfig(_Section):
    method: Literal["none", "basic", "bearer", "smart"] = "none"
    username: str = ""
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    client_id: str = ""
    private_key_path: Path | None = None
    key_id: str = ""
    algorithm: Literal["RS384", "ES384"] = "RS384"
    scopes: str = (
        "system/DocumentReference.rs system/Binary.r system/MedicationStatement.cu "
        "system/Observation.cu system/Provenance.c"
    )

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        need = {
            "basic": ("username",),
            "bearer": ("token",),
            "smart": ("client_id", "private_key_path"),
        }.get(self.method, ())
        for key in need:
            value = getattr(self, key)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not text:
                raise ValueError(f"auth.{key} is required when auth.method = {self.method!r}")
        return self


class ScheduleConfig(_Section):
    mode: Literal["interval", "cron"] = "interval"
    interval_minutes: int = Field(15, ge=1)
    cron: str = "*/15 * * * *"


class ModelConfig(_Section):
    base: Path | None = None
    adapter: Path | None = Path("models/ramie-smollm2")
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["fp32", "bf16"] = "fp32"
    threads: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    score_batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(96, ge=8)


class RetrievalConfig(_Section):
    enabled: bool = True
    k: int = Field(0, ge=0, le=16)
    embedding_model: Path | None = None


class ExtractionConfig(_Section):
    backend: Literal["llm", "encoder", "lexicon", "encoder+llm", "llm+encoder", "ensemble"] = (
        "ensemble"
    )
    te_mode: Literal["pipeline", "task"] = "pipeline"
    lexicon_gate: bool = True
    known_only: bool = True
    lexicon_floor: bool = True
    event_floor: bool = True
    status_rules: bool = True
    label_calibration: bool = False
    ensemble_encoder_weight: float = Field(1.0, ge=0.0, le=1.0)
    workers: int = Field(2, ge=1, le=64)
    worker_start_timeout_s: float = Field(600.0, gt=0, le=86_400)
    worker_sentence_timeout_s: float = Field(60.0, gt=0, le=86_400)
    max_sentence_chars: int = Field(600, ge=50)
    max_note_chars: int = Field(200_000, ge=100)
    lexicon: Path | None = Path("data/lexicon/supplements.tsv")
    event_terms: Path | None = Path("data/corpus/train.jsonl")


class EncoderConfig(_Section):
    base: Path | None = None
    model_dir: Path | None = Path("models/ds-encoder")
    label_model_dirs: tuple[Path, ...] = (
        Path("models/ds-encoder-s14"),
        Path("models/ds-encoder-s15"),
    )
    threads: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)


class WritebackConfig(_Section):
    enabled: bool = True
    identifier_system: str = "urn:dsfhir:extraction"
    store_note_text: bool = False
    max_attempts: int = Field(5, ge=1)


class Settings(_Section):
    """The validated, frozen configuration of one process."""

    source: Path | None = None
    paths: PathsConfig = PathsConfig()
    database: DatabaseConfig = DatabaseConfig()
    logging: LoggingConfig = LoggingConfig()
    fhir: FhirConfig = FhirConfig()
    auth: AuthConfig = AuthConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    model: ModelConfig = ModelConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    extraction: ExtractionConfig = ExtractionConfig()
    encoder: EncoderConfig = EncoderConfig()
    writeback: WritebackConfig = WritebackConfig()

    @model_validator(mode="after")
    def _one_thread_count(self) -> Settings:
        # torch has one thread count per process: where the LLM and the encoder share a
        # process, a second setting would be silently overridden by the first.
        both = self.extraction.backend in ("ensemble", "encoder+llm", "llm+encoder")
        if both and self.encoder.threads != self.model.threads:
            raise ValueError(
                f"backend {self.extraction.backend!r} runs the LLM and the encoder in one "
                f"process, where torch has one thread count: set encoder.threads = "
                f"model.threads (now {self.encoder.threads} and {self.model.threads})"
            )
        return self

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve(self, path: Path) -> Path:
        """A configured path made absolute against the config file's directory."""
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.paths.state_dir)

    def with_values(self, section: str, **values: Any) -> Settings:
        """A copy with keys of one section replaced (benchmarks, the demo's fallback)."""
        part = getattr(self, section).model_copy(update=values)
        return self.model_copy(update={section: part})

    def single_process_threads(self, per_worker: int) -> int:
        """Torch threads for a job that runs in one process (training, calibration): the
        cores inference is configured to use, ``per_worker`` threads x ``extraction.workers``,
        at most the CPUs this process may run on."""
        return max(1, min(per_worker * self.extraction.workers, len(os.sched_getaffinity(0))))


_SECTIONS = tuple(name for name in Settings.model_fields if name != "source")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(f"environment variable {name}: unknown section [{section}]")
        out.setdefault(section, {})[key] = value
    return out


def _coerce_env(section: str, key: str, value: str, where: str) -> Any:
    """Env values are strings; parse them the way TOML would for the target field."""
    model = Settings.model_fields[section].annotation
    fields = getattr(model, "model_fields", {})
    if key not in fields:
        raise ConfigError(f"{where}: unknown key [{section}] {key}")
    annotation = str(fields[key].annotation)
    if (
        annotation in ("<class 'int'>", "<class 'float'>", "<class 'bool'>")
        or "tuple" in annotation
    ):
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: [{section}] {key}: cannot parse {value!r}") from exc
    return value


def describe(exc: ValidationError, where: str) -> str:
    """A validation error as lines naming each key (no input values: they may be secrets)."""
    lines = [f"invalid configuration in {where}:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not loc:  # a rule across sections
            lines.append(f"  {msg}")
            continue
        key = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _path_fields(data: dict[str, Any]) -> dict[str, Any]:
    """TOML has no path type: turn the strings of Path fields into Paths ('' means unset)."""
    for section, values in data.items():
        model = Settings.model_fields[section].annotation if section in _SECTIONS else None
        fields = getattr(model, "model_fields", {})
        for key, value in list(values.items()) if isinstance(values, dict) else []:
            ann = str(fields[key].annotation) if key in fields else ""
            if "Path" in ann and isinstance(value, str):
                values[key] = Path(value) if value else None
            elif "Path" in ann and isinstance(value, list):
                values[key] = tuple(Path(v) for v in value)
            elif "SecretStr" in ann and isinstance(value, str):
                values[key] = SecretStr(value)
            elif "tuple" in ann and isinstance(value, list):
                values[key] = tuple(value)
    return data


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or defaults when None), apply env overrides, validate, freeze."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    where = str(path) if path else "built-in defaults"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(f"invalid configuration in {where}:\n  [{section}]: unknown section")
    for section, values in _env_overrides(environ).items():
        for key, value in values.items():
            env_where = f"environment variable {ENV_PREFIX}{section.upper()}__{key.upper()}"
            data.setdefault(section, {})[key] = _coerce_env(section, key, value, env_where)
    try:
        return Settings.model_validate(
            {**_path_fields(data), "source": path.resolve() if path else None}
        )
    except ValidationError as exc:
        raise ConfigError(describe(exc, where)) from exc


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by '***'."""
    out: dict[str, Any] = {}
    for name in _SECTIONS:
        section = getattr(settings, name)
        values: dict[str, Any] = {}
        for key in type(section).model_fields:
            value = getattr(section, key)
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                value = str(settings.resolve(value))
            elif isinstance(value, tuple):
                value = [str(settings.resolve(v)) if isinstance(v, Path) else v for v in value]
            values[key] = "" if value is None else value
        out[name] = values
    return out
